// ExampleDevice: the hello-world vfio-user device (PCI 1b36:10f0, class ff).
//
// BAR0 (16 KiB, 32-bit memory):
//   0x0000-0x0fff  registers (trapped):
//     0x00 ID        RO  0x45585031 ("EXP1")
//     0x04 SCRATCH   RW
//     0x08 DOORBELL  WO  1: fire MSI-X vector 0; 2: run the DMA command
//     0x0c IRQ_COUNT RO  doorbell interrupts requested
//     0x10 DMA_ADDR  RW  64-bit guest address (0x10 low, 0x14 high)
//     0x18 DMA_LEN   RW  bytes (<= 8 KiB)
//     0x1c DMA_CMD   RW  1: guest -> shared area, 2: shared area -> guest,
//                        3: sum of guest bytes into DMA_RESULT
//     0x20 DMA_RESULT RO
//     0x24 STATUS    RO  0 ok, else an errno of the last DMA command
//     0x28 ADD       WO  ACC += value (posted-write ordering checks)
//     0x2c ACC       RO
//   0x1000         MSI-X table (1 vector), PBA at 0x1800
//   0x2000-0x3fff  shared area: a memfd, advertised as an mmappable sparse area
// Config space: PCIe endpoint with FLR, MSI-X, power management.
#ifndef EMUD_VFIO_USER_EXAMPLES_EXAMPLE_DEVICE_H_
#define EMUD_VFIO_USER_EXAMPLES_EXAMPLE_DEVICE_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "base/unique_fd.h"
#include "vfio_user/device.h"
#include "vfio_user/dma_table.h"
#include "vfio_user/msix_table.h"
#include "vfio_user/pci_config_space.h"

namespace emud::vfio_user {

class ExampleDevice : public PciDevice {
 public:
  static constexpr uint64_t kBar0Size = 0x4000;
  static constexpr uint64_t kMsixTableOffset = 0x1000;
  static constexpr uint64_t kMsixPbaOffset = 0x1800;
  static constexpr uint64_t kSharedOffset = 0x2000;
  static constexpr uint64_t kSharedSize = 0x2000;
  enum Reg : uint32_t {
    kId = 0x00, kScratch = 0x04, kDoorbell = 0x08, kIrqCount = 0x0c, kDmaAddr = 0x10,
    kDmaLen = 0x18, kDmaCmd = 0x1c, kDmaResult = 0x20, kStatus = 0x24, kAdd = 0x28, kAcc = 0x2c,
  };
  static constexpr uint32_t kIdValue = 0x45585031;

  static absl::StatusOr<std::unique_ptr<ExampleDevice>> Create();

  std::vector<RegionDesc> Regions() const override;
  std::vector<IrqDesc> Irqs() const override;
  absl::Status RegionRead(uint32_t region, uint64_t offset, absl::Span<uint8_t> out) override;
  absl::Status RegionWrite(uint32_t region, uint64_t offset, absl::Span<const uint8_t> data) override;
  void Attach(const DeviceContext& ctx) override;
  void Detach() override;
  absl::Status Reset() override;
  void OnDmaUnmap(uint64_t iova, uint64_t size) override;
  absl::string_view RecordNamespace() const override { return kTable; }
  absl::Status Save(DeviceRecordWriter& records) override;
  absl::Status Restore(const DeviceRecordReader& records) override;

  // Table the device persists into (list it in the Env's tables).
  static constexpr char kTable[] = "example_device";

  uint8_t* shared() const { return shared_.data(); }
  PciConfigSpace& config() { return config_; }
  uint32_t resets() const { return resets_; }
  uint32_t unmaps_seen() const { return unmaps_seen_; }

 private:
  ExampleDevice();
  uint32_t ReadReg(uint64_t off) const;
  void WriteReg(uint64_t off, uint32_t v);
  void RunDma();

  PciConfigSpace config_{4096};
  MsixTable msix_{1};
  UniqueFd shared_fd_;
  MappedFile shared_;
  DeviceContext ctx_;
  bool attached_ = false;
  struct Regs {
    uint32_t scratch = 0, irq_count = 0, dma_len = 0, dma_cmd = 0, dma_result = 0, status = 0, acc = 0;
    uint64_t dma_addr = 0;
  } regs_;
  uint32_t resets_ = 0;
  uint32_t unmaps_seen_ = 0;
};

}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_EXAMPLES_EXAMPLE_DEVICE_H_
