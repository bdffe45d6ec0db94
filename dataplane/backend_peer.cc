// peer:DEVICE - an L2 link to another device of the node.
//
// Each device consumes its inbound ring SHM/<self>/peer.<peer> (which it
// creates) and produces into SHM/<peer>/peer.<self> (created by the peer; opened
// lazily, frames sent before the peer exists are dropped like on a cable whose
// other end is unplugged).
#include <filesystem>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "dataplane/backend.h"
#include "dataplane/shm_ring.h"
#include "state_store/state_dir.h"

namespace emud::dataplane {
namespace {

constexpr uint32_t kRingSlots = 1024;

class PeerBackend : public Backend {
 public:
  PeerBackend(std::string peer, std::string out_path, std::unique_ptr<ShmRing> in)
      : peer_(std::move(peer)), out_path_(std::move(out_path)), in_(std::move(in)) {}

  std::string spec() const override { return absl::StrCat("peer:", peer_); }

  // The ring has one producer: TX queues served by different data-path
  // threads take turns (uncontended with one thread).
  size_t Send(uint16_t, absl::Span<const FrameView> frames) override {
    std::lock_guard<std::mutex> lock(send_mu_);
    if (out_ == nullptr) {
      auto r = ShmRing::OpenProducer(out_path_);
      if (r.ok()) out_ = std::move(*r);
    }
    size_t sent = 0;
    for (FrameView f : frames) {
      if (out_ != nullptr && out_->Push(f)) {
        ++sent;
      } else {
        AtomicBackendCounters::Add(counters_.tx_dropped, 1);
      }
    }
    AtomicBackendCounters::Add(counters_.tx_frames, sent);
    if (out_ != nullptr) out_errors_.store(out_->errors(), std::memory_order_relaxed);
    if (sent > 0) out_->WakeIfSleeping();
    return sent;
  }

  size_t Poll(size_t budget, uint32_t) override {
    in_->DrainWake();
    pending_ = false;
    size_t taken = 0;
    while (taken < budget) {
      absl::Span<const uint8_t> f = in_->Front();
      if (f.empty()) break;
      if (sink_ == nullptr || !sink_->Deliver(0, f)) {
        pending_ = true;
        break;
      }
      sink_->EndBurst(0);  // visible before the ring lets it go
      in_->Pop();
      ++taken;
    }
    AtomicBackendCounters::Add(counters_.rx_frames, taken);
    counters_.rx_errors.store(in_->errors() + (out_errors_.load(std::memory_order_relaxed)),
                              std::memory_order_relaxed);
    return taken;
  }

  int event_fd(uint32_t) const override { return in_->wake_fd(); }
  bool ArmNotify(uint32_t) override {
    pending_ = false;
    return in_->PrepareSleep();
  }
  bool HasPending(uint32_t) const override { return pending_; }

 private:
  std::string peer_;
  std::string out_path_;
  std::unique_ptr<ShmRing> in_;
  std::mutex send_mu_;
  std::unique_ptr<ShmRing> out_;  // guarded by send_mu_
  std::atomic<uint64_t> out_errors_{0};
  bool pending_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> OpenPeerBackend(absl::string_view peer,
                                                         const BackendOptions& options) {
  absl::Status s = state_store::ValidateDeviceName(peer);
  if (!s.ok()) return s;
  s = state_store::ValidateDeviceName(options.device);
  if (!s.ok()) return s;
  if (peer == options.device) return absl::InvalidArgumentError("a device cannot peer with itself");
  if (options.shm_dir.empty()) return absl::InvalidArgumentError("peer backend needs shm_dir");
  uint32_t slot = (options.max_frame + 4 + 63) & ~63u;
  // Rings live in the consumer's directory, DIR/shm/<consumer>/peer.<producer>.
  std::error_code ec;
  std::filesystem::create_directories(absl::StrCat(options.shm_dir, "/", options.device), ec);
  if (ec) return absl::InternalError(absl::StrCat("creating the ring directory: ", ec.message()));
  auto in = ShmRing::OpenConsumer(absl::StrCat(options.shm_dir, "/", options.device, "/peer.", peer),
                                  kRingSlots, slot);
  if (!in.ok()) return in.status();
  return std::unique_ptr<Backend>(new PeerBackend(
      std::string(peer), absl::StrCat(options.shm_dir, "/", peer, "/peer.", options.device),
      std::move(*in)));
}

}  // namespace emud::dataplane
