// The test guest's data path on top of IavfDriver's rings (what iavf_xmit_frame
// and iavf_clean_rx_irq do): TX descriptors with EOP|RS and QTX_TAIL, TX
// completion reaping (DTYPE 0xF), RX reaping (DD/EOF, multi-buffer frames)
// and buffer re-posting with QRX_TAIL.
//
// Not thread-safe; one GuestDataPath per driver.
#ifndef EMUD_TESTS_GUEST_GUEST_DATAPATH_H_
#define EMUD_TESTS_GUEST_GUEST_DATAPATH_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "tests/guest/iavf_driver.h"

namespace emud::guest {

struct RxFrame {
  std::vector<uint8_t> data;
  uint32_t ptype = 0;
  bool error = false;  // RXE on some descriptor
  uint64_t last_qw1 = 0;    // write-back qw1 of the EOF descriptor (L3L4P, IPE, L4E...)
  uint64_t first_qw0 = 0;   // write-back qw0 of the first descriptor (RSS hash in 63:32)
  // The stripped 802.1Q TCI (L2TAG1P in the EOF descriptor, L2TAG1 in its
  // qw0 31:16), as iavf_clean_rx_irq / DPDK iavf_rxd_to_vlan_tci read it;
  // -1 if none.
  int32_t vlan_tci = -1;
  // Decoded the same way from either write-back format (the queue's
  // RXDID: 1 legacy, 2 FLEX_NIC, 22 COMMS_OVS_1 - DPDK's
  // iavf_rxd_to_pkt_fields_by_comms_ovs / iavf_flex_rxd_error_to_pkt_flags
  // / iavf_flex_rxd_to_vlan_tci): the EOF descriptor's.
  uint8_t rxdid = 1;
  bool rss_valid = false;  // legacy FLTSTAT == 3, flex RSS_VALID
  uint32_t rss_hash = 0;
  bool l3l4p = false, ipe = false, l4e = false;
  uint32_t flow_id = 0xFFFFFFFFu;  // flex only (0xFFFFFFFF: none)
};

class GuestDataPath {
 public:
  explicit GuestDataPath(IavfDriver* driver) : drv_(driver) {}
  ~GuestDataPath();

  // Queues `frame` on TX queue q (one buffer, EOP|RS) and rings QTX_TAIL.
  // `cmd_extra`/`offset` add offload bits (IIPT/L4T, MACLEN/IPLEN/L4LEN).
  // RESOURCE_EXHAUSTED if the ring is full (reap completions first).
  // `vlan_tci` >= 0: CMD.IL2TAG1 with that TCI in L2TAG1 (qw1 63:48), the
  // tag the device inserts (iavf_tx_map / DPDK iavf_xmit_pkts).
  absl::Status Transmit(uint32_t q, absl::Span<const uint8_t> frame, uint32_t cmd_extra = 0,
                        uint32_t offset = 0, int32_t vlan_tci = -1);
  // Completed TX descriptors reaped on queue q (their buffers freed).
  uint32_t ReapTx(uint32_t q);
  // Frames received on queue q (buffers re-posted, QRX_TAIL written).
  // INTERNAL if a written-back descriptor starting a frame has PBUF_LEN 0,
  // on which Linux <= 6.9 stalls the queue (the descriptor is left in place).
  absl::StatusOr<std::vector<RxFrame>> Receive(uint32_t q);

 private:
  struct TxSlot {
    DmaBuffer buf;
  };
  IavfDriver* drv_;
  std::vector<std::vector<TxSlot>> tx_slots_;
  std::vector<std::vector<uint8_t>> rx_partial_;
  std::vector<std::vector<uint32_t>> slot_buf_;
  uint64_t first_qw0_ = 0;  // RX: buffer index held by each slot
};

}  // namespace emud::guest

#endif  // EMUD_TESTS_GUEST_GUEST_DATAPATH_H_
