// Worker: one emulated AVF device served over vfio-user - everything an
// emud-worker process owns, and the order in which it resumes its
// predecessor's device.
//
// A device's state lives in six places, none of them in the process: the
// LMDB environment (AVF model, vfio-user session, status record), the
// doorbell memfd, the queue state file, the session journal, the TAP
// receive stage and the poison-guard page (state_store::DeviceShmDir), plus
// the descriptors held by the fd store under worker_api/fd_keys.h keys. A
// Worker built over that state by ResumeOrCreate() serves the guest's
// connection where its predecessor left it, whatever instant the predecessor
// died at (ARCHITECTURE.md, "How a crash is survived").
//
//   Worker w(options);
//   absl::Status s = w.ResumeOrCreate();  // on error: exit, emud restarts
//   s = w.Run();                          // until Stop()
//
// Threading: ResumeOrCreate, Run and Abandon on one thread; Stop from any
// thread or a signal handler. With --datapath-threads N > 1, Run also runs
// N - 1 data-path threads (dataplane/datapath.h) and dispatches every
// control event with them parked.
#ifndef EMUD_DATAPLANE_WORKER_H_
#define EMUD_DATAPLANE_WORKER_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "avf/device.h"
#include "base/event_loop.h"
#include "base/poison_guard.h"
#include "base/unique_fd.h"
#include "dataplane/backend.h"
#include "dataplane/datapath.h"
#include "dataplane/queue_state.h"
#include "dataplane/status_publisher.h"
#include "fdstore/fd_store.h"
#include "proto/worker_status.pb.h"
#include "state_store/store.h"
#include "vfio_user/session.h"
#include "worker_api/restart_trace.h"
#include "worker_api/worker_args.h"

namespace emud::dataplane {

struct WorkerOptions {
  // The command line, valid (worker_api::WorkerArgsFromFlags).
  worker_api::WorkerArgs args;
  // The descriptors the worker was started with (fdstore::TakeInheritedFds).
  // With worker_api::kChannelFdKey among them the worker keeps its fds in
  // that fd store and is resumable; the others are its predecessor's, by key.
  std::map<std::string, UniqueFd> inherited_fds;
  // The fd store's listening socket (worker_api::kFdStoreSocketEnv), for
  // reconnecting after the store went away; empty: never reconnect.
  std::string store_socket;
  // The start's timeline so far (emud's marks, the process's); each
  // ResumeOrCreate step and the first poll add theirs, and Run logs it.
  worker_api::RestartTrace trace;
};

class Worker {
 public:
  explicit Worker(WorkerOptions options);
  // Closes the device as a stopping worker does: the session disconnects
  // its client (committing that the session is over and releasing its fds,
  // which ends the guest's connection if the fd store lets go of it too),
  // unless Abandon() was called.
  ~Worker();

  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Builds the device over its persisted state, in this order:
  //   fd store channel (inherited fds are kept for a reconnect);
  //   state dir and LMDB environment (Env::Open); poison guard;
  //   avf::Device::Create over the doorbell memfd (inherited, else deposited);
  //   the backend (TAP fd inherited, else deposited); queue state; DataPath;
  //   with an inherited client connection and persistence:
  //     Device::Restore, OnFiltersChanged, Session::Resume (DMA windows and
  //     eventfds from the inherited fds), DataPath::Recover, release of
  //     inherited session fds the records no longer name;
  //   otherwise a fresh Session (an inherited connection that never finished
  //     VERSION is attached and served from its first request);
  //   the listener (inherited, else bound and deposited); Server::FromListener;
  //   release of every inherited fd nobody claimed.
  // Nothing is persisted about the predecessor's session that it did not
  // commit; a restore or resume that finds no session (NOT_FOUND) starts a
  // fresh one. Any other failure is returned (annotated with the step) and
  // leaves the Worker fit only for destruction; the caller exits and emud
  // decides about a restart. Call once.
  absl::Status ResumeOrCreate();

  // Publishes the status record (the worker is healthy from here on: emud's
  // supervision rule), then serves the guest - vfio-user requests, queues,
  // backend, interrupts, fd-store reconnects, status updates - until Stop()
  // or an event-loop error. Publishes a last record before returning. OK
  // after Stop(); the loop's error otherwise (also the record's last_error).
  // Requires a successful ResumeOrCreate().
  absl::Status Run();

  // Makes Run() return soon (at once if it has not started). Thread-safe
  // and async-signal-safe.
  void Stop();

  // Whether a successor resumes this worker's session if it dies at any
  // instant: persisted and under an fd store. Such a worker may end by
  // _exit() instead of returning (SIGTERM under emud: upgrade-worker).
  bool resumable() const;

  // True if ResumeOrCreate() took over a predecessor's live session.
  bool resumed() const { return resumed_; }

  // Forgets the session as a killed process would: nothing is committed,
  // released or closed at the protocol level, so destroying the Worker
  // leaves the guest's connection, the fds and the state to a successor.
  // Call after Run() returned (or instead of it).
  void Abandon();

  // Valid after a successful ResumeOrCreate(), until destruction.
  const avf::Device& device() const { return *device_; }
  vfio_user::Session& session() { return server_->session(); }
  const internal::WorkerStatus& status() const { return publisher_->status(); }

 private:
  class StoreDepositor;

  absl::Status AdoptFdStore();
  absl::Status OpenState();
  absl::Status OpenPoisonGuard();
  absl::Status CreateDevice();
  absl::Status CreateEventLoop();
  absl::Status OpenBackendAndQueues();
  absl::Status ResumeSession();
  absl::Status CreateSession();
  void ReleaseStaleSessionFds();
  absl::Status Listen();
  void ReleaseUnclaimedFds();
  absl::Status WatchFds();
  UniqueFd TakeInherited(absl::string_view key);
  vfio_user::SessionOptions SessionOptionsFor() const;
  void WatchStore();
  void MaintainStore();
  absl::Status RunThreaded(absl::FunctionRef<void(bool work)> after_round);

  WorkerOptions options_;
  const bool persist_;
  std::atomic<bool> stop_{false};
  bool resumed_ = false;
  absl::Duration resume_time_;

  // Declared in construction order; destroyed in reverse (server_ first).
  std::unique_ptr<fdstore::FdStoreClient> store_;
  std::unique_ptr<StoreDepositor> depositor_;
  std::unique_ptr<state_store::Env> env_;
  std::unique_ptr<PoisonGuard> guard_;
  std::vector<std::unique_ptr<PoisonGuard>> lane_guards_;  // data-path threads 1..
  std::unique_ptr<avf::Device> device_;
  std::unique_ptr<emud::EventLoop> loop_;
  std::atomic<emud::EventLoop*> loop_for_stop_{nullptr};
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<QueueStateFile> qstate_;
  std::unique_ptr<DataPath> datapath_;
  UniqueFd conn_;  // the inherited client connection until a session takes it
  std::unique_ptr<vfio_user::Session> session_;  // until the server takes it
  std::unique_ptr<vfio_user::Server> server_;
  std::unique_ptr<StatusPublisher> publisher_;
  bool store_watched_ = false;
  absl::Time next_reconnect_ = absl::InfinitePast();
};

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_WORKER_H_
