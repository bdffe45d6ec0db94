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
// indices live in DIR/shm/NAME/queues. SIGTERM/SIGINT stop it cleanly.
//
// Under emud (EMUD_FDS carries fdstore::kChannelKey) the worker survives its
// own death: it deposits every fd it relies on in emud's fd store before
// using it, persists the session crash-consistently (--persist_session,
// default on), and a successor started with the stored fds resumes the
// guest's session where it was (ARCHITECTURE.md, "How a crash is survived").
// SIGTERM then leaves the session to the successor (upgrade-worker).
#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "avf/device.h"
#include "base/exit_reason.h"
#include "base/socket_access.h"
#include "dataplane/adaptive_poll.h"
#include "dataplane/backend.h"
#include "dataplane/datapath.h"
#include "dataplane/queue_state.h"
#include "fdstore/fd_store.h"
#include "google/protobuf/util/message_differencer.h"
#include "proto/worker_status.pb.h"
#include "state_store/record.h"
#include "state_store/state_dir.h"
#include "state_store/store.h"
#include "vfio_user/event_loop.h"
#include "vfio_user/protocol.h"
#include "vfio_user/session.h"

ABSL_FLAG(std::string, device, "", "device name");
ABSL_FLAG(std::string, state_dir, emud::state_store::kDefaultStateDir, "emud state directory");
ABSL_FLAG(std::string, socket, "", "vfio-user listening socket path");
ABSL_FLAG(int64_t, socket_uid, -1, "owner of the socket (-1: this process's uid)");
ABSL_FLAG(int64_t, socket_gid, -1, "group of the socket (-1: this process's or the directory's)");
ABSL_FLAG(std::string, socket_mode, "0660", "octal mode of the socket (a subset of 0666 with 0600)");
ABSL_FLAG(std::string, mac, "", "permanent MAC (aa:bb:cc:dd:ee:ff); empty = driver picks");
ABSL_FLAG(int, queues, 4, "queue pairs offered (1..16)");
ABSL_FLAG(std::string, backend, "loopback", "tap:IFNAME | loopback | peer:DEVICE");
ABSL_FLAG(std::string, doorbell, "trap", "trap (posted region writes) | mmap (polled tail page)");
ABSL_FLAG(bool, persist_session, true,
          "commit vfio-user/AVF state to LMDB per request, crash-consistently (what lets a "
          "successor take over after SIGKILL); false only for benchmarks measuring its cost");

namespace emud::dataplane {
namespace {

std::atomic<bool> g_stop{false};
std::atomic<bool> g_exit_now{false};  // persisted under emud: SIGTERM = a crash
vfio_user::EventLoop* g_loop = nullptr;
void OnSignal(int) {
  // Every instant is a consistent crash point for a persisted worker (what
  // tests/chaos verifies), so under emud SIGTERM simply ends the process and
  // leaves the guest's session, fds and state to the successor - this is how
  // `emuctl upgrade-worker` hands a running guest over. Deleting the device
  // is what closes the connection (emud releases the fds).
  if (g_exit_now.load()) _exit(0);
  g_stop.store(true);
  if (g_loop) g_loop->Stop();
}

int Fail(absl::string_view what, const absl::Status& s) {
  std::fprintf(stderr, "emud-worker: %s: %s\n", std::string(what).c_str(), s.ToString().c_str());
  RecordExitReason(what, s);  // emud puts it into the device's last_error
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

// The worker's side of emud's fd store as the session's FdDepositor. While
// the store is away (emud restarting) fds are kept for FdStoreClient::Reconnect
// instead: the worker never stalls or fails a guest request on emud.
class StoreDepositor : public vfio_user::FdDepositor {
 public:
  explicit StoreDepositor(fdstore::FdStoreClient* store) : store_(store) {}
  absl::Status Deposit(absl::string_view key, int fd) override {
    if (store_ == nullptr) return absl::OkStatus();
    if (store_->connected()) {
      absl::Status s = store_->Deposit(key, fd);
      if (s.ok()) return s;
      if (s.code() == absl::StatusCode::kPermissionDenied ||
          s.code() == absl::StatusCode::kInvalidArgument) {
        return s;  // refused by the store
      }
      lost_ = true;  // the channel broke: emud died
    }
    return store_->Keep(key, fd);
  }
  void Release(absl::string_view key) override {
    if (store_ == nullptr) return;
    if (!store_->Release(key).ok() && store_->connected()) lost_ = true;
  }
  bool TakeLost() { return std::exchange(lost_, false); }

 private:
  fdstore::FdStoreClient* store_;
  bool lost_ = false;
};

absl::StatusOr<UniqueFd> BindListener(const std::string& path) {
  // Owner, group and mode are set before listen() (base/socket_access.h): a
  // VMM running as another user connects as the owner or through the group
  // (by default this process's gid or, in a setgid directory, the
  // directory's), nobody else.
  auto mode = emud::ParseSocketMode(absl::GetFlag(FLAGS_socket_mode), "--socket-mode");
  if (!mode.ok()) return mode.status();
  return emud::BindUnixListener(path, static_cast<uid_t>(absl::GetFlag(FLAGS_socket_uid)),
                                static_cast<gid_t>(absl::GetFlag(FLAGS_socket_gid)), *mode);
}

int Main() {
  InitExitReasonFromEnv();
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
  sa.sa_flags = SA_RESTART;  // no EINTR in a reply's sendmsg or an fd-store ack
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  const absl::Time t_start = absl::Now();
  // fd store (when started by emud): our channel and, for a successor, every
  // fd the predecessor deposited. They are kept for Reconnect (the store
  // already holds them), then consumed by key below.
  auto inherited = fdstore::TakeInheritedFds();
  if (!inherited.ok()) return Fail("EMUD_FDS", inherited.status());
  std::map<std::string, UniqueFd> fds = std::move(*inherited);
  std::unique_ptr<fdstore::FdStoreClient> store;
  const char* store_env = std::getenv(fdstore::kStoreSocketEnv);
  const std::string store_path = store_env != nullptr ? store_env : "";
  if (auto it = fds.find(fdstore::kChannelKey); it != fds.end()) {
    auto c = fdstore::FdStoreClient::Adopt(std::move(it->second), name);
    fds.erase(it);
    if (!c.ok()) return Fail("fd store", c.status());
    store = std::move(*c);
    for (const auto& [key, fd] : fds) {
      if (absl::Status s = store->Keep(key, fd.get()); !s.ok()) return Fail("fd store", s);
    }
  }
  auto take = [&fds](absl::string_view key) {
    UniqueFd f;
    if (auto it = fds.find(std::string(key)); it != fds.end()) {
      f = std::move(it->second);
      fds.erase(it);
    }
    return f;
  };
  StoreDepositor depositor(store.get());
  const bool persist = absl::GetFlag(FLAGS_persist_session);

  std::error_code ec;
  const std::string env_dir = state_store::DeviceEnvDir(state_dir, name);
  const std::string shm_dir = state_store::ShmDir(state_dir);
  std::filesystem::create_directories(env_dir, ec);
  std::filesystem::create_directories(shm_dir, ec);
  // DIR/shm/NAME/ (files of an older worker's DIR/shm/NAME.* layout move in).
  const std::string dev_shm_dir = state_store::DeviceShmDir(state_dir, name);
  if (absl::Status s = state_store::MigrateLegacyShmFiles(state_dir, name); !s.ok()) {
    return Fail("state dir", s);
  }
  state_store::EnvOptions eopt;
  eopt.tables = vfio_user::SessionTables();
  eopt.tables.push_back(avf::Device::kStateTable);
  eopt.tables.push_back("status");
  auto env = state_store::Env::Open(env_dir, eopt);
  if (!env.ok()) return Fail("state store", env.status());

  // The doorbell memfd (tails + ITRN) backs BAR0 [0, 0x3000) in both modes:
  // in trap mode it makes tail writes self-durable (no LMDB commit per
  // doorbell; vfio_user::PciDevice::WriteIsSelfDurable), so a successor must
  // adopt it whatever the mode.
  // Poison-input quarantine: what this worker handles when it dies is
  // charged to that input; the third death on one input quarantines it.
  auto guard = PoisonGuard::Open(absl::StrCat(dev_shm_dir, "/poison"));
  if (!guard.ok()) return Fail("poison guard", guard.status());
  for (auto level : {PoisonGuard::kVfioRequest, PoisonGuard::kVirtchnl, PoisonGuard::kTxQueue}) {
    if ((*guard)->DeathsAtOpen(level) > 0) {
      static const char* const kNames[] = {"a vfio-user request", "a virtchnl message",
                                           "a TX burst"};
      std::fprintf(stderr, "emud-worker: %s: a predecessor died handling %s (%u deaths on it)\n",
                   name.c_str(), kNames[level], (*guard)->DeathsAtOpen(level));
    }
  }
  if (persist) dopt.poison_guard = guard->get();

  UniqueFd doorbell_in = take("doorbell");
  const bool doorbell_inherited = doorbell_in.valid();
  dopt.doorbell_fd = doorbell_in.release();
  auto device = avf::Device::Create(dopt);
  if (!device.ok()) return Fail("device", device.status());
  if (!doorbell_inherited) {
    // Before any client can mmap it / any tail write relies on it.
    absl::Status s = depositor.Deposit("doorbell", (*device)->doorbell_fd());
    if (!s.ok()) return Fail("deposit doorbell", s);
  }
  auto loop = vfio_user::EventLoop::Create();
  if (!loop.ok()) return Fail("event loop", loop.status());
  g_loop = loop->get();

  BackendOptions bopt;
  bopt.device = name;
  bopt.shm_dir = shm_dir;
  bopt.max_frame = avf::kMaxFrameSize;
  const bool tap = absl::StartsWith(absl::GetFlag(FLAGS_backend), "tap:");
  UniqueFd tap_in = take("backend/tap");
  const bool tap_inherited = tap && tap_in.valid();
  if (tap) bopt.tap_fd = tap_in.release();
  auto backend = OpenBackend(absl::GetFlag(FLAGS_backend), bopt);
  if (!backend.ok()) return Fail("backend", backend.status());
  if (tap && !tap_inherited) {
    absl::Status s = depositor.Deposit("backend/tap", (*backend)->event_fd());
    if (!s.ok()) return Fail("deposit backend/tap", s);
  }
  auto qstate = QueueStateFile::Open(absl::StrCat(dev_shm_dir, "/queues"));
  if (!qstate.ok()) return Fail("queue state", qstate.status());
  DataPathOptions dpopt;
  if (persist) dpopt.poison_guard = guard->get();
  DataPath datapath(device->get(), backend->get(), qstate->get(), dpopt);

  vfio_user::SessionOptions sopt;
  if (persist) {
    sopt.store = env->get();
    sopt.crash_consistent = true;
    sopt.journal_path = absl::StrCat(dev_shm_dir, "/journal");
    sopt.poison_guard = guard->get();
  }
  if (store != nullptr) sopt.fd_depositor = &depositor;
  if (persist && store != nullptr) {
    // A full tmpfs: leave the request in the socket and the state as last
    // committed, and let emud retry a successor at a pace until there is
    // room (never a disconnect, which QEMU takes as a device reset).
    sopt.on_store_full = [](const absl::Status& s) {
      Fail("commit", s);
      std::fflush(stderr);
      _exit(1);
    };
  }

  // A successor holding the guest's connection takes the session over:
  // device model from LMDB, session (DMA windows, eventfds, the pending
  // request) from LMDB + inherited fds, queues from the tmpfs queue state.
  UniqueFd conn = take("vfio/conn");
  UniqueFd listen_fd = take("vfio/listen");
  std::unique_ptr<vfio_user::Session> resumed;
  bool recovered = false;
  if (conn.valid() && persist) {
    absl::Status r = (*env)->View(
        [&](const state_store::ReadTxn& txn) { return (*device)->Restore(txn); });
    if (r.ok()) {
      datapath.OnFiltersChanged();
      UniqueFd copy(::fcntl(conn.get(), F_DUPFD_CLOEXEC, 3));
      vfio_user::FdLookup lookup = [&take](absl::string_view key)
          -> absl::StatusOr<UniqueFd> {
        UniqueFd f = take(key);
        if (!f.valid()) return absl::NotFoundError(key);
        return f;
      };
      auto s = vfio_user::Session::Resume(device->get(), loop->get(), sopt, std::move(copy),
                                          lookup);
      if (s.ok()) {
        conn.reset();  // the session holds its own copy
        resumed = std::move(*s);
        datapath.Recover();
        recovered = true;
        // Inherited session fds that the restored state no longer names: the
        // predecessor was killed after committing an unmap (or before
        // committing a map) and before releasing the key. Release them now,
        // before any request can deposit the same key again.
        for (auto it = fds.begin(); it != fds.end();) {
          if (absl::StartsWith(it->first, "dma/") || absl::StartsWith(it->first, "irq/")) {
            if (store != nullptr) depositor.Release(it->first);
            it = fds.erase(it);
          } else {
            ++it;
          }
        }
      } else if (s.status().code() != absl::StatusCode::kNotFound) {
        return Fail("resume", s.status());
      }
    } else if (r.code() != absl::StatusCode::kNotFound) {
      return Fail("restore", r);
    }
  }
  if (resumed == nullptr) {
    // Fresh session; a connection that never finished VERSION is served from
    // its first request (crash-consistent mode left it in the socket).
    auto s = vfio_user::Session::Create(device->get(), loop->get(), sopt);
    if (!s.ok()) return Fail("session", s.status());
    resumed = std::move(*s);
    if (conn.valid()) {
      if (absl::Status a = resumed->AttachClient(std::move(conn)); !a.ok()) {
        return Fail("attach", a);
      }
    }
  }
  if (!listen_fd.valid()) {
    auto l = BindListener(socket_path);
    if (!l.ok()) return Fail("listen", l.status());
    listen_fd = std::move(*l);
    absl::Status s = depositor.Deposit("vfio/listen", listen_fd.get());
    if (!s.ok()) return Fail("deposit vfio/listen", s);
  }
  auto server = vfio_user::Server::FromListener(std::move(listen_fd), std::move(resumed),
                                                loop->get());
  if (!server.ok()) return Fail("listen", server.status());
  for (const auto& [key, fd] : fds) {
    // Inherited but not claimed (e.g. windows unmapped in a commit the
    // predecessor did not live to release): let the store drop them.
    depositor.Release(key);
  }
  fds.clear();

  g_exit_now.store(store != nullptr && persist);
  if (g_stop.load() && g_exit_now.load()) _exit(0);  // SIGTERM during start-up

  // emud going away: keep serving, reconnect to its listening socket.
  bool store_watched = false;
  auto watch_store = [&]() {
    if (store != nullptr && store->connected() && !store_watched) {
      store_watched = (*loop)->Add(store->channel_fd(), EPOLLIN, [&](uint32_t) {
        // The store never speaks first: readable or HUP means emud died.
        (*loop)->Remove(store->channel_fd());
        store_watched = false;
        (void)store->Reconnect("");  // drops the dead channel
      }).ok();
    }
  };
  watch_store();
  absl::Time next_reconnect = absl::InfinitePast();
  auto maintain_store = [&]() {
    if (store == nullptr) return;
    if (depositor.TakeLost() && store->connected()) {
      if (store_watched) (*loop)->Remove(store->channel_fd());
      store_watched = false;
      (void)store->Reconnect("");
    }
    if (store->connected() || store_path.empty()) return;
    absl::Time now = absl::Now();
    if (now < next_reconnect) return;
    next_reconnect = now + absl::Milliseconds(10);
    if (store->Reconnect(store_path).ok()) {
      std::fprintf(stderr, "emud-worker: %s: reconnected to the fd store (%zu fds)\n",
                   name.c_str(), store->deposited());
      watch_store();
    }
  };
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
  // What predecessors counted; this worker's session and device count from 0.
  std::map<std::string, uint64_t> base_messages(status.vfio_user_messages().begin(),
                                                status.vfio_user_messages().end());
  std::map<std::string, uint64_t> base_errors(status.vfio_user_errors().begin(),
                                              status.vfio_user_errors().end());
  std::map<std::string, uint64_t> base_vc(status.virtchnl_ops().begin(), status.virtchnl_ops().end());
  std::map<std::string, uint64_t> base_quarantined(status.quarantined().begin(),
                                                   status.quarantined().end());
  uint64_t quarantined_seen = 0;
  absl::Time last_write = absl::InfinitePast();
  internal::WorkerStatus last_published;
  auto publish = [&](bool force) -> absl::Status {
    absl::Time now = absl::Now();
    auto phase = phase_now();
    if (!force && phase == status.phase() && now - last_write < absl::Seconds(1)) return absl::OkStatus();
    if (phase != status.phase() || status.phase_seq() == 0) {
      status.set_phase_seq(status.phase_seq() + 1);
      auto* change = status.add_recent_phases();
      change->set_seq(status.phase_seq());
      change->set_phase(phase);
      constexpr int kKeepPhases = 8;
      if (status.recent_phases_size() > kKeepPhases) {
        status.mutable_recent_phases()->DeleteSubrange(0, status.recent_phases_size() - kKeepPhases);
      }
    }
    status.set_phase(phase);
    status.set_updated_unix_nanos(absl::ToUnixNanos(now));
    datapath.FillCounters(&status);
    const auto& st = (*server)->session().stats();
    // Cumulative over the device's life: a successor starts from the
    // counts its predecessor published (base_*), so they never go back.
    for (size_t c = 0; c < st.by_command.size(); ++c) {
      if (st.by_command[c] == 0 && st.errors_by_command[c] == 0) continue;
      std::string cmd = vfio_user::CommandName(static_cast<uint16_t>(c));
      (*status.mutable_vfio_user_messages())[cmd] = base_messages[cmd] + st.by_command[c];
      if (st.errors_by_command[c] != 0 || base_errors.count(cmd)) {
        (*status.mutable_vfio_user_errors())[cmd] = base_errors[cmd] + st.errors_by_command[c];
      }
    }
    uint64_t quarantined_now = 0;
    auto quarantined = [&](const std::string& key, uint64_t n) {
      if (n == 0) return;
      (*status.mutable_quarantined())[key] = base_quarantined[key] + n;
      quarantined_now += n;
    };
    for (size_t c = 0; c < st.quarantined_by_command.size(); ++c) {
      quarantined(absl::StrCat("vfio-user/", vfio_user::CommandName(static_cast<uint16_t>(c))),
                  st.quarantined_by_command[c]);
    }
    quarantined("virtchnl", (*device)->counters().vc_quarantined);
    quarantined("tx", datapath.tx_quarantines());
    if (quarantined_now != quarantined_seen) {
      quarantined_seen = quarantined_now;
      std::string what;
      for (const auto& [key, n] : status.quarantined()) absl::StrAppend(&what, " ", key, "=", n);
      status.set_last_error(absl::StrCat(
          "quarantined poison input that kept killing workers (answered with an error, not "
          "applied; see the worker log):", what));
    }
    for (const auto& [key, n] : (*device)->counters().vc_replies) {
      std::string name = absl::StrCat(avf::vc::OpName(key.first), "/", avf::vc::StatusName(key.second));
      (*status.mutable_virtchnl_ops())[name] = base_vc[name] + n;
    }
    // An idle device's record does not change: skip the commit (and emud's
    // re-read it would trigger). Only the timestamp would differ.
    if (!force && last_write != absl::InfinitePast()) {
      internal::WorkerStatus a = status, b = last_published;
      a.clear_updated_unix_nanos();
      b.clear_updated_unix_nanos();
      if (google::protobuf::util::MessageDifferencer::Equals(a, b)) {
        last_write = now;
        return absl::OkStatus();
      }
    }
    absl::Status s = (*env)->Update([&](state_store::WriteTxn& txn) {
      return status_table.Put(txn, "worker", status);
    });
    if (!s.ok()) {
      std::fprintf(stderr, "emud-worker: status: %s\n", s.ToString().c_str());
      return s;
    }
    last_published = status;
    last_write = now;
    return absl::OkStatus();
  };
  status.set_last_reattach_seconds(0);  // no session resumed: nothing to report
  if (recovered) {
    status.set_last_reattach_seconds(absl::ToDoubleSeconds(absl::Now() - t_start));
    std::fprintf(stderr, "emud-worker: %s resumed the guest's session in %.2f ms\n", name.c_str(),
                 status.last_reattach_seconds() * 1e3);
  }
  // The first status record is what tells emud this worker serves: one
  // that cannot be written (a full tmpfs) is a failed start, not a worker
  // that serves while emud shows the device CREATED.
  if (absl::Status s = publish(true); !s.ok()) return Fail("status", s);
  std::fprintf(stderr, "emud-worker: %s serving on %s (backend %s, doorbell %s, %d queues)\n",
               name.c_str(), socket_path.c_str(), (*backend)->spec().c_str(), doorbell.c_str(),
               queues);

  AdaptivePoller poller;
  const int backend_fd = (*backend)->event_fd();
  bool backend_watched = backend_fd >= 0;
  while (!g_stop.load()) {
    bool work = datapath.PollOnce();
    // A backend holding a frame the guest has no buffer for (tap) would keep
    // its fd readable and spin the loop: stop watching it until the frame is
    // taken (the RX doorbell or the poll timeout brings us back).
    if (backend_fd >= 0 && backend_watched == (*backend)->HasPending()) {
      backend_watched = !backend_watched;
      (void)(*loop)->Modify(backend_fd, backend_watched ? uint32_t{EPOLLIN} : 0u);
    }
    int64_t t = poller.Next(work, datapath.NeedsPolling());
    if (t < 0 && (*backend)->ArmNotify()) t = 0;
    int64_t irq_due = datapath.NextInterruptDeadlineNs(AdaptivePoller::NowNs());
    if (irq_due >= 0 && (t < 0 || irq_due < t)) t = irq_due;  // ITR-deferred interrupt
    absl::Duration timeout = t < 0 ? absl::Seconds(1) : absl::Nanoseconds(t);
    if (store != nullptr && !store->connected()) timeout = std::min(timeout, absl::Milliseconds(10));
    auto r = (*loop)->RunOnce(timeout);
    if (!r.ok()) {
      status.set_last_error(std::string(r.status().message()));
      break;
    }
    maintain_store();
    (void)publish(false);
  }
  (void)publish(true);
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
