// Backends: where a device's transmitted frames go and where its received
// frames come from.
//
//   tap:NAME      a Linux TAP interface (/dev/net/tun, IFF_TAP | IFF_NO_PI)
//   loopback      TX comes straight back on the device's own RX (same queue)
//   peer:DEVICE   an L2 link to another emulated device of the node over
//                 shared-memory SPSC rings in tmpfs files
//
// Queues: a backend has num_queues() receive queues (a multi-queue TAP: one
// per TAP queue; the others: 1), each with its own event_fd, pending frame
// and Poll. TX queue q transmits on backend queue q % num_queues() (a
// multi-queue TAP: the host kernel then steers the flow's replies to that
// TAP queue, tun's automatic flow steering).
//
// Threading (dataplane/datapath.h, "data-path threads"): Send may be called
// concurrently from several threads, each with its own TX queue; Poll,
// HasPending and ArmNotify of one backend queue from one thread at a time;
// SetActiveQueues only while no thread polls (the data path quiesces them).
// Counters are atomic. Frames are whole Ethernet frames without CRC.
#ifndef EMUD_DATAPLANE_BACKEND_H_
#define EMUD_DATAPLANE_BACKEND_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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
  // Makes every frame taken for `queue` visible to the guest: a sink may
  // hold back descriptor write-backs between Deliver calls (the data path
  // writes RX descriptors in pairs). A backend calls it at the end of each
  // Send or Poll, and before it durably gives up a frame it was offering
  // (pops it from a peer ring, releases it from a TAP stage): a worker
  // killed after that must not have lost a frame that no descriptor shows.
  virtual void EndBurst(uint16_t queue) { (void)queue; }
};

struct BackendCounters {
  uint64_t tx_frames = 0;
  uint64_t tx_dropped = 0;  // backend full / interface down / write error
  uint64_t rx_frames = 0;   // delivered to the sink
  uint64_t rx_errors = 0;   // malformed input from the other side
};

// The live counters behind Backend::counters() (written from several
// data-path threads).
struct AtomicBackendCounters {
  std::atomic<uint64_t> tx_frames{0}, tx_dropped{0}, rx_frames{0}, rx_errors{0};
  static void Add(std::atomic<uint64_t>& c, uint64_t n) { c.fetch_add(n, std::memory_order_relaxed); }
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

  // Offers up to `budget` pending received frames of backend queue `queue`
  // to the sink (as FrameSink::Deliver(queue, ...)). Returns the number
  // taken. Never blocks.
  virtual size_t Poll(size_t budget, uint32_t queue = 0) = 0;

  // Receive queues (>= 1).
  virtual uint32_t num_queues() const { return 1; }

  // A descriptor that becomes readable when Poll(queue) may find frames, or
  // -1 if the backend never has asynchronous input (loopback). After it
  // fires, call Poll until it returns less than the budget, then ArmNotify().
  virtual int event_fd(uint32_t queue = 0) const = 0;

  // Prepares event_fd(queue) to signal the next frame. Returns true if
  // frames are already pending (poll again instead of sleeping).
  virtual bool ArmNotify(uint32_t /*queue*/ = 0) { return false; }

  // True if frames of `queue` were left pending because the sink refused them.
  virtual bool HasPending(uint32_t /*queue*/ = 0) const { return false; }

  // Which receive queues the host should deliver to (bit k = queue k; a
  // multi-queue TAP attaches and detaches its TAP queues, so the host
  // kernel spreads traffic over the queues the guest runs). Queue 0 always
  // stays active. Default: ignored.
  virtual void SetActiveQueues(uint32_t /*mask*/) {}

  BackendCounters counters() const {
    return {counters_.tx_frames.load(std::memory_order_relaxed),
            counters_.tx_dropped.load(std::memory_order_relaxed),
            counters_.rx_frames.load(std::memory_order_relaxed),
            counters_.rx_errors.load(std::memory_order_relaxed)};
  }

 protected:
  FrameSink* sink_ = nullptr;
  AtomicBackendCounters counters_;
};

struct BackendOptions {
  // This device's name (peer: ring files are named after both ends).
  std::string device;
  // Directory for shared-memory ring files (state_store::ShmDir).
  std::string shm_dir;
  // Largest frame carried (peer ring slot size, TAP read buffer).
  uint32_t max_frame = 9728;
  // TAP: queues wanted (the device's queue pairs). 1 opens a single-queue
  // TAP as before; more open it with IFF_MULTI_QUEUE, one TAP queue each
  // (an existing single-queue TAP, e.g. made by `ip tuntap add` without
  // multi_queue, refuses that: the backend then runs with its one queue).
  uint32_t tap_queues = 1;
  // TAP: adopt these descriptors (index k: TAP queue k; -1: none), handed
  // over by a predecessor through the fd store (ownership is taken, also on
  // error), instead of opening /dev/net/tun for them. Their interface name
  // must match; a detached queue is re-attached. Missing queues of a
  // multi-queue TAP are opened anew. A TAP backend's event_fd(k) is its TAP
  // queue k's fd (what the fd store keeps).
  std::vector<int> tap_fds;
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
