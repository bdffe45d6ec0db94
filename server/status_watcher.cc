#include "server/status_watcher.h"

#include <sys/epoll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "base/log.h"
#include "google/protobuf/util/message_differencer.h"
#include "state_store/state_dir.h"

namespace emud::server {
namespace {

using emud::internal::WorkerStatus;

}  // namespace

absl::StatusOr<std::unique_ptr<StatusWatcher>> StatusWatcher::Create(StatusWatcherOptions options,
                                                                     RecordCallback on_record) {
  std::unique_ptr<StatusWatcher> w(new StatusWatcher(std::move(options), std::move(on_record)));
  w->epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  w->inotify_.reset(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  if (!w->epoll_.valid() || !w->inotify_.valid()) {
    return absl::InternalError(absl::StrCat("status watcher setup: ", std::strerror(errno)));
  }
  // One-shot: while reads are rate limited, further changes do not wake the
  // caller's loop; Poll re-arms once it read.
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLONESHOT;
  ::epoll_ctl(w->epoll_.get(), EPOLL_CTL_ADD, w->inotify_.get(), &ev);
  const absl::Time now = w->options_.now != nullptr ? w->options_.now() : absl::Now();
  w->next_fallback_ = now + w->options_.fallback;
  return w;
}

StatusWatcher::~StatusWatcher() = default;

void StatusWatcher::Arm() {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLONESHOT;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, inotify_.get(), &ev);
  armed_ = true;
}

void StatusWatcher::Watch(const std::string& device) {
  if (devs_.count(device) > 0) return;
  Dev& d = devs_[device];
  std::string dir = state_store::DeviceEnvDir(options_.state_dir, device);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  d.reader = std::make_unique<WorkerStatusReader>(dir);
  d.watch = ::inotify_add_watch(inotify_.get(), dir.c_str(),
                                IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE);
  if (d.watch < 0) {
    log::Warning(absl::StrCat("inotify on ", dir, ": ", std::strerror(errno),
                     " (status updates fall back to polling every ",
                     absl::FormatDuration(options_.fallback), ")"));
  } else {
    by_watch_[d.watch] = device;
  }
}

void StatusWatcher::Unwatch(const std::string& device) {
  auto it = devs_.find(device);
  if (it == devs_.end()) return;
  if (it->second.watch >= 0) {
    ::inotify_rm_watch(inotify_.get(), it->second.watch);
    by_watch_.erase(it->second.watch);
  }
  it->second.reader->Close();
  devs_.erase(it);
  settle_.erase(device);
}

void StatusWatcher::HandleEvents() {
  epoll_event ev;
  if (::epoll_wait(epoll_.get(), &ev, 1, 0) <= 0) return;
  armed_ = false;
  alignas(inotify_event) char buf[16384];
  ssize_t len;
  while ((len = ::read(inotify_.get(), buf, sizeof(buf))) > 0) {
    for (char* p = buf; p < buf + len;) {
      auto* e = reinterpret_cast<inotify_event*>(p);
      if (e->mask & IN_Q_OVERFLOW) {
        for (auto& [name, d] : devs_) d.dirty = true;
      } else if (e->len > 0 && std::strcmp(e->name, "data.mdb") == 0) {
        // Only commits matter (lock.mdb changes through mmap or at open).
        auto it = by_watch_.find(e->wd);
        if (it != by_watch_.end()) devs_[it->second].dirty = true;
      }
      p += sizeof(inotify_event) + e->len;
    }
  }
}

StatusWatcher::Refresh StatusWatcher::Read(const std::string& device, pid_t worker_pid) {
  auto it = devs_.find(device);
  if (it == devs_.end()) return Refresh::kNothingNew;
  Dev& d = it->second;
  d.dirty = false;
  auto st = d.reader->Read();
  if (!st.ok()) {
    log::DeviceWarning(device, absl::StrCat("reading worker status: ", st.status().ToString()));
    return Refresh::kNothingNew;
  }
  if (!st->has_value()) return Refresh::kNothingNew;
  WorkerStatus& next = **st;
  if (d.status.has_value()) {
    // Every publish stamps the record: same pid and stamp, same record.
    if (next.updated_unix_nanos() == d.status->updated_unix_nanos() &&
        next.pid() == d.status->pid()) {
      return Refresh::kNothingNew;
    }
    // A worker refreshes its record periodically; only the timestamp moves
    // then, and nothing downstream (metrics, phase, watchers) needs to run.
    // (MessageDifferencer: serialized maps have no stable order.)
    int64_t stamp = next.updated_unix_nanos();
    next.set_updated_unix_nanos(d.status->updated_unix_nanos());
    bool same = google::protobuf::util::MessageDifferencer::Equals(*d.status, next);
    next.set_updated_unix_nanos(stamp);
    if (same) {
      d.status->set_updated_unix_nanos(stamp);
      return Refresh::kTimestampOnly;
    }
  }
  // Phases the worker went through since our last read, other than the one
  // it is in now (e.g. LINK_UP of a guest that already detached).
  if (worker_pid != 0 && next.pid() == worker_pid) {
    for (int i = 0; i + 1 < next.recent_phases_size(); ++i) {
      const auto& change = next.recent_phases(i);
      if (change.seq() > d.seen_phase_seq) d.missed_phases.push_back(change.phase());
    }
    d.seen_phase_seq = std::max(d.seen_phase_seq, next.phase_seq());
  }
  d.status = std::move(next);
  if (on_record_) on_record_(device, *d.status);
  return Refresh::kChanged;
}

const WorkerStatus* StatusWatcher::status(const std::string& device) const {
  auto it = devs_.find(device);
  if (it == devs_.end() || !it->second.status.has_value()) return nullptr;
  return &*it->second.status;
}

std::vector<WorkerStatus::Phase> StatusWatcher::TakeMissedPhases(const std::string& device) {
  std::vector<WorkerStatus::Phase> out;
  auto it = devs_.find(device);
  if (it != devs_.end()) out.swap(it->second.missed_phases);
  return out;
}

void StatusWatcher::Poll(absl::Time now,
                         const std::function<void(const std::string&, Reason)>& read) {
  if (!armed_ && now >= next_read_allowed_) {
    std::vector<std::string> dirty;
    for (const auto& [name, d] : devs_) {
      if (d.dirty) dirty.push_back(name);
    }
    for (const auto& name : dirty) {
      read(name, Reason::kChanged);
      // The commit that raised the event may not be visible yet (LMDB
      // publishes its txn id after the meta page write, which raises no
      // further event): read once more shortly.
      settle_.insert(name);
    }
    if (!settle_.empty() && settle_at_ == absl::InfiniteFuture()) settle_at_ = now + options_.settle;
    // A device's first few changes (CREATED -> LISTENING) are seen at once,
    // a busy worker's stream of commits at most `burst` times per
    // refresh_interval.
    recent_reads_.push_back(now);
    while (recent_reads_.size() > static_cast<size_t>(options_.burst)) recent_reads_.pop_front();
    next_read_allowed_ = recent_reads_.size() < static_cast<size_t>(options_.burst)
                             ? now
                             : recent_reads_.front() + options_.refresh_interval;
    Arm();
  }
  if (now >= settle_at_) {
    std::set<std::string> settle;
    settle.swap(settle_);
    settle_at_ = absl::InfiniteFuture();
    for (const auto& name : settle) {
      if (devs_.count(name) > 0) read(name, Reason::kSettle);
    }
  }
  if (now >= next_fallback_) {
    std::vector<std::string> all;
    for (const auto& [name, d] : devs_) all.push_back(name);
    for (const auto& name : all) read(name, Reason::kFallback);
    next_fallback_ = now + options_.fallback;
  }
}

absl::Time StatusWatcher::NextPoll() const {
  absl::Time t = std::min(next_fallback_, settle_at_);
  if (!armed_) t = std::min(t, next_read_allowed_);
  return t;
}

}  // namespace emud::server
