// emud's Prometheus metrics. Every metric is declared once, in kMetricDefs
// (metrics.cc); Metrics builds the families from that list.
//
// Per-device counters mirror the cumulative counters of the device's
// WorkerStatus records. They only ever move forward: an increase is added,
// and a record whose counter went down (a worker that did not continue from
// its predecessor's record) is treated as a counter that restarted from
// zero, so its whole value is added.
//
// Thread safety: every method may be called from any thread.
#ifndef EMUD_SERVER_METRICS_H_
#define EMUD_SERVER_METRICS_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "base/version.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/collectable.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "proto/emud_v1.pb.h"
#include "proto/worker_status.pb.h"

namespace emud::server {

struct MetricDef {
  const char* name;
  const char* help;
  const char* type;  // "counter", "gauge" or "histogram"
  const char* labels;  // comma-separated label names, for documentation
};
// The whole list, in exposition order (see metrics.cc).
extern const MetricDef kMetricDefs[];
extern const size_t kNumMetricDefs;

// What emud_device_phase, emud_device_info and the worker process metrics
// say about one device.
struct DeviceMetricState {
  std::string name;
  emud::v1::Phase phase = emud::v1::PHASE_UNSPECIFIED;
  std::string type;      // "avf"
  std::string backend;   // "loopback", "tap:IF", "peer:DEV"
  std::string doorbell;  // "trap" or "mmap"
  uint32_t queue_pairs = 0;
  pid_t worker_pid = 0;  // 0: no worker
};

// Process metrics read from /proc at scrape time: process_* of emud itself
// and emud_worker_process_* per device's worker.
class ProcessCollector : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
  void SetWorkers(std::map<std::string, pid_t> workers);

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, pid_t> workers_ ABSL_GUARDED_BY(mu_);
};

class Metrics {
 public:
  Metrics();
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }
  // Registered beside registry() in the exposer.
  std::shared_ptr<ProcessCollector> process_collector() const { return process_; }
  // Both, as one scrape (tests).
  std::vector<prometheus::MetricFamily> CollectAll() const;

  // emud_device_phase{device,phase} (1 for the device's phase, 0 for the
  // others), emud_device_info{device,type,backend,doorbell,queue_pairs} = 1
  // and the worker pids the process metrics read; devices not listed are
  // dropped from these series.
  void SetDeviceStates(const std::vector<DeviceMetricState>& devices);
  // emud_starts_total: starts of emud on this state directory (persisted).
  void SetStarts(uint64_t starts);
  // emud_worker_adoptions_total{device}: running workers this emud adopted
  // at its start instead of starting them.
  void WorkerAdopted(const std::string& device);

  // emud_devices{phase}: number of devices per phase (all phases present).
  void SetDeviceCounts(const std::map<emud::v1::Phase, int>& counts);
  // Folds a device's latest WorkerStatus into its counters.
  void UpdateFromWorkerStatus(const std::string& device, const emud::internal::WorkerStatus& st);
  // emud_worker_restarts_total{device}: starts at `initial` for a device
  // emud finds at startup.
  void InitRestarts(const std::string& device, uint64_t initial);
  void WorkerRestarted(const std::string& device);
  // emud_fdstore_fds{device}: descriptors held in the fd store.
  void SetFdsHeld(const std::string& device, size_t n);
  // Drops every series labelled with `device`.
  void RemoveDevice(const std::string& device);
  void ObserveCommit(absl::Duration d);

 private:
  struct Tracked {
    prometheus::Family<prometheus::Counter>* family;
    prometheus::Counter* counter;
    uint64_t last;
  };
  void Advance(prometheus::Family<prometheus::Counter>& fam, const std::string& device,
               const std::string& key, const std::map<std::string, std::string>& labels,
               uint64_t value) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Gauge>& build_info_;
  prometheus::Family<prometheus::Gauge>& devices_;
  prometheus::Family<prometheus::Counter>& vfio_messages_;
  prometheus::Family<prometheus::Counter>& vfio_errors_;
  prometheus::Family<prometheus::Counter>& virtchnl_ops_;
  prometheus::Family<prometheus::Counter>& quarantined_;
  prometheus::Family<prometheus::Counter>& restarts_;
  prometheus::Family<prometheus::Histogram>& reattach_;
  prometheus::Family<prometheus::Gauge>& fds_;
  prometheus::Family<prometheus::Histogram>& commit_;
  prometheus::Family<prometheus::Gauge>& device_phase_;
  prometheus::Family<prometheus::Gauge>& device_info_;
  prometheus::Family<prometheus::Counter>& starts_;
  prometheus::Family<prometheus::Counter>& adoptions_;
  prometheus::Histogram& commit_hist_;
  prometheus::Counter& starts_counter_;
  std::shared_ptr<ProcessCollector> process_;
  // Generated from worker_api/counters.h: emud_dataplane_<name>_total by
  // queue counter name, emud_device_<name>_total by device counter name.
  std::map<std::string, prometheus::Family<prometheus::Counter>*> queue_families_;
  std::map<std::string, prometheus::Family<prometheus::Counter>*, std::less<>> device_families_;

  absl::Mutex mu_;
  // device -> series key -> tracked counter.
  std::map<std::string, std::map<std::string, Tracked>> series_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> reattaches_seen_ ABSL_GUARDED_BY(mu_);
  std::map<emud::v1::Phase, prometheus::Gauge*> phase_gauges_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, prometheus::Gauge*> fd_gauges_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, prometheus::Histogram*> reattach_hists_ ABSL_GUARDED_BY(mu_);
  struct DeviceSeries {
    std::map<emud::v1::Phase, prometheus::Gauge*> phases;
    prometheus::Gauge* info = nullptr;
    std::string info_key;  // the info labels, to see them change
    prometheus::Counter* adoptions = nullptr;
  };
  std::map<std::string, DeviceSeries> device_series_ ABSL_GUARDED_BY(mu_);
  void DropDeviceSeriesLocked(const std::string& device) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

}  // namespace emud::server

#endif  // EMUD_SERVER_METRICS_H_
