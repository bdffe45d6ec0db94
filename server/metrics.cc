#include "server/metrics.h"

#include <google/protobuf/stubs/common.h>
#include <grpcpp/grpcpp.h>

#include <dirent.h>
#include <unistd.h>

#include <cstring>
#include <set>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "worker_api/counters.h"

namespace emud::server {

// Prometheus naming: snake_case, emud_ prefix, _total for counters, base
// units (seconds, bytes).
const MetricDef kMetricDefs[] = {
    {"emud_build_info", "emud build information; always 1", "gauge",
     "version,grpc_version,protobuf_version"},
    {"emud_devices", "Devices by phase", "gauge", "phase"},
    {"emud_device_phase",
     "1 for the device's current phase, 0 for every other phase (as kube_pod_status_phase)",
     "gauge", "device,phase"},
    {"emud_device_info", "Configuration of the device; always 1", "gauge",
     "device,type,backend,doorbell,queue_pairs"},
    {"emud_starts_total",
     "Starts of emud on this state directory (persisted in it): more than 1 means emud "
     "restarted, was upgraded or taken over",
     "counter", ""},
    {"emud_worker_adoptions_total",
     "Running workers this emud adopted at its start (left serving by the previous emud) "
     "instead of starting them",
     "counter", "device"},
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
    EMUD_AVF_COUNTERS(EMUD_DEVICE_METRIC_DEF) EMUD_ADMIN_QUEUE_COUNTERS(EMUD_DEVICE_METRIC_DEF)
    EMUD_DATAPATH_COUNTERS(EMUD_DEVICE_METRIC_DEF)
#undef EMUD_DEVICE_METRIC_DEF
    {"emud_worker_restarts_total", "Worker restarts after unexpected exits", "counter", "device"},
    {"emud_fdstore_fds", "Descriptors held in emud's fd store for the device", "gauge",
     "device"},
    {"emud_worker_reattach_duration_seconds",
     "Time from a successor worker's exec to the guest's session resumed (LMDB state, "
     "inherited fds, queues reconciled); only successors that took a connected guest over "
     "(an idle device's successor resumes nothing and is not recorded)",
     "histogram", "device"},
    {"emud_state_store_commit_duration_seconds", "Duration of emud's state-store commits",
     "histogram", "env"},
    {"process_cpu_seconds_total", "CPU time (user and system) of emud", "counter", ""},
    {"process_resident_memory_bytes", "Resident memory of emud", "gauge", ""},
    {"process_open_fds", "Open file descriptors of emud", "gauge", ""},
    {"process_start_time_seconds", "Start time of emud since the Unix epoch", "gauge", ""},
    {"emud_worker_process_cpu_seconds_total", "CPU time (user and system) of the device's worker",
     "counter", "device"},
    {"emud_worker_process_resident_memory_bytes", "Resident memory of the device's worker",
     "gauge", "device"},
    {"emud_worker_process_open_fds", "Open file descriptors of the device's worker", "gauge",
     "device"},
    {"emud_worker_process_start_time_seconds",
     "Start time of the device's current worker since the Unix epoch", "gauge", "device"},
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

const std::vector<double>& ReattachBuckets() {
  static const auto* b = new std::vector<double>{0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
                                                 0.1,   0.2,   0.5,   1,    2,    5};
  return *b;
}

// /proc/PID figures; ok=false if the process is gone.
struct ProcStat {
  bool ok = false;
  double cpu_seconds = 0, rss_bytes = 0, open_fds = 0, start_time = 0;
};

ProcStat ReadProc(pid_t pid) {
  ProcStat out;
  const std::string dir = absl::StrCat("/proc/", pid);
  std::ifstream in(dir + "/stat");
  std::string line;
  if (!std::getline(in, line)) return out;
  // The command name (field 2) may hold spaces: fields count from its ')'.
  size_t rp = line.rfind(')');
  if (rp == std::string::npos) return out;
  std::vector<std::string> f = absl::StrSplit(line.substr(rp + 2), ' ');
  // f[0] is field 3 (state): utime 14, stime 15, starttime 22, rss 24.
  uint64_t utime, stime, start, rss;
  if (f.size() < 22 || !absl::SimpleAtoi(f[11], &utime) || !absl::SimpleAtoi(f[12], &stime) ||
      !absl::SimpleAtoi(f[19], &start) || !absl::SimpleAtoi(f[21], &rss)) {
    return out;
  }
  static const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  static const double page = static_cast<double>(::sysconf(_SC_PAGESIZE));
  out.cpu_seconds = static_cast<double>(utime + stime) / ticks;
  out.rss_bytes = static_cast<double>(rss) * page;
  // Boot time from /proc/stat's btime.
  static const double btime = [] {
    std::ifstream st("/proc/stat");
    std::string l;
    while (std::getline(st, l)) {
      double v;
      if (l.rfind("btime ", 0) == 0 && absl::SimpleAtod(l.substr(6), &v)) return v;
    }
    return 0.0;
  }();
  out.start_time = btime + static_cast<double>(start) / ticks;
  if (DIR* d = ::opendir((dir + "/fd").c_str()); d != nullptr) {
    int n = 0;
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') ++n;
    }
    ::closedir(d);
    out.open_fds = pid == ::getpid() ? n - 1 : n;  // not our directory stream's own fd
  }
  out.ok = true;
  return out;
}

prometheus::MetricFamily Family(const char* name, prometheus::MetricType type) {
  const MetricDef& d = Def(name);
  prometheus::MetricFamily f;
  f.name = d.name;
  f.help = d.help;
  f.type = type;
  return f;
}

void AddSample(prometheus::MetricFamily& f, double v, const std::string& device) {
  prometheus::ClientMetric m;
  if (!device.empty()) m.label.push_back({"device", device});
  if (f.type == prometheus::MetricType::Counter) {
    m.counter.value = v;
  } else {
    m.gauge.value = v;
  }
  f.metric.push_back(std::move(m));
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
      device_phase_(Gauge(*registry_, "emud_device_phase")),
      device_info_(Gauge(*registry_, "emud_device_info")),
      starts_(Counter(*registry_, "emud_starts_total")),
      adoptions_(Counter(*registry_, "emud_worker_adoptions_total")),
      commit_hist_(commit_.Add({{"env", "control"}},
                               prometheus::Histogram::BucketBoundaries{
                                   1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
                                   1e-2, 2.5e-2, 5e-2, 0.1})),
      starts_counter_(starts_.Add({})),
      process_(std::make_shared<ProcessCollector>()) {
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
  EMUD_ADMIN_QUEUE_COUNTERS(EMUD_DEVICE_FAMILY)
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
    if (st.last_reattach_seconds() > 0) {
      auto h = reattach_hists_.find(device);
      if (h == reattach_hists_.end()) {
        h = reattach_hists_
                .emplace(device, &reattach_.Add({{"device", device}}, ReattachBuckets()))
                .first;
      }
      h->second->Observe(st.last_reattach_seconds());
    }
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
  if (auto h = reattach_hists_.find(device); h != reattach_hists_.end()) {
    reattach_.Remove(h->second);
    reattach_hists_.erase(h);
  }
  DropDeviceSeriesLocked(device);
}

void Metrics::DropDeviceSeriesLocked(const std::string& device) {
  auto it = device_series_.find(device);
  if (it == device_series_.end()) return;
  for (auto& [phase, g] : it->second.phases) device_phase_.Remove(g);
  if (it->second.info != nullptr) device_info_.Remove(it->second.info);
  if (it->second.adoptions != nullptr) adoptions_.Remove(it->second.adoptions);
  device_series_.erase(it);
}

void Metrics::SetDeviceStates(const std::vector<DeviceMetricState>& devices) {
  std::map<std::string, pid_t> workers;
  absl::MutexLock lock(&mu_);
  std::set<std::string> present;
  for (const DeviceMetricState& d : devices) {
    present.insert(d.name);
    if (d.worker_pid > 0) workers[d.name] = d.worker_pid;
    DeviceSeries& s = device_series_[d.name];
    if (s.phases.empty()) {
      for (int p = emud::v1::PHASE_CREATED; p <= emud::v1::PHASE_FAILED; ++p) {
        auto phase = static_cast<emud::v1::Phase>(p);
        s.phases[phase] = &device_phase_.Add({{"device", d.name}, {"phase", PhaseLabel(phase)}});
      }
    }
    for (auto& [phase, g] : s.phases) g->Set(phase == d.phase ? 1 : 0);
    const std::string queues = absl::StrCat(d.queue_pairs);
    const std::string key = absl::StrCat(d.type, "\n", d.backend, "\n", d.doorbell, "\n", queues);
    if (s.info == nullptr || s.info_key != key) {
      if (s.info != nullptr) device_info_.Remove(s.info);
      s.info = &device_info_.Add({{"device", d.name},
                                  {"type", d.type},
                                  {"backend", d.backend},
                                  {"doorbell", d.doorbell},
                                  {"queue_pairs", queues}});
      s.info->Set(1);
      s.info_key = key;
    }
  }
  for (auto it = device_series_.begin(); it != device_series_.end();) {
    const std::string name = (it++)->first;
    if (present.count(name) == 0) DropDeviceSeriesLocked(name);
  }
  process_->SetWorkers(std::move(workers));
}

void Metrics::SetStarts(uint64_t starts) {
  const double now = starts_counter_.Value();
  if (starts > now) starts_counter_.Increment(static_cast<double>(starts) - now);
}

void Metrics::WorkerAdopted(const std::string& device) {
  absl::MutexLock lock(&mu_);
  DeviceSeries& s = device_series_[device];
  if (s.adoptions == nullptr) s.adoptions = &adoptions_.Add({{"device", device}});
  s.adoptions->Increment();
}

std::vector<prometheus::MetricFamily> Metrics::CollectAll() const {
  std::vector<prometheus::MetricFamily> all = registry_->Collect();
  for (auto& f : process_->Collect()) all.push_back(std::move(f));
  return all;
}

void ProcessCollector::SetWorkers(std::map<std::string, pid_t> workers) {
  absl::MutexLock lock(&mu_);
  workers_ = std::move(workers);
}

std::vector<prometheus::MetricFamily> ProcessCollector::Collect() const {
  using prometheus::MetricType;
  auto cpu = Family("process_cpu_seconds_total", MetricType::Counter);
  auto rss = Family("process_resident_memory_bytes", MetricType::Gauge);
  auto fds = Family("process_open_fds", MetricType::Gauge);
  auto start = Family("process_start_time_seconds", MetricType::Gauge);
  auto wcpu = Family("emud_worker_process_cpu_seconds_total", MetricType::Counter);
  auto wrss = Family("emud_worker_process_resident_memory_bytes", MetricType::Gauge);
  auto wfds = Family("emud_worker_process_open_fds", MetricType::Gauge);
  auto wstart = Family("emud_worker_process_start_time_seconds", MetricType::Gauge);
  if (ProcStat self = ReadProc(::getpid()); self.ok) {
    AddSample(cpu, self.cpu_seconds, "");
    AddSample(rss, self.rss_bytes, "");
    AddSample(fds, self.open_fds, "");
    AddSample(start, self.start_time, "");
  }
  std::map<std::string, pid_t> workers;
  {
    absl::MutexLock lock(&mu_);
    workers = workers_;
  }
  for (const auto& [device, pid] : workers) {
    ProcStat w = ReadProc(pid);
    if (!w.ok) continue;  // it just exited: no sample rather than a wrong one
    AddSample(wcpu, w.cpu_seconds, device);
    AddSample(wrss, w.rss_bytes, device);
    AddSample(wfds, w.open_fds, device);
    AddSample(wstart, w.start_time, device);
  }
  return {cpu, rss, fds, start, wcpu, wrss, wfds, wstart};
}

void Metrics::ObserveCommit(absl::Duration d) { commit_hist_.Observe(absl::ToDoubleSeconds(d)); }

}  // namespace emud::server
