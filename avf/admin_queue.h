// The VF mailbox: the admin send queue (ATQ, VF -> PF) and admin receive
// queue (ARQ, PF -> VF) registers and ring mechanics.
//
// The ring base is latched from BAL/BAH when the queue is used, not when LEN
// is written (Linux writes LEN|ENABLE before the base). Every descriptor and
// buffer is accessed through DmaMemory::Read/Write, so no pointer into guest
// memory is kept and a hostile ring address only produces counted errors.
//
// Not thread-safe: owned by one avf::Device.
#ifndef EMUD_AVF_ADMIN_QUEUE_H_
#define EMUD_AVF_ADMIN_QUEUE_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <type_traits>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/types/span.h"
#include "avf/regs.h"
#include "worker_api/counters.h"

namespace emud::vfio_user {
class DmaMemory;
}

namespace emud::avf {

class AvfAdminQueueState;  // proto

// The 32-byte admin-queue descriptor, host byte order view.
struct AqDesc {
  uint16_t flags = 0;
  uint16_t opcode = 0;
  uint16_t datalen = 0;
  uint16_t retval = 0;
  uint32_t cookie_high = 0;
  uint32_t cookie_low = 0;
  uint32_t param0 = 0;
  uint32_t param1 = 0;
  uint32_t addr_high = 0;
  uint32_t addr_low = 0;

  uint64_t addr() const { return (uint64_t{addr_high} << 32) | addr_low; }
  void Encode(uint8_t out[kAqDescSize]) const;
  static AqDesc Decode(const uint8_t in[kAqDescSize]);
};
// AqDesc's members are the wire fields in wire order (Linux iavf_aq_desc):
// Encode/Decode copy the struct as it is.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "AqDesc is copied as little-endian");
static_assert(std::is_trivially_copyable_v<AqDesc> && std::is_standard_layout_v<AqDesc>);
static_assert(sizeof(AqDesc) == kAqDescSize && offsetof(AqDesc, opcode) == 2 &&
              offsetof(AqDesc, datalen) == 4 && offsetof(AqDesc, retval) == 6 &&
              offsetof(AqDesc, cookie_high) == 8 && offsetof(AqDesc, cookie_low) == 12 &&
              offsetof(AqDesc, param0) == 16 && offsetof(AqDesc, param1) == 20 &&
              offsetof(AqDesc, addr_high) == 24 && offsetof(AqDesc, addr_low) == 28);

// The mailbox's counters (worker_api/counters.h: EMUD_ADMIN_QUEUE_COUNTERS
// lists them with their meaning; the worker publishes them).
struct AdminQueueCounters {
#define EMUD_AQ_COUNTER_FIELD(name, help) uint64_t name = 0;
  EMUD_ADMIN_QUEUE_COUNTERS(EMUD_AQ_COUNTER_FIELD)
#undef EMUD_AQ_COUNTER_FIELD
};

class AdminQueue {
 public:
  // Messages kept while the ARQ has no free slot; beyond that ARQLEN.OVFL is
  // set and the message dropped.
  static constexpr size_t kMaxBacklog = 64;

  // What the message handler tells the ATQ loop.
  enum class Next { kContinue, kStop };
  // Called for each virtchnl message (opcode 0x0801) in ATQ order with the
  // virtchnl opcode (cookie_high), v_retval (cookie_low) and the message
  // bytes (empty without BUF). Return kStop after resetting the mailbox
  // (RESET_VF): the loop then touches nothing. `dma_error` is true if the
  // message buffer could not be read (msg is then empty).
  using Handler = absl::FunctionRef<Next(uint32_t v_op, int32_t v_retval,
                                         absl::Span<const uint8_t> msg, bool dma_error)>;

  AdminQueue() = default;

  // Register access for the ten mailbox registers; other offsets: 0 / no-op.
  uint32_t ReadReg(uint32_t offset) const;
  // Stores the value (LEN error bits are cleared by writing them 0). The
  // caller runs ProcessAtq after an ATQT write and DrainBacklog after ARQT.
  void WriteReg(uint32_t offset, uint32_t value);

  // Consumes ATQ descriptors from ATQH to ATQT (at most LEN of them): writes
  // each back with DD|CMP, advances ATQH and calls `handler` for virtchnl
  // messages. A tail beyond the ring or an unreadable ring is counted and
  // processing stops; nothing loops.
  void ProcessAtq(vfio_user::DmaMemory* dma, Handler handler);

  // Posts a PF -> VF message (opcode 0x0802, cookie_high = v_op,
  // cookie_low = v_retval, never ERR). Returns true if it reached the ring
  // now; false if it was backlogged or dropped (see counters).
  bool Post(vfio_user::DmaMemory* dma, uint32_t v_op, int32_t v_retval,
            absl::Span<const uint8_t> payload);
  // Retries backlogged messages (after ARQT moved). Returns how many posted.
  int DrainBacklog(vfio_user::DmaMemory* dma);

  bool atq_enabled() const { return (atq_len_ & kAqLenEnable) && (atq_len_ & kAqLenMask); }
  bool arq_enabled() const { return (arq_len_ & kAqLenEnable) && (arq_len_ & kAqLenMask); }
  size_t backlog_size() const { return backlog_.size(); }
  const AdminQueueCounters& counters() const { return counters_; }

  // Reset: every register 0 (ENABLE off), backlog dropped.
  void Reset();

  void SaveTo(AvfAdminQueueState* out) const;
  void RestoreFrom(const AvfAdminQueueState& in);

 private:
  struct Pending {
    uint32_t v_op;
    int32_t v_retval;
    std::vector<uint8_t> payload;
  };
  enum class PostResult { kPosted, kFull, kBroken };
  PostResult TryPost(vfio_user::DmaMemory* dma, uint32_t v_op, int32_t v_retval,
                     absl::Span<const uint8_t> payload);

  uint32_t atq_bal_ = 0, atq_bah_ = 0, atq_len_ = 0, atq_head_ = 0, atq_tail_ = 0;
  uint32_t arq_bal_ = 0, arq_bah_ = 0, arq_len_ = 0, arq_head_ = 0, arq_tail_ = 0;
  std::deque<Pending> backlog_;
  AdminQueueCounters counters_;
  std::vector<uint8_t> msg_scratch_;  // ProcessAtq's buffer (not state)
};

}  // namespace emud::avf

#endif  // EMUD_AVF_ADMIN_QUEUE_H_
