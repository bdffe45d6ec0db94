#include "worker_api/restart_trace.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace emud::worker_api {

void RestartTrace::Mark(absl::string_view name) { MarkAt(name, absl::GetCurrentTimeNanos()); }

void RestartTrace::MarkAt(absl::string_view name, int64_t unix_ns) {
  marks_.emplace_back(std::string(name), unix_ns);
}

std::string RestartTrace::Encode() const {
  std::string out;
  for (const auto& [name, ns] : marks_) absl::StrAppend(&out, out.empty() ? "" : ",", name, "=", ns);
  return out;
}

std::string RestartTrace::Format() const {
  std::string out;
  for (const auto& [name, ns] : marks_) absl::StrAppend(&out, out.empty() ? "" : " ", name, "=", ns);
  return out;
}

RestartTrace RestartTrace::Decode(absl::string_view text) {
  RestartTrace t;
  for (absl::string_view item : absl::StrSplit(text, absl::ByAnyChar(", \n"), absl::SkipEmpty())) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    int64_t ns = 0;
    if (kv.first.empty() || !absl::SimpleAtoi(kv.second, &ns)) continue;
    t.MarkAt(kv.first, ns);
  }
  return t;
}

int64_t RestartTrace::At(absl::string_view name) const {
  for (const auto& [n, ns] : marks_) {
    if (n == name) return ns;
  }
  return 0;
}

}  // namespace emud::worker_api
