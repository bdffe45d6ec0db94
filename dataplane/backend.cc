#include "dataplane/backend.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace emud::dataplane {
namespace {

class LoopbackBackend : public Backend {
 public:
  std::string spec() const override { return "loopback"; }
  size_t Send(uint16_t queue, absl::Span<const FrameView> frames) override {
    for (FrameView f : frames) {
      if (sink_ != nullptr && sink_->Deliver(queue, f)) {
        AtomicBackendCounters::Add(counters_.rx_frames, 1);
      } else {
        AtomicBackendCounters::Add(counters_.tx_dropped, 1);
        continue;
      }
      AtomicBackendCounters::Add(counters_.tx_frames, 1);
    }
    return frames.size();
  }
  size_t Poll(size_t, uint32_t) override { return 0; }
  int event_fd(uint32_t) const override { return -1; }
};

}  // namespace

std::unique_ptr<Backend> MakeLoopbackBackend() { return std::make_unique<LoopbackBackend>(); }

absl::StatusOr<std::unique_ptr<Backend>> OpenBackend(absl::string_view spec,
                                                     const BackendOptions& options) {
  if (spec == "loopback") return MakeLoopbackBackend();
  if (absl::StartsWith(spec, "tap:")) return OpenTapBackend(spec.substr(4), options);
  if (absl::StartsWith(spec, "peer:")) return OpenPeerBackend(spec.substr(5), options);
  return absl::InvalidArgumentError(
      absl::StrCat("backend '", spec, "': expected tap:IFNAME, loopback or peer:DEVICE"));
}

}  // namespace emud::dataplane
