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

#include <map>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "base/version.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
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

class Metrics {
 public:
  Metrics();
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

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
  prometheus::Histogram& commit_hist_;
  prometheus::Histogram& reattach_hist_;
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
};

}  // namespace emud::server

#endif  // EMUD_SERVER_METRICS_H_
