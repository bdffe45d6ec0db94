// A single-producer single-consumer frame ring in a tmpfs file, shared by two
// processes (the peer: backend). The consumer creates the file and a FIFO
// beside it for wake-ups; the producer opens both.
//
// Layout: a 4 KiB header (magic, geometry, producer head, consumer tail,
// consumer-sleeping flag, each on its own cache line) followed by
// `slots` slots of `slot_size` bytes: u32 length, then the frame.
//
// Trust: each side treats the other's indices and lengths as untrusted and
// validates them; a bad value is counted, never followed out of bounds.
// Crash: indices live in the file, so a successor process continues where the
// dead one stopped; the consumer advances its tail only after the frame was
// taken, so a crash never loses a frame the producer published.
#ifndef EMUD_DATAPLANE_SHM_RING_H_
#define EMUD_DATAPLANE_SHM_RING_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/mapped_file.h"
#include "base/unique_fd.h"

namespace emud::dataplane {

class ShmRing {
 public:
  // Opens or creates ring `path` (and FIFO `path`.wake) as the consumer.
  // An existing ring with the same geometry is reused (indices kept).
  static absl::StatusOr<std::unique_ptr<ShmRing>> OpenConsumer(const std::string& path,
                                                               uint32_t slots,
                                                               uint32_t slot_size);
  // Opens an existing ring as the producer. NOT_FOUND if the consumer has not
  // created it yet.
  static absl::StatusOr<std::unique_ptr<ShmRing>> OpenProducer(const std::string& path);
  ~ShmRing();

  // Producer: appends `frame`; false if the ring is full or the frame does
  // not fit a slot. Wakes the consumer if it sleeps.
  bool Push(absl::Span<const uint8_t> frame);
  // Producer: wake the consumer if it announced that it sleeps (called by
  // Push after each burst; exposed for batching).
  void WakeIfSleeping();

  // Consumer: the oldest frame, without removing it; empty span if none.
  // A corrupt length is counted in errors() and the slot skipped.
  absl::Span<const uint8_t> Front();
  // Consumer: removes the frame returned by Front().
  void Pop();
  // Consumer: readable FIFO fd for epoll.
  int wake_fd() const { return fifo_.get(); }
  // Consumer: announce sleeping; returns true if frames arrived meanwhile.
  bool PrepareSleep();
  // Consumer: drain wake-up bytes.
  void DrainWake();

  uint64_t errors() const { return errors_; }
  uint32_t slots() const { return slots_; }

 private:
  struct Header;
  ShmRing() = default;

  UniqueFd fd_;
  UniqueFd fifo_;
  // Adopts `map` (header page + slots).
  void Attach(MappedFile map);

  MappedFile map_;
  Header* hdr_ = nullptr;
  uint8_t* data_ = nullptr;
  uint32_t slots_ = 0;
  uint32_t slot_size_ = 0;
  bool producer_ = false;
  std::string fifo_path_;
  uint64_t errors_ = 0;
};

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_SHM_RING_H_
