// emu-guest: the test guest as a tool. Connects to a vfio-user socket that
// serves an AVF device, brings it up the way Linux iavf does, optionally
// resets and re-initialises it, and reports what happened.
//
//   emu-guest --socket /run/emud/dev0.sock [--queues 4] [--resets 1]
//             [--ring-size 512] [--mem-mb 64] [--timeout-ms 5000] [--json]
//             [--flavor linux|dpdk] [--posted-writes] [--close]
//
// Exit status 0 when every bring-up ended with link up, 1 otherwise.
#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "tests/guest/iavf_driver.h"
#include "tests/guest/vfio_user_bus.h"

namespace {

std::string MacString(const std::array<uint8_t, 6>& m) {
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"emu-guest: drive an emulated AVF NIC over vfio-user like Linux iavf"};
  std::string socket;
  uint32_t queues = 16, resets = 1, ring_size = 512, mem_mb = 64, timeout_ms = 5000;
  bool json = false, posted = false, close_at_end = false;
  std::string flavor = "linux";
  app.add_option("--socket", socket, "vfio-user socket of the device")->required();
  app.add_option("--queues", queues, "queue pairs to use at most (like the CPU count)");
  app.add_option("--resets", resets, "VF resets (RESET_VF + re-init) after the first bring-up");
  app.add_option("--ring-size", ring_size, "descriptors per ring (64..4096, multiple of 32)");
  app.add_option("--mem-mb", mem_mb, "guest RAM to DMA-map, MiB");
  app.add_option("--timeout-ms", timeout_ms, "per virtchnl reply");
  app.add_flag("--posted-writes", posted, "send BAR0 writes without waiting for replies");
  app.add_flag("--close", close_at_end, "ip link set down and unload the driver at the end");
  app.add_flag("--json", json, "print a JSON report");
  app.add_option("--flavor", flavor, "bring-up order: linux (iavf.ko) or dpdk (net/iavf)")
      ->check(CLI::IsMember({"linux", "dpdk"}));
  CLI11_PARSE(app, argc, argv);

  nlohmann::json report;
  report["socket"] = socket;
  report["flavor"] = flavor;
  auto fail = [&](absl::string_view step, const absl::Status& s) {
    report["ok"] = false;
    report["failed_step"] = std::string(step);
    report["error"] = std::string(s.ToString());
    if (json) {
      std::printf("%s\n", report.dump(2).c_str());
    } else {
      std::fprintf(stderr, "emu-guest: %s failed: %s\n", std::string(step).c_str(), s.ToString().c_str());
    }
    return 1;
  };
  auto say = [&](const std::string& line) {
    if (!json) std::printf("%s\n", line.c_str());
  };

  emud::guest::VfioUserBusOptions bo;
  bo.memory_size = size_t{mem_mb} << 20;
  bo.posted_writes = posted;
  auto bus = emud::guest::VfioUserBus::Connect(socket, bo);
  if (!bus.ok()) return fail("connect", bus.status());
  emud::guest::DriverOptions dopt;
  dopt.max_queues = queues;
  dopt.ring_size = ring_size;
  dopt.reply_timeout = absl::Milliseconds(timeout_ms);
  if (flavor == "dpdk") {
    dopt.flavor = emud::guest::Flavor::kDpdk;
    dopt.caps = emud::guest::kDpdkIavfCaps;
  }
  emud::guest::IavfDriver drv(bus->get(), dopt);

  if (auto s = drv.Probe(); !s.ok()) return fail("probe", s);
  say("probe: 8086:1889 AVF");
  if (auto s = drv.Init(); !s.ok()) return fail("init", s);
  say(absl::StrFormat("init: PF virtchnl %u.%u, caps 0x%08x, %u/%u queue pairs, %u MSI-X vectors, MAC %s",
                      drv.pf_version().major, drv.pf_version().minor, drv.caps(), drv.num_active_queues(),
                      drv.vf_queue_pairs(), drv.num_msix_vectors(), MacString(drv.mac())));
  if (auto s = drv.Open(); !s.ok()) return fail("open", s);
  say(absl::StrFormat("open: link up, %u %s", drv.link_speed(),
                      (drv.caps() & emud::avf::vc::kCapAdvLinkSpeed) ? "Mbps" : "(speed enum)"));
  report["bringups"] = 1;
  for (uint32_t i = 0; i < resets; ++i) {
    if (auto s = drv.Reset(); !s.ok()) return fail(absl::StrCat("reset ", i + 1), s);
    if (!drv.link_up()) return fail(absl::StrCat("reset ", i + 1), absl::InternalError("link down after re-init"));
    say(absl::StrFormat("reset %u: RESET_VF, re-initialised, link up", i + 1));
    report["bringups"] = report["bringups"].get<int>() + 1;
  }
  auto st = drv.RequestStats();
  if (!st.ok()) return fail("stats", st.status());
  say(absl::StrFormat("stats: rx %u bytes %u unicast, tx %u bytes %u unicast", st->rx_bytes, st->rx_unicast,
                      st->tx_bytes, st->tx_unicast));
  if (close_at_end) {
    if (auto s = drv.Remove(); !s.ok()) return fail("remove", s);
    say("remove: queues disabled, RESET_VF, admin queue shut down");
  }
  say("virtchnl: " + absl::StrJoin(drv.trace(), " "));
  report["ok"] = true;
  report["pf_version"] = absl::StrCat(drv.pf_version().major, ".", drv.pf_version().minor);
  report["caps"] = drv.caps();
  report["queues"] = drv.num_active_queues();
  report["msix_vectors"] = drv.num_msix_vectors();
  report["mac"] = MacString(drv.mac());
  report["link_up"] = drv.link_up();
  report["link_speed"] = drv.link_speed();
  report["admin_interrupts"] = drv.admin_interrupts();
  report["trace"] = drv.trace();
  report["stats"] = {{"rx_bytes", st->rx_bytes}, {"rx_unicast", st->rx_unicast}, {"tx_bytes", st->tx_bytes},
                     {"tx_unicast", st->tx_unicast}};
  if (json) std::printf("%s\n", report.dump(2).c_str());
  return 0;
}
