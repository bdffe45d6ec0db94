#include "ctl/output.h"

#include <yaml-cpp/yaml.h>

#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"

namespace emud::ctl {
namespace {

namespace v1 = emud::v1;

v1::Device Sample() {
  v1::Device d;
  d.set_name("dev0");
  d.set_type(v1::DEVICE_TYPE_AVF);
  d.mutable_spec()->set_mac("02:00:00:00:00:01");
  d.mutable_spec()->set_queue_pairs(4);
  d.mutable_spec()->set_backend("tap:emud0");
  d.mutable_spec()->set_socket_path("/run/emud/dev0.sock");
  d.mutable_status()->set_phase(v1::PHASE_LINK_UP);
  d.mutable_status()->set_worker_pid(1234);
  d.mutable_status()->set_last_error("it said: \"no\"\nsecond line");
  return d;
}

TEST(OutputTest, JsonRoundTripsThroughProtobuf) {
  v1::Device d = Sample();
  std::string json = ToJson(d, true);
  v1::Device back;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &back).ok()) << json;
  EXPECT_EQ(back.SerializeAsString(), d.SerializeAsString());
  EXPECT_NE(json.find("\"restartCount\": 0"), std::string::npos) << json;  // zero values shown
  EXPECT_EQ(ToJson(d, false).find('\n'), std::string::npos);
}

TEST(OutputTest, YamlParsesBackToTheSameValues) {
  auto y = ToYaml(Sample());
  ASSERT_TRUE(y.ok());
  YAML::Node n = YAML::Load(*y);
  EXPECT_EQ(n["name"].as<std::string>(), "dev0");
  EXPECT_EQ(n["type"].as<std::string>(), "DEVICE_TYPE_AVF");
  EXPECT_EQ(n["spec"]["queuePairs"].as<int>(), 4);
  EXPECT_EQ(n["spec"]["mac"].as<std::string>(), "02:00:00:00:00:01");
  EXPECT_EQ(n["status"]["workerPid"].as<int>(), 1234);
  EXPECT_EQ(n["status"]["lastError"].as<std::string>(), "it said: \"no\"\nsecond line");
}

TEST(OutputTest, TablesShowTheFields) {
  std::string list = DeviceListTable({Sample()});
  EXPECT_NE(list.find("NAME"), std::string::npos);
  EXPECT_NE(list.find("dev0"), std::string::npos);
  EXPECT_NE(list.find("LINK_UP"), std::string::npos);
  EXPECT_NE(list.find("tap:emud0"), std::string::npos);
  std::string one = DeviceTable(Sample());
  EXPECT_NE(one.find("Phase:"), std::string::npos);
  EXPECT_NE(one.find("1234"), std::string::npos);
  v1::DeviceStats st;
  st.set_name("dev0");
  auto* q = st.add_tx();
  q->set_queue(0);
  q->set_packets(42);
  (*st.mutable_virtchnl_ops())["VERSION/SUCCESS"] = 1;
  std::string stats = StatsTable(st);
  EXPECT_NE(stats.find("42"), std::string::npos);
  EXPECT_NE(stats.find("VERSION/SUCCESS"), std::string::npos);
}

TEST(OutputTest, FormatsParse) {
  EXPECT_EQ(*ParseFormat("json"), Format::kJson);
  EXPECT_EQ(*ParseFormat("yaml"), Format::kYaml);
  EXPECT_EQ(*ParseFormat("table"), Format::kTable);
  EXPECT_FALSE(ParseFormat("xml").ok());
}

}  // namespace
}  // namespace emud::ctl
