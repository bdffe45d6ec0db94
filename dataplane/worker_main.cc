// emud-worker: one process per emulated AVF device. One event loop owns the
// vfio-user session (listening socket bound here), the AVF model, the queues
// and the backend.
//
//   emud-worker --device NAME --state-dir DIR --socket PATH --mac MAC
//               --queues N --backend tap:IF|loopback|peer:DEV --doorbell trap|mmap
//
// Publishes internal.WorkerStatus in the device's LMDB environment
// (state_store::DeviceEnvDir(DIR, NAME), table "status", key "worker") on
// every phase change and at most once per second otherwise. Hot queue
// indices live in DIR/shm/NAME.queues. SIGTERM/SIGINT stop it cleanly.
#include <signal.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "avf/device.h"
#include "dataplane/adaptive_poll.h"
#include "dataplane/backend.h"
#include "dataplane/datapath.h"
#include "dataplane/queue_state.h"
#include "proto/worker_status.pb.h"
#include "state_store/record.h"
#include "state_store/state_dir.h"
#include "state_store/store.h"
#include "vfio_user/event_loop.h"
#include "vfio_user/session.h"

ABSL_FLAG(std::string, device, "", "device name");
ABSL_FLAG(std::string, state_dir, emud::state_store::kDefaultStateDir, "emud state directory");
ABSL_FLAG(std::string, socket, "", "vfio-user listening socket path");
ABSL_FLAG(std::string, mac, "", "permanent MAC (aa:bb:cc:dd:ee:ff); empty = driver picks");
ABSL_FLAG(int, queues, 4, "queue pairs offered (1..16)");
ABSL_FLAG(std::string, backend, "loopback", "tap:IFNAME | loopback | peer:DEVICE");
ABSL_FLAG(std::string, doorbell, "trap", "trap (posted region writes) | mmap (polled tail page)");
ABSL_FLAG(bool, persist_session, false,
          "commit vfio-user/AVF state to LMDB per request (crash recovery; slower doorbells "
          "in trap mode)");

namespace emud::dataplane {
namespace {

std::atomic<bool> g_stop{false};
vfio_user::EventLoop* g_loop = nullptr;
void OnSignal(int) {
  g_stop.store(true);
  if (g_loop) g_loop->Stop();
}

int Fail(absl::string_view what, const absl::Status& s) {
  std::fprintf(stderr, "emud-worker: %s: %s\n", std::string(what).c_str(), s.ToString().c_str());
  return 1;
}

bool ParseMac(const std::string& s, avf::MacAddr* out) {
  std::vector<std::string> parts = absl::StrSplit(s, ':');
  if (parts.size() != 6) return false;
  for (int i = 0; i < 6; ++i) {
    uint32_t v;
    if (parts[i].size() != 2 || !absl::SimpleHexAtoi(parts[i], &v)) return false;
    (*out)[i] = uint8_t(v);
  }
  return true;
}

int Main() {
  const std::string name = absl::GetFlag(FLAGS_device);
  const std::string state_dir = absl::GetFlag(FLAGS_state_dir);
  const std::string socket_path = absl::GetFlag(FLAGS_socket);
  if (absl::Status s = state_store::ValidateDeviceName(name); !s.ok()) return Fail("--device", s);
  if (socket_path.empty()) return Fail("--socket", absl::InvalidArgumentError("required"));
  const int queues = absl::GetFlag(FLAGS_queues);
  if (queues < 1 || queues > int(kMaxQueues)) {
    return Fail("--queues", absl::InvalidArgumentError("must be 1..16"));
  }
  const std::string doorbell = absl::GetFlag(FLAGS_doorbell);
  if (doorbell != "trap" && doorbell != "mmap") {
    return Fail("--doorbell", absl::InvalidArgumentError("trap or mmap"));
  }
  avf::DeviceOptions dopt;
  dopt.max_queue_pairs = uint32_t(queues);
  dopt.mapped_doorbells = doorbell == "mmap";
  if (!absl::GetFlag(FLAGS_mac).empty() && !ParseMac(absl::GetFlag(FLAGS_mac), &dopt.mac)) {
    return Fail("--mac", absl::InvalidArgumentError(absl::GetFlag(FLAGS_mac)));
  }
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  std::error_code ec;
  const std::string env_dir = state_store::DeviceEnvDir(state_dir, name);
  const std::string shm_dir = state_store::ShmDir(state_dir);
  std::filesystem::create_directories(env_dir, ec);
  std::filesystem::create_directories(shm_dir, ec);
  state_store::EnvOptions eopt;
  eopt.tables = vfio_user::SessionTables();
  eopt.tables.push_back(avf::Device::kStateTable);
  eopt.tables.push_back("status");
  auto env = state_store::Env::Open(env_dir, eopt);
  if (!env.ok()) return Fail("state store", env.status());

  auto device = avf::Device::Create(dopt);
  if (!device.ok()) return Fail("device", device.status());
  auto loop = vfio_user::EventLoop::Create();
  if (!loop.ok()) return Fail("event loop", loop.status());
  g_loop = loop->get();

  BackendOptions bopt;
  bopt.device = name;
  bopt.shm_dir = shm_dir;
  bopt.max_frame = avf::kMaxFrameSize;
  auto backend = OpenBackend(absl::GetFlag(FLAGS_backend), bopt);
  if (!backend.ok()) return Fail("backend", backend.status());
  auto qstate = QueueStateFile::Open(absl::StrCat(shm_dir, "/", name, ".queues"));
  if (!qstate.ok()) return Fail("queue state", qstate.status());
  DataPath datapath(device->get(), backend->get(), qstate->get());

  vfio_user::SessionOptions sopt;
  if (absl::GetFlag(FLAGS_persist_session)) sopt.store = env->get();
  auto server = vfio_user::Server::Listen(socket_path, device->get(), loop->get(), sopt);
  if (!server.ok()) return Fail("listen", server.status());
  if ((*backend)->event_fd() >= 0) {
    absl::Status s = (*loop)->Add((*backend)->event_fd(), EPOLLIN, [](uint32_t) {});
    if (!s.ok()) return Fail("backend fd", s);
  }

  // Status record.
  state_store::RecordTable<internal::WorkerStatus> status_table("status");
  internal::WorkerStatus status;
  {
    absl::Status s = (*env)->View([&](const state_store::ReadTxn& txn) -> absl::Status {
      auto old = status_table.Get(txn, "worker");
      if (old.ok() && old->has_value()) {
        status = **old;
        status.set_reattaches(status.reattaches() + 1);
      }
      return absl::OkStatus();
    });
    (void)s;
  }
  status.set_pid(getpid());
  auto phase_now = [&]() {
    vfio_user::Session& sess = (*server)->session();
    if (!sess.connected()) return internal::WorkerStatus::LISTENING;
    bool running = false;
    for (uint32_t q = 0; q < (*device)->num_queue_pairs(); ++q) {
      running |= (*device)->rx_queue(q).enabled || (*device)->tx_queue(q).enabled;
    }
    if (running) return internal::WorkerStatus::LINK_UP;
    if ((*device)->granted_caps() != 0) return internal::WorkerStatus::DRIVER_READY;
    return internal::WorkerStatus::CONNECTED;
  };
  absl::Time last_write = absl::InfinitePast();
  auto publish = [&](bool force) {
    absl::Time now = absl::Now();
    auto phase = phase_now();
    if (!force && phase == status.phase() && now - last_write < absl::Seconds(1)) return;
    status.set_phase(phase);
    status.set_updated_unix_nanos(absl::ToUnixNanos(now));
    datapath.FillCounters(&status);
    const auto& st = (*server)->session().stats();
    (*status.mutable_vfio_user_messages())["ALL"] = st.requests;
    (*status.mutable_vfio_user_errors())["ALL"] = st.error_replies;
    absl::Status s = (*env)->Update([&](state_store::WriteTxn& txn) {
      return status_table.Put(txn, "worker", status);
    });
    if (!s.ok()) std::fprintf(stderr, "emud-worker: status: %s\n", s.ToString().c_str());
    last_write = now;
  };
  publish(true);
  std::fprintf(stderr, "emud-worker: %s serving on %s (backend %s, doorbell %s, %d queues)\n",
               name.c_str(), socket_path.c_str(), (*backend)->spec().c_str(), doorbell.c_str(),
               queues);

  AdaptivePoller poller;
  while (!g_stop.load()) {
    bool work = datapath.PollOnce();
    int64_t t = poller.Next(work, datapath.NeedsPolling());
    if (t < 0 && (*backend)->ArmNotify()) t = 0;
    int64_t irq_due = datapath.NextInterruptDeadlineNs(AdaptivePoller::NowNs());
    if (irq_due >= 0 && (t < 0 || irq_due < t)) t = irq_due;  // ITR-deferred interrupt
    absl::Duration timeout = t < 0 ? absl::Seconds(1) : absl::Nanoseconds(t);
    auto r = (*loop)->RunOnce(timeout);
    if (!r.ok()) {
      status.set_last_error(std::string(r.status().message()));
      break;
    }
    publish(false);
  }
  publish(true);
  std::fprintf(stderr, "emud-worker: %s stopping\n", name.c_str());
  server->reset();
  return 0;
}

}  // namespace
}  // namespace emud::dataplane

int main(int argc, char** argv) {
  // emud passes dashed flags (--state-dir); absl spells them with '_'.
  std::vector<std::string> args(argv, argv + argc);
  std::vector<char*> fixed;
  for (std::string& a : args) {
    if (a.size() > 2 && a[0] == '-' && a[1] == '-') {
      size_t end = a.find('=');
      for (size_t i = 2; i < std::min(end, a.size()); ++i) {
        if (a[i] == '-') a[i] = '_';
      }
    }
    fixed.push_back(a.data());
  }
  absl::ParseCommandLine(int(fixed.size()), fixed.data());
  return emud::dataplane::Main();
}
