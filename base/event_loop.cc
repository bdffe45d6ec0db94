#include "base/event_loop.h"

#include <errno.h>
#include <sched.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace emud {

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create() {
  std::unique_ptr<EventLoop> loop(new EventLoop());
  loop->epfd_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!loop->epfd_.valid()) return absl::InternalError(absl::StrCat("epoll_create1: ", std::strerror(errno)));
  loop->stop_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!loop->stop_fd_.valid()) return absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));
  EventLoop* raw = loop.get();
  auto st = loop->Add(loop->stop_fd_.get(), EPOLLIN, [raw](uint32_t) {
    uint64_t v;
    while (::read(raw->stop_fd_.get(), &v, sizeof(v)) > 0) {
    }
    raw->stop_ = true;
  });
  if (!st.ok()) return st;
  return loop;
}

EventLoop::~EventLoop() = default;

absl::Status EventLoop::Add(int fd, uint32_t events, Handler handler) {
  if (handlers_.count(fd)) return absl::AlreadyExistsError(absl::StrCat("fd ", fd, " already watched"));
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(epfd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("epoll_ctl ADD ", fd, ": ", std::strerror(errno)));
  }
  handlers_[fd] = std::make_shared<Handler>(std::move(handler));
  return absl::OkStatus();
}

absl::Status EventLoop::Modify(int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(epfd_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("epoll_ctl MOD ", fd, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

void EventLoop::Remove(int fd) {
  if (handlers_.erase(fd)) ::epoll_ctl(epfd_.get(), EPOLL_CTL_DEL, fd, nullptr);
}

int EpollWaitNs(int epfd, epoll_event* events, int max_events, int64_t timeout_ns) {
  if (timeout_ns < 0) return ::epoll_wait(epfd, events, max_events, -1);
  timespec ts{static_cast<time_t>(timeout_ns / 1'000'000'000), static_cast<long>(timeout_ns % 1'000'000'000)};
  int n = ::epoll_pwait2(epfd, events, max_events, &ts, nullptr);
  if (n < 0 && errno == ENOSYS) {
    n = ::epoll_wait(epfd, events, max_events,
                     static_cast<int>(std::min<int64_t>((timeout_ns + 999'999) / 1'000'000, INT32_MAX)));
  }
  return n;
}

absl::StatusOr<int> EventLoop::RunOnce(absl::Duration timeout) {
  epoll_event evs[32];
  int n;
  n = EpollWaitNs(epfd_.get(), evs, 32,
                  timeout == absl::InfiniteDuration()
                      ? -1
                      : absl::ToInt64Nanoseconds(std::max(timeout, absl::ZeroDuration())));
  if (n < 0) {
    if (errno == EINTR) return 0;
    return absl::InternalError(absl::StrCat("epoll_wait: ", std::strerror(errno)));
  }
  int ran = 0;
  for (int i = 0; i < n; ++i) {
    auto it = handlers_.find(evs[i].data.fd);
    if (it == handlers_.end()) continue;  // removed by an earlier handler
    std::shared_ptr<Handler> h = it->second;  // keep alive if it removes itself
    (*h)(evs[i].events);
    ++ran;
  }
  return ran;
}

absl::Status EventLoop::Run() {
  stop_ = false;
  // Adaptive busy-polling: after an event, poll for `window` before blocking.
  // An event caught while polling doubles the window (up to busy_poll_); a
  // window that expires empty halves it. Below 5 us polling switches off and is
  // re-probed after 64 blocking wake-ups, so a peer that only ever talks after
  // we give up the CPU (same core) stops paying for our spinning.
  absl::Duration window = busy_poll_;
  absl::Time poll_until = absl::InfinitePast();
  int blocking_wakeups = 0;
  while (!stop_) {
    bool polling = absl::Now() < poll_until;
    auto n = RunOnce(polling ? absl::ZeroDuration() : absl::InfiniteDuration());
    if (!n.ok()) return n.status();
    if (busy_poll_ <= absl::ZeroDuration()) continue;
    if (*n > 0) {
      if (polling) {
        window = std::min(busy_poll_, std::max(window * 2, absl::Microseconds(10)));
      } else if (window == absl::ZeroDuration() && ++blocking_wakeups >= 64) {
        window = busy_poll_ / 4;
        blocking_wakeups = 0;
      }
      poll_until = window > absl::ZeroDuration() ? absl::Now() + window : absl::InfinitePast();
    } else if (polling) {
      if (absl::Now() >= poll_until) {
        window = window / 2 < absl::Microseconds(5) ? absl::ZeroDuration() : window / 2;
      } else {
        // Let a peer that shares this CPU run (likely the client about to
        // send its next request).
        sched_yield();
      }
    }
  }
  return absl::OkStatus();
}

void EventLoop::Stop() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t r = ::write(stop_fd_.get(), &one, sizeof(one));
}

}  // namespace emud
