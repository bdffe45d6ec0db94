// Receive address filter of a device as configured by virtchnl
// (ADD/DEL_ETH_ADDR, CONFIG_PROMISCUOUS_MODE).
#ifndef EMUD_DATAPLANE_MAC_FILTER_H_
#define EMUD_DATAPLANE_MAC_FILTER_H_

#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/types/span.h"

namespace emud::dataplane {

using MacAddr = std::array<uint8_t, 6>;

class MacFilter {
 public:
  static constexpr size_t kMaxAddrs = 256;

  // Adds a unicast or multicast address. False if the table is full.
  bool Add(const MacAddr& a) {
    for (const auto& x : addrs_) {
      if (x == a) return true;
    }
    if (addrs_.size() >= kMaxAddrs) return false;
    addrs_.push_back(a);
    return true;
  }
  void Remove(const MacAddr& a) {
    for (size_t i = 0; i < addrs_.size(); ++i) {
      if (addrs_[i] == a) {
        addrs_[i] = addrs_.back();
        addrs_.pop_back();
        return;
      }
    }
  }
  void Clear() { addrs_.clear(); }
  // virtchnl promisc flags: bit 0 unicast promiscuous, bit 1 all-multicast.
  void SetPromisc(bool unicast, bool multicast) {
    promisc_uc_ = unicast;
    promisc_mc_ = multicast;
  }
  bool promisc_unicast() const { return promisc_uc_; }
  bool promisc_multicast() const { return promisc_mc_; }
  const std::vector<MacAddr>& addrs() const { return addrs_; }

  // Whether a frame with this destination is received. Broadcast is always
  // accepted; multicast if all-multicast/promiscuous or listed; unicast if
  // promiscuous or listed. Frames shorter than 6 bytes are refused.
  bool Accept(absl::Span<const uint8_t> frame) const {
    if (frame.size() < 6) return false;
    const uint8_t* d = frame.data();
    bool mc = d[0] & 1;
    if (mc) {
      static constexpr uint8_t kBcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
      if (std::memcmp(d, kBcast, 6) == 0) return true;
      if (promisc_mc_ || promisc_uc_) return true;
    } else if (promisc_uc_) {
      return true;
    }
    for (const auto& a : addrs_) {
      if (std::memcmp(a.data(), d, 6) == 0) return true;
    }
    return false;
  }

 private:
  std::vector<MacAddr> addrs_;
  bool promisc_uc_ = false;
  bool promisc_mc_ = false;
};

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_MAC_FILTER_H_
