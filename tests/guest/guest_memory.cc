#include "tests/guest/guest_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace emud::guest {

absl::StatusOr<std::unique_ptr<GuestMemory>> GuestMemory::Create(size_t size, uint64_t iova_base) {
  size = (size + 4095) & ~size_t{4095};
  if (size == 0) return absl::InvalidArgumentError("guest memory size 0");
  std::unique_ptr<GuestMemory> m(new GuestMemory());
  m->fd_.reset(memfd_create("emu-guest-ram", MFD_CLOEXEC));
  if (!m->fd_.valid()) return absl::InternalError(absl::StrCat("memfd_create: ", strerror(errno)));
  if (ftruncate(m->fd_.get(), static_cast<off_t>(size)) != 0) {
    return absl::InternalError(absl::StrCat("ftruncate: ", strerror(errno)));
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd_.get(), 0);
  if (p == MAP_FAILED) return absl::InternalError(absl::StrCat("mmap: ", strerror(errno)));
  m->base_ = static_cast<uint8_t*>(p);
  m->size_ = size;
  m->iova_base_ = iova_base;
  m->free_[0] = size;
  return m;
}

GuestMemory::~GuestMemory() {
  if (base_ != nullptr) munmap(base_, size_);
}

absl::StatusOr<DmaBuffer> GuestMemory::Allocate(size_t size, size_t align) {
  if (size == 0 || align == 0 || (align & (align - 1)) != 0) {
    return absl::InvalidArgumentError("bad allocation size/alignment");
  }
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    size_t off = it->first, len = it->second;
    // Alignment is of the IOVA (what the device sees).
    uint64_t iova = iova_base_ + off;
    size_t pad = static_cast<size_t>((align - (iova & (align - 1))) & (align - 1));
    if (pad > len || len - pad < size) continue;
    free_.erase(it);
    if (pad > 0) free_[off] = pad;
    if (len - pad > size) free_[off + pad + size] = len - pad - size;
    allocated_[off + pad] = size;
    in_use_ += size;
    std::memset(base_ + off + pad, 0, size);
    return DmaBuffer{iova + pad, base_ + off + pad, size};
  }
  return absl::ResourceExhaustedError(absl::StrCat("guest memory: no ", size, " free bytes"));
}

void GuestMemory::Free(const DmaBuffer& b) {
  if (b.host == nullptr) return;
  size_t off = static_cast<size_t>(b.host - base_);
  auto it = allocated_.find(off);
  if (it == allocated_.end() || it->second != b.size) return;
  allocated_.erase(it);
  in_use_ -= b.size;
  size_t len = b.size;
  auto next = free_.lower_bound(off);
  if (next != free_.end() && off + len == next->first) {
    len += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == off) {
      prev->second += len;
      return;
    }
  }
  free_[off] = len;
}

uint8_t* GuestMemory::Host(uint64_t iova, size_t len) const {
  if (iova < iova_base_) return nullptr;
  uint64_t off = iova - iova_base_;
  if (off > size_ || len > size_ - off) return nullptr;
  return base_ + off;
}

}  // namespace emud::guest
