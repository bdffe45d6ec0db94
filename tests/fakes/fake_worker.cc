// fake_worker: a stand-in for emud-worker in emud's tests. It honours the
// worker contract (worker_api/: command line, fd keys, status record), binds the vfio-user socket and publishes a
// WorkerStatus record like the real worker, but instead of speaking
// vfio-user it takes one-line text commands from whoever connects:
//
//   ready        -> DRIVER_READY, virtchnl 1.1
//   linkup       -> LINK_UP
//   tx N         -> N packets of 64 bytes on TX and RX queue 0 (+ vfio-user
//                   and virtchnl counters)
//   crash        -> publishes last_error and exits with status 7
//
// A connected client makes the device CONNECTED; its disconnect returns it
// to LISTENING. Counters continue from the previous record (reattaches+1),
// as the real worker's do.
//
// fd store: like the real worker is meant to, it takes the descriptors emud
// hands it (EMUD_FDS), adopts its channel and re-deposits what it inherited;
// it deposits its listening socket ("vfio/listen") before LISTENING and a
// client's connection ("vfio/conn") before serving it, releasing it when the
// client leaves. A successor that inherits "vfio/conn" keeps serving that
// very connection (the client never notices), and one that inherits
// "vfio/listen" does not bind. When emud goes away it reconnects to
// $EMUD_FDSTORE_SOCKET every 50 ms and re-deposits everything.
//
// Test switches: if <state-dir>/fake/<device>.crash exists, the worker
// publishes an error and exits with status 3 at once (crash loop); if
// FAKE_WORKER_IGNORE_SIGTERM is set, SIGTERM is ignored (SIGKILL escalation).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/command_line.h"
#include "base/unix_listener.h"
#include "fdstore/fd_store.h"
#include "fdstore/standby.h"
#include "proto/worker_status.pb.h"
#include "state_store/record.h"
#include "state_store/state_dir.h"
#include "state_store/store.h"
#include "worker_api/fd_keys.h"
#include "worker_api/flags.h"
#include "worker_api/status_record.h"

namespace {

using emud::internal::WorkerStatus;

[[noreturn]] void Die(const std::string& msg) {
  std::cerr << "fake_worker: " << msg << std::endl;
  std::exit(2);
}

struct Worker {
  std::unique_ptr<emud::state_store::Env> env;
  emud::state_store::RecordTable<WorkerStatus> table{emud::worker_api::kStatusTable};
  WorkerStatus st;

  void Publish() {
    st.set_updated_unix_nanos(absl::ToUnixNanos(absl::Now()));
    absl::Status s = env->Update(
        [&](emud::state_store::WriteTxn& txn) { return table.Put(txn, emud::worker_api::kStatusKey, st); });
    if (!s.ok()) Die(s.ToString());
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> rest = emud::ParseDashedCommandLine(argc, argv);
  if (rest.size() > 1) Die(absl::StrCat("bad argument ", rest[1]));
  auto args = emud::worker_api::WorkerArgsFromFlags();
  if (!args.ok()) Die(args.status().ToString());
  if (args->mac.empty()) Die("missing --mac");
  if (args->backend.empty()) Die("missing --backend");
  const int queues = args->queues;
  const std::string device = args->device, state_dir = args->state_dir;
  const std::string socket_path = args->socket_path;
  // A standby (--standby-fd, fdstore/standby.h), as emud-worker: ready, then
  // wait; once promoted, go on as a spawned successor would.
  if (const int go = emud::worker_api::StandbyFdFromFlags(); go >= 0) {
    if (!emud::fdstore::StandbyReady(go).ok()) return 0;
    const absl::Status s = emud::fdstore::AwaitPromotion(go);
    ::close(go);
    if (!s.ok()) return 0;
  }

  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  if (std::getenv("FAKE_WORKER_IGNORE_SIGTERM") != nullptr) {
    signal(SIGTERM, SIG_IGN);
    sigdelset(&sigs, SIGTERM);
  }
  sigprocmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);
  int sfd = signalfd(-1, &sigs, SFD_CLOEXEC);

  auto inherited = emud::fdstore::TakeInheritedFds();
  if (!inherited.ok()) Die(inherited.status().ToString());
  std::unique_ptr<emud::fdstore::FdStoreClient> store;
  const char* store_path = std::getenv(emud::fdstore::kStoreSocketEnv);
  if (auto it = inherited->find(emud::fdstore::kChannelKey); it != inherited->end()) {
    auto c = emud::fdstore::FdStoreClient::Adopt(std::move(it->second), device);
    if (!c.ok()) Die(c.status().ToString());
    store = std::move(*c);
    inherited->erase(it);
    for (const auto& [key, fd] : *inherited) {
      absl::Status s = store->Deposit(key, fd.get());  // so that a reconnect re-deposits it
      if (!s.ok()) Die(s.ToString());
    }
  }
  auto deposit = [&](const char* key, int fd) {
    if (store == nullptr) return;
    absl::Status s = store->Deposit(key, fd);
    if (!s.ok()) std::cerr << "fake_worker: deposit " << key << ": " << s << std::endl;
  };
  auto release = [&](const char* key) {
    if (store != nullptr) (void)store->Release(key);
  };

  Worker w;
  emud::state_store::EnvOptions eo;
  eo.tables = {emud::worker_api::kStatusTable};
  auto env = emud::state_store::Env::Open(emud::state_store::DeviceEnvDir(state_dir, device), eo);
  if (!env.ok()) Die(env.status().ToString());
  w.env = std::move(*env);
  absl::Status s = w.env->View([&](const emud::state_store::ReadTxn& txn) -> absl::Status {
    auto prev = w.table.Get(txn, emud::worker_api::kStatusKey);
    if (!prev.ok()) return prev.status();
    if (prev->has_value()) {
      w.st = **prev;
      w.st.set_reattaches(w.st.reattaches() + 1);
      w.st.set_last_reattach_seconds(0.001);
    }
    return absl::OkStatus();
  });
  if (!s.ok()) Die(s.ToString());
  const WorkerStatus previous = w.st;
  w.st.set_pid(getpid());
  w.st.set_phase(WorkerStatus::PHASE_UNSPECIFIED);
  w.st.set_virtchnl_major(0);
  w.st.set_virtchnl_minor(0);
  w.st.set_last_error("");
  while (w.st.rx_size() < queues) w.st.add_rx()->set_queue(w.st.rx_size() - 1);
  while (w.st.tx_size() < queues) w.st.add_tx()->set_queue(w.st.tx_size() - 1);

  struct stat cst;
  if (stat(absl::StrCat(state_dir, "/fake/", device, ".crash").c_str(), &cst) == 0) {
    w.st.set_last_error("fake crash requested");
    w.Publish();
    return 3;
  }

  int lfd = -1;
  if (auto it = inherited->find(emud::worker_api::kListenFdKey); it != inherited->end()) {
    lfd = it->second.release();
  } else {
    auto listener = emud::ListenUnix(socket_path, {.backlog = 4, .nonblocking = false});
    if (!listener.ok()) {
      w.st.set_last_error(std::string(listener.status().message()));
      w.Publish();
      return 4;
    }
    lfd = listener->release();
    deposit(emud::worker_api::kListenFdKey, lfd);
  }
  int cfd = -1;
  if (auto it = inherited->find(emud::worker_api::kConnFdKey); it != inherited->end()) {
    // Resume the client's connection where the previous worker left it.
    cfd = it->second.release();
    w.st.set_phase(previous.phase() >= WorkerStatus::CONNECTED ? previous.phase()
                                                               : WorkerStatus::CONNECTED);
    w.st.set_virtchnl_major(previous.virtchnl_major());
    w.st.set_virtchnl_minor(previous.virtchnl_minor());
  } else {
    w.st.set_phase(WorkerStatus::LISTENING);
  }
  w.Publish();

  std::string buf;
  while (true) {
    int store_fd = store != nullptr && store->connected() ? store->channel_fd() : -1;
    struct pollfd pfds[4] = {
        {sfd, POLLIN, 0}, {lfd, POLLIN, 0}, {store_fd, POLLIN, 0}, {cfd, POLLIN, 0}};
    bool want_reconnect = store != nullptr && !store->connected() && store_path != nullptr;
    if (poll(pfds, 4, want_reconnect ? 50 : -1) < 0) continue;
    if (pfds[0].revents) {
      close(lfd);
      unlink(socket_path.c_str());
      return 0;
    }
    if (pfds[2].revents) {
      // The store never speaks first: readable means emud went away. A
      // failing Reconnect is the client's way to drop the dead channel; the
      // next rounds retry the real path.
      (void)store->Reconnect("/nonexistent");
    }
    if (want_reconnect) {
      absl::Status s = store->Reconnect(store_path);
      if (s.ok()) std::cerr << "fake_worker: " << device << ": reconnected to the fd store\n";
    }
    if (pfds[1].revents) {
      int c = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0 && cfd >= 0) {
        close(c);  // one client at a time, like a vfio-user server
      } else if (c >= 0) {
        cfd = c;
        deposit(emud::worker_api::kConnFdKey, cfd);
        w.st.set_phase(WorkerStatus::CONNECTED);
        (*w.st.mutable_vfio_user_messages())["VERSION"] += 1;
        w.Publish();
      }
    }
    if (cfd >= 0 && pfds[3].revents) {
      char tmp[256];
      ssize_t n = read(cfd, tmp, sizeof(tmp));
      if (n <= 0) {
        release(emud::worker_api::kConnFdKey);
        close(cfd);
        cfd = -1;
        buf.clear();
        w.st.set_phase(WorkerStatus::LISTENING);
        w.Publish();
        continue;
      }
      buf.append(tmp, n);
      size_t nl;
      while ((nl = buf.find('\n')) != std::string::npos) {
        std::string line = buf.substr(0, nl);
        buf.erase(0, nl + 1);
        if (line == "ready") {
          w.st.set_phase(WorkerStatus::DRIVER_READY);
          w.st.set_virtchnl_major(1);
          w.st.set_virtchnl_minor(1);
          (*w.st.mutable_virtchnl_ops())["VERSION/SUCCESS"] += 1;
          (*w.st.mutable_virtchnl_ops())["GET_VF_RESOURCES/SUCCESS"] += 1;
        } else if (line == "linkup") {
          w.st.set_phase(WorkerStatus::LINK_UP);
          (*w.st.mutable_virtchnl_ops())["ENABLE_QUEUES/SUCCESS"] += 1;
        } else if (line.rfind("tx ", 0) == 0) {
          uint64_t pk = 0;
          if (absl::SimpleAtoi(line.substr(3), &pk)) {
            for (auto* q : {w.st.mutable_tx(0), w.st.mutable_rx(0)}) {
              q->set_packets(q->packets() + pk);
              q->set_bytes(q->bytes() + 64 * pk);
            }
            (*w.st.mutable_vfio_user_messages())["REGION_WRITE"] += pk;
          } else {
            (*w.st.mutable_vfio_user_errors())["REGION_WRITE"] += 1;
          }
        } else if (line == "crash") {
          w.st.set_last_error("fake worker crashed on request");
          w.Publish();
          _exit(7);
        }
        w.Publish();
        (void)!write(cfd, "ok\n", 3);
      }
    }
  }
}
