// tap:NAME - a Linux TAP interface.
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dataplane/backend.h"
#include "dataplane/tap_rx_stage.h"
#include "base/unique_fd.h"

namespace emud::dataplane {
namespace {

class TapBackend : public Backend {
 public:
  TapBackend(std::string ifname, UniqueFd fd, uint32_t max_frame, std::unique_ptr<TapRxStage> stage)
      : ifname_(std::move(ifname)), fd_(std::move(fd)), max_frame_(max_frame), stage_(std::move(stage)) {
    counters_.rx_errors += stage_->unrecoverable();
  }

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

  // Frames are read into the stage (a tmpfs file) and released only once
  // the device took them, so a kill never loses one (tap_rx_stage.h).
  size_t Poll(size_t budget) override {
    size_t taken = 0;
    while (taken < budget) {
      FrameView frame = stage_->held();
      if (frame.empty()) {
        ssize_t n = ::read(fd_.get(), stage_->BeginRead(), TapRxStage::kCapacity);
        if (n < 0 && errno == EINTR) {
          stage_->EndRead(0);
          continue;
        }
        if (n > 0 && (static_cast<uint32_t>(n) > max_frame_ || n < 14)) {
          ++counters_.rx_errors;
          stage_->EndRead(0);
          continue;
        }
        stage_->EndRead(n);
        if (n <= 0) break;  // EAGAIN: nothing more
        frame = stage_->held();
      }
      if (sink_ == nullptr || !sink_->Deliver(0, frame)) break;
      stage_->Release();
      ++taken;
      ++counters_.rx_frames;
    }
    return taken;
  }

  int event_fd() const override { return fd_.get(); }
  bool HasPending() const override { return !stage_->held().empty(); }

 private:
  std::string ifname_;
  UniqueFd fd_;
  uint32_t max_frame_;
  // The frame being read or refused by the sink (offered again next Poll).
  std::unique_ptr<TapRxStage> stage_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> OpenTapBackend(absl::string_view ifname,
                                                        const BackendOptions& options) {
  UniqueFd inherited(options.tap_fd);  // owned from here on, also on error
  if (ifname.empty() || ifname.size() >= IFNAMSIZ) {
    return absl::InvalidArgumentError(absl::StrCat("TAP name '", ifname, "' must be 1..",
                                                   IFNAMSIZ - 1, " characters"));
  }
  std::string stage_path;
  if (!options.shm_dir.empty() && !options.device.empty()) {
    const std::string dir = absl::StrCat(options.shm_dir, "/", options.device);
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("creating ", dir, ": ", ec.message()));
    stage_path = dir + "/tap-rx";
  }
  auto stage = TapRxStage::Open(stage_path);
  if (!stage.ok()) return stage.status();
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
        new TapBackend(std::string(ifname), std::move(fd), options.max_frame, std::move(*stage)));
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
      new TapBackend(std::string(ifname), std::move(fd), options.max_frame, std::move(*stage)));
}

}  // namespace emud::dataplane
