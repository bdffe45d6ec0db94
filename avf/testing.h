// Test doubles for avf unit tests: guest RAM on the heap posing as
// vfio_user::DmaMemory, an InterruptSink that records what fired, and a
// minimal driver-side mailbox (ATQ/ARQ set up exactly as Linux iavf does)
// to send virtchnl messages to an avf::Device and read its replies.
#ifndef EMUD_AVF_TESTING_H_
#define EMUD_AVF_TESTING_H_

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "avf/admin_queue.h"
#include "avf/device.h"
#include "avf/regs.h"
#include "vfio_user/device.h"

namespace emud::avf::testing {

// One window of guest RAM at [base, base + size).
class FakeDma : public vfio_user::DmaMemory {
 public:
  FakeDma(uint64_t base, size_t size) : base_(base), mem_(size), touched_((size / kPage + 64) / 64) {}

  absl::StatusOr<uint8_t*> Translate(uint64_t iova, uint64_t len, Access) override {
    if (!Contains(iova, len) || len == 0) return absl::OutOfRangeError("not mapped");
    Touch(iova, len);
    return mem_.data() + (iova - base_);
  }
  absl::Status Read(uint64_t iova, absl::Span<uint8_t> dst) override {
    ++reads;
    if (!Contains(iova, dst.size())) return absl::OutOfRangeError(absl::StrCat("read ", iova));
    std::memcpy(dst.data(), mem_.data() + (iova - base_), dst.size());
    return absl::OkStatus();
  }
  absl::Status Write(uint64_t iova, absl::Span<const uint8_t> src) override {
    ++writes;
    if (!Contains(iova, src.size())) return absl::OutOfRangeError(absl::StrCat("write ", iova));
    Touch(iova, src.size());
    std::memcpy(mem_.data() + (iova - base_), src.data(), src.size());
    return absl::OkStatus();
  }

  bool Contains(uint64_t iova, uint64_t len) const {
    return iova >= base_ && len <= mem_.size() && iova - base_ <= mem_.size() - len;
  }
  // The host bytes of [iova, iova + len), which the caller may write.
  uint8_t* At(uint64_t iova, size_t len = 1) {
    Touch(iova, len);
    return mem_.data() + (iova - base_);
  }
  uint64_t base() const { return base_; }
  size_t size() const { return mem_.size(); }

  // Zeroes every page that may have been written since construction or the
  // last call (handed out by Translate or At, or written by Write): the
  // memory is then that of a new FakeDma, at the cost of the pages used (a
  // fuzzer reuses one per process).
  void ZeroTouched() {
    for (size_t w = 0; w < touched_.size(); ++w) {
      for (uint64_t bits = touched_[w]; bits != 0; bits &= bits - 1) {
        const size_t off = (w * 64 + static_cast<size_t>(__builtin_ctzll(bits))) * kPage;
        if (off < mem_.size()) std::memset(mem_.data() + off, 0, std::min(kPage, mem_.size() - off));
      }
      touched_[w] = 0;
    }
  }

  uint64_t reads = 0, writes = 0;

 private:
  static constexpr size_t kPage = 4096;
  void Touch(uint64_t iova, uint64_t len) {
    if (iova < base_ || iova - base_ >= mem_.size()) return;
    const uint64_t first = (iova - base_) / kPage;
    const uint64_t last = std::min<uint64_t>(iova - base_ + std::max<uint64_t>(len, 1) - 1, mem_.size() - 1) / kPage;
    for (uint64_t p = first; p <= last; ++p) touched_[p / 64] |= uint64_t{1} << (p % 64);
  }

  uint64_t base_;
  std::vector<uint8_t> mem_;
  std::vector<uint64_t> touched_;  // a bit per page that may have been written
};

class FakeIrqs : public vfio_user::InterruptSink {
 public:
  void TriggerMsix(uint32_t vector) override { fired.push_back(vector); }
  bool MsixPending(uint32_t) const override { return false; }
  bool MsixEnabled() const override { return true; }
  int Count(uint32_t vector) const {
    int n = 0;
    for (uint32_t v : fired) n += v == vector;
    return n;
  }
  std::vector<uint32_t> fired;
};

// A reply or event read from the ARQ.
struct ArqMessage {
  AqDesc desc;
  uint32_t v_op = 0;
  int32_t v_retval = 0;
  std::vector<uint8_t> payload;
};

// Driver-side mailbox over a Device and FakeDma. Memory layout inside the
// fake RAM: ATQ ring, ARQ ring, ATQ buffers, ARQ buffers, then free space
// from scratch_base() on.
class MiniDriver {
 public:
  static constexpr uint32_t kLen = 32;
  static constexpr uint32_t kBuf = 4096;

  MiniDriver(Device* dev, FakeDma* dma) : dev_(dev), dma_(dma) {
    atq_ = dma->base();
    arq_ = atq_ + 0x1000;
    atq_bufs_ = arq_ + 0x1000;
    arq_bufs_ = atq_bufs_ + kLen * kBuf;
  }
  uint64_t scratch_base() const { return arq_bufs_ + kLen * kBuf; }

  // Linux iavf_init_adminq register order.
  void InitAdminQueue() {
    dev_->WriteReg(kVfAtqh1, 0);
    dev_->WriteReg(kVfAtqt1, 0);
    dev_->WriteReg(kVfAtqlen1, kLen | kAqLenEnable);
    dev_->WriteReg(kVfAtqbal1, static_cast<uint32_t>(atq_));
    dev_->WriteReg(kVfAtqbah1, static_cast<uint32_t>(atq_ >> 32));
    for (uint32_t i = 0; i < kLen; ++i) ArmArq(i);
    dev_->WriteReg(kVfArqh1, 0);
    dev_->WriteReg(kVfArqt1, 0);
    dev_->WriteReg(kVfArqlen1, kLen | kAqLenEnable);
    dev_->WriteReg(kVfArqbal1, static_cast<uint32_t>(arq_));
    dev_->WriteReg(kVfArqbah1, static_cast<uint32_t>(arq_ >> 32));
    dev_->WriteReg(kVfArqt1, kLen - 1);
    atq_ntu_ = 0;
    arq_ntc_ = 0;
  }

  // Places a send_msg_to_pf descriptor and rings ATQT.
  void Send(uint32_t v_op, absl::Span<const uint8_t> msg, uint16_t extra_flags = 0) {
    AqDesc d;
    d.flags = kAqFlagSi | extra_flags;
    d.opcode = kAqOpcSendMsgToPf;
    d.cookie_high = v_op;
    if (!msg.empty()) {
      uint64_t buf = atq_bufs_ + atq_ntu_ * kBuf;
      std::memcpy(dma_->At(buf, kBuf), msg.data(), std::min<size_t>(msg.size(), kBuf));
      d.flags |= kAqFlagBuf | kAqFlagRd | (msg.size() > kAqLargeBuf ? kAqFlagLb : 0);
      d.datalen = static_cast<uint16_t>(msg.size());
      d.addr_high = static_cast<uint32_t>(buf >> 32);
      d.addr_low = static_cast<uint32_t>(buf);
    }
    SendRaw(d);
  }
  void SendRaw(const AqDesc& d) {
    d.Encode(dma_->At(atq_ + atq_ntu_ * kAqDescSize, kAqDescSize));
    atq_ntu_ = (atq_ntu_ + 1) % kLen;
    dev_->WriteReg(kVfAtqt1, atq_ntu_);
  }
  template <typename T>
  void SendStruct(uint32_t v_op, const T& v) {
    Send(v_op, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&v), sizeof(T)));
  }

  // Next ARQ message (as iavf_clean_arq_element: up to ARQH), re-arming the slot.
  std::optional<ArqMessage> Receive() {
    ArqMessage m;
    if (!Consume(&m)) return std::nullopt;
    return m;
  }
  // Receive without keeping the message (a fuzzer draining the ARQ): false
  // if none was waiting.
  bool Discard() { return Consume(nullptr); }

 private:
  bool Consume(ArqMessage* m) {
    uint32_t head = dev_->ReadReg(kVfArqh1) & kAqHeadMask;
    if (head == arq_ntc_) return false;
    if (m != nullptr) {
      m->desc = AqDesc::Decode(dma_->At(arq_ + arq_ntc_ * kAqDescSize, kAqDescSize));
      m->v_op = m->desc.cookie_high;
      m->v_retval = static_cast<int32_t>(m->desc.cookie_low);
      uint8_t* b = dma_->At(arq_bufs_ + arq_ntc_ * kBuf, kBuf);
      m->payload.assign(b, b + std::min<uint32_t>(m->desc.datalen, kBuf));
    }
    ArmArq(arq_ntc_);
    dev_->WriteReg(kVfArqt1, arq_ntc_);
    arq_ntc_ = (arq_ntc_ + 1) % kLen;
    return true;
  }

 public:

  // Sends and returns the first reply with the same opcode (events before
  // it are kept in `events`).
  std::optional<ArqMessage> Call(uint32_t v_op, absl::Span<const uint8_t> msg) {
    Send(v_op, msg);
    while (auto m = Receive()) {
      if (m->v_op == v_op) return m;
      events.push_back(*m);
    }
    return std::nullopt;
  }
  template <typename T>
  std::optional<ArqMessage> CallStruct(uint32_t v_op, const T& v) {
    return Call(v_op, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&v), sizeof(T)));
  }

  uint64_t atq() const { return atq_; }
  uint64_t arq() const { return arq_; }
  uint32_t atq_ntu() const { return atq_ntu_; }
  std::vector<ArqMessage> events;

 private:
  void ArmArq(uint32_t i) {
    AqDesc d;
    d.flags = kAqFlagBuf | kAqFlagLb;
    d.datalen = kBuf;
    uint64_t buf = arq_bufs_ + i * kBuf;
    d.addr_high = static_cast<uint32_t>(buf >> 32);
    d.addr_low = static_cast<uint32_t>(buf);
    d.Encode(dma_->At(arq_ + i * kAqDescSize, kAqDescSize));
    // The buffer's old bytes stay, as in iavf_clean_arq_element (which
    // rewrites the descriptor only): Receive reads just the datalen bytes the
    // device wrote. (Zeroing 32 x 4 KiB here cost the AVF fuzzer more than
    // the rest of a short input, and as much again in FakeDma::ZeroTouched.)
  }

  Device* dev_;
  FakeDma* dma_;
  uint64_t atq_, arq_, atq_bufs_, arq_bufs_;
  uint32_t atq_ntu_ = 0, arq_ntc_ = 0;
};

}  // namespace emud::avf::testing

#endif  // EMUD_AVF_TESTING_H_
