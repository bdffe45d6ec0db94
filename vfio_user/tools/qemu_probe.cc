// qemu-probe: plays QEMU 10.1's vfio-user-pci against any vfio-user server
// (QemuModel: the realize sequence, MSI-X enable and a system reset, with
// QEMU's checks on every reply) and reports what QEMU would refuse or warn
// about - for servers and device models nobody can try under QEMU here.
//
//   bazel run //vfio_user/tools:qemu-probe -- --socket PATH [--guest_mb 64] [--strict]
//
// Exit status: 0 = QEMU would realize and run the device, 1 = it would fail
// (the message names the QEMU function), 2 = only warnings and --strict.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "vfio_user/qemu_model.h"
#include "vfio_user/test_harness.h"

ABSL_FLAG(std::string, socket, "", "vfio-user socket to connect to");
ABSL_FLAG(int, guest_mb, 64, "guest RAM (a memfd) mapped like q35's listener does");
ABSL_FLAG(bool, strict, false, "exit 2 when QEMU would only warn");

namespace {

using emud::vfio_user::QemuModel;

int Report(const absl::Status& s, const char* step) {
  if (s.ok()) {
    std::printf("ok    %s\n", step);
    return 0;
  }
  std::printf("FAIL  %s: %s\n", step, std::string(s.message()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string path = absl::GetFlag(FLAGS_socket);
  if (path.empty()) {
    std::fprintf(stderr, "usage: qemu-probe --socket PATH [--guest_mb N] [--strict]\n");
    return 2;
  }
  auto q = QemuModel::Connect(path);
  if (!q.ok()) {
    std::fprintf(stderr, "connect %s: %s\n", path.c_str(), std::string(q.status().message()).c_str());
    return 1;
  }
  QemuModel& m = **q;
  const uint64_t ram = uint64_t(std::max(2, absl::GetFlag(FLAGS_guest_mb))) << 20;
  emud::UniqueFd memfd = emud::vfio_user::testing::MakeMemfd(ram);
  const std::vector<QemuModel::Section> sections = {
      {0x0, 0xa0000, memfd.get(), 0x0, false},
      {0xc0000, 0x40000, memfd.get(), 0xc0000, true},
      {0x100000, ram - 0x100000, memfd.get(), 0x100000, false},
      {0xfffc0000, 0x40000, -1, 0, true},
  };
  int fails = 0;
  if ((fails += Report(m.ValidateVersion(), "VERSION (vfio_user_validate_version)"))) return 1;
  if ((fails += Report(m.MapSections(sections), "DMA_MAP of the guest RAM sections (vfio_user_dma_map)"))) return 1;
  if ((fails += Report(m.GetDeviceInfo(), "GET_INFO (vfio_user_get_device_info)"))) return 1;
  if ((fails += Report(m.PopulateDevice(), "regions and ERR irq (vfio_pci_populate_device)"))) return 1;
  if ((fails += Report(m.ConfigSetup(), "config space, ROM, BARs, MSI-X (vfio_pci_config_setup)"))) return 1;
  if ((fails += Report(m.AddCapabilities(), "capability chain (vfio_pci_add_capabilities)"))) return 1;
  if ((fails += Report(m.InterruptSetup(), "INTx and ERR notifier (vfio_pci_interrupt_setup)"))) return 1;
  fails += Report(m.LintDevice(), "device consistency: BAR sizes, MSI-X vectors, capability alignment");
  const auto& info = m.device_info();
  std::printf("      device: %u regions, %u irq types, reset %s, config %u bytes, posted BAR writes %s, AER %s\n",
              info.num_regions, info.num_irqs, m.reset_works() ? "yes" : "no", m.config_size(),
              m.posted_writes() ? "yes" : "no", m.aer() ? "yes" : "no");
  for (int b = 0; b < 6; ++b) {
    if (m.bar_size(b)) {
      std::printf("      BAR%d: %llu bytes%s%s\n", b, static_cast<unsigned long long>(m.bar_size(b)),
                  m.bar_mem64(b) ? ", 64-bit" : "", m.bar_mmap(b, 0) ? ", mmapped" : "");
    }
  }
  fails += Report(m.SystemReset(), "system reset (vfio_user_pci_reset)");
  fails += Report(m.ConfigWrite(0x04, 0x6, 2), "guest enables memory + bus master");
  if (m.msix_cap()) {
    std::printf("      MSI-X: %u vectors at cap 0x%x\n", m.msix_entries(), m.msix_cap());
    fails += Report(m.ConfigWrite(m.msix_cap() + 2, 0xc000, 2), "guest enables MSI-X, function masked (vfio_msix_enable)");
    fails += Report(m.ConfigWrite(m.msix_cap() + 2, 0x8000, 2), "guest unmasks the function");
    std::vector<emud::UniqueFd> efds;
    for (uint32_t v = 0; v < m.msix_entries() && v < 64; ++v) {
      efds.push_back(emud::vfio_user::testing::MakeEventfd());
      if (auto s = m.MsixVectorUse(v, efds.back().get()); !s.ok()) {
        fails += Report(s, "vector use (vfio_msix_vector_do_use)");
        break;
      }
    }
    fails += Report(m.ConfigWrite(m.msix_cap() + 2, 0, 2), "guest disables MSI-X (vfio_msix_disable)");
  }
  fails += Report(m.SystemReset(), "system reset again");
  fails += Report(m.ServePending(), "server requests");
  for (const auto& w : m.warnings()) std::printf("WARN  %s\n", w.c_str());
  if (fails) return 1;
  return (!m.warnings().empty() && absl::GetFlag(FLAGS_strict)) ? 2 : 0;
}
