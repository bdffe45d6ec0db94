// TapRxStage: the TAP backend's receive buffer, in a tmpfs file so that a
// frame read from the TAP survives the worker.
//
// read() on a TAP fd consumes the frame: a worker killed after the read but
// before the frame reached the guest's RX ring would lose it (the guest
// would see a lost ping reply at every kill). So the frame is read straight
// into this file and its progress is recorded beside it:
//
//   kEmpty    nothing held;
//   kReading  a read() was issued into data[]; data[12..13] (the EtherType)
//             was zeroed first, so a successor can tell "the read completed"
//             (a real frame has a non-zero EtherType) from "it did not";
//   kHeld     data[0, len) is a frame not yet taken by the device (taken =
//             written to a guest RX buffer, or refused by a MAC filter).
//
// A successor that finds kHeld offers the frame again; one that finds
// kReading with a frame in data[] recovers its length from the frame itself
// (IPv4 total length with a valid header checksum, IPv6 payload length, ARP)
// and otherwise drops it, counted. A frame taken just before the kill may be
// delivered twice (one frame, inside the kill's window); none is lost.
#ifndef EMUD_DATAPLANE_TAP_RX_STAGE_H_
#define EMUD_DATAPLANE_TAP_RX_STAGE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/mapped_file.h"

namespace emud::dataplane {

// The length of the Ethernet frame at the start of `buf` as its own headers
// state it (IPv4 with a valid header checksum, IPv6, ARP; one 802.1Q tag
// allowed), or nullopt when the frame does not say (or lies beyond `buf`).
std::optional<size_t> SelfDescribedFrameLength(absl::Span<const uint8_t> buf);

class TapRxStage {
 public:
  static constexpr size_t kCapacity = 65536;  // a TAP read never returns more

  // Opens or creates the stage file at `path` and recovers what a previous
  // worker left in it (see the file comment); an empty path gives a private
  // stage (a memfd) that survives nothing. INTERNAL on I/O errors,
  // RESOURCE_EXHAUSTED if the tmpfs is full.
  static absl::StatusOr<std::unique_ptr<TapRxStage>> Open(const std::string& path);

  // The held frame (possibly recovered at Open), or an empty span.
  absl::Span<const uint8_t> held() const;
  // Marks the stage kReading and returns the buffer to read() into.
  uint8_t* BeginRead();
  // Records the result of that read: n > 0 holds a frame of n bytes; n <= 0
  // (nothing read) returns the stage to kEmpty.
  void EndRead(ssize_t n);
  // The held frame was taken by the device: back to kEmpty.
  void Release();

  // Frames recovered from a predecessor (held or read-in-progress), and
  // read-in-progress frames that could not be recovered (dropped).
  uint64_t recovered() const { return recovered_; }
  uint64_t unrecoverable() const { return unrecoverable_; }

 private:
  struct Layout;
  explicit TapRxStage(MappedFile map) : map_(std::move(map)), l_(map_.as<Layout>()) {}
  void Recover();

  MappedFile map_;  // the stage file, allocated and MAP_POPULATE
  Layout* l_;
  uint64_t recovered_ = 0, unrecoverable_ = 0;
};

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_TAP_RX_STAGE_H_
