// avf-server: serves one emulated AVF device (control plane only, no data
// path) on a vfio-user socket - for the test guest, QEMU's vfio-user-pci and
// manual trials. The production server is dataplane's emud-worker.
//
//   avf-server --socket /tmp/avf.sock [--queues 4] [--mac 02:00:00:00:00:01]
//              [--mapped-doorbells]
#include <csignal>
#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "avf/device.h"
#include "base/event_loop.h"
#include "vfio_user/session.h"

namespace {
emud::EventLoop* g_loop = nullptr;
void OnSignal(int) {
  if (g_loop != nullptr) g_loop->Stop();
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"avf-server: an emulated Intel AVF NIC on a vfio-user socket"};
  std::string socket, mac;
  uint32_t queues = 4;
  bool mapped = false;
  app.add_option("--socket", socket, "path of the listening socket")->required();
  app.add_option("--queues", queues, "queue pairs (1..16)");
  app.add_option("--mac", mac, "permanent MAC (default: none, the driver picks one)");
  app.add_flag("--mapped-doorbells", mapped, "tail registers in an mmappable BAR0 area");
  CLI11_PARSE(app, argc, argv);

  emud::avf::DeviceOptions o;
  o.max_queue_pairs = queues;
  o.mapped_doorbells = mapped;
  if (!mac.empty()) {
    unsigned b[6];
    if (std::sscanf(mac.c_str(), "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6) {
      std::fprintf(stderr, "avf-server: bad --mac\n");
      return 2;
    }
    for (int i = 0; i < 6; ++i) o.mac[i] = static_cast<uint8_t>(b[i]);
  }
  auto dev = emud::avf::Device::Create(o);
  if (!dev.ok()) {
    std::fprintf(stderr, "avf-server: %s\n", dev.status().ToString().c_str());
    return 1;
  }
  auto loop = emud::EventLoop::Create();
  if (!loop.ok()) {
    std::fprintf(stderr, "avf-server: %s\n", loop.status().ToString().c_str());
    return 1;
  }
  auto server = emud::vfio_user::Server::Listen(socket, dev->get(), loop->get(), {});
  if (!server.ok()) {
    std::fprintf(stderr, "avf-server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  g_loop = loop->get();
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::fprintf(stderr, "avf-server: serving 8086:1889 (%u queue pairs) on %s\n", queues, socket.c_str());
  auto s = (*loop)->Run();
  const auto& c = (*dev)->counters();
  std::fprintf(stderr,
               "avf-server: stopped (%s); virtchnl %llu msgs, %llu errors, %llu VF resets, %llu FLRs\n",
               s.ToString().c_str(), (unsigned long long)c.vc_messages, (unsigned long long)c.vc_errors,
               (unsigned long long)c.vf_resets, (unsigned long long)c.flrs);
  return s.ok() ? 0 : 1;
}
