// State-store commit cost on tmpfs: latency of committing one small record
// (p50/p99, in ns) and commits/s, for one device and for several devices
// committing in parallel (one LMDB environment each, one thread each).
// Run: bazel run //tests/bench:state_store_bench
#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "benchmark/benchmark.h"
#include "state_store/record.h"
#include "state_store/store.h"
#include "state_store/test_record.pb.h"
#include "state_store/test_util.h"

namespace emud::state_store {
namespace {

struct Device {
  std::unique_ptr<Env> env;
  RecordTable<test::Counter> table{"regs"};
  uint64_t seq = 0;
  std::vector<int64_t> latencies_ns;

  void CommitOne() {
    test::Counter c;
    c.set_value(++seq);
    c.set_note("QRX_TAIL");
    absl::Time start = absl::Now();
    absl::Status s = env->Update([&](WriteTxn& t) { return table.Put(t, "q0", c); });
    latencies_ns.push_back(absl::ToInt64Nanoseconds(absl::Now() - start));
    if (!s.ok()) std::abort();
  }
};

std::unique_ptr<Env> OpenDevice(const std::string& dir) {
  EnvOptions o;
  o.tables = {"regs"};
  auto env = Env::Open(dir, o);
  if (!env.ok()) std::abort();
  return std::move(*env);
}

int64_t Percentile(std::vector<int64_t> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

void BM_CommitSmallRecord(benchmark::State& state) {
  const int devices = static_cast<int>(state.range(0));
  ScratchDir dir("bench");
  std::vector<Device> devs(devices);
  for (int i = 0; i < devices; ++i) devs[i].env = OpenDevice(absl::StrCat(dir.path(), "/d", i));
  constexpr int kPerRound = 2000;
  int64_t commits = 0;
  for (auto _ : state) {
    std::vector<std::thread> threads;
    for (auto& d : devs) {
      threads.emplace_back([&d] {
        for (int i = 0; i < kPerRound; ++i) d.CommitOne();
      });
    }
    for (auto& t : threads) t.join();
    commits += int64_t{kPerRound} * devices;
  }
  std::vector<int64_t> all;
  for (auto& d : devs) all.insert(all.end(), d.latencies_ns.begin(), d.latencies_ns.end());
  state.counters["p50_ns"] = static_cast<double>(Percentile(all, 0.50));
  state.counters["p99_ns"] = static_cast<double>(Percentile(all, 0.99));
  state.counters["commits_per_s"] =
      benchmark::Counter(static_cast<double>(commits), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_CommitSmallRecord)->Arg(1)->Arg(2)->Arg(4)->Arg(8)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace emud::state_store

BENCHMARK_MAIN();
