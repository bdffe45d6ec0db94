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

// The RSS hash of an Ethernet frame: over src/dst address and, for
// unfragmented TCP/UDP, src/dst port (the input order of the Microsoft RSS
// specification). nullopt for non-IP frames.
std::optional<uint32_t> FrameRssHash(absl::Span<const uint8_t> key,
                                     absl::Span<const uint8_t> frame);

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_RSS_H_
