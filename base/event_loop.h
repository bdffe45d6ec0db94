// EventLoop: a small epoll loop that a device worker owns and that the
// vfio-user session, doorbell pollers, TAP backends etc. join with their fds.
//
// Adaptive polling: after any event the loop keeps calling epoll_wait with a
// zero timeout for `busy_poll` (default 100 us) before it blocks again, so a
// client that sends its next request right after a reply finds the server
// still on-CPU (no cross-CPU wakeup). An idle loop blocks: ~0 CPU.
//
// Single-threaded: every method except Stop() must be called from the thread
// running the loop (or before it runs). Handlers may add/remove fds,
// including their own.
#ifndef EMUD_BASE_EVENT_LOOP_H_
#define EMUD_BASE_EVENT_LOOP_H_

#include <sys/epoll.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"

namespace emud {

// epoll_wait with a nanosecond timeout (`timeout_ns` < 0: indefinitely):
// epoll_pwait2 (Linux 5.11), or on an older kernel whole milliseconds rounded
// up, never down to a spin. A 50 us sleep is then a 50 us sleep (plus timer
// slack), which the adaptive pollers rely on. Returns what epoll_wait does.
int EpollWaitNs(int epfd, epoll_event* events, int max_events, int64_t timeout_ns);

class EventLoop {
 public:
  using Handler = std::function<void(uint32_t events)>;

  static absl::StatusOr<std::unique_ptr<EventLoop>> Create();
  ~EventLoop();

  // Watches `fd` for `events` (EPOLLIN, EPOLLOUT...). ALREADY_EXISTS if the fd
  // is already watched.
  absl::Status Add(int fd, uint32_t events, Handler handler);
  absl::Status Modify(int fd, uint32_t events);
  // Stops watching `fd` (no-op if unknown). Safe inside any handler.
  void Remove(int fd);
  bool Watching(int fd) const { return handlers_.count(fd) != 0; }

  // Waits up to `timeout` (0 = poll, with nanosecond resolution: timer
  // slack applies) for events and dispatches them. Returns the number of
  // handlers run.
  absl::StatusOr<int> RunOnce(absl::Duration timeout);
  // Runs until Stop(); busy-polls for busy_poll() after activity.
  absl::Status Run();
  // Thread-safe and async-signal-safe: makes Run() return.
  void Stop();

  void set_busy_poll(absl::Duration d) { busy_poll_ = d; }
  absl::Duration busy_poll() const { return busy_poll_; }
  // The epoll fd: becomes readable when an event is pending, so this loop
  // can itself be nested in another poller.
  int fd() const { return epfd_.get(); }

 private:
  EventLoop() = default;
  UniqueFd epfd_;
  UniqueFd stop_fd_;  // eventfd
  bool stop_ = false;
  absl::Duration busy_poll_ = absl::Microseconds(100);
  std::unordered_map<int, std::shared_ptr<Handler>> handlers_;
};

}  // namespace emud

#endif  // EMUD_BASE_EVENT_LOOP_H_
