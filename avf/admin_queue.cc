#include "avf/admin_queue.h"

#include <cstring>

#include "absl/cleanup/cleanup.h"
#include "avf/avf_state.pb.h"
#include "vfio_user/device.h"

namespace emud::avf {

// The struct is the descriptor's little-endian wire layout (static_asserts
// in admin_queue.h), so encoding and decoding are one 32-byte copy: no
// per-field pointer arithmetic (each of which a sanitizer build checks and a
// fuzz build traces).
void AqDesc::Encode(uint8_t out[kAqDescSize]) const { std::memcpy(out, this, kAqDescSize); }

AqDesc AqDesc::Decode(const uint8_t in[kAqDescSize]) {
  AqDesc d;
  std::memcpy(&d, in, kAqDescSize);
  return d;
}

uint32_t AdminQueue::ReadReg(uint32_t offset) const {
  switch (offset) {
    case kVfAtqbal1: return atq_bal_;
    case kVfAtqbah1: return atq_bah_;
    case kVfAtqlen1: return atq_len_;
    case kVfAtqh1: return atq_head_;
    case kVfAtqt1: return atq_tail_;
    case kVfArqbal1: return arq_bal_;
    case kVfArqbah1: return arq_bah_;
    case kVfArqlen1: return arq_len_;
    case kVfArqh1: return arq_head_;
    case kVfArqt1: return arq_tail_;
    default: return 0;
  }
}

void AdminQueue::WriteReg(uint32_t offset, uint32_t value) {
  switch (offset) {
    case kVfAtqbal1: atq_bal_ = value; break;
    case kVfAtqbah1: atq_bah_ = value; break;
    case kVfAtqlen1: atq_len_ = value & (kAqLenMask | kAqLenVfe | kAqLenOvfl | kAqLenCrit | kAqLenEnable); break;
    case kVfAtqh1: atq_head_ = value & kAqHeadMask; break;
    case kVfAtqt1: atq_tail_ = value & kAqTailMask; break;
    case kVfArqbal1: arq_bal_ = value; break;
    case kVfArqbah1: arq_bah_ = value; break;
    case kVfArqlen1:
      arq_len_ = value & (kAqLenMask | kAqLenVfe | kAqLenOvfl | kAqLenCrit | kAqLenEnable);
      // The driver shut its receive queue down (iavf_adminq.c:
      // iavf_shutdown_arq writes LEN = 0): what could not be delivered is
      // lost, as a PF's send to a disabled VF mailbox fails. Otherwise a
      // driver re-initialising its AQ without a VF reset (the init state
      // machine's retries) would find stale replies in its fresh ring.
      if (!arq_enabled() && !backlog_.empty()) {
        counters_.arq_dropped += backlog_.size();
        backlog_.clear();
      }
      break;
    case kVfArqh1: arq_head_ = value & kAqHeadMask; break;
    case kVfArqt1: arq_tail_ = value & kAqTailMask; break;
    default: break;
  }
}

void AdminQueue::ProcessAtq(vfio_user::DmaMemory* dma, Handler handler) {
  if (dma == nullptr || !atq_enabled()) return;
  const uint32_t len = atq_len_ & kAqLenMask;
  if (atq_tail_ >= len || atq_head_ >= len) {
    ++counters_.atq_bad_tail;
    return;
  }
  const uint64_t base = (uint64_t{atq_bah_} << 32) | atq_bal_;
  // The message buffer keeps its capacity from one call to the next (no
  // allocation per message). Taken out of the member while in use, so a
  // handler that re-entered ProcessAtq would get a fresh one.
  std::vector<uint8_t> buf = std::move(msg_scratch_);
  absl::Cleanup keep = [&] { msg_scratch_ = std::move(buf); };
  // The ring is translated once per doorbell when one mapped window holds it
  // (every ring a real driver allocates): each descriptor is then one copy in
  // and one copy out, not two DmaMemory calls. The pointer stays valid for
  // the loop: an unmap is a vfio-user request, served on this thread after
  // we return. Otherwise (a ring across windows, or in a window without an
  // fd) each descriptor goes through Read/Write.
  uint8_t* ring = nullptr;
  if (auto t = dma->Translate(base, uint64_t{len} * kAqDescSize,
                              static_cast<vfio_user::DmaMemory::Access>(vfio_user::DmaMemory::kRead |
                                                                        vfio_user::DmaMemory::kWrite));
      t.ok()) {
    ring = *t;
  }
  // At most `len` descriptors per doorbell: the head cannot lap the tail.
  for (uint32_t n = 0; n < len && atq_head_ != atq_tail_; ++n) {
    const uint64_t desc_addr = base + uint64_t{atq_head_} * kAqDescSize;
    uint8_t raw[kAqDescSize];
    if (ring != nullptr) {
      // One copy: the guest may change the descriptor while we decode it.
      std::memcpy(raw, ring + uint64_t{atq_head_} * kAqDescSize, kAqDescSize);
    } else if (!dma->Read(desc_addr, absl::MakeSpan(raw, kAqDescSize)).ok()) {
      ++counters_.atq_dma_errors;
      atq_len_ |= kAqLenCrit;
      return;
    }
    AqDesc d = AqDesc::Decode(raw);
    const uint32_t v_op = d.cookie_high;
    const int32_t v_retval = static_cast<int32_t>(d.cookie_low);
    bool is_msg = false;
    bool dma_error = false;
    buf.clear();
    d.retval = kAqRcOk;
    if (d.opcode == kAqOpcSendMsgToPf) {
      is_msg = true;
      if (d.flags & kAqFlagBuf) {
        if (d.datalen > kAqMaxBufSize) {
          ++counters_.atq_bad_datalen;
          dma_error = true;
          d.retval = kAqRcEinval;
        } else if (d.datalen > 0) {
          buf.resize(d.datalen);
          if (!dma->Read(d.addr(), absl::MakeSpan(buf)).ok()) {
            ++counters_.atq_dma_errors;
            buf.clear();
            dma_error = true;
            d.retval = kAqRcEfault;
          }
        }
      }
    } else if (d.opcode != kAqOpcQueueShutdown) {
      ++counters_.atq_bad_opcode;
      d.retval = kAqRcEnosys;
    }
    d.flags |= kAqFlagDd | kAqFlagCmp;
    if (d.retval != kAqRcOk) d.flags |= kAqFlagErr;
    if (ring != nullptr) {
      d.Encode(ring + uint64_t{atq_head_} * kAqDescSize);
    } else {
      d.Encode(raw);
      if (!dma->Write(desc_addr, absl::MakeConstSpan(raw, kAqDescSize)).ok()) {
        ++counters_.atq_dma_errors;
      }
    }
    atq_head_ = (atq_head_ + 1) % len;
    ++counters_.atq_processed;
    if (is_msg && handler(v_op, v_retval, buf, dma_error) == Next::kStop) return;
  }
}

AdminQueue::PostResult AdminQueue::TryPost(vfio_user::DmaMemory* dma, uint32_t v_op, int32_t v_retval,
                                           absl::Span<const uint8_t> payload) {
  if (dma == nullptr || !arq_enabled()) return PostResult::kBroken;
  const uint32_t len = arq_len_ & kAqLenMask;
  if (arq_head_ >= len || arq_tail_ >= len) return PostResult::kBroken;
  if (arq_head_ == arq_tail_) return PostResult::kFull;
  const uint64_t base = (uint64_t{arq_bah_} << 32) | arq_bal_;
  const uint64_t desc_addr = base + uint64_t{arq_head_} * kAqDescSize;
  uint8_t raw[kAqDescSize];
  if (!dma->Read(desc_addr, absl::MakeSpan(raw, kAqDescSize)).ok()) {
    ++counters_.arq_dma_errors;
    return PostResult::kBroken;
  }
  AqDesc d = AqDesc::Decode(raw);
  size_t n = payload.size();
  size_t room = (d.flags & kAqFlagBuf) ? std::min<size_t>(d.datalen, kAqMaxBufSize) : 0;
  if (n > room) {
    ++counters_.arq_truncated;
    n = room;
  }
  if (n > 0 && !dma->Write(d.addr(), payload.subspan(0, n)).ok()) {
    ++counters_.arq_dma_errors;
    return PostResult::kBroken;
  }
  AqDesc out;
  out.flags = kAqFlagDd | kAqFlagCmp | (n > 0 ? kAqFlagBuf : 0);
  out.opcode = kAqOpcSendMsgToVf;
  out.datalen = static_cast<uint16_t>(n);
  out.retval = 0;
  out.cookie_high = v_op;
  out.cookie_low = static_cast<uint32_t>(v_retval);
  out.addr_high = d.addr_high;
  out.addr_low = d.addr_low;
  out.Encode(raw);
  if (!dma->Write(desc_addr, absl::MakeConstSpan(raw, kAqDescSize)).ok()) {
    ++counters_.arq_dma_errors;
    return PostResult::kBroken;
  }
  arq_head_ = (arq_head_ + 1) % len;
  ++counters_.arq_posted;
  return PostResult::kPosted;
}

bool AdminQueue::Post(vfio_user::DmaMemory* dma, uint32_t v_op, int32_t v_retval,
                      absl::Span<const uint8_t> payload) {
  // The payload is copied only if the message has to wait in the backlog.
  if (backlog_.empty()) {
    switch (TryPost(dma, v_op, v_retval, payload)) {
      case PostResult::kPosted: return true;
      case PostResult::kBroken:
        if (!arq_enabled()) {
          ++counters_.arq_dropped;
          return false;
        }
        break;  // keep it: the driver may fix the ring
      case PostResult::kFull: break;
    }
  }
  if (backlog_.size() >= kMaxBacklog) {
    ++counters_.arq_dropped;
    arq_len_ |= kAqLenOvfl;
    return false;
  }
  backlog_.push_back(Pending{v_op, v_retval, std::vector<uint8_t>(payload.begin(), payload.end())});
  return false;
}

int AdminQueue::DrainBacklog(vfio_user::DmaMemory* dma) {
  int posted = 0;
  while (!backlog_.empty()) {
    const Pending& m = backlog_.front();
    if (TryPost(dma, m.v_op, m.v_retval, m.payload) != PostResult::kPosted) break;
    backlog_.pop_front();
    ++posted;
  }
  return posted;
}

void AdminQueue::Reset() {
  atq_bal_ = atq_bah_ = atq_len_ = atq_head_ = atq_tail_ = 0;
  arq_bal_ = arq_bah_ = arq_len_ = arq_head_ = arq_tail_ = 0;
  backlog_.clear();
}

void AdminQueue::SaveTo(AvfAdminQueueState* out) const {
  out->Clear();
  out->set_atq_bal(atq_bal_);
  out->set_atq_bah(atq_bah_);
  out->set_atq_len(atq_len_);
  out->set_atq_head(atq_head_);
  out->set_atq_tail(atq_tail_);
  out->set_arq_bal(arq_bal_);
  out->set_arq_bah(arq_bah_);
  out->set_arq_len(arq_len_);
  out->set_arq_head(arq_head_);
  out->set_arq_tail(arq_tail_);
  for (const Pending& p : backlog_) {
    auto* m = out->add_backlog();
    m->set_v_opcode(p.v_op);
    m->set_v_retval(p.v_retval);
    m->set_payload(std::string(p.payload.begin(), p.payload.end()));
  }
}

void AdminQueue::RestoreFrom(const AvfAdminQueueState& in) {
  Reset();
  WriteReg(kVfAtqbal1, in.atq_bal());
  WriteReg(kVfAtqbah1, in.atq_bah());
  WriteReg(kVfAtqlen1, in.atq_len());
  WriteReg(kVfAtqh1, in.atq_head());
  WriteReg(kVfAtqt1, in.atq_tail());
  WriteReg(kVfArqbal1, in.arq_bal());
  WriteReg(kVfArqbah1, in.arq_bah());
  WriteReg(kVfArqlen1, in.arq_len());
  WriteReg(kVfArqh1, in.arq_head());
  WriteReg(kVfArqt1, in.arq_tail());
  for (const auto& m : in.backlog()) {
    if (backlog_.size() >= kMaxBacklog) break;
    const std::string& p = m.payload();
    backlog_.push_back(Pending{m.v_opcode(), m.v_retval(),
                               std::vector<uint8_t>(p.begin(), p.begin() + std::min<size_t>(p.size(), kAqMaxBufSize))});
  }
}

}  // namespace emud::avf
