// Receive-side scaling: the Toeplitz hash AVF hardware computes over the
// IPv4/IPv6 addresses (and TCP/UDP ports) of a frame, and the queue the
// driver's lookup table maps it to.
#ifndef EMUD_DATAPLANE_RSS_H_
#define EMUD_DATAPLANE_RSS_H_

#include <cstddef>
#include <cstdint>
#include <optional>

#include "absl/types/span.h"

namespace emud::dataplane {

// Toeplitz hash of `input` under `key` (key must be >= input.size() + 4 bytes).
uint32_t ToeplitzHash(absl::Span<const uint8_t> key, absl::Span<const uint8_t> input);

// All hash types (i40e PCTYPE bits) enabled.
inline constexpr uint64_t kAllRssHashTypes = ~0ull;

// The i40e packet classifier type (PCTYPE) of an IP frame, the bit RSS
// looks up in the driver's HENA: IPv4 UDP 31, TCP 33 (34: SYN without ACK),
// SCTP 35, other 36, fragment 38; IPv6 41/43/44/45/46/48. nullopt for
// non-IP frames and frames too short to classify.
std::optional<uint32_t> FramePctype(absl::Span<const uint8_t> frame);

// The RSS hash of an Ethernet frame whose hash type is enabled in `hena`:
// over src/dst address and, for unfragmented TCP/UDP/SCTP, src/dst port
// (the input order of the Microsoft RSS specification). nullopt for non-IP
// frames and for types `hena` leaves off (the frame then gets no hash).
// A TCP SYN without ACK hashes when either TCP type (33/34, IPv6 43/44) is on.
std::optional<uint32_t> FrameRssHash(absl::Span<const uint8_t> key,
                                     absl::Span<const uint8_t> frame,
                                     uint64_t hena = kAllRssHashTypes);

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_RSS_H_
