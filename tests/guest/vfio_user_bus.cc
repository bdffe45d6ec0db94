#include "tests/guest/vfio_user_bus.h"

#include <poll.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "vfio_user/protocol.h"

namespace emud::guest {

absl::StatusOr<std::unique_ptr<VfioUserBus>> VfioUserBus::Connect(const std::string& socket_path,
                                                                  VfioUserBusOptions options) {
  std::unique_ptr<VfioUserBus> b(new VfioUserBus());
  b->options_ = options;
  auto c = vfio_user::Client::Connect(socket_path);
  if (!c.ok()) return c.status();
  b->client_ = std::move(*c);
  b->client_->set_timeout(options.timeout);
  if (auto v = b->client_->Version(); !v.ok()) return v.status();
  auto bar0 = b->client_->GetRegionInfo(vfio_user::kBar0);
  if (!bar0.ok()) return bar0.status();
  if (bar0->info.size < 64 * 1024) {
    return absl::FailedPreconditionError(absl::StrCat("BAR0 is only ", bar0->info.size, " bytes"));
  }
  if (options.map_sparse_areas) {
    if (auto s = b->MapSparseAreas(); !s.ok()) return s;
  }
  auto irq = b->client_->GetIrqInfo(vfio_user::kMsixIrq);
  if (!irq.ok()) return irq.status();
  b->msix_supported_ = irq->count;
  auto mem = GuestMemory::Create(options.memory_size, options.iova_base);
  if (!mem.ok()) return mem.status();
  b->mem_ = std::move(*mem);
  if (auto s = b->client_->DmaMap(b->mem_->fd(), 0, b->mem_->iova_base(), b->mem_->size()); !s.ok()) {
    return s;
  }
  return b;
}

absl::Status VfioUserBus::MapSparseAreas() {
  auto ri = client_->GetRegionInfo(vfio_user::kBar0);
  if (!ri.ok()) return ri.status();
  if (!ri->fd.valid() || !(ri->info.flags & vfio_user::kRegionFlagMmap)) return absl::OkStatus();
  for (const vfio_user::MmapArea& a : ri->sparse_areas) {
    if (a.size == 0 || a.offset + a.size > ri->info.size) {
      return absl::InvalidArgumentError(
          absl::StrCat("sparse area [", a.offset, ", +", a.size, ") outside BAR0"));
    }
    void* p = ::mmap(nullptr, a.size, PROT_READ | PROT_WRITE, MAP_SHARED, ri->fd.get(),
                     off_t(ri->info.offset + a.offset));
    if (p == MAP_FAILED) return absl::InternalError(absl::StrCat("mmap BAR0 sparse area: ", std::strerror(errno)));
    mapped_.push_back({a.offset, a.size, p});
  }
  if (!mapped_.empty()) options_.posted_writes = false;
  return absl::OkStatus();
}

volatile uint32_t* VfioUserBus::Mapped(uint32_t offset) const {
  for (const MappedArea& a : mapped_) {
    if (offset >= a.offset && uint64_t(offset) + 4 <= a.offset + a.size) {
      return reinterpret_cast<volatile uint32_t*>(static_cast<uint8_t*>(a.base) + (offset - a.offset));
    }
  }
  return nullptr;
}

size_t VfioUserBus::mapped_bytes() const {
  size_t n = 0;
  for (const MappedArea& a : mapped_) n += a.size;
  return n;
}

VfioUserBus::~VfioUserBus() {
  for (const MappedArea& a : mapped_) ::munmap(a.base, a.size);
  if (client_ != nullptr && mem_ != nullptr) {
    client_->set_timeout(absl::Seconds(1));  // the server may be gone
    (void)client_->DmaUnmap(mem_->iova_base(), mem_->size());
  }
}

absl::StatusOr<uint32_t> VfioUserBus::Read32(uint32_t offset) {
  if (offset % 4 == 0) {
    if (volatile uint32_t* r = Mapped(offset)) return __atomic_load_n(r, __ATOMIC_ACQUIRE);
  }
  return client_->Read32(vfio_user::kBar0, offset);
}

absl::Status VfioUserBus::Write32(uint32_t offset, uint32_t value) {
  if (offset % 4 == 0) {
    if (volatile uint32_t* r = Mapped(offset)) {
      __atomic_store_n(r, value, __ATOMIC_RELEASE);
      return absl::OkStatus();
    }
  }
  return client_->Write32(vfio_user::kBar0, offset, value, options_.posted_writes);
}

absl::Status VfioUserBus::ConfigRead(uint32_t offset, absl::Span<uint8_t> out) {
  return client_->RegionRead(vfio_user::kConfigRegion, offset, out);
}

absl::Status VfioUserBus::ConfigWrite(uint32_t offset, absl::Span<const uint8_t> data) {
  return client_->RegionWrite(vfio_user::kConfigRegion, offset, data);
}

absl::Status VfioUserBus::SetMsixEnableBit(bool on) {
  // Walk the capability list to the MSI-X capability (id 0x11).
  uint8_t ptr = 0;
  if (auto s = ConfigRead(0x34, absl::MakeSpan(&ptr, 1)); !s.ok()) return s;
  for (int guard = 0; ptr != 0 && guard < 48; ++guard) {
    uint8_t hdr[4];
    if (auto s = ConfigRead(ptr, absl::MakeSpan(hdr)); !s.ok()) return s;
    if (hdr[0] == 0x11) {
      uint8_t hi = static_cast<uint8_t>(on ? (hdr[3] | 0x80) : (hdr[3] & 0x7F));
      return ConfigWrite(ptr + 3, absl::MakeConstSpan(&hi, 1));
    }
    ptr = hdr[1];
  }
  return absl::NotFoundError("no MSI-X capability");
}

absl::Status VfioUserBus::EnableMsix(uint32_t count) {
  if (count == 0 || count > msix_supported_) {
    return absl::InvalidArgumentError(absl::StrCat("MSI-X: ", count, " vectors requested, device has ",
                                                   msix_supported_));
  }
  eventfds_.clear();
  std::vector<int> fds;
  for (uint32_t i = 0; i < count; ++i) {
    UniqueFd fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!fd.valid()) return absl::InternalError(absl::StrCat("eventfd: ", strerror(errno)));
    fds.push_back(fd.get());
    eventfds_.push_back(std::move(fd));
  }
  total_.assign(count, 0);
  if (auto s = client_->SetIrqEventfds(vfio_user::kMsixIrq, 0, fds); !s.ok()) return s;
  return SetMsixEnableBit(true);
}

absl::Status VfioUserBus::ReplaceVectorEventfd(uint32_t v) {
  if (v >= eventfds_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("vector ", v, " is not enabled"));
  }
  UniqueFd fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fd.valid()) return absl::InternalError(absl::StrCat("eventfd: ", strerror(errno)));
  const int raw = fd.get();
  if (auto s = client_->SetIrqEventfds(vfio_user::kMsixIrq, v, absl::MakeConstSpan(&raw, 1)); !s.ok()) {
    return s;
  }
  eventfds_[v] = std::move(fd);
  return absl::OkStatus();
}

absl::Status VfioUserBus::DisableMsix() {
  if (eventfds_.empty()) return absl::OkStatus();
  if (auto s = client_->SetIrqs(vfio_user::kMsixIrq,
                                vfio_user::kIrqSetDataNone | vfio_user::kIrqSetActionTrigger, 0, 0);
      !s.ok()) {
    return s;
  }
  eventfds_.clear();
  return SetMsixEnableBit(false);
}

absl::StatusOr<uint64_t> VfioUserBus::WaitVector(uint32_t v, absl::Duration timeout) {
  if (v >= eventfds_.size()) {
    // Not wired (e.g. before MSI-X is enabled during init): a plain poll delay.
    if (timeout > absl::ZeroDuration()) absl::SleepFor(timeout);
    return 0;
  }
  int fd = eventfds_[v].get();
  uint64_t n = 0;
  if (read(fd, &n, sizeof(n)) == sizeof(n)) {
    total_[v] += n;
    return n;
  }
  if (timeout <= absl::ZeroDuration()) return 0;
  pollfd p{fd, POLLIN, 0};
  int rc = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  if (rc < 0 && errno != EINTR) return absl::InternalError(absl::StrCat("poll: ", strerror(errno)));
  if (rc > 0 && read(fd, &n, sizeof(n)) == sizeof(n)) {
    total_[v] += n;
    return n;
  }
  return 0;
}

absl::Status VfioUserBus::DeviceReset() { return client_->Reset(); }

void VfioUserBus::Sleep(absl::Duration d) { absl::SleepFor(d); }

}  // namespace emud::guest
