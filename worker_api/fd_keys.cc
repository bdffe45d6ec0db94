#include "worker_api/fd_keys.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace emud::worker_api {

std::string DmaFdKey(uint64_t iova) { return absl::StrFormat("dma/%x", iova); }

std::string IrqFdKey(uint32_t index, uint32_t vector) {
  return absl::StrCat("irq/", index, "/", vector);
}

bool IsSessionFdKey(absl::string_view key) {
  return absl::StartsWith(key, kDmaFdKeyPrefix) || absl::StartsWith(key, kIrqFdKeyPrefix);
}

std::string TapFdKey(uint32_t queue) {
  return queue == 0 ? std::string(kTapFdKey) : absl::StrCat(kTapFdKey, "/", queue);
}

}  // namespace emud::worker_api
