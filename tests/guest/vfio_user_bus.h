// VfioUserBus: the test guest on a real vfio-user connection, like a VMM
// would drive the device: the guest RAM (a memfd) is DMA_MAPped with its fd,
// BAR0/config accesses are REGION_READ/WRITE, MSI-X vectors are eventfds
// given with SET_IRQS, DEVICE_RESET resets.
#ifndef EMUD_TESTS_GUEST_VFIO_USER_BUS_H_
#define EMUD_TESTS_GUEST_VFIO_USER_BUS_H_

#include <memory>
#include <string>
#include <vector>

#include "base/unique_fd.h"
#include "tests/guest/bus.h"
#include "tests/guest/guest_memory.h"
#include "vfio_user/client.h"

namespace emud::guest {

struct VfioUserBusOptions {
  size_t memory_size = 64 << 20;
  uint64_t iova_base = 0x10000000;
  // Send BAR0 writes as posted (NO_REPLY) messages, as QEMU does while no
  // region is mmappable; a later read orders them.
  bool posted_writes = false;
  absl::Duration timeout = absl::Seconds(10);
  // mmap BAR0's sparse areas (when the server offers a region fd) and access
  // registers inside them with plain loads and stores, as a VMM maps them
  // into the guest. Like QEMU, a bus with a mapped area never posts writes.
  bool map_sparse_areas = false;
};

class VfioUserBus : public GuestBus {
 public:
  // Connects, negotiates VERSION, checks the device (BAR0 >= 64 KiB, MSI-X
  // vectors) and DMA-maps the guest RAM.
  static absl::StatusOr<std::unique_ptr<VfioUserBus>> Connect(const std::string& socket_path,
                                                              VfioUserBusOptions options = {});
  ~VfioUserBus() override;

  absl::StatusOr<uint32_t> Read32(uint32_t offset) override;
  absl::Status Write32(uint32_t offset, uint32_t value) override;
  absl::Status ConfigRead(uint32_t offset, absl::Span<uint8_t> out) override;
  absl::Status ConfigWrite(uint32_t offset, absl::Span<const uint8_t> data) override;
  absl::Status EnableMsix(uint32_t count) override;
  absl::Status DisableMsix() override;
  absl::StatusOr<uint64_t> WaitVector(uint32_t v, absl::Duration timeout) override;
  absl::Status DeviceReset() override;
  void Sleep(absl::Duration d) override;
  GuestMemory& memory() override { return *mem_; }

  // Gives MSI-X vector `v` a fresh eventfd (one SET_IRQS with one fd), as
  // QEMU does when the guest masks or unmasks a vector; the old one closes.
  absl::Status ReplaceVectorEventfd(uint32_t v);

  vfio_user::Client& client() { return *client_; }
  uint32_t msix_vectors_supported() const { return msix_supported_; }
  uint64_t total_fired(uint32_t v) const { return v < total_.size() ? total_[v] : 0; }
  // Bytes of BAR0 accessed through a mapping (0 = every access is a message).
  size_t mapped_bytes() const;

 private:
  VfioUserBus() = default;
  absl::Status SetMsixEnableBit(bool on);
  absl::Status MapSparseAreas();
  // The mapped register at BAR0 `offset`, or nullptr.
  volatile uint32_t* Mapped(uint32_t offset) const;

  struct MappedArea {
    uint64_t offset = 0, size = 0;
    void* base = nullptr;
  };
  std::vector<MappedArea> mapped_;

  VfioUserBusOptions options_;
  std::unique_ptr<vfio_user::Client> client_;
  std::unique_ptr<GuestMemory> mem_;
  std::vector<UniqueFd> eventfds_;
  std::vector<uint64_t> total_;
  uint32_t msix_supported_ = 0;
};

}  // namespace emud::guest

#endif  // EMUD_TESTS_GUEST_VFIO_USER_BUS_H_
