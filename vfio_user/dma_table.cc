#include "vfio_user/dma_table.h"

#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "vfio_user/protocol.h"

namespace emud::vfio_user {

namespace {

// Process-wide registry read by the SIGBUS handler: fixed slots of atomics,
// so the handler needs no lock.
constexpr int kGuardSlots = 4096;
struct GuardSlot {
  std::atomic<uintptr_t> start{0};
  std::atomic<uintptr_t> end{0};
};
GuardSlot g_slots[kGuardSlots];
std::atomic<uint64_t> g_poisoned{0};
std::mutex g_slot_mu;
struct sigaction g_prev_sigbus;
std::once_flag g_install_once;

void OnSigbus(int sig, siginfo_t* info, void* uctx) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(info->si_addr);
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  for (auto& s : g_slots) {
    uintptr_t start = s.start.load(std::memory_order_acquire);
    if (start == 0 || a < start || a >= s.end.load(std::memory_order_acquire)) continue;
    void* p = ::mmap(reinterpret_cast<void*>(a & ~(page - 1)), page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p != MAP_FAILED) {
      g_poisoned.fetch_add(1, std::memory_order_relaxed);
      return;  // the access is retried on the zero page
    }
  }
  if ((g_prev_sigbus.sa_flags & SA_SIGINFO) && g_prev_sigbus.sa_sigaction) {
    g_prev_sigbus.sa_sigaction(sig, info, uctx);
    return;
  }
  if (g_prev_sigbus.sa_handler != SIG_DFL && g_prev_sigbus.sa_handler != SIG_IGN) {
    g_prev_sigbus.sa_handler(sig);
    return;
  }
  ::signal(SIGBUS, SIG_DFL);
  ::raise(SIGBUS);
}

void InstallSigbusHandler() {
  std::call_once(g_install_once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = OnSigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_prev_sigbus);
  });
}

}  // namespace

SigbusGuard::SigbusGuard(const uint8_t* start, uint64_t len) {
  InstallSigbusHandler();
  std::lock_guard<std::mutex> l(g_slot_mu);
  for (int i = 0; i < kGuardSlots; ++i) {
    if (g_slots[i].start.load(std::memory_order_relaxed) == 0) {
      g_slots[i].end.store(reinterpret_cast<uintptr_t>(start) + len, std::memory_order_release);
      g_slots[i].start.store(reinterpret_cast<uintptr_t>(start), std::memory_order_release);
      slot_ = i;
      return;
    }
  }
  // All slots taken: the window is simply not guarded.
}

SigbusGuard::~SigbusGuard() {
  if (slot_ < 0) return;
  std::lock_guard<std::mutex> l(g_slot_mu);
  g_slots[slot_].start.store(0, std::memory_order_release);
  g_slots[slot_].end.store(0, std::memory_order_release);
}

SigbusGuard& SigbusGuard::operator=(SigbusGuard&& o) noexcept {
  if (this != &o) {
    this->~SigbusGuard();
    slot_ = o.slot_;
    o.slot_ = -1;
  }
  return *this;
}

uint64_t DmaTable::PoisonedPages() { return g_poisoned.load(std::memory_order_relaxed); }

absl::Status DmaTable::Map(uint64_t iova, uint64_t size, uint32_t prot, UniqueFd fd, uint64_t fd_offset) {
  if (size == 0) return ErrnoStatus(EINVAL, "zero-size DMA window");
  if (iova + size < iova) return ErrnoStatus(EINVAL, "DMA window wraps");
  if (prot & ~(kDmaFlagRead | kDmaFlagWrite)) return ErrnoStatus(EINVAL, "unknown DMA_MAP flags");
  if (fd.valid() && fd_offset + size < fd_offset) return ErrnoStatus(EINVAL, "fd offset + size overflows");
  // Overlap: the first window starting at or after iova, and the one before.
  auto next = windows_.lower_bound(iova);
  if (next != windows_.end() && next->first < iova + size) {
    return ErrnoStatus(EEXIST, "DMA window overlaps an existing one");
  }
  if (next != windows_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.size > iova) return ErrnoStatus(EEXIST, "DMA window overlaps an existing one");
  }
  if (windows_.size() >= max_windows_) return ErrnoStatus(ENOSPC, "too many DMA windows");
  DmaWindow w;
  w.iova = iova;
  w.size = size;
  w.prot = prot;
  w.fd_offset = fd_offset;
  if (fd.valid()) {
    // A window beyond the end of its file would SIGBUS on first touch.
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(EINVAL, "DMA fd cannot be stat()ed");
    if (S_ISREG(st.st_mode) && (fd_offset > static_cast<uint64_t>(st.st_size) ||
                                size > static_cast<uint64_t>(st.st_size) - fd_offset)) {
      return ErrnoStatus(EINVAL, "DMA window extends beyond the end of its fd");
    }
    int mprot = 0;
    if (prot & kDmaFlagRead) mprot |= PROT_READ;
    if (prot & kDmaFlagWrite) mprot |= PROT_WRITE;
    if (mprot == 0) mprot = PROT_NONE;
    int map_errno = 0;
    auto m = MappedFile::Map(fd.get(), fd_offset, size, mprot, &map_errno);
    if (!m.ok()) return ErrnoStatus(map_errno, m.status().message());
    w.mapping = std::move(*m);
    w.guard = SigbusGuard(w.mapping.data(), w.mapping.size());
    w.has_fd = true;
    if (keep_fds_) w.fd = std::move(fd);
  }
  windows_.emplace(iova, std::move(w));
  return absl::OkStatus();
}

absl::Status DmaTable::Unmap(uint64_t iova, uint64_t size,
                             const std::function<void(uint64_t, uint64_t)>& before_unmap) {
  auto it = windows_.find(iova);
  if (it == windows_.end() || it->second.size != size) {
    return ErrnoStatus(ENOENT, "no DMA window matches the unmap range");
  }
  if (before_unmap) before_unmap(iova, size);
  last_found_ = nullptr;
  windows_.erase(it);
  return absl::OkStatus();
}

void DmaTable::UnmapAll(const std::function<void(uint64_t, uint64_t)>& before_unmap) {
  while (!windows_.empty()) {
    auto it = windows_.begin();
    if (before_unmap) before_unmap(it->first, it->second.size);
    last_found_ = nullptr;
    windows_.erase(it);
  }
}

DmaWindow* DmaTable::Find(uint64_t iova) {
  if (last_found_ != nullptr && iova - last_found_->iova < last_found_->size) return last_found_;
  auto it = windows_.upper_bound(iova);
  if (it == windows_.begin()) return nullptr;
  --it;
  DmaWindow& w = it->second;
  if (iova - w.iova >= w.size) return nullptr;
  last_found_ = &w;
  return &w;
}

absl::StatusOr<uint8_t*> DmaTable::Translate(uint64_t iova, uint64_t len, Access access) {
  if (len == 0) return absl::InvalidArgumentError("zero-length DMA translation");
  DmaWindow* w = Find(iova);
  if (!w) return absl::OutOfRangeError(absl::StrCat("iova 0x", absl::Hex(iova), " not mapped"));
  uint64_t off = iova - w->iova;
  if (len > w->size - off) return absl::OutOfRangeError("DMA range crosses the end of its window");
  if (((access & kRead) && !(w->prot & kDmaFlagRead)) || ((access & kWrite) && !(w->prot & kDmaFlagWrite))) {
    return absl::PermissionDeniedError("DMA window forbids this access");
  }
  if (!w->has_fd) return absl::UnavailableError("DMA window has no fd");
  return w->mapping.data() + off;
}

bool DmaTable::FindWindow(uint64_t iova, Access access, Window* out) {
  DmaWindow* w = Find(iova);
  if (w == nullptr || !w->has_fd || w->size == 0) return false;
  uint32_t allowed = ((w->prot & kDmaFlagRead) ? uint32_t{kRead} : 0u) |
                     ((w->prot & kDmaFlagWrite) ? uint32_t{kWrite} : 0u);
  if ((access & ~allowed) != 0) return false;
  *out = {w->iova, w->size, w->mapping.data(), allowed};
  return true;
}

absl::Status DmaTable::Read(uint64_t iova, absl::Span<uint8_t> dst) {
  size_t done = 0;
  while (done < dst.size()) {
    uint64_t at = iova + done;
    if (at < iova) return absl::OutOfRangeError("DMA range wraps");
    DmaWindow* w = Find(at);
    if (!w) return absl::OutOfRangeError(absl::StrCat("iova 0x", absl::Hex(at), " not mapped"));
    if (!(w->prot & kDmaFlagRead)) return absl::PermissionDeniedError("DMA window not readable");
    uint64_t off = at - w->iova;
    size_t n = static_cast<size_t>(std::min<uint64_t>(w->size - off, dst.size() - done));
    if (w->has_fd) {
      std::memcpy(dst.data() + done, w->mapping.data() + off, n);
    } else {
      if (!message_dma_) return absl::UnavailableError("DMA window has no fd and no message fallback");
      if (auto s = message_dma_->DmaRead(at, dst.subspan(done, n)); !s.ok()) return s;
    }
    done += n;
  }
  return absl::OkStatus();
}

absl::Status DmaTable::Write(uint64_t iova, absl::Span<const uint8_t> src) {
  size_t done = 0;
  while (done < src.size()) {
    uint64_t at = iova + done;
    if (at < iova) return absl::OutOfRangeError("DMA range wraps");
    DmaWindow* w = Find(at);
    if (!w) return absl::OutOfRangeError(absl::StrCat("iova 0x", absl::Hex(at), " not mapped"));
    if (!(w->prot & kDmaFlagWrite)) return absl::PermissionDeniedError("DMA window not writable");
    uint64_t off = at - w->iova;
    size_t n = static_cast<size_t>(std::min<uint64_t>(w->size - off, src.size() - done));
    if (w->has_fd) {
      std::memcpy(w->mapping.data() + off, src.data() + done, n);
    } else {
      if (!message_dma_) return absl::UnavailableError("DMA window has no fd and no message fallback");
      if (auto s = message_dma_->DmaWrite(at, src.subspan(done, n)); !s.ok()) return s;
    }
    done += n;
  }
  return absl::OkStatus();
}

}  // namespace emud::vfio_user
