#include "server/metrics.h"

#include <google/protobuf/stubs/common.h>
#include <grpcpp/grpcpp.h>

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "worker_api/counters.h"

namespace emud::server {

// Prometheus naming: snake_case, emud_ prefix, _total for counters, base
// units (seconds, bytes).
const MetricDef kMetricDefs[] = {
    {"emud_build_info", "emud build information; always 1", "gauge",
     "version,grpc_version,protobuf_version"},
    {"emud_devices", "Devices by phase", "gauge", "phase"},
    {"emud_vfio_user_messages_total", "vfio-user messages handled, by command", "counter",
     "device,command"},
    {"emud_vfio_user_errors_total", "vfio-user messages refused with an error, by command",
     "counter", "device,command"},
    {"emud_virtchnl_ops_total", "virtchnl ops answered, by op and status", "counter",
     "device,op,status"},
    {"emud_quarantined_total",
     "Poison inputs that kept killing workers, answered with an error instead of applied "
     "(kind: vfio-user/<COMMAND>, virtchnl, tx)",
     "counter", "device,kind"},
#define EMUD_QUEUE_METRIC_DEF(name, help) \
  {"emud_dataplane_" #name "_total", help, "counter", "device,queue,direction"},
    EMUD_QUEUE_COUNTERS(EMUD_QUEUE_METRIC_DEF)
#undef EMUD_QUEUE_METRIC_DEF
#define EMUD_DEVICE_METRIC_DEF(name, help) {"emud_device_" #name "_total", help, "counter", "device"},
    EMUD_AVF_COUNTERS(EMUD_DEVICE_METRIC_DEF) EMUD_DATAPATH_COUNTERS(EMUD_DEVICE_METRIC_DEF)
#undef EMUD_DEVICE_METRIC_DEF
    {"emud_worker_restarts_total", "Worker restarts after unexpected exits", "counter", "device"},
    {"emud_fdstore_fds", "Descriptors held in emud's fd store for the device", "gauge",
     "device"},
    {"emud_worker_reattach_duration_seconds",
     "Time from a successor worker's exec to the guest's session resumed (LMDB state, "
     "inherited fds, queues reconciled); only successors that took a connected guest over",
     "histogram", ""},
    {"emud_state_store_commit_duration_seconds", "Duration of emud's state-store commits",
     "histogram", "env"},
};
const size_t kNumMetricDefs = sizeof(kMetricDefs) / sizeof(kMetricDefs[0]);

namespace {

const MetricDef& Def(absl::string_view name) {
  for (const auto& d : kMetricDefs) {
    if (name == d.name) return d;
  }
  std::abort();  // a metric used below is missing from kMetricDefs
}

prometheus::Family<prometheus::Counter>& Counter(prometheus::Registry& r, const char* name) {
  const MetricDef& d = Def(name);
  return prometheus::BuildCounter().Name(d.name).Help(d.help).Register(r);
}
prometheus::Family<prometheus::Gauge>& Gauge(prometheus::Registry& r, const char* name) {
  const MetricDef& d = Def(name);
  return prometheus::BuildGauge().Name(d.name).Help(d.help).Register(r);
}
prometheus::Family<prometheus::Histogram>& Histogram(prometheus::Registry& r, const char* name) {
  const MetricDef& d = Def(name);
  return prometheus::BuildHistogram().Name(d.name).Help(d.help).Register(r);
}

std::string PhaseLabel(emud::v1::Phase p) {
  std::string n = emud::v1::Phase_Name(p);
  if (n.rfind("PHASE_", 0) == 0) n = n.substr(6);
  return absl::AsciiStrToLower(n);
}

}  // namespace

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      build_info_(Gauge(*registry_, "emud_build_info")),
      devices_(Gauge(*registry_, "emud_devices")),
      vfio_messages_(Counter(*registry_, "emud_vfio_user_messages_total")),
      vfio_errors_(Counter(*registry_, "emud_vfio_user_errors_total")),
      virtchnl_ops_(Counter(*registry_, "emud_virtchnl_ops_total")),
      quarantined_(Counter(*registry_, "emud_quarantined_total")),
      restarts_(Counter(*registry_, "emud_worker_restarts_total")),
      reattach_(Histogram(*registry_, "emud_worker_reattach_duration_seconds")),
      fds_(Gauge(*registry_, "emud_fdstore_fds")),
      commit_(Histogram(*registry_, "emud_state_store_commit_duration_seconds")),
      commit_hist_(commit_.Add({{"env", "control"}},
                               prometheus::Histogram::BucketBoundaries{
                                   1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
                                   1e-2, 2.5e-2, 5e-2, 0.1})),
      reattach_hist_(reattach_.Add({}, prometheus::Histogram::BucketBoundaries{
                                           0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
                                           1, 2, 5})) {
  build_info_
      .Add({{"version", kVersion},
            {"grpc_version", grpc::Version()},
            {"protobuf_version",
             google::protobuf::internal::VersionString(GOOGLE_PROTOBUF_VERSION)}})
      .Set(1);
#define EMUD_QUEUE_FAMILY(name, help) \
  queue_families_[#name] = &Counter(*registry_, "emud_dataplane_" #name "_total");
  EMUD_QUEUE_COUNTERS(EMUD_QUEUE_FAMILY)
#undef EMUD_QUEUE_FAMILY
#define EMUD_DEVICE_FAMILY(name, help) \
  device_families_[#name] = &Counter(*registry_, "emud_device_" #name "_total");
  EMUD_AVF_COUNTERS(EMUD_DEVICE_FAMILY)
  EMUD_DATAPATH_COUNTERS(EMUD_DEVICE_FAMILY)
#undef EMUD_DEVICE_FAMILY
  absl::MutexLock lock(&mu_);
  for (int p = emud::v1::PHASE_CREATED; p <= emud::v1::PHASE_FAILED; ++p) {
    auto phase = static_cast<emud::v1::Phase>(p);
    phase_gauges_[phase] = &devices_.Add({{"phase", PhaseLabel(phase)}});
  }
}

void Metrics::SetDeviceCounts(const std::map<emud::v1::Phase, int>& counts) {
  absl::MutexLock lock(&mu_);
  for (auto& [phase, gauge] : phase_gauges_) {
    auto it = counts.find(phase);
    gauge->Set(it == counts.end() ? 0 : it->second);
  }
}

void Metrics::Advance(prometheus::Family<prometheus::Counter>& fam, const std::string& device,
                      const std::string& key, const std::map<std::string, std::string>& labels,
                      uint64_t value) {
  auto& per_dev = series_[device];
  auto it = per_dev.find(key);
  if (it == per_dev.end()) {
    auto all = labels;
    all["device"] = device;
    it = per_dev.emplace(key, Tracked{&fam, &fam.Add(all), 0}).first;
  }
  Tracked& t = it->second;
  if (value >= t.last) {
    t.counter->Increment(static_cast<double>(value - t.last));
  } else {
    t.counter->Increment(static_cast<double>(value));  // the source restarted from zero
  }
  t.last = value;
}

void Metrics::UpdateFromWorkerStatus(const std::string& device,
                                     const emud::internal::WorkerStatus& st) {
  absl::MutexLock lock(&mu_);
  for (const auto& [cmd, n] : st.vfio_user_messages()) {
    Advance(vfio_messages_, device, "m/" + cmd, {{"command", cmd}}, n);
  }
  for (const auto& [cmd, n] : st.vfio_user_errors()) {
    Advance(vfio_errors_, device, "e/" + cmd, {{"command", cmd}}, n);
  }
  for (const auto& [kind, n] : st.quarantined()) {
    Advance(quarantined_, device, "q/" + kind, {{"kind", kind}}, n);
  }
  for (const auto& [opstatus, n] : st.virtchnl_ops()) {
    size_t slash = opstatus.find('/');
    std::string op = opstatus.substr(0, slash);
    std::string status = slash == std::string::npos ? "" : opstatus.substr(slash + 1);
    Advance(virtchnl_ops_, device, "v/" + opstatus, {{"op", op}, {"status", status}}, n);
  }
  auto queues = [&](const auto& list, const char* dir) {
    for (const auto& q : list) {
      std::string qs = absl::StrCat(q.queue());
      std::map<std::string, std::string> l = {{"queue", qs}, {"direction", dir}};
      std::string k = absl::StrCat(dir, "/", qs);
#define EMUD_ADVANCE_QUEUE_COUNTER(name, help) \
  Advance(*queue_families_[#name], device, #name "/" + k, l, q.name());
      EMUD_QUEUE_COUNTERS(EMUD_ADVANCE_QUEUE_COUNTER)
#undef EMUD_ADVANCE_QUEUE_COUNTER
    }
  };
  queues(st.rx(), "rx");
  queues(st.tx(), "tx");
  for (const auto& [name, n] : st.device_counters()) {
    auto fam = device_families_.find(name);
    if (fam == device_families_.end()) continue;  // a newer worker's counter: not exported yet
    Advance(*fam->second, device, "c/" + name, {}, n);
  }
  auto seen = reattaches_seen_.find(device);
  if (seen == reattaches_seen_.end()) {
    reattaches_seen_[device] = st.reattaches();  // already counted before this emud
  } else if (st.reattaches() > seen->second) {
    // An idle device's successor resumed no session: nothing to record.
    if (st.last_reattach_seconds() > 0) reattach_hist_.Observe(st.last_reattach_seconds());
    seen->second = st.reattaches();
  } else {
    seen->second = st.reattaches();
  }
}

void Metrics::InitRestarts(const std::string& device, uint64_t initial) {
  absl::MutexLock lock(&mu_);
  Advance(restarts_, device, "restarts", {}, initial);
}

void Metrics::WorkerRestarted(const std::string& device) {
  absl::MutexLock lock(&mu_);
  auto& per_dev = series_[device];
  auto it = per_dev.find("restarts");
  uint64_t next = it == per_dev.end() ? 1 : it->second.last + 1;
  Advance(restarts_, device, "restarts", {}, next);
}

void Metrics::SetFdsHeld(const std::string& device, size_t n) {
  absl::MutexLock lock(&mu_);
  auto it = fd_gauges_.find(device);
  if (it == fd_gauges_.end()) {
    it = fd_gauges_.emplace(device, &fds_.Add({{"device", device}})).first;
  }
  it->second->Set(static_cast<double>(n));
}

void Metrics::RemoveDevice(const std::string& device) {
  absl::MutexLock lock(&mu_);
  if (auto g = fd_gauges_.find(device); g != fd_gauges_.end()) {
    fds_.Remove(g->second);
    fd_gauges_.erase(g);
  }
  auto it = series_.find(device);
  if (it != series_.end()) {
    for (auto& [key, t] : it->second) t.family->Remove(t.counter);
    series_.erase(it);
  }
  reattaches_seen_.erase(device);
}

void Metrics::ObserveCommit(absl::Duration d) { commit_hist_.Observe(absl::ToDoubleSeconds(d)); }

}  // namespace emud::server
