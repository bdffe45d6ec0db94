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

TEST(OutputTest, FormatsIncludingWideAndJsonPath) {
  std::string tmpl;
  EXPECT_EQ(*ParseFormat("wide"), Format::kWide);
  EXPECT_EQ(*ParseFormat("jsonpath={.name}", &tmpl), Format::kJsonPath);
  EXPECT_EQ(tmpl, "{.name}");
  EXPECT_EQ(ParseFormat("jsonpath").status().message(),
            "output format jsonpath needs a template: -o jsonpath='{.name}'");
  EXPECT_EQ(ParseFormat("xml").status().message(),
            "output format 'xml' is not one of table, wide, json, yaml, name, jsonpath=TEMPLATE");
}

TEST(OutputTest, WideTableHasTheExtraColumns) {
  v1::Device d = Sample();
  d.mutable_spec()->set_doorbell(v1::DOORBELL_MODE_MMAP);
  d.mutable_spec()->set_socket_uid(107);
  d.mutable_status()->set_restart_count(2);
  d.mutable_status()->set_consecutive_failures(1);
  d.mutable_status()->mutable_virtchnl_version()->set_major(1);
  d.mutable_status()->mutable_virtchnl_version()->set_minor(1);
  d.mutable_status()->set_last_error("boom");
  d.mutable_status()->mutable_create_time()->set_seconds(1000);
  std::string t = DeviceWideTable({d}, absl::FromUnixSeconds(1000 + 3 * 60 + 12));
  EXPECT_EQ(t,
            "NAME  TYPE  PHASE    PID   RESTARTS  FAILURES  MAC                QUEUES  BACKEND    "
            "DOORBELL  VIRTCHNL  SOCKET               SOCKET-ACCESS  AGE    LAST-ERROR\n"
            "dev0  avf   LINK_UP  1234  2         1         02:00:00:00:00:01  4       tap:emud0  "
            "mmap      1.1       /run/emud/dev0.sock  107:emud/0660  3m12s  boom\n");
}

TEST(OutputTest, AgeLikeKubectl) {
  EXPECT_EQ(Age(absl::Seconds(45)), "45s");
  EXPECT_EQ(Age(absl::Seconds(119)), "119s");
  EXPECT_EQ(Age(absl::Minutes(5)), "5m");
  EXPECT_EQ(Age(absl::Hours(5) + absl::Minutes(3)), "5h3m");
  EXPECT_EQ(Age(absl::Hours(52)), "2d4h");
}

TEST(OutputTest, VersionText) {
  EXPECT_EQ(VersionText("0.1.0", nullptr), "Client Version: 0.1.0\n");
  v1::ServerInfo s;
  s.set_version("0.1.0");
  s.set_build_type("release");
  s.set_grpc_version("1.51.1");
  s.set_protobuf_version("3.21.12");
  s.mutable_start_time()->set_seconds(0);
  s.set_pid(7);
  s.set_state_dir("/dev/shm/emud");
  s.set_socket_dir("/dev/shm/emud/sockets");
  s.set_device_count(3);
  EXPECT_EQ(VersionText("0.1.0", &s),
            "Client Version:    0.1.0\n"
            "Server Version:    0.1.0\n"
            "Server Build:      release (gRPC 1.51.1, protobuf 3.21.12)\n"
            "Server Started:    - (pid 7)\n"
            "State Directory:   /dev/shm/emud\n"
            "Socket Directory:  /dev/shm/emud/sockets\n"
            "Devices:           3\n");
}

}  // namespace
}  // namespace emud::ctl
