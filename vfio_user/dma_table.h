// DmaTable: the client's DMA windows (DMA_MAP / DMA_UNMAP) and the bounds-
// checked translation of guest addresses into them.
//
// A window with an fd is mmapped here (MAP_SHARED, protection from the map
// flags) and owned by a MappedFile (base/mapped_file.h); a window without an fd is reachable
// only through the message fallback (DMA_READ / DMA_WRITE to the client),
// which the owner supplies as a MessageDma.
#ifndef EMUD_VFIO_USER_DMA_TABLE_H_
#define EMUD_VFIO_USER_DMA_TABLE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/mapped_file.h"
#include "base/unique_fd.h"
#include "vfio_user/device.h"

namespace emud::vfio_user {

// Registers a mapped DMA window with the process-wide SIGBUS guard: if the
// client truncates the file under a window (a hostile VMM), the faulting page
// is replaced by an anonymous zero page instead of killing the process, and
// DmaTable::PoisonedPages() counts it. Unregisters on destruction.
class SigbusGuard {
 public:
  SigbusGuard() = default;
  SigbusGuard(const uint8_t* start, uint64_t len);
  ~SigbusGuard();
  SigbusGuard(SigbusGuard&& o) noexcept : slot_(o.slot_) { o.slot_ = -1; }
  SigbusGuard& operator=(SigbusGuard&& o) noexcept;
  SigbusGuard(const SigbusGuard&) = delete;
  SigbusGuard& operator=(const SigbusGuard&) = delete;

 private:
  int slot_ = -1;
};

// Server-to-client DMA for windows without an fd.
class MessageDma {
 public:
  virtual ~MessageDma() = default;
  virtual absl::Status DmaRead(uint64_t iova, absl::Span<uint8_t> dst) = 0;
  virtual absl::Status DmaWrite(uint64_t iova, absl::Span<const uint8_t> src) = 0;
};

struct DmaWindow {
  uint64_t iova = 0;
  uint64_t size = 0;
  uint32_t prot = 0;  // kDmaFlagRead | kDmaFlagWrite
  uint64_t fd_offset = 0;
  UniqueFd fd;        // kept only when the table keeps fds (persistence)
  bool has_fd = false;
  MappedFile mapping;  // empty when !has_fd
  SigbusGuard guard;  // destroyed (unregistered) before `mapping` is unmapped
};

class DmaTable : public DmaMemory {
 public:
  // `max_windows` bounds Map(); `keep_fds` keeps each window's fd open (for
  // handing to a successor) instead of closing it after mmap.
  DmaTable(uint32_t max_windows, bool keep_fds) : max_windows_(max_windows), keep_fds_(keep_fds) {}
  // Held by pointer (sessions keep a unique_ptr); it remembers a window.
  DmaTable(const DmaTable&) = delete;
  DmaTable& operator=(const DmaTable&) = delete;

  void set_message_dma(MessageDma* m) { message_dma_ = m; }

  // Adds a window. `fd` may be invalid (message-only window). Errors carry the
  // errno to reply with: EINVAL (size 0, overflow, bad prot), EEXIST
  // (overlap), ENOSPC (too many windows), or mmap's errno.
  absl::Status Map(uint64_t iova, uint64_t size, uint32_t prot, UniqueFd fd, uint64_t fd_offset);
  // Removes the window that exactly matches [iova, iova+size): ENOENT if none.
  // `before_unmap` runs first (the device drops its pointers).
  absl::Status Unmap(uint64_t iova, uint64_t size, const std::function<void(uint64_t, uint64_t)>& before_unmap);
  // Removes every window, calling `before_unmap` for each.
  void UnmapAll(const std::function<void(uint64_t, uint64_t)>& before_unmap);

  const std::map<uint64_t, DmaWindow>& windows() const { return windows_; }
  // Pages of DMA windows replaced by zero pages after a SIGBUS (the client
  // truncated the memory behind a window), process-wide.
  static uint64_t PoisonedPages();
  size_t size() const { return windows_.size(); }

  // DmaMemory.
  absl::StatusOr<uint8_t*> Translate(uint64_t iova, uint64_t len, Access access) override;
  bool FindWindow(uint64_t iova, Access access, Window* out) override;
  absl::Status Read(uint64_t iova, absl::Span<uint8_t> dst) override;
  absl::Status Write(uint64_t iova, absl::Span<const uint8_t> src) override;

 private:
  // The window containing `iova`, or nullptr.
  DmaWindow* Find(uint64_t iova);

  uint32_t max_windows_;
  bool keep_fds_;
  MessageDma* message_dma_ = nullptr;
  std::map<uint64_t, DmaWindow> windows_;
  // The window the last lookup found (map nodes do not move; cleared when a
  // window is removed). The data path translates every descriptor and
  // buffer, nearly always inside the same window.
  DmaWindow* last_found_ = nullptr;
};

}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_DMA_TABLE_H_
