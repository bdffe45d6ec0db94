// Backends: where a device's transmitted frames go and where its received
// frames come from.
//
//   tap:NAME      a Linux TAP interface (/dev/net/tun, IFF_TAP | IFF_NO_PI)
//   loopback      TX comes straight back on the device's own RX (same queue)
//   peer:DEVICE   an L2 link to another emulated device of the node over
//                 shared-memory SPSC rings in tmpfs files
//
// Threading: a backend is used from one thread (the worker's event loop).
// Frames are whole Ethernet frames without CRC.
#ifndef EMUD_DATAPLANE_BACKEND_H_
#define EMUD_DATAPLANE_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace emud::dataplane {

using FrameView = absl::Span<const uint8_t>;

// Receives frames from a backend (the RX side of a device).
class FrameSink {
 public:
  virtual ~FrameSink() = default;
  // Offers `frame` for RX queue `queue`. Returns false if the frame cannot be
  // taken now (no RX buffers): a backend that can keep the frame keeps it
  // and offers it again on a later Poll; one that cannot (loopback) drops it.
  // A frame refused by a filter is "taken" (return true) and counted by the
  // sink.
  virtual bool Deliver(uint16_t queue, FrameView frame) = 0;
};

struct BackendCounters {
  uint64_t tx_frames = 0;
  uint64_t tx_dropped = 0;  // backend full / interface down / write error
  uint64_t rx_frames = 0;   // delivered to the sink
  uint64_t rx_errors = 0;   // malformed input from the other side
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "tap:NAME", "loopback" or "peer:DEVICE".
  virtual std::string spec() const = 0;

  // Where received frames go; must be set before Send (loopback) or Poll.
  void set_sink(FrameSink* sink) { sink_ = sink; }

  // Transmits `frames` (from TX queue `queue`). Returns how many were
  // accepted; the rest were dropped (counted in tx_dropped). Never blocks.
  virtual size_t Send(uint16_t queue, absl::Span<const FrameView> frames) = 0;

  // Offers up to `budget` pending received frames to the sink. Returns the
  // number taken. Never blocks.
  virtual size_t Poll(size_t budget) = 0;

  // A descriptor that becomes readable when Poll may find frames, or -1 if
  // the backend never has asynchronous input (loopback). After it fires, call
  // Poll until it returns less than the budget, then ArmNotify().
  virtual int event_fd() const = 0;

  // Prepares event_fd() to signal the next frame. Returns true if frames are
  // already pending (poll again instead of sleeping).
  virtual bool ArmNotify() { return false; }

  // True if frames were left pending because the sink refused them.
  virtual bool HasPending() const { return false; }

  const BackendCounters& counters() const { return counters_; }

 protected:
  FrameSink* sink_ = nullptr;
  BackendCounters counters_;
};

struct BackendOptions {
  // This device's name (peer: ring files are named after both ends).
  std::string device;
  // Directory for shared-memory ring files (state_store::ShmDir).
  std::string shm_dir;
  // Largest frame carried (peer ring slot size, TAP read buffer).
  uint32_t max_frame = 9728;
  // TAP: adopt this descriptor, already attached to the interface (handed
  // over by a predecessor through the fd store; ownership is taken, also on
  // error), instead of opening /dev/net/tun. Its interface name must match.
  // A TAP backend's event_fd() is its TAP fd (what the fd store keeps).
  int tap_fd = -1;
};

// Parses `spec` and opens the backend.
absl::StatusOr<std::unique_ptr<Backend>> OpenBackend(absl::string_view spec,
                                                     const BackendOptions& options);

std::unique_ptr<Backend> MakeLoopbackBackend();
absl::StatusOr<std::unique_ptr<Backend>> OpenTapBackend(absl::string_view ifname,
                                                        const BackendOptions& options);
absl::StatusOr<std::unique_ptr<Backend>> OpenPeerBackend(absl::string_view peer,
                                                         const BackendOptions& options);

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_BACKEND_H_
