#include "base/log.h"

#include <string>
#include <vector>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "absl/time/civil_time.h"
#include "gtest/gtest.h"

namespace emud::log {
namespace {

class CaptureSink : public Sink {
 public:
  void Write(const Record& r, absl::string_view line) override {
    lines.emplace_back(line);
    devices.emplace_back(r.device);
  }
  std::vector<std::string> lines, devices;
};

class LogTest : public ::testing::Test {
 protected:
  void SetUp() override { SetSink(&sink_); }
  void TearDown() override {
    SetSink(nullptr);
    Init("emud", Format::kText, Level::kInfo);
  }
  CaptureSink sink_;
};

Record At(absl::string_view device, absl::string_view msg) {
  Record r;
  r.time = absl::FromCivil(absl::CivilSecond(2026, 12, 6, 10, 11, 12), absl::UTCTimeZone()) +
           absl::Microseconds(345678);
  r.level = Level::kWarning;
  r.program = "emud";
  r.pid = 42;
  r.device = device;
  r.message = msg;
  return r;
}

google::protobuf::Struct ParseJson(const std::string& line) {
  google::protobuf::Struct st;
  auto s = google::protobuf::util::JsonStringToMessage(line, &st);
  EXPECT_TRUE(s.ok()) << s.ToString() << " in " << line;
  return st;
}

TEST_F(LogTest, TextCarriesTimeLevelProgramAndDevice) {
  EXPECT_EQ(FormatRecord(At("vm1-nic0", "worker pid 7 exited"), Format::kText),
            "2026-12-06T10:11:12.345678Z WARN emud: vm1-nic0: worker pid 7 exited\n");
  EXPECT_EQ(FormatRecord(At("", "ready: grpc unix:///x"), Format::kText),
            "2026-12-06T10:11:12.345678Z WARN emud: ready: grpc unix:///x\n");
  // One record is one line.
  EXPECT_EQ(FormatRecord(At("", "a\nb"), Format::kText),
            "2026-12-06T10:11:12.345678Z WARN emud: a b\n");
}

TEST_F(LogTest, JsonIsOneParsableObjectPerLine) {
  const std::string line = FormatRecord(At("vm1.nic0", "quote \" back \\ nl \n ctl \x01 end"),
                                        Format::kJson);
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  google::protobuf::Struct st = ParseJson(line);
  const auto& f = st.fields();
  EXPECT_EQ(f.at("time").string_value(), "2026-12-06T10:11:12.345678Z");
  EXPECT_EQ(f.at("level").string_value(), "warning");
  EXPECT_EQ(f.at("program").string_value(), "emud");
  EXPECT_EQ(f.at("pid").number_value(), 42);
  EXPECT_EQ(f.at("device").string_value(), "vm1.nic0");
  EXPECT_EQ(f.at("msg").string_value(), "quote \" back \\ nl \n ctl \x01 end");
  // No device: no device field.
  EXPECT_EQ(ParseJson(FormatRecord(At("", "x"), Format::kJson)).fields().count("device"), 0u);
}

TEST_F(LogTest, JsonReplacesInvalidUtf8) {
  google::protobuf::Struct st =
      ParseJson(FormatRecord(At("", "ok \xc3\xa9 bad \xff\xc3 end"), Format::kJson));
  EXPECT_EQ(st.fields().at("msg").string_value(), "ok \xc3\xa9 bad \xef\xbf\xbd\xef\xbf\xbd end");
}

TEST_F(LogTest, LevelThresholdDropsLowerLines) {
  Init("emud-worker", Format::kText, Level::kWarning);
  Info("dropped");
  DeviceDebug("d", "dropped");
  DeviceWarning("d", "kept");
  Error("kept too");
  ASSERT_EQ(sink_.lines.size(), 2u);
  EXPECT_NE(sink_.lines[0].find(" WARN emud-worker: d: kept\n"), std::string::npos)
      << sink_.lines[0];
  EXPECT_EQ(sink_.devices[0], "d");
  EXPECT_NE(sink_.lines[1].find(" ERROR emud-worker: kept too\n"), std::string::npos);
  Init("emud", Format::kText, Level::kDebug);
  Debug("now shown");
  EXPECT_EQ(sink_.lines.size(), 3u);
}

TEST_F(LogTest, AProcessDeviceNamesEveryLineWithoutOne) {
  SetProcessDevice("vm2");
  Info("serving");
  DeviceInfo("other", "explicit");
  SetProcessDevice("");
  Info("none");
  ASSERT_EQ(sink_.devices.size(), 3u);
  EXPECT_EQ(sink_.devices[0], "vm2");
  EXPECT_NE(sink_.lines[0].find(" INFO emud: vm2: serving\n"), std::string::npos);
  EXPECT_EQ(sink_.devices[1], "other");
  EXPECT_EQ(sink_.devices[2], "");
}

TEST_F(LogTest, ParseFormatAndLevelNameWhatToUse) {
  Format f;
  Level l;
  EXPECT_TRUE(ParseFormat("json", &f).ok());
  EXPECT_EQ(f, Format::kJson);
  absl::Status s = ParseFormat("xml", &f);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("use text or json"), absl::string_view::npos);
  EXPECT_TRUE(ParseLevel("WARN", &l).ok());
  EXPECT_EQ(l, Level::kWarning);
  s = ParseLevel("loud", &l);
  EXPECT_NE(s.message().find("debug, info, warning or error"), absl::string_view::npos);
}

TEST_F(LogTest, EnvironmentCarriesTheConfigurationToChildren) {
  Init("emud", Format::kJson, Level::kDebug);
  ExportToEnvironment();
  Init("other", Format::kText, Level::kError);
  InitFromEnvironment("emud-worker");
  EXPECT_EQ(CurrentFormat(), Format::kJson);
  EXPECT_EQ(CurrentLevel(), Level::kDebug);
  DeviceInfo("vm1", "serving");
  ASSERT_EQ(sink_.lines.size(), 1u);
  google::protobuf::Struct st = ParseJson(sink_.lines[0]);
  EXPECT_EQ(st.fields().at("program").string_value(), "emud-worker");
  EXPECT_EQ(st.fields().at("device").string_value(), "vm1");
  ::unsetenv(kFormatEnv);
  ::unsetenv(kLevelEnv);
}

}  // namespace
}  // namespace emud::log
