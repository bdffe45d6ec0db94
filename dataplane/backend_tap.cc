// tap:NAME - a Linux TAP interface.
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dataplane/backend.h"
#include "base/unique_fd.h"

namespace emud::dataplane {
namespace {

class TapBackend : public Backend {
 public:
  TapBackend(std::string ifname, UniqueFd fd, uint32_t max_frame)
      : ifname_(std::move(ifname)), fd_(std::move(fd)), max_frame_(max_frame), buf_(65536) {}

  std::string spec() const override { return absl::StrCat("tap:", ifname_); }

  size_t Send(uint16_t, absl::Span<const FrameView> frames) override {
    size_t sent = 0;
    for (FrameView f : frames) {
      ssize_t n;
      do {
        n = ::write(fd_.get(), f.data(), f.size());
      } while (n < 0 && errno == EINTR);
      if (n == static_cast<ssize_t>(f.size())) {
        ++sent;
        ++counters_.tx_frames;
      } else {
        ++counters_.tx_dropped;  // EAGAIN (queue full), EIO (interface down)
      }
    }
    return sent;
  }

  size_t Poll(size_t budget) override {
    size_t taken = 0;
    while (taken < budget) {
      if (held_len_ == 0) {
        ssize_t n = ::read(fd_.get(), buf_.data(), buf_.size());
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;  // EAGAIN: nothing more
        if (static_cast<uint32_t>(n) > max_frame_ || n < 14) {
          ++counters_.rx_errors;
          continue;
        }
        held_len_ = static_cast<size_t>(n);
      }
      if (sink_ == nullptr || !sink_->Deliver(0, FrameView(buf_.data(), held_len_))) break;
      held_len_ = 0;
      ++taken;
      ++counters_.rx_frames;
    }
    return taken;
  }

  int event_fd() const override { return fd_.get(); }
  bool HasPending() const override { return held_len_ != 0; }

 private:
  std::string ifname_;
  UniqueFd fd_;
  uint32_t max_frame_;
  std::vector<uint8_t> buf_;
  size_t held_len_ = 0;  // a frame the sink refused, offered again next Poll
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> OpenTapBackend(absl::string_view ifname,
                                                        const BackendOptions& options) {
  UniqueFd inherited(options.tap_fd);  // owned from here on, also on error
  if (ifname.empty() || ifname.size() >= IFNAMSIZ) {
    return absl::InvalidArgumentError(absl::StrCat("TAP name '", ifname, "' must be 1..",
                                                   IFNAMSIZ - 1, " characters"));
  }
  if (inherited.valid()) {
    UniqueFd fd = std::move(inherited);
    struct ifreq ifr;
    std::memset(&ifr, 0, sizeof(ifr));
    if (::ioctl(fd.get(), TUNGETIFF, &ifr) < 0 ||
        absl::string_view(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)) != ifname) {
      return absl::FailedPreconditionError(
          absl::StrCat("inherited TAP fd is not attached to ", ifname));
    }
    int fl = ::fcntl(fd.get(), F_GETFL);
    if (fl < 0 || ::fcntl(fd.get(), F_SETFL, fl | O_NONBLOCK) != 0) {
      return absl::InternalError("fcntl O_NONBLOCK on the inherited TAP fd");
    }
    return std::unique_ptr<Backend>(
        new TapBackend(std::string(ifname), std::move(fd), options.max_frame));
  }
  UniqueFd fd(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!fd.valid()) {
    return absl::UnavailableError(absl::StrCat("open /dev/net/tun: ", std::strerror(errno)));
  }
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof(ifr));
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  std::memcpy(ifr.ifr_name, ifname.data(), ifname.size());
  if (::ioctl(fd.get(), TUNSETIFF, &ifr) < 0) {
    return absl::UnavailableError(
        absl::StrCat("TUNSETIFF ", ifname, " (IFF_TAP|IFF_NO_PI): ", std::strerror(errno)));
  }
  return std::unique_ptr<Backend>(
      new TapBackend(std::string(ifname), std::move(fd), options.max_frame));
}

}  // namespace emud::dataplane
