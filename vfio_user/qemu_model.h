// QemuModel: a test-only model of the QEMU 10.1 vfio-user client
// (hw/vfio-user/{proxy,device,container,pci}.c on top of the generic
// hw/vfio/{pci,device,region}.c), used to check that a server and a device
// description would survive `-device vfio-user-pci` without running QEMU.
//
// It sends byte-for-byte the messages QEMU sends, in QEMU's order, and applies
// QEMU's checks to every reply:
//   * a reply must carry the REPLY type and the id of a pending request, be no
//     larger than QEMU's receive buffer (`rsize`: the request's own size unless
//     the caller sized it), and carry at most as many fds as QEMU expects
//     (vfio_user_recv_one);
//   * VERSION: major 0, minor <= 0, NUL-terminated JSON object whose
//     "capabilities" pass caps_parse()'s per-key checks
//     (vfio_user_validate_version);
//   * the realize sequence of vfio_user_pci_realize(): DMA maps from the
//     memory listener, GET_INFO limits, REGION_INFO of BAR0-5 and CONFIG with
//     the argsz retry and the cap_offset check, the ERR irq probe, config-space
//     copy, ROM sizing, BAR typing, MSI-X early setup and msix_init's layout
//     checks, capability-chain rebuild (pci_add_capability overlap rules),
//     PCIe type check, INTx setup, the ERR notifier;
//   * what QEMU sends later: MSI-X enable/vector use/release/disable, config
//     and BAR accesses (posted when QEMU would post), system reset;
//   * server-to-client DMA_READ/DMA_WRITE handled as vfio_user_dma_read/write
//     do, including the size limits whose violation desynchronises QEMU's
//     stream.
//
// Outcomes: a failing step returns an error status naming the QEMU function
// that would fail realize (or hw_error/assert at run time); conditions QEMU
// only reports (error_report / warn_report) are appended to warnings().
// Not thread-safe. The socket is used blocking with QEMU's 5 s reply timeout.
#ifndef EMUD_VFIO_USER_QEMU_MODEL_H_
#define EMUD_VFIO_USER_QEMU_MODEL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "vfio_user/protocol.h"
#include "vfio_user/transport.h"

namespace emud::vfio_user {

class QemuModel {
 public:
  // A RAM section the memory listener maps (vfio_user_dma_map): `fd` < 0 for
  // RAM without an fd (ROM, ram_device BAR mmaps), `readonly` for ROM.
  struct Section {
    uint64_t iova = 0;
    uint64_t size = 0;
    int fd = -1;
    uint64_t fd_offset = 0;
    bool readonly = false;
  };

  // Guest memory the model serves DMA_READ/DMA_WRITE from (pci_dma_read/
  // write): [base, base + bytes.size()).
  struct GuestRam {
    uint64_t base = 0;
    std::vector<uint8_t> bytes;
  };

  static absl::StatusOr<std::unique_ptr<QemuModel>> Connect(const std::string& socket_path);
  explicit QemuModel(UniqueFd sock);

  // ---- vfio_user_pci_realize, step by step (or all at once) ----

  // vfio_user_validate_version.
  absl::Status ValidateVersion();
  // vfio_listener_region_add for each section inside one memory transaction:
  // DMA_MAPs sent without waiting, then vfio_user_wait_reqs. Error replies
  // are what QEMU prints; they are returned here (a window the device cannot
  // use is a failure for the caller).
  absl::Status MapSections(absl::Span<const Section> sections);
  absl::Status UnmapSections(absl::Span<const Section> sections);
  // vfio_user_get_device_info + vfio_device_prepare.
  absl::Status GetDeviceInfo();
  // vfio_pci_populate_device.
  absl::Status PopulateDevice();
  // vfio_pci_config_setup (ROM sizing, BAR typing, MSI-X early setup, BAR
  // registration with region mmaps).
  absl::Status ConfigSetup();
  // vfio_pci_add_capabilities.
  absl::Status AddCapabilities();
  // vfio_pci_interrupt_setup + vfio_pci_register_err_notifier.
  absl::Status InterruptSetup();
  // Everything above in realize order, with `sections` mapped after VERSION.
  absl::Status Realize(absl::Span<const Section> sections);
  // Device-model consistency QEMU does not check itself but a guest depends
  // on (after realize): each BAR's size as the device decodes it (all-ones
  // sizing through the server, then restored) equals its region size, which
  // is what QEMU shows the guest; the MSIX irq count covers the MSI-X table
  // (vectors beyond it fail SET_IRQS); capabilities are dword aligned.
  absl::Status LintDevice();

  // ---- run time ----

  // vfio_user_pci_reset: vfio_pci_pre_reset, DEVICE_RESET, vfio_pci_post_reset.
  absl::Status SystemReset();
  // Guest config write (vfio_pci_write_config): to the server first, then
  // MSI-X enable/disable transitions as QEMU's emulation sees them.
  absl::Status ConfigWrite(uint32_t offset, uint32_t value, int len);
  // Raw config read of non-emulated bytes (vfio_pci_config_space_read).
  absl::StatusOr<uint32_t> ConfigRead(uint32_t offset, int len);
  // Guest BAR access through vfio_region_read/write (size 1, 2, 4 or 8).
  // Writes are posted as QEMU posts them (memory BARs, no region mmapped).
  absl::StatusOr<uint64_t> BarRead(int bar, uint64_t offset, int size);
  absl::Status BarWrite(int bar, uint64_t offset, uint64_t value, int size);
  // The guest unmasks MSI-X vector `nr` (vfio_msix_vector_use): the server
  // gets `efd` for it. Requires MSI-X enabled through ConfigWrite.
  absl::Status MsixVectorUse(uint32_t nr, int efd);
  // The guest masks vector `nr` (vfio_msix_vector_release with KVM routing):
  // the server gets QEMU's own `qemu_efd`.
  absl::Status MsixVectorRelease(uint32_t nr, int qemu_efd);
  // vfio_enable_vectors(msix=true) for `fds` (index = vector, -1 = unused):
  // QEMU's path when MSI-X gets enabled with vectors already in use.
  absl::Status MsixEnableVectors(absl::Span<const int> fds);
  // Reads the PBA through the server (vfio_user_pba_read).
  absl::StatusOr<uint64_t> PbaRead(uint32_t qword);

  // Serves server requests (DMA_READ/WRITE) already queued, without blocking.
  absl::Status ServePending();

  // ---- what realize learnt ----
  const std::vector<std::string>& warnings() const { return warnings_; }
  const Capabilities& server_caps() const { return caps_; }
  const DeviceInfo& device_info() const { return info_; }
  bool posted_writes() const { return !no_post_; }
  bool aer() const { return pci_aer_; }
  bool reset_works() const { return reset_works_; }
  uint32_t msix_entries() const { return msix_entries_; }
  uint8_t msix_cap() const { return msix_cap_; }
  uint32_t config_size() const { return config_size_; }
  int msix_table_bar() const { return msix_table_bar_; }
  uint64_t bar_size(int bar) const { return bars_[bar].size; }
  bool bar_mem64(int bar) const { return bars_[bar].mem64; }
  // Bytes of the region mmap QEMU made of BAR `bar`, area `i` (null if none).
  uint8_t* bar_mmap(int bar, size_t i) const;
  uint64_t dma_requests_served() const { return dma_served_; }
  void set_guest_ram(GuestRam* ram) { ram_ = ram; }
  int fd() const { return sock_.get(); }

  ~QemuModel();

 private:
  struct Reply {
    Header hdr;
    std::vector<uint8_t> payload;  // msg_size - 16 bytes
    std::vector<UniqueFd> fds;
  };
  struct Pending {
    uint16_t command;
    size_t rsize;
    size_t max_fds;
  };
  struct Mmap {
    uint8_t* base = nullptr;
    size_t len = 0;
  };
  struct Bar {
    uint64_t size = 0;  // region size
    uint32_t flags = 0;
    uint64_t fd_offset = 0;
    std::vector<std::pair<uint64_t, uint64_t>> areas;
    UniqueFd fd;
    bool ioport = false;
    bool mem64 = false;
    std::vector<Mmap> maps;
  };

  // vfio_user_request_msg + vfio_user_send_queued.
  absl::StatusOr<uint16_t> Send(uint16_t cmd, absl::Span<const uint8_t> payload,
                                absl::Span<const int> fds, uint32_t flags, size_t rsize,
                                size_t recv_fds);
  // vfio_user_send_wait: waits for that reply (serving server requests).
  absl::StatusOr<Reply> Wait(uint16_t id);
  absl::StatusOr<Reply> SendWait(uint16_t cmd, absl::Span<const uint8_t> payload,
                                 absl::Span<const int> fds = {}, size_t rsize = 0,
                                 size_t recv_fds = 0);
  // vfio_user_recv_one: one message; replies are checked against pending_.
  absl::Status RecvOne(bool blocking);
  absl::Status HandleRequest(Header hdr, std::vector<uint8_t> payload, std::vector<UniqueFd> fds);
  void Warn(std::string w) { warnings_.push_back(std::move(w)); }

  absl::StatusOr<int> RegionRead(uint32_t index, uint64_t off, absl::Span<uint8_t> out);
  absl::StatusOr<int> RegionWrite(uint32_t index, uint64_t off, absl::Span<const uint8_t> data,
                                  bool post);
  // vfio_device_get_region_info with the argsz retry (cached).
  absl::StatusOr<RegionInfo> GetRegionInfo(uint32_t index, std::vector<uint8_t>* full, UniqueFd* fd);
  absl::StatusOr<IrqInfo> GetIrqInfo(uint32_t index);
  // vfio_user_device_io_set_irqs: eventfd arrays split by irq_howmany.
  absl::Status SetIrqs(uint32_t flags, uint32_t index, uint32_t start, absl::Span<const int> fds,
                       uint32_t count_if_no_data = 0);
  absl::Status AddStdCap(uint8_t pos, int depth);

  UniqueFd sock_;
  uint16_t next_id_ = 0;
  std::map<uint16_t, Pending> pending_;
  std::map<uint16_t, Reply> done_;
  std::vector<std::string> warnings_;
  Capabilities caps_;          // the server's, as QEMU's proxy keeps them
  uint64_t max_xfer_ = 1 << 20;
  uint32_t max_send_fds_ = 8;  // VFIO_USER_DEF_MAX_FDS
  bool use_multi_ = false;
  bool no_post_ = false;
  DeviceInfo info_;
  bool reset_works_ = false;
  bool pci_aer_ = false;
  uint32_t config_size_ = 0;
  std::vector<uint8_t> config_;     // QEMU's copy (pdev->config)
  std::vector<bool> cap_used_;      // pdev->used
  Bar bars_[6];
  uint8_t msix_cap_ = 0;
  uint32_t msix_entries_ = 0;
  uint32_t msix_irq_count_ = 0;
  int msix_table_bar_ = -1, msix_pba_bar_ = -1;
  uint32_t msix_table_off_ = 0, msix_pba_off_ = 0;
  bool msix_enabled_ = false;
  bool noresize_ = false;
  uint32_t nr_vectors_ = 0;
  uint8_t pm_cap_ = 0;
  bool intx_ = false;
  UniqueFd err_efd_;
  GuestRam* ram_ = nullptr;
  uint64_t dma_served_ = 0;
};

}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_QEMU_MODEL_H_
