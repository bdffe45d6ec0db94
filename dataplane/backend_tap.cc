// tap:NAME - a Linux TAP interface, single-queue or (BackendOptions::
// tap_queues > 1) IFF_MULTI_QUEUE with one TAP queue per device queue pair.
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dataplane/backend.h"
#include "dataplane/tap_rx_stage.h"
#include "base/unique_fd.h"

namespace emud::dataplane {
namespace {

// One TAP queue: its fd and its receive stage (a tmpfs file: tap-rx for
// queue 0, as before multi-queue, tap-rx.K for queue K).
struct TapQueue {
  UniqueFd fd;
  std::unique_ptr<TapRxStage> stage;
  bool attached = true;
};

class TapBackend : public Backend {
 public:
  TapBackend(std::string ifname, std::vector<TapQueue> queues, uint32_t max_frame)
      : ifname_(std::move(ifname)), q_(std::move(queues)), max_frame_(max_frame) {
    for (const TapQueue& q : q_) counters_.rx_errors += q.stage->unrecoverable();
  }

  std::string spec() const override { return absl::StrCat("tap:", ifname_); }
  uint32_t num_queues() const override { return uint32_t(q_.size()); }

  // TX queue q writes to TAP queue q % n when it is attached (a write to a
  // detached queue fails), else to the lowest attached one.
  size_t Send(uint16_t queue, absl::Span<const FrameView> frames) override {
    uint32_t k = queue % q_.size();
    const uint32_t active = active_.load(std::memory_order_relaxed);
    if (!(active & (1u << k))) k = active != 0 ? __builtin_ctz(active) : 0;
    const int fd = q_[k].fd.get();
    size_t sent = 0, dropped = 0;
    for (FrameView f : frames) {
      ssize_t n;
      do {
        n = ::write(fd, f.data(), f.size());
      } while (n < 0 && errno == EINTR);
      if (n == static_cast<ssize_t>(f.size())) {
        ++sent;
      } else {
        ++dropped;  // EAGAIN (queue full), EIO (interface down)
      }
    }
    if (sent) AtomicBackendCounters::Add(counters_.tx_frames, sent);
    if (dropped) AtomicBackendCounters::Add(counters_.tx_dropped, dropped);
    return sent;
  }

  // Frames are read into the queue's stage (a tmpfs file) and released only
  // once the device took them, so a kill never loses one (tap_rx_stage.h).
  size_t Poll(size_t budget, uint32_t queue) override {
    if (queue >= q_.size()) return 0;
    TapQueue& tq = q_[queue];
    TapRxStage& stage = *tq.stage;
    size_t taken = 0;
    while (taken < budget) {
      FrameView frame = stage.held();
      if (frame.empty()) {
        ssize_t n = ::read(tq.fd.get(), stage.BeginRead(), TapRxStage::kCapacity);
        if (n < 0 && errno == EINTR) {
          stage.EndRead(0);
          continue;
        }
        if (n > 0 && (static_cast<uint32_t>(n) > max_frame_ || n < 14)) {
          AtomicBackendCounters::Add(counters_.rx_errors, 1);
          stage.EndRead(0);
          continue;
        }
        stage.EndRead(n);
        if (n <= 0) break;  // EAGAIN: nothing more (EBADFD: detached)
        frame = stage.held();
      }
      if (sink_ == nullptr || !sink_->Deliver(uint16_t(queue), frame)) break;
      sink_->EndBurst(uint16_t(queue));  // visible before the stage lets it go
      stage.Release();
      ++taken;
    }
    if (taken) AtomicBackendCounters::Add(counters_.rx_frames, taken);
    return taken;
  }

  int event_fd(uint32_t queue) const override {
    return queue < q_.size() ? q_[queue].fd.get() : -1;
  }
  bool HasPending(uint32_t queue) const override {
    return queue < q_.size() && !q_[queue].stage->held().empty();
  }

  // TUNSETQUEUE: the kernel picks among attached queues only, and a detached
  // queue's buffered frames are dropped (its queue pair stopped).
  void SetActiveQueues(uint32_t mask) override {
    mask |= 1;
    if (q_.size() > 1) {
      for (uint32_t k = 0; k < q_.size(); ++k) {
        const bool want = mask & (1u << k);
        if (want == q_[k].attached) continue;
        struct ifreq ifr;
        std::memset(&ifr, 0, sizeof(ifr));
        ifr.ifr_flags = want ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
        if (::ioctl(q_[k].fd.get(), TUNSETQUEUE, &ifr) == 0 || (want && errno == EINVAL)) {
          q_[k].attached = want;
        } else {
          std::fprintf(stderr, "tap %s: %s queue %u: %s\n", ifname_.c_str(),
                       want ? "attaching" : "detaching", k, std::strerror(errno));
        }
      }
    }
    uint32_t active = 0;
    for (uint32_t k = 0; k < q_.size(); ++k) active |= uint32_t(q_[k].attached) << k;
    active_.store(active, std::memory_order_relaxed);
  }

 private:
  std::string ifname_;
  std::vector<TapQueue> q_;
  uint32_t max_frame_;
  std::atomic<uint32_t> active_{~0u};  // attached TAP queues
};

// TUNSETIFF on a fresh /dev/net/tun descriptor.
absl::StatusOr<UniqueFd> OpenTapQueue(absl::string_view ifname, bool multi_queue) {
  UniqueFd fd(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!fd.valid()) {
    return absl::UnavailableError(absl::StrCat("open /dev/net/tun: ", std::strerror(errno)));
  }
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof(ifr));
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (multi_queue ? IFF_MULTI_QUEUE : 0);
  std::memcpy(ifr.ifr_name, ifname.data(), ifname.size());
  if (::ioctl(fd.get(), TUNSETIFF, &ifr) < 0) {
    int e = errno;
    absl::Status s = absl::UnavailableError(absl::StrCat(
        "TUNSETIFF ", ifname, multi_queue ? " (IFF_TAP|IFF_NO_PI|IFF_MULTI_QUEUE): " :
        " (IFF_TAP|IFF_NO_PI): ", std::strerror(e)));
    if (e == EINVAL) return absl::FailedPreconditionError(s.message());
    return s;
  }
  return fd;
}

// An inherited TAP queue: re-attached if its predecessor had detached it
// (TUNGETIFF fails on a detached queue), checked to belong to `ifname`,
// made non-blocking. Returns its IFF_ flags.
absl::StatusOr<int> AdoptTapQueue(int fd, absl::string_view ifname) {
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof(ifr));
  ifr.ifr_flags = IFF_ATTACH_QUEUE;
  (void)::ioctl(fd, TUNSETQUEUE, &ifr);  // EINVAL: attached (or single-queue)
  std::memset(&ifr, 0, sizeof(ifr));
  if (::ioctl(fd, TUNGETIFF, &ifr) < 0 ||
      absl::string_view(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)) != ifname) {
    return absl::FailedPreconditionError(
        absl::StrCat("inherited TAP fd is not attached to ", ifname));
  }
  int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
    return absl::InternalError("fcntl O_NONBLOCK on the inherited TAP fd");
  }
  return int(ifr.ifr_flags);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> OpenTapBackend(absl::string_view ifname,
                                                        const BackendOptions& options) {
  std::vector<UniqueFd> inherited;  // owned from here on, also on error
  for (int fd : options.tap_fds) inherited.emplace_back(fd);
  if (ifname.empty() || ifname.size() >= IFNAMSIZ) {
    return absl::InvalidArgumentError(absl::StrCat("TAP name '", ifname, "' must be 1..",
                                                   IFNAMSIZ - 1, " characters"));
  }
  const uint32_t wanted = std::max<uint32_t>(1, options.tap_queues);
  std::vector<UniqueFd> fds;
  bool multi = wanted > 1;
  if (!inherited.empty() && inherited[0].valid()) {
    auto flags = AdoptTapQueue(inherited[0].get(), ifname);
    if (!flags.ok()) return flags.status();
    // A predecessor's single-queue TAP (or one made before multi-queue) stays
    // single-queue: its flags cannot change while the interface exists.
    multi = multi && (*flags & IFF_MULTI_QUEUE);
    fds.push_back(std::move(inherited[0]));
  } else {
    auto fd = OpenTapQueue(ifname, multi);
    if (multi && absl::IsFailedPrecondition(fd.status())) {
      std::fprintf(stderr,
                   "tap %.*s: exists without multi_queue: one TAP queue for all %u queue pairs\n",
                   int(ifname.size()), ifname.data(), wanted);
      multi = false;
      fd = OpenTapQueue(ifname, false);
    }
    if (!fd.ok()) return fd.status();
    fds.push_back(std::move(*fd));
  }
  for (uint32_t k = 1; multi && k < wanted; ++k) {
    if (k < inherited.size() && inherited[k].valid()) {
      auto flags = AdoptTapQueue(inherited[k].get(), ifname);
      if (!flags.ok()) return flags.status();
      fds.push_back(std::move(inherited[k]));
      continue;
    }
    auto fd = OpenTapQueue(ifname, true);
    if (!fd.ok()) return fd.status();
    fds.push_back(std::move(*fd));
  }
  std::string stage_dir;
  if (!options.shm_dir.empty() && !options.device.empty()) {
    stage_dir = absl::StrCat(options.shm_dir, "/", options.device);
    std::error_code ec;
    std::filesystem::create_directories(stage_dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("creating ", stage_dir, ": ", ec.message()));
  }
  std::vector<TapQueue> queues;
  for (uint32_t k = 0; k < fds.size(); ++k) {
    std::string path;
    if (!stage_dir.empty()) path = k == 0 ? stage_dir + "/tap-rx" : absl::StrCat(stage_dir, "/tap-rx.", k);
    auto stage = TapRxStage::Open(path);
    if (!stage.ok()) return stage.status();
    queues.push_back({std::move(fds[k]), std::move(*stage), true});
  }
  return std::unique_ptr<Backend>(
      new TapBackend(std::string(ifname), std::move(queues), options.max_frame));
}

}  // namespace emud::dataplane
