// Guest RAM for the test guest: one memfd mapped into this process and
// exposed to the device at an IOVA (vfio-user DMA_MAP of the memfd, or
// directly as DmaMemory in-process), with a first-fit allocator for rings
// and packet buffers.
//
// Not thread-safe.
#ifndef EMUD_TESTS_GUEST_GUEST_MEMORY_H_
#define EMUD_TESTS_GUEST_GUEST_MEMORY_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"

namespace emud::guest {

// A piece of guest RAM: its bus address and where this process sees it.
struct DmaBuffer {
  uint64_t iova = 0;
  uint8_t* host = nullptr;
  size_t size = 0;
  bool valid() const { return host != nullptr; }
};

class GuestMemory {
 public:
  // `size` is rounded up to 4 KiB; the RAM appears at [iova_base, +size).
  static absl::StatusOr<std::unique_ptr<GuestMemory>> Create(size_t size,
                                                             uint64_t iova_base = 0x10000000);
  ~GuestMemory();
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  int fd() const { return fd_.get(); }
  uint64_t iova_base() const { return iova_base_; }
  size_t size() const { return size_; }

  // Zeroed memory of `size` bytes aligned to `align` (a power of two).
  // RESOURCE_EXHAUSTED when no free range fits.
  absl::StatusOr<DmaBuffer> Allocate(size_t size, size_t align = 4096);
  // Returns a buffer obtained from Allocate (others are ignored).
  void Free(const DmaBuffer& b);
  size_t bytes_in_use() const { return in_use_; }

  // Host view of [iova, iova + len), nullptr if it is not inside the RAM.
  uint8_t* Host(uint64_t iova, size_t len) const;

 private:
  GuestMemory() = default;
  UniqueFd fd_;
  uint8_t* base_ = nullptr;
  size_t size_ = 0;
  uint64_t iova_base_ = 0;
  std::map<size_t, size_t> free_;       // offset -> length, coalesced
  std::map<size_t, size_t> allocated_;  // offset -> length
  size_t in_use_ = 0;
};

}  // namespace emud::guest

#endif  // EMUD_TESTS_GUEST_GUEST_MEMORY_H_
