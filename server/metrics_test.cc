#include "server/metrics.h"
#include "worker_api/counters.h"

#include <unistd.h>

#include <set>
#include <string>

#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"

namespace emud::server {
namespace {

std::string Scrape(Metrics& m) {
  prometheus::TextSerializer ser;
  return ser.Serialize(m.CollectAll());
}

// Value of the sample whose line starts with `prefix` (name{labels}).
double Sample(const std::string& text, const std::string& prefix) {
  size_t pos = 0;
  while ((pos = text.find(prefix, pos)) != std::string::npos) {
    if (pos == 0 || text[pos - 1] == '\n') {
      size_t sp = text.find(' ', pos + prefix.size() - 1);
      return std::stod(text.substr(sp + 1, text.find('\n', sp) - sp - 1));
    }
    pos += prefix.size();
  }
  return -1;
}

TEST(MetricsTest, EveryDeclaredMetricIsExported) {
  Metrics m;
  m.InitRestarts("d", 0);
  m.SetDeviceStates({{"d", emud::v1::PHASE_LISTENING, "avf", "loopback", "trap", 2, ::getpid()}});
  m.WorkerAdopted("d");
  m.SetStarts(1);
  emud::internal::WorkerStatus st;
  st.mutable_rx()->Add()->set_packets(1);
  st.mutable_tx()->Add()->set_packets(1);
  (*st.mutable_vfio_user_messages())["VERSION"] = 1;
  (*st.mutable_vfio_user_errors())["DMA_MAP"] = 1;
  (*st.mutable_virtchnl_ops())["VERSION/SUCCESS"] = 1;
  (*st.mutable_quarantined())["tx"] = 1;
#define EMUD_SET_DEVICE_COUNTER(name, help) (*st.mutable_device_counters())[#name] = 1;
  EMUD_AVF_COUNTERS(EMUD_SET_DEVICE_COUNTER)
  EMUD_ADMIN_QUEUE_COUNTERS(EMUD_SET_DEVICE_COUNTER)
  EMUD_DATAPATH_COUNTERS(EMUD_SET_DEVICE_COUNTER)
#undef EMUD_SET_DEVICE_COUNTER
  m.UpdateFromWorkerStatus("d", st);
  st.set_reattaches(1);
  st.set_last_reattach_seconds(0.002);
  m.UpdateFromWorkerStatus("d", st);
  m.ObserveCommit(absl::Microseconds(30));
  m.SetFdsHeld("d", 2);
  std::string text = Scrape(m);
  for (size_t i = 0; i < kNumMetricDefs; ++i) {
    EXPECT_NE(text.find(std::string("# TYPE ") + kMetricDefs[i].name + " " + kMetricDefs[i].type),
              std::string::npos)
        << kMetricDefs[i].name << "\n" << text;
  }
}

TEST(MetricsTest, CountersNeverGoBackwards) {
  Metrics m;
  emud::internal::WorkerStatus st;
  auto* q = st.mutable_tx()->Add();
  q->set_queue(0);
  q->set_packets(100);
  m.UpdateFromWorkerStatus("d", st);
  const std::string key =
      "emud_dataplane_packets_total{device=\"d\",direction=\"tx\",queue=\"0\"}";
  EXPECT_EQ(Sample(Scrape(m), key), 100);
  q->set_packets(150);
  m.UpdateFromWorkerStatus("d", st);
  EXPECT_EQ(Sample(Scrape(m), key), 150);
  // A worker that started from zero: its 20 packets are new ones.
  q->set_packets(20);
  m.UpdateFromWorkerStatus("d", st);
  EXPECT_EQ(Sample(Scrape(m), key), 170);
  q->set_packets(25);
  m.UpdateFromWorkerStatus("d", st);
  EXPECT_EQ(Sample(Scrape(m), key), 175);
}

// Device counters (worker_api/counters.h) become emud_device_<name>_total
// with the list's help text; unknown names (a newer worker) are skipped;
// they go with the device.
TEST(MetricsTest, DeviceCountersFromTheOneList) {
  Metrics m;
  emud::internal::WorkerStatus st;
  (*st.mutable_device_counters())["bad_tail_writes"] = 7;
  (*st.mutable_device_counters())["rx_filtered"] = 3;
  (*st.mutable_device_counters())["from_the_future"] = 9;
  m.UpdateFromWorkerStatus("d", st);
  std::string text = Scrape(m);
  EXPECT_EQ(Sample(text, "emud_device_bad_tail_writes_total{device=\"d\"}"), 7);
  EXPECT_EQ(Sample(text, "emud_device_rx_filtered_total{device=\"d\"}"), 3);
  EXPECT_NE(text.find("# HELP emud_device_bad_tail_writes_total Queue tail writes at or beyond"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("from_the_future"), std::string::npos);
  (*st.mutable_device_counters())["bad_tail_writes"] = 9;
  m.UpdateFromWorkerStatus("d", st);
  EXPECT_EQ(Sample(Scrape(m), "emud_device_bad_tail_writes_total{device=\"d\"}"), 9);
  m.RemoveDevice("d");
  EXPECT_EQ(Scrape(m).find("device=\"d\""), std::string::npos);
}

TEST(MetricsTest, PhaseGaugesAndRemoval) {
  Metrics m;
  m.SetDeviceCounts({{emud::v1::PHASE_LISTENING, 3}});
  std::string text = Scrape(m);
  EXPECT_EQ(Sample(text, "emud_devices{phase=\"listening\"}"), 3);
  EXPECT_EQ(Sample(text, "emud_devices{phase=\"failed\"}"), 0);
  m.InitRestarts("gone", 2);
  m.WorkerRestarted("gone");
  EXPECT_EQ(Sample(Scrape(m), "emud_worker_restarts_total{device=\"gone\"}"), 3);
  m.RemoveDevice("gone");
  EXPECT_EQ(Scrape(m).find("device=\"gone\""), std::string::npos);
}

TEST(MetricsTest, ReattachObservedOnlyForNewReattaches) {
  Metrics m;
  emud::internal::WorkerStatus st;
  st.set_reattaches(4);  // happened before this emud: not observed
  st.set_last_reattach_seconds(0.004);
  m.UpdateFromWorkerStatus("d", st);
  // No series until the device's first reattach.
  EXPECT_EQ(Sample(Scrape(m), "emud_worker_reattach_duration_seconds_count"), -1);
  st.set_reattaches(5);
  st.set_last_reattach_seconds(0.003);
  m.UpdateFromWorkerStatus("d", st);
  std::string text = Scrape(m);
  EXPECT_EQ(Sample(text, "emud_worker_reattach_duration_seconds_count{device=\"d\"}"), 1);
  EXPECT_DOUBLE_EQ(Sample(text, "emud_worker_reattach_duration_seconds_sum{device=\"d\"}"), 0.003);
  // An idle device's successor (no session resumed) reports 0: not a reattach.
  st.set_reattaches(6);
  st.set_last_reattach_seconds(0);
  m.UpdateFromWorkerStatus("d", st);
  EXPECT_EQ(Sample(Scrape(m), "emud_worker_reattach_duration_seconds_count{device=\"d\"}"), 1);
}

TEST(MetricsTest, DevicePhaseAndInfoInKubeStateMetricsStyle) {
  Metrics m;
  m.SetDeviceStates({{"vm1", emud::v1::PHASE_LINK_UP, "avf", "tap:t0", "mmap", 4, 0},
                     {"vm2", emud::v1::PHASE_FAILED, "avf", "loopback", "trap", 1, 0}});
  std::string t = Scrape(m);
  EXPECT_EQ(Sample(t, "emud_device_phase{device=\"vm1\",phase=\"link_up\"}"), 1) << t;
  EXPECT_EQ(Sample(t, "emud_device_phase{device=\"vm1\",phase=\"listening\"}"), 0);
  EXPECT_EQ(Sample(t, "emud_device_phase{device=\"vm2\",phase=\"failed\"}"), 1);
  EXPECT_EQ(Sample(t, "emud_device_info{backend=\"tap:t0\",device=\"vm1\",doorbell=\"mmap\","
                      "queue_pairs=\"4\",type=\"avf\"}"),
            1)
      << t;
  // A phase change moves the 1; a deleted device's series go.
  m.SetDeviceStates({{"vm1", emud::v1::PHASE_LISTENING, "avf", "tap:t0", "mmap", 4, 0}});
  t = Scrape(m);
  EXPECT_EQ(Sample(t, "emud_device_phase{device=\"vm1\",phase=\"link_up\"}"), 0);
  EXPECT_EQ(Sample(t, "emud_device_phase{device=\"vm1\",phase=\"listening\"}"), 1);
  EXPECT_EQ(t.find("device=\"vm2\""), std::string::npos) << t;
}

TEST(MetricsTest, ProcessMetricsOfEmudAndOfEachWorker) {
  Metrics m;
  // This test process poses as the worker of "w".
  m.SetDeviceStates({{"w", emud::v1::PHASE_LISTENING, "avf", "loopback", "trap", 1, ::getpid()},
                     {"gone", emud::v1::PHASE_LISTENING, "avf", "loopback", "trap", 1, 0x3ffffff}});
  std::string t = Scrape(m);
  EXPECT_GT(Sample(t, "process_resident_memory_bytes "), 1e6) << t;
  EXPECT_GT(Sample(t, "process_open_fds "), 2);
  EXPECT_GT(Sample(t, "process_start_time_seconds "), 1.5e9);
  EXPECT_GE(Sample(t, "process_cpu_seconds_total "), 0);
  EXPECT_GT(Sample(t, "emud_worker_process_resident_memory_bytes{device=\"w\"}"), 1e6);
  EXPECT_EQ(Sample(t, "emud_worker_process_start_time_seconds{device=\"w\"}"),
            Sample(t, "process_start_time_seconds "));
  // A worker that is gone has no samples rather than wrong ones.
  EXPECT_EQ(t.find("emud_worker_process_open_fds{device=\"gone\"}"), std::string::npos);
}

TEST(MetricsTest, StartsAdoptionsAndReattachByDevice) {
  Metrics m;
  m.SetStarts(3);
  m.WorkerAdopted("a");
  m.WorkerAdopted("a");
  emud::internal::WorkerStatus st;
  m.UpdateFromWorkerStatus("a", st);  // first sight: earlier reattaches not ours
  st.set_reattaches(1);
  st.set_last_reattach_seconds(0);  // an idle device's successor: nothing recorded
  m.UpdateFromWorkerStatus("a", st);
  st.set_reattaches(2);
  st.set_last_reattach_seconds(0.004);
  m.UpdateFromWorkerStatus("a", st);
  std::string t = Scrape(m);
  EXPECT_EQ(Sample(t, "emud_starts_total "), 3) << t;
  EXPECT_EQ(Sample(t, "emud_worker_adoptions_total{device=\"a\"}"), 2);
  EXPECT_EQ(Sample(t, "emud_worker_reattach_duration_seconds_count{device=\"a\"}"), 1);
  m.RemoveDevice("a");
  t = Scrape(m);
  EXPECT_EQ(t.find("device=\"a\""), std::string::npos) << t;
}

}  // namespace
}  // namespace emud::server
