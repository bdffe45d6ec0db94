#include "tests/guest/iavf_driver.h"

#include <algorithm>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "avf/admin_queue.h"
#include "avf/descriptors.h"
#include "avf/regs.h"

namespace emud::guest {

namespace vc = avf::vc;
using avf::AqDesc;

namespace {

constexpr uint32_t kAqLen = 32;          // IAVF_AQ_LEN
constexpr uint32_t kAqBuf = 4096;        // IAVF_MAX_AQ_BUF_SIZE
constexpr uint32_t kResetWaitDetected = 500;   // IAVF_RESET_WAIT_DETECTED_COUNT
constexpr uint32_t kResetWaitComplete = 2000;  // IAVF_RESET_WAIT_COMPLETE_COUNT
// IAVF_DEFAULT_RSS_HENA: IPv4/IPv6 UDP, TCP, SCTP, other, fragments; L2 payload.
constexpr uint64_t kLinuxDefaultRssHena =
    (1ull << 31) | (1ull << 33) | (1ull << 34) | (1ull << 35) | (1ull << 36) | (1ull << 41) |
    (1ull << 43) | (1ull << 44) | (1ull << 45) | (1ull << 46) | (1ull << 63);

class Msg {
 public:
  template <typename T>
  Msg& Add(const T& v) {
    size_t at = b_.size();
    b_.resize(at + sizeof(T));
    std::memcpy(b_.data() + at, &v, sizeof(T));
    return *this;
  }
  Msg& Zero(size_t n) {
    b_.resize(b_.size() + n, 0);
    return *this;
  }
  absl::Span<const uint8_t> span() const { return b_; }

 private:
  std::vector<uint8_t> b_;
};

}  // namespace

IavfDriver::IavfDriver(GuestBus* bus, DriverOptions options) : bus_(bus), options_(options) {
  const bool linux_flavor = options_.flavor == Flavor::kLinux;
  vlan_strip_on_ = options_.vlan_strip.value_or(linux_flavor);
  vlan_insert_on_ = options_.vlan_insert.value_or(linux_flavor);
  if (options_.flavor == Flavor::kDpdk) {
    if (options_.caps == kLinuxIavfCaps) options_.caps = kDpdkIavfCaps;
    // Default mbufs: 2176-byte data room - 128 headroom (iavf_rxq.c rx_buf_len,
    // DBUFF-aligned); max_pkt_size = MTU 1500 + IAVF_ETH_OVERHEAD (26).
    if (options_.rx_buf_len == DriverOptions{}.rx_buf_len) options_.rx_buf_len = 2048;
    if (options_.max_frame == DriverOptions{}.max_frame) options_.max_frame = 1500 + 26;
  }
}

IavfDriver::~IavfDriver() {
  FreeRings();
  GuestMemory& mem = bus_->memory();
  for (AqRing* r : {&asq_, &arq_}) {
    mem.Free(r->desc);
    for (auto& b : r->bufs) mem.Free(b);
  }
}

// ---------------------------------------------------------------- probe

absl::Status IavfDriver::Probe() {
  uint8_t id[4];
  if (auto s = bus_->ConfigRead(0, absl::MakeSpan(id)); !s.ok()) return s;
  uint16_t vendor = id[0] | id[1] << 8, device = id[2] | id[3] << 8;
  if (vendor != avf::kVendorIntel || device != avf::kDeviceAdaptiveVf) {
    return absl::NotFoundError(absl::StrCat("not an AVF device: ", absl::Hex(vendor), ":", absl::Hex(device)));
  }
  uint8_t cmd[2];
  if (auto s = bus_->ConfigRead(4, absl::MakeSpan(cmd)); !s.ok()) return s;
  cmd[0] |= 0x06;  // memory space + bus master
  return bus_->ConfigWrite(4, cmd);
}

// ---------------------------------------------------------------- admin queue

absl::Status IavfDriver::CheckResetComplete(bool exact_active) {
  for (uint32_t i = 0; i < kResetWaitComplete; ++i) {
    auto r = bus_->Read32(avf::kVfgenRstat);
    if (!r.ok()) return r.status();
    uint32_t st = *r & avf::kRstatMask;
    if (st == avf::kVfrVfActive || (!exact_active && st == avf::kVfrCompleted)) {
      return absl::OkStatus();
    }
    bus_->Sleep(absl::Milliseconds(10));
  }
  return absl::DeadlineExceededError("device is still in reset");
}

absl::Status IavfDriver::InitAdminQueue() {
  GuestMemory& mem = bus_->memory();
  for (AqRing* r : {&asq_, &arq_}) {
    auto d = mem.Allocate(kAqLen * avf::kAqDescSize, 4096);
    if (!d.ok()) return d.status();
    r->desc = *d;
    r->bufs.clear();
    for (uint32_t i = 0; i < kAqLen; ++i) {
      auto b = mem.Allocate(kAqBuf, 4096);
      if (!b.ok()) return b.status();
      r->bufs.push_back(*b);
    }
    r->ntu = r->ntc = 0;
  }
  // ARQ descriptors are armed before the registers are written.
  for (uint32_t i = 0; i < kAqLen; ++i) {
    AqDesc d;
    d.flags = avf::kAqFlagBuf | avf::kAqFlagLb;
    d.datalen = kAqBuf;
    d.addr_high = static_cast<uint32_t>(arq_.bufs[i].iova >> 32);
    d.addr_low = static_cast<uint32_t>(arq_.bufs[i].iova);
    d.Encode(arq_.desc.host + i * avf::kAqDescSize);
  }
  struct Regs {
    uint32_t h, t, len, bal, bah;
    const DmaBuffer* ring;
  };
  for (const Regs& r : {Regs{avf::kVfAtqh1, avf::kVfAtqt1, avf::kVfAtqlen1, avf::kVfAtqbal1, avf::kVfAtqbah1, &asq_.desc},
                        Regs{avf::kVfArqh1, avf::kVfArqt1, avf::kVfArqlen1, avf::kVfArqbal1, avf::kVfArqbah1, &arq_.desc}}) {
    // iavf_config_asq_regs / iavf_config_arq_regs order.
    for (auto [off, val] : {std::pair<uint32_t, uint32_t>{r.h, 0}, {r.t, 0},
                            {r.len, kAqLen | avf::kAqLenEnable},
                            {r.bal, static_cast<uint32_t>(r.ring->iova)},
                            {r.bah, static_cast<uint32_t>(r.ring->iova >> 32)}}) {
      if (auto s = bus_->Write32(off, val); !s.ok()) return s;
    }
    if (r.t == avf::kVfArqt1) {
      if (auto s = bus_->Write32(avf::kVfArqt1, kAqLen - 1); !s.ok()) return s;
    }
    auto bal = bus_->Read32(r.bal);
    if (!bal.ok()) return bal.status();
    if (*bal != static_cast<uint32_t>(r.ring->iova)) {
      return absl::InternalError("admin queue base did not read back");
    }
  }
  aq_initialised_ = true;
  return absl::OkStatus();
}

absl::Status IavfDriver::SendQueueShutdown() {
  AqDesc d;
  d.flags = avf::kAqFlagSi;
  d.opcode = avf::kAqOpcQueueShutdown;
  d.param0 = 1;  // driver unloading
  d.Encode(asq_.desc.host + asq_.ntu * avf::kAqDescSize);
  asq_.ntu = (asq_.ntu + 1) % kAqLen;
  if (auto s = bus_->Write32(avf::kVfAtqt1, asq_.ntu); !s.ok()) return s;
  // Synchronous command: wait for the write-back (IAVF_ASQ_CMD_TIMEOUT 250 ms).
  for (int i = 0; i < 250; ++i) {
    auto done = AsqDone();
    if (!done.ok()) return done.status();
    if (*done) return absl::OkStatus();
    bus_->Sleep(absl::Milliseconds(1));
  }
  return absl::DeadlineExceededError("AQ queue_shutdown never completed");
}

absl::Status IavfDriver::ShutdownAdminQueue() {
  if (!aq_initialised_) return absl::OkStatus();
  auto len = bus_->Read32(avf::kVfAtqlen1);
  if (!len.ok()) return len.status();
  if (*len & avf::kAqLenEnable) {
    if (auto s = SendQueueShutdown(); !s.ok()) return s;
  }
  for (uint32_t off : {avf::kVfAtqh1, avf::kVfAtqt1, avf::kVfAtqlen1, avf::kVfAtqbal1, avf::kVfAtqbah1,
                       avf::kVfArqh1, avf::kVfArqt1, avf::kVfArqlen1, avf::kVfArqbal1, avf::kVfArqbah1}) {
    if (auto s = bus_->Write32(off, 0); !s.ok()) return s;
  }
  GuestMemory& mem = bus_->memory();
  for (AqRing* r : {&asq_, &arq_}) {
    mem.Free(r->desc);
    r->desc = {};
    for (auto& b : r->bufs) mem.Free(b);
    r->bufs.clear();
  }
  aq_initialised_ = false;
  return absl::OkStatus();
}

absl::StatusOr<bool> IavfDriver::AsqDone() {
  auto h = bus_->Read32(avf::kVfAtqh1);
  if (!h.ok()) return h.status();
  return (*h & avf::kAqHeadMask) == asq_.ntu;
}

absl::Status IavfDriver::SendToPf(uint32_t v_op, absl::Span<const uint8_t> msg) {
  if (!aq_initialised_) return absl::FailedPreconditionError("admin queue not initialised");
  if (msg.size() > kAqBuf) return absl::InvalidArgumentError("message larger than an AQ buffer");
  auto head = bus_->Read32(avf::kVfAtqh1);
  if (!head.ok()) return head.status();
  if (*head >= kAqLen) return absl::InternalError("AQTX: head overrun");
  // iavf_clean_asq: reclaim what the device consumed.
  while (asq_.ntc != *head) {
    std::memset(asq_.desc.host + asq_.ntc * avf::kAqDescSize, 0, avf::kAqDescSize);
    asq_.ntc = (asq_.ntc + 1) % kAqLen;
  }
  if ((asq_.ntu + 1) % kAqLen == asq_.ntc) return absl::ResourceExhaustedError("AQTX: queue full");
  AqDesc d;
  d.flags = avf::kAqFlagSi;
  d.opcode = avf::kAqOpcSendMsgToPf;
  d.cookie_high = v_op;
  if (!msg.empty()) {
    const DmaBuffer& b = asq_.bufs[asq_.ntu];
    std::memcpy(b.host, msg.data(), msg.size());
    d.flags |= avf::kAqFlagBuf | avf::kAqFlagRd | (msg.size() > avf::kAqLargeBuf ? avf::kAqFlagLb : 0);
    d.datalen = static_cast<uint16_t>(msg.size());
    d.addr_high = static_cast<uint32_t>(b.iova >> 32);
    d.addr_low = static_cast<uint32_t>(b.iova);
  }
  d.Encode(asq_.desc.host + asq_.ntu * avf::kAqDescSize);
  asq_.ntu = (asq_.ntu + 1) % kAqLen;
  trace_.push_back(vc::OpName(v_op));
  return bus_->Write32(avf::kVfAtqt1, asq_.ntu);
}

absl::StatusOr<bool> IavfDriver::CleanArqElement(PfMessage* out) {
  for (;;) {
    auto h = bus_->Read32(avf::kVfArqh1);
    if (!h.ok()) return h.status();
    uint32_t ntu = *h & avf::kAqHeadMask;
    if (ntu == arq_.ntc || !aq_initialised_) return false;
    const uint32_t i = arq_.ntc;
    AqDesc d = AqDesc::Decode(arq_.desc.host + i * avf::kAqDescSize);
    bool err = (d.flags & avf::kAqFlagErr) != 0;
    out->v_op = d.cookie_high;
    out->v_retval = static_cast<int32_t>(d.cookie_low);
    size_t n = std::min<size_t>(d.datalen, kAqBuf);
    out->payload.assign(arq_.bufs[i].host, arq_.bufs[i].host + n);
    // Re-arm and give the slot back.
    AqDesc re;
    re.flags = avf::kAqFlagBuf | avf::kAqFlagLb;
    re.datalen = kAqBuf;
    re.addr_high = static_cast<uint32_t>(arq_.bufs[i].iova >> 32);
    re.addr_low = static_cast<uint32_t>(arq_.bufs[i].iova);
    re.Encode(arq_.desc.host + i * avf::kAqDescSize);
    if (auto s = bus_->Write32(avf::kVfArqt1, i); !s.ok()) return s;
    arq_.ntc = (i + 1) % kAqLen;
    if (err || out->v_op == vc::kOpUnknown) continue;  // Linux drops these
    ++arq_messages_;
    return true;
  }
}

void IavfDriver::HandleEvent(const PfMessage& m) {
  ++events_;
  if (m.payload.size() < sizeof(vc::PfEvent)) return;
  auto ev = vc::Load<vc::PfEvent>(m.payload, 0);
  switch (ev.event) {
    case vc::kEventLinkChange: {
      bool up = ev.link_status != 0;
      link_speed_ = ev.link_speed;
      // iavf ignores link-up unless the interface runs with queues enabled.
      if (up && !running_) return;
      link_up_ = up;
      return;
    }
    case vc::kEventResetImpending:
      reset_impending_ = true;
      return;
    default:
      return;
  }
}

absl::StatusOr<int> IavfDriver::PollArq() {
  int n = 0;
  PfMessage m;
  for (;;) {
    auto got = CleanArqElement(&m);
    if (!got.ok()) return got.status();
    if (!*got) return n;
    ++n;
    if (m.v_op == vc::kOpEvent) HandleEvent(m);
  }
}

absl::StatusOr<bool> IavfDriver::ServiceMiscIrq(absl::Duration timeout) {
  auto fired = bus_->WaitVector(0, timeout);
  if (!fired.ok()) return fired.status();
  if (*fired == 0) return false;
  if (dpdk_irq0_) {
    // iavf_ethdev.c:iavf_dev_interrupt_handler: iavf_disable_irq0, drain the
    // ARQ (iavf_handle_virtchnl_msg: events handled, replies handed to the
    // waiting command), iavf_enable_irq0. ICR01 is never read.
    admin_irqs_ += *fired;
    if (auto s = DpdkDisableIrq0(); !s.ok()) return s;
    uint64_t drained = 0;
    for (;;) {
      PfMessage m;
      auto got = CleanArqElement(&m);
      if (!got.ok()) return got.status();
      if (!*got) break;
      ++drained;
      if (m.v_op == vc::kOpEvent) {
        HandleEvent(m);
      } else {
        inbox_.push_back(std::move(m));
      }
    }
    if (drained == 0) ++empty_irq0_runs_;
    if (auto s = DpdkEnableIrq0(); !s.ok()) return s;
    return true;
  }
  // iavf_msix_aq: read ICR01 (clears it) and ICR0_ENA1; the admin task then
  // cleans the ARQ and re-enables the misc vector (iavf_misc_irq_enable).
  admin_irqs_ += *fired;
  if (auto r = bus_->Read32(avf::kVfintIcr01); !r.ok()) return r.status();
  if (auto r = bus_->Read32(avf::kVfintIcr0Ena1); !r.ok()) return r.status();
  if (auto s = MiscIrqEnable(); !s.ok()) return s;
  return true;
}

absl::StatusOr<PfMessage> IavfDriver::WaitReply(uint32_t v_op) {
  const absl::Time deadline = absl::Now() + options_.reply_timeout;
  // An in-process bus never sleeps: bound the polls as well.
  const int64_t max_polls = options_.reply_timeout / options_.poll_interval + 1;
  if (dpdk_irq0_) {
    // iavf_vchnl.c:iavf_execute_vf_cmd for runtime ops: wait until the
    // interrupt handler completed the pending command; no ARQ polling here.
    for (int64_t poll = 0;; ++poll) {
      while (!inbox_.empty()) {
        PfMessage m = std::move(inbox_.front());
        inbox_.pop_front();
        if (m.v_op == v_op) return m;
        // else: "command mismatch" - dropped.
      }
      if (absl::Now() > deadline || poll > max_polls) {
        return absl::DeadlineExceededError(absl::StrCat("no reply to ", vc::OpName(v_op)));
      }
      if (auto irq = ServiceMiscIrq(options_.poll_interval); !irq.ok()) return irq.status();
    }
  }
  for (int64_t poll = 0;; ++poll) {
    if (auto irq = ServiceMiscIrq(absl::ZeroDuration()); !irq.ok()) return irq.status();
    PfMessage m;
    for (;;) {
      auto got = CleanArqElement(&m);
      if (!got.ok()) return got.status();
      if (!*got) break;
      if (m.v_op == vc::kOpEvent) {
        HandleEvent(m);
      } else if (m.v_op == v_op) {
        return m;
      }
      // else: "Expected response %d from PF, received %d" - dropped.
    }
    if (absl::Now() > deadline || poll > max_polls) {
      return absl::DeadlineExceededError(absl::StrCat("no reply to ", vc::OpName(v_op)));
    }
    // Sleep until the misc interrupt or the next watchdog poll.
    if (auto irq = ServiceMiscIrq(options_.poll_interval); !irq.ok()) return irq.status();
  }
}

absl::StatusOr<PfMessage> IavfDriver::Exec(uint32_t v_op, absl::Span<const uint8_t> msg) {
  if (auto s = SendToPf(v_op, msg); !s.ok()) return s;
  return WaitReply(v_op);
}

// ---------------------------------------------------------------- interrupts

absl::Status IavfDriver::MiscIrqEnable() {
  if (auto s = bus_->Write32(avf::kVfintDynCtl01, avf::kDynCtlIntena | avf::kDynCtlItrIndxMask); !s.ok()) {
    return s;
  }
  if (auto s = bus_->Write32(avf::kVfintIcr0Ena1, avf::kIcr0AdminQ); !s.ok()) return s;
  return bus_->Read32(avf::kVfgenRstat).status();  // iavf_flush
}

absl::Status IavfDriver::MiscIrqDisable() {
  if (auto s = bus_->Write32(avf::kVfintDynCtl01, 0); !s.ok()) return s;
  return bus_->Read32(avf::kVfgenRstat).status();
}

absl::Status IavfDriver::DpdkEnableIrq0() {
  // iavf_enable_irq0: ICR0_ENA1 = ADMINQ, DYN_CTL01 = INTENA | CLEARPBA |
  // ITR_INDX (0x1B), IAVF_WRITE_FLUSH (a VFGEN_RSTAT read).
  if (auto s = bus_->Write32(avf::kVfintIcr0Ena1, avf::kIcr0AdminQ); !s.ok()) return s;
  if (auto s = bus_->Write32(avf::kVfintDynCtl01,
                             avf::kDynCtlIntena | avf::kDynCtlClearPba | avf::kDynCtlItrIndxMask);
      !s.ok()) {
    return s;
  }
  return bus_->Read32(avf::kVfgenRstat).status();
}

absl::Status IavfDriver::DpdkDisableIrq0() {
  // iavf_disable_irq0: ICR0_ENA1 = 0, DYN_CTL01 = ITR_INDX (0x18), flush.
  if (auto s = bus_->Write32(avf::kVfintIcr0Ena1, 0); !s.ok()) return s;
  if (auto s = bus_->Write32(avf::kVfintDynCtl01, avf::kDynCtlItrIndxMask); !s.ok()) return s;
  return bus_->Read32(avf::kVfgenRstat).status();
}

absl::Status IavfDriver::IrqEnableQueues() {
  for (uint32_t i = 1; i < num_msix_; ++i) {
    if (auto s = bus_->Write32(avf::VfintDynCtln1(i - 1), avf::kDynCtlIntena | avf::kDynCtlItrIndxMask);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status IavfDriver::IrqDisableQueues() {
  for (uint32_t i = 1; i < num_msix_; ++i) {
    if (auto s = bus_->Write32(avf::VfintDynCtln1(i - 1), 0); !s.ok()) return s;
  }
  return bus_->Read32(avf::kVfgenRstat).status();
}

// ---------------------------------------------------------------- virtchnl steps

absl::Status IavfDriver::SendVersion() {
  vc::VersionInfo v{1, 1};
  if (auto s = SendToPf(vc::kOpVersion, Msg().Add(v).span()); !s.ok()) return s;
  // __IAVF_INIT_VERSION_CHECK: the ATQ must have moved.
  auto done = AsqDone();
  if (!done.ok()) return done.status();
  if (!*done) return absl::UnavailableError("Admin queue command never completed");
  auto r = WaitReply(vc::kOpVersion);
  if (!r.ok()) return r.status();
  if (r->payload.size() < sizeof(vc::VersionInfo)) return absl::InternalError("short VERSION reply");
  pf_version_ = vc::Load<vc::VersionInfo>(r->payload, 0);
  if (pf_version_.major > 1 || (pf_version_.major == 1 && pf_version_.minor > 1)) {
    return absl::FailedPreconditionError(
        absl::StrCat("Unsupported PF API version ", pf_version_.major, ".", pf_version_.minor));
  }
  return absl::OkStatus();
}

absl::Status IavfDriver::GetResources() {
  Msg m;
  if (pf_version_.major == 1 && pf_version_.minor == 0) {
    // 1.0 PF: no capability word.
  } else {
    m.Add(options_.caps);
  }
  auto r = Exec(vc::kOpGetVfResources, m.span());
  if (!r.ok()) return r.status();
  if (r->v_retval != 0) {
    return absl::InternalError(absl::StrCat("Unable to get VF config: PF returned ", r->v_retval));
  }
  if (r->payload.size() < 20) return absl::InternalError("short vf_resource");
  auto res = vc::Load<vc::VfResource>(r->payload, 0);
  caps_ = res.vf_cap_flags;
  max_vectors_ = res.max_vectors;
  max_frame_ = res.max_mtu == 0 || res.max_mtu > avf::kMaxFrameSize ? avf::kMaxFrameSize : res.max_mtu;
  bool found = false;
  for (uint32_t i = 0; i < res.num_vsis; ++i) {
    size_t off = 20 + i * sizeof(vc::VsiResource);
    if (off + sizeof(vc::VsiResource) > r->payload.size()) break;
    auto vsi = vc::Load<vc::VsiResource>(r->payload, off);
    if (vsi.vsi_type == int32_t(vc::kVsiTypeSriov)) {
      vsi_id_ = vsi.vsi_id;
      vf_qps_ = vsi.num_queue_pairs;
      std::memcpy(mac_.data(), vsi.default_mac_addr, 6);
      found = true;
      break;
    }
  }
  if (!found) return absl::NotFoundError("No LAN VSI found");
  static constexpr std::array<uint8_t, 6> kZero{};
  if (mac_ == kZero || (mac_[0] & 1)) {
    // eth_hw_addr_random: locally administered unicast.
    std::random_device rd;
    for (auto& b : mac_) b = static_cast<uint8_t>(rd());
    mac_[0] = (mac_[0] & 0xFE) | 0x02;
  }
  return absl::OkStatus();
}

bool IavfDriver::LargeVf() const {
  return (caps_ & vc::kCapLargeNumQpairs) != 0 && num_queues_ > avf::kLegacyMaxQueuePairs;
}

absl::Status IavfDriver::MapQueueVectors(std::vector<vc::QueueVector> maps) {
  Msg m;
  m.Add(vc::QueueVectorMapsHeader{vsi_id_, static_cast<uint16_t>(maps.size()), {}});
  for (const auto& qv : maps) m.Add(qv);
  auto r = Exec(vc::kOpMapQueueVector, m.span());
  if (!r.ok()) return r.status();
  return r->v_retval == 0 ? absl::OkStatus()
                          : absl::InternalError(absl::StrCat("MAP_QUEUE_VECTOR: ", r->v_retval));
}

absl::Status IavfDriver::QueuesV2(uint32_t v_op, std::vector<vc::QueueChunk> chunks) {
  Msg m;
  m.Add(vc::DelEnaDisQueuesHeader{vsi_id_, 0, static_cast<uint16_t>(chunks.size()), 0});
  for (const auto& c : chunks) m.Add(c);
  auto r = Exec(v_op, m.span());
  if (!r.ok()) return r.status();
  return r->v_retval == 0 ? absl::OkStatus()
                          : absl::InternalError(absl::StrCat(vc::OpName(v_op), ": ", r->v_retval));
}

absl::Status IavfDriver::MapVectors() {
  const uint32_t q_vectors = num_msix_ - 1;
  if (LargeVf()) {
    // More than 16 queues (iavf_map_queue_vector with LARGE_NUM_QPAIRS):
    // the same round robin, one map per queue and direction.
    std::vector<vc::QueueVector> maps;
    for (uint32_t q = 0; q < num_queues_; ++q) {
      for (int32_t type : {vc::kQueueTypeRx, vc::kQueueTypeTx}) {
        vc::QueueVector qv{};
        qv.queue_id = static_cast<uint16_t>(q);
        qv.vector_id = static_cast<uint16_t>(q % q_vectors + 1);
        qv.itr_idx = type == vc::kQueueTypeRx ? 0 : 1;
        qv.queue_type = type;
        maps.push_back(qv);
      }
    }
    return MapQueueVectors(std::move(maps));
  }
  // iavf_map_rings_to_vectors (round robin) + iavf_map_queues (misc last).
  std::vector<uint16_t> mask(q_vectors, 0);
  for (uint32_t q = 0; q < num_queues_; ++q) mask[q % q_vectors] |= static_cast<uint16_t>(1u << q);
  Msg m;
  m.Add(static_cast<uint16_t>(num_msix_));
  for (uint32_t v = 0; v < q_vectors; ++v) {
    m.Add(vc::VectorMap{vsi_id_, static_cast<uint16_t>(v + 1), mask[v], mask[v], 0, 1});
  }
  m.Add(vc::VectorMap{vsi_id_, 0, 0, 0, 0, 0});
  m.Zero(sizeof(vc::VectorMap));  // virtchnl_struct_size: one element more
  auto r = Exec(vc::kOpConfigIrqMap, m.span());
  if (!r.ok()) return r.status();
  return r->v_retval == 0 ? absl::OkStatus()
                          : absl::InternalError(absl::StrCat("CONFIG_IRQ_MAP: ", r->v_retval));
}

absl::Status IavfDriver::SetRssKeyLut() {
  Msg k;
  k.Add(vsi_id_).Add(static_cast<uint16_t>(rss_key_.size())).Add(rss_key_).Zero(1);
  auto r = Exec(vc::kOpConfigRssKey, k.span());
  if (!r.ok()) return r.status();
  if (r->v_retval != 0) return absl::InternalError(absl::StrCat("CONFIG_RSS_KEY: ", r->v_retval));
  Msg l;
  l.Add(vsi_id_).Add(static_cast<uint16_t>(rss_lut_.size())).Add(rss_lut_).Zero(1);
  r = Exec(vc::kOpConfigRssLut, l.span());
  if (!r.ok()) return r.status();
  if (r->v_retval != 0) return absl::InternalError(absl::StrCat("CONFIG_RSS_LUT: ", r->v_retval));
  return absl::OkStatus();
}

absl::Status IavfDriver::ConfigureRss() {
  // iavf_init_rss: LUT spread over the active queues, random key.
  std::mt19937 rng(0x5eed);
  for (auto& b : rss_key_) b = static_cast<uint8_t>(rng());
  for (uint32_t i = 0; i < rss_lut_.size(); ++i) rss_lut_[i] = static_cast<uint8_t>(i % num_queues_);
  if ((caps_ & vc::kCapRssPf) && options_.hena_at_init) {
    auto caps = Exec(vc::kOpGetRssHenaCaps, {});
    if (!caps.ok()) return caps.status();
    if (caps->v_retval == 0 && caps->payload.size() >= 8) hena_ = vc::Load<uint64_t>(caps->payload, 0);
    auto set = Exec(vc::kOpSetRssHena, Msg().Add(hena_).span());
    if (!set.ok()) return set.status();
    if (set->v_retval != 0) return absl::InternalError(absl::StrCat("SET_RSS_HENA: ", set->v_retval));
    return SetRssKeyLut();
  }
  if (caps_ & vc::kCapRssPf) return SetRssKeyLut();
  if (caps_ & vc::kCapRssReg) {
    // iavf_init_rss without RSS_PF: HENA registers, then iavf_config_rss_reg
    // including its loops that run one past the end.
    const uint64_t hena = kLinuxDefaultRssHena;
    if (auto s = bus_->Write32(avf::VfqfHena(0), static_cast<uint32_t>(hena)); !s.ok()) return s;
    if (auto s = bus_->Write32(avf::VfqfHena(1), static_cast<uint32_t>(hena >> 32)); !s.ok()) return s;
    for (uint32_t i = 0; i <= avf::kNumHkeyRegs; ++i) {
      uint32_t v = 0;
      if (i < avf::kNumHkeyRegs) std::memcpy(&v, rss_key_.data() + 4 * i, 4);
      if (auto s = bus_->Write32(avf::VfqfHkey(i), v); !s.ok()) return s;
    }
    for (uint32_t i = 0; i <= avf::kNumHlutRegs; ++i) {
      uint32_t v = 0;
      if (i < avf::kNumHlutRegs) std::memcpy(&v, rss_lut_.data() + 4 * i, 4);
      if (auto s = bus_->Write32(avf::VfqfHlut(i), v); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

absl::Status IavfDriver::AddPrimaryMac() {
  vc::EtherAddr a{};
  std::memcpy(a.addr, mac_.data(), 6);
  a.type = 1;  // VIRTCHNL_ETHER_ADDR_PRIMARY
  Msg m;
  m.Add(vsi_id_).Add(uint16_t{1}).Add(a).Zero(sizeof(vc::EtherAddr));
  auto r = Exec(vc::kOpAddEthAddr, m.span());
  if (!r.ok()) return r.status();
  return r->v_retval == 0 ? absl::OkStatus()
                          : absl::InternalError(absl::StrCat("ADD_ETH_ADDR: ", r->v_retval));
}

absl::Status IavfDriver::SetupRings() {
  GuestMemory& mem = bus_->memory();
  tx_rings_.assign(num_queues_, Ring{});
  rx_rings_.assign(num_queues_, Ring{});
  for (uint32_t q = 0; q < num_queues_; ++q) {
    Ring& tx = tx_rings_[q];
    tx.count = options_.ring_size;
    tx.tail_offset = avf::QtxTail(q);
    auto td = mem.Allocate(size_t{tx.count} * avf::kTxDescSize, 4096);
    if (!td.ok()) return td.status();
    tx.desc = *td;
    Ring& rx = rx_rings_[q];
    rx.count = options_.ring_size;
    rx.tail_offset = avf::QrxTail(q);
    auto rd = mem.Allocate(size_t{rx.count} * avf::kRxDescSize, 4096);
    if (!rd.ok()) return rd.status();
    rx.desc = *rd;
    // iavf_alloc_rx_buffers(ring, IAVF_DESC_UNUSED): count - 1 buffers.
    for (uint32_t i = 0; i + 1 < rx.count; ++i) {
      auto b = mem.Allocate(options_.rx_buf_len, 128);
      if (!b.ok()) return b.status();
      rx.buffers.push_back(*b);
      avf::RxReadDesc{b->iova, 0}.Encode(rx.desc.host + i * avf::kRxDescSize);
    }
    rx.next_to_use = rx.count - 1;
    if (auto s = bus_->Write32(rx.tail_offset, rx.next_to_use); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void IavfDriver::FreeRings() {
  GuestMemory& mem = bus_->memory();
  for (auto* rings : {&tx_rings_, &rx_rings_}) {
    for (Ring& r : *rings) {
      mem.Free(r.desc);
      for (auto& b : r.buffers) mem.Free(b);
    }
    rings->clear();
  }
}

absl::Status IavfDriver::ConfigureQueues(bool legacy_length) {
  // More than 16 queues: batches of 32 pairs (DPDK's IAVF_CFG_Q_NUM_PER_BUF;
  // a message holds at most 4 KiB).
  const uint32_t batch = num_queues_ > avf::kLegacyMaxQueuePairs ? 32 : num_queues_;
  for (uint32_t first = 0; first < num_queues_; first += batch) {
    const uint32_t n = std::min(batch, num_queues_ - first);
    if (auto s = ConfigureQueueBatch(first, n, legacy_length); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status IavfDriver::ConfigureQueueBatch(uint32_t first, uint32_t n, bool legacy_length) {
  Msg m;
  m.Add(vc::VsiQueueConfigHeader{vsi_id_, static_cast<uint16_t>(n), 0});
  for (uint32_t q = first; q < first + n; ++q) {
    vc::QueuePairInfo p{};
    p.txq.vsi_id = vsi_id_;
    p.txq.queue_id = static_cast<uint16_t>(q);
    p.txq.ring_len = static_cast<uint16_t>(tx_rings_[q].count);
    p.txq.dma_ring_addr = tx_rings_[q].desc.iova;
    p.rxq.vsi_id = vsi_id_;
    p.rxq.queue_id = static_cast<uint16_t>(q);
    p.rxq.ring_len = rx_rings_[q].count;
    p.rxq.dma_ring_addr = rx_rings_[q].desc.iova;
    p.rxq.max_pkt_size = std::min(options_.max_frame, max_frame_);
    p.rxq.databuffer_size = options_.rx_buf_len;
    p.rxq.crc_disable = options_.keep_crc && (caps_ & vc::kCapCrc) ? 1 : 0;
    p.rxq.rxdid = rxdid_;
    m.Add(p);
  }
  if (legacy_length) m.Zero(sizeof(vc::QueuePairInfo));
  auto r = Exec(vc::kOpConfigVsiQueues, m.span());
  if (!r.ok()) return r.status();
  return r->v_retval == 0 ? absl::OkStatus()
                          : absl::InternalError(absl::StrCat("CONFIG_VSI_QUEUES: ", r->v_retval));
}

absl::Status IavfDriver::EnableQueues() {
  if (LargeVf()) {
    const uint16_t n = static_cast<uint16_t>(num_queues_);
    if (auto s = QueuesV2(vc::kOpEnableQueuesV2,
                          {{vc::kQueueTypeTx, 0, n}, {vc::kQueueTypeRx, 0, n}});
        !s.ok()) {
      return s;
    }
    if (auto s = MiscIrqEnable(); !s.ok()) return s;
    return IrqEnableQueues();
  }
  uint32_t mask = (1u << num_queues_) - 1;
  auto r = Exec(vc::kOpEnableQueues, Msg().Add(vc::QueueSelect{vsi_id_, 0, mask, mask}).span());
  if (!r.ok()) return r.status();
  if (r->v_retval != 0) return absl::InternalError(absl::StrCat("ENABLE_QUEUES: ", r->v_retval));
  // Completion: iavf_irq_enable(adapter, true).
  if (auto s = MiscIrqEnable(); !s.ok()) return s;
  return IrqEnableQueues();
}

absl::Status IavfDriver::WaitLink(bool up) {
  const int64_t max_polls = options_.reply_timeout / options_.poll_interval + 1;
  for (int64_t i = 0; i <= max_polls; ++i) {
    if (auto irq = ServiceMiscIrq(absl::ZeroDuration()); !irq.ok()) return irq.status();
    if (!dpdk_irq0_) {  // DPDK's interrupt handler alone reads the ARQ
      auto n = PollArq();
      if (!n.ok()) return n.status();
    }
    if (link_up_ == up) return absl::OkStatus();
    if (auto irq = ServiceMiscIrq(options_.poll_interval); !irq.ok()) return irq.status();
  }
  return absl::DeadlineExceededError(up ? "link never came up" : "link never went down");
}

// ---------------------------------------------------------------- lifecycle

absl::Status IavfDriver::Init() {
  if (options_.flavor == Flavor::kDpdk) return InitDpdk();
  // __IAVF_STARTUP
  if (auto s = CheckResetComplete(/*exact_active=*/false); !s.ok()) return s;
  if (auto s = InitAdminQueue(); !s.ok()) return s;
  // __IAVF_INIT_VERSION_CHECK
  if (auto s = SendVersion(); !s.ok()) return s;
  // __IAVF_INIT_GET_RESOURCES
  if (auto s = GetResources(); !s.ok()) return s;
  // __IAVF_INIT_GET_OFFLOAD_VLAN_V2_CAPS, then (>= 6.13) the RXDIDs
  // (iavf_init_send_supported_rxdids).
  if (auto s = GetVlanV2Caps(); !s.ok()) return s;
  if (auto s = GetSupportedRxdids(); !s.ok()) return s;
  num_queues_ = std::min(vf_qps_, options_.max_queues);
  if (num_queues_ == 0) return absl::FailedPreconditionError("VF has no queues");
  num_msix_ = std::min(num_queues_ + 1, max_vectors_);
  if (num_msix_ < 2) return absl::FailedPreconditionError("fewer than 2 MSI-X vectors");
  if (auto s = bus_->EnableMsix(num_msix_); !s.ok()) return s;
  // register_netdev ... then iavf_misc_irq_enable.
  if (auto s = MiscIrqEnable(); !s.ok()) return s;
  // aq_required: MAP_VECTORS, then the RSS requests (watchdog priority).
  if (auto s = MapVectors(); !s.ok()) return s;
  if (auto s = ConfigureRss(); !s.ok()) return s;
  // iavf_init_config_adapter: "request initial VLAN offload settings"
  // (iavf_set_vlan_offload_features(adapter, 0, netdev->features)).
  return ApplyVlanOffloads();
}

absl::Status IavfDriver::Open() {
  if (running_) return absl::OkStatus();
  if (options_.flavor == Flavor::kDpdk) return OpenDpdk();
  // iavf_open: rings, RX buffers (tails written now), filters, configure.
  if (auto s = SetupRings(); !s.ok()) return s;
  running_ = true;  // iavf_up_complete: __IAVF_RUNNING
  if (auto s = MiscIrqEnable(); !s.ok()) return s;
  if (auto s = IrqEnableQueues(); !s.ok()) return s;
  if (auto s = AddPrimaryMac(); !s.ok()) return s;
  if (auto s = ConfigureQueues(); !s.ok()) return s;
  if (auto s = EnableQueues(); !s.ok()) return s;
  return WaitLink(true);
}

absl::Status IavfDriver::InitDpdk() {
  // iavf_init_vf: reset done (COMPLETED or VFACTIVE), AQ, version (>= 1.1),
  // resources, SET_RSS_HENA(0) with RSS_PF, a first GET_STATS.
  if (auto s = CheckResetComplete(/*exact_active=*/false); !s.ok()) return s;
  if (auto s = InitAdminQueue(); !s.ok()) return s;
  if (auto s = SendVersion(); !s.ok()) return s;
  if (pf_version_.major < 1 || (pf_version_.major == 1 && pf_version_.minor < 1)) {
    return absl::FailedPreconditionError("PF/VF API version mismatch");
  }
  if (auto s = GetResources(); !s.ok()) return s;
  // iavf_init_vf: iavf_get_supported_rxdid, then iavf_get_vlan_offload_caps_v2.
  if (auto s = GetSupportedRxdids(); !s.ok()) return s;
  if (auto s = GetVlanV2Caps(); !s.ok()) return s;
  num_queues_ = std::min(vf_qps_, options_.max_queues);
  if (num_queues_ == 0) return absl::FailedPreconditionError("VF has no queues");
  // iavf_dev_init after iavf_init_vf: with WB_ON_ITR the vector-0 callback
  // is registered and enabled (rte_intr_enable), then iavf_enable_irq0; from
  // here on replies come through iavf_dev_interrupt_handler.
  num_msix_ = 2;  // misc + one vector for the RX queues' write-back
  if (auto s = bus_->EnableMsix(num_msix_); !s.ok()) return s;
  if (auto s = DpdkEnableIrq0(); !s.ok()) return s;
  dpdk_irq0_ = (caps_ & vc::kCapWbOnItr) != 0;
  // iavf_default_rss_disable, iavf_dev_stats_reset.
  if (caps_ & vc::kCapRssPf) {
    auto r = Exec(vc::kOpSetRssHena, Msg().Add(uint64_t{0}).span());
    if (!r.ok()) return r.status();
    if (r->v_retval != 0) return absl::InternalError(absl::StrCat("SET_RSS_HENA(0): ", r->v_retval));
  }
  if (auto st = RequestStats(); !st.ok()) return st.status();
  // dev_configure with more than 16 queues (the large-VF path): the RSS
  // region the PF allows (iavf_get_max_rss_queue_region).
  if (LargeVf()) {
    auto q = Exec(vc::kOpGetMaxRssQregion, {});
    if (!q.ok()) return q.status();
    if (q->v_retval != 0 || q->payload.size() < sizeof(vc::MaxRssQregion)) {
      return absl::InternalError(absl::StrCat("GET_MAX_RSS_QREGION: ", q->v_retval));
    }
    max_rss_qregion_ = 1u << vc::Load<vc::MaxRssQregion>(q->payload, 0).qregion_width;
  }
  // dev_configure: iavf_dev_init_vlan (filters, stripping, insertion), then
  // iavf_init_rss (LUT, KEY) and the hash types.
  if (auto s = ApplyVlanOffloads(); !s.ok()) return s;
  if (!(caps_ & vc::kCapRssPf)) return absl::OkStatus();
  for (uint32_t i = 0; i < rss_lut_.size(); ++i) rss_lut_[i] = static_cast<uint8_t>(i % num_queues_);
  std::mt19937 rng(0xd9d);
  for (auto& b : rss_key_) b = static_cast<uint8_t>(rng());
  Msg l;
  l.Add(vsi_id_).Add(static_cast<uint16_t>(rss_lut_.size())).Add(rss_lut_).Zero(1);
  auto r = Exec(vc::kOpConfigRssLut, l.span());
  if (!r.ok()) return r.status();
  if (r->v_retval != 0) return absl::InternalError(absl::StrCat("CONFIG_RSS_LUT: ", r->v_retval));
  Msg k;
  k.Add(vsi_id_).Add(static_cast<uint16_t>(rss_key_.size())).Add(rss_key_).Zero(1);
  r = Exec(vc::kOpConfigRssKey, k.span());
  if (!r.ok()) return r.status();
  if (r->v_retval != 0) return absl::InternalError(absl::StrCat("CONFIG_RSS_KEY: ", r->v_retval));
  auto caps = Exec(vc::kOpGetRssHenaCaps, {});
  if (!caps.ok()) return caps.status();
  if (caps->v_retval == 0 && caps->payload.size() >= 8) hena_ = vc::Load<uint64_t>(caps->payload, 0);
  auto set = Exec(vc::kOpSetRssHena, Msg().Add(hena_).span());
  return set.status();
}

absl::Status IavfDriver::OpenDpdk() {
  // dev_start: rings (RX tails at nb_desc - 1), queues, IRQ map, MACs, then
  // every queue enabled on its own.
  if (auto s = SetupRings(); !s.ok()) return s;
  running_ = true;
  // iavf_vchnl.c:iavf_configure_queues: sizeof(virtchnl_vsi_queue_config_info)
  // (one qpair element) + 64 n = 72 + 64 n bytes.
  if (auto s = ConfigureQueues(/*legacy_length=*/true); !s.ok()) return s;
  // WB_ON_ITR: RX queues on vector 1 in write-back-on-ITR mode, 2 us.
  if (auto s = bus_->Write32(avf::VfintDynCtln1(0), avf::kDynCtlWbOnItr | (2u << avf::kDynCtlIntervalShift));
      !s.ok()) {
    return s;
  }
  if (LargeVf()) {
    // iavf_config_irq_map_lv: every RX queue on vector 1, ITR 0; then
    // iavf_switch_queue_lv enables each queue with its own chunk (TX, RX).
    std::vector<vc::QueueVector> maps;
    for (uint32_t q = 0; q < num_queues_; ++q) {
      vc::QueueVector qv{};
      qv.queue_id = static_cast<uint16_t>(q);
      qv.vector_id = 1;
      qv.queue_type = vc::kQueueTypeRx;
      maps.push_back(qv);
    }
    if (auto s = MapQueueVectors(std::move(maps)); !s.ok()) return s;
    if (auto s = AddPrimaryMac(); !s.ok()) return s;
    for (int32_t type : {vc::kQueueTypeTx, vc::kQueueTypeRx}) {
      for (uint32_t q = 0; q < num_queues_; ++q) {
        if (auto s = QueuesV2(vc::kOpEnableQueuesV2, {{type, static_cast<uint16_t>(q), 1}}); !s.ok()) {
          return s;
        }
      }
    }
    return WaitLink(true);
  }
  const uint16_t rx_mask = static_cast<uint16_t>((1u << num_queues_) - 1);
  // iavf_config_irq_map: sizeof(virtchnl_irq_map_info) (one vecmap element)
  // + 12 * nb_msix = 14 + 12 bytes for the one vector.
  auto r = Exec(vc::kOpConfigIrqMap, Msg()
                                         .Add(uint16_t{1})
                                         .Add(vc::VectorMap{vsi_id_, 1, rx_mask, 0, 0, 0})
                                         .Zero(sizeof(vc::VectorMap))
                                         .span());
  if (!r.ok()) return r.status();
  if (r->v_retval != 0) return absl::InternalError(absl::StrCat("CONFIG_IRQ_MAP: ", r->v_retval));
  if (auto s = AddPrimaryMac(); !s.ok()) return s;
  for (int rx = 0; rx < 2; ++rx) {
    for (uint32_t q = 0; q < num_queues_; ++q) {
      vc::QueueSelect sel{vsi_id_, 0, rx ? 1u << q : 0, rx ? 0 : 1u << q};
      auto e = Exec(vc::kOpEnableQueues, Msg().Add(sel).span());
      if (!e.ok()) return e.status();
      if (e->v_retval != 0) return absl::InternalError(absl::StrCat("ENABLE_QUEUES: ", e->v_retval));
    }
  }
  return WaitLink(true);
}

absl::Status IavfDriver::Close() {
  if (!running_) return absl::OkStatus();
  if (options_.flavor == Flavor::kDpdk) {
    // iavf_dev_stop: iavf_stop_queues sends one DISABLE_QUEUES with every
    // queue (iavf_disable_queues_lv: DISABLE_QUEUES_V2, a TX and an RX
    // chunk); no filter is removed (MACs stay until close / reset).
    running_ = false;
    if (LargeVf()) {
      const uint16_t n = static_cast<uint16_t>(num_queues_);
      if (auto s = QueuesV2(vc::kOpDisableQueuesV2, {{vc::kQueueTypeTx, 0, n}, {vc::kQueueTypeRx, 0, n}});
          !s.ok()) {
        return s;
      }
      FreeRings();
      return absl::OkStatus();
    }
    uint32_t mask = (1u << num_queues_) - 1;
    auto r = Exec(vc::kOpDisableQueues, Msg().Add(vc::QueueSelect{vsi_id_, 0, mask, mask}).span());
    if (!r.ok()) return r.status();
    if (r->v_retval != 0) return absl::InternalError(absl::StrCat("DISABLE_QUEUES: ", r->v_retval));
    FreeRings();
    return absl::OkStatus();
  }
  running_ = false;
  link_up_ = false;
  if (auto s = IrqDisableQueues(); !s.ok()) return s;
  absl::StatusOr<PfMessage> r;
  if (LargeVf()) {
    const uint16_t n = static_cast<uint16_t>(num_queues_);
    if (auto s = QueuesV2(vc::kOpDisableQueuesV2, {{vc::kQueueTypeTx, 0, n}, {vc::kQueueTypeRx, 0, n}});
        !s.ok()) {
      return s;
    }
  } else {
    uint32_t mask = (1u << num_queues_) - 1;
    r = Exec(vc::kOpDisableQueues, Msg().Add(vc::QueueSelect{vsi_id_, 0, mask, mask}).span());
    if (!r.ok()) return r.status();
    if (r->v_retval != 0) return absl::InternalError(absl::StrCat("DISABLE_QUEUES: ", r->v_retval));
  }
  vc::EtherAddr a{};
  std::memcpy(a.addr, mac_.data(), 6);
  a.type = 1;
  r = Exec(vc::kOpDelEthAddr, Msg().Add(vsi_id_).Add(uint16_t{1}).Add(a).Zero(8).span());
  if (!r.ok()) return r.status();
  FreeRings();
  return absl::OkStatus();
}

absl::StatusOr<vc::EthStats> IavfDriver::RequestStats() {
  auto r = Exec(vc::kOpGetStats, Msg().Add(vc::QueueSelect{vsi_id_, 0, 0, 0}).span());
  if (!r.ok()) return r.status();
  if (r->v_retval != 0 || r->payload.size() < sizeof(vc::EthStats)) {
    return absl::InternalError(absl::StrCat("GET_STATS: ", r->v_retval));
  }
  return vc::Load<vc::EthStats>(r->payload, 0);
}

absl::Status IavfDriver::Reset() { return ResetTask(/*request_reset=*/true); }

absl::StatusOr<bool> IavfDriver::Watchdog() {
  if (aq_initialised_) {
    if (auto n = PollArq(); !n.ok()) return n.status();
  }
  auto len = bus_->Read32(avf::kVfArqlen1);
  if (!len.ok()) return len.status();
  if (!reset_impending_ && (*len & avf::kAqLenEnable)) return false;
  if (auto s = ResetTask(/*request_reset=*/false); !s.ok()) return s;
  return true;
}

absl::Status IavfDriver::ResetTask(bool request_reset) {
  inbox_.clear();
  if (auto s = MiscIrqDisable(); !s.ok()) return s;
  if (request_reset) {
    // IAVF_FLAG_RESET_NEEDED: restart the AQ (it may be hosed) and ask.
    if (auto s = ShutdownAdminQueue(); !s.ok()) return s;
    if (auto s = InitAdminQueue(); !s.ok()) return s;
    if (auto s = SendToPf(vc::kOpResetVf, {}); !s.ok()) return s;  // iavf_request_reset
  }
  reset_impending_ = false;
  // Poll until the reset is visible (ARQLEN.ENABLE drops).
  uint32_t i = 0;
  for (; i < kResetWaitDetected; ++i) {
    auto v = bus_->Read32(avf::kVfArqlen1);
    if (!v.ok()) return v.status();
    if (!(*v & avf::kAqLenEnable)) break;
    bus_->Sleep(absl::Milliseconds(5));
  }
  if (i == kResetWaitDetected) {
    // "Never saw reset": Linux carries on as if it happened.
  } else {
    // Wait until the reset completes and the PF answers again.
    uint32_t j = 0;
    for (; j < kResetWaitComplete; ++j) {
      bus_->Sleep(absl::Milliseconds(10));
      auto v = bus_->Read32(avf::kVfgenRstat);
      if (!v.ok()) return v.status();
      if ((*v & avf::kRstatMask) == avf::kVfrVfActive) break;
    }
    if (j == kResetWaitComplete) return absl::DeadlineExceededError("Reset never finished");
  }
  const bool was_running = running_;
  running_ = false;
  link_up_ = false;
  if (auto s = IrqDisableQueues(); !s.ok()) return s;
  FreeRings();
  if (auto s = ShutdownAdminQueue(); !s.ok()) return s;
  if (auto s = InitAdminQueue(); !s.ok()) return s;
  // aq_required = GET_CONFIG | MAP_VECTORS | ADD_MAC (+ RSS key/LUT from
  // iavf_init_rss), processed later by the watchdog in priority order; the
  // reset task itself first re-enables the misc vector and, if the netdev
  // was running, rebuilds the rings (RX buffers posted, QRX_TAIL written:
  // iavf_configure), goes __IAVF_RUNNING (iavf_up_complete) and arms the
  // queue vectors (iavf_irq_enable) - all before GET_VF_RESOURCES is sent.
  if (auto s = MiscIrqEnable(); !s.ok()) return s;
  if (was_running) {
    if (auto s = SetupRings(); !s.ok()) return s;
    running_ = true;
    if (auto s = MiscIrqEnable(); !s.ok()) return s;
    if (auto s = IrqEnableQueues(); !s.ok()) return s;
  }
  if (auto s = GetResources(); !s.ok()) return s;
  if (options_.flavor == Flavor::kDpdk) {
    if (auto s = GetSupportedRxdids(); !s.ok()) return s;
    if (auto s = GetVlanV2Caps(); !s.ok()) return s;
  } else {
    if (auto s = GetVlanV2Caps(); !s.ok()) return s;
    if (auto s = GetSupportedRxdids(); !s.ok()) return s;
  }
  const uint32_t queues = std::min(vf_qps_, options_.max_queues);
  if (queues != num_queues_) {
    // iavf_reinit_interrupt_scheme (Linux does it earlier, from the queue
    // count it asked for; the test guest learns it from the reply).
    num_queues_ = queues;
    num_msix_ = std::min(num_queues_ + 1, max_vectors_);
    if (auto s = bus_->DisableMsix(); !s.ok()) return s;
    if (auto s = bus_->EnableMsix(num_msix_); !s.ok()) return s;
    if (auto s = MiscIrqEnable(); !s.ok()) return s;
    if (was_running) {
      FreeRings();
      if (auto s = SetupRings(); !s.ok()) return s;
      if (auto s = IrqEnableQueues(); !s.ok()) return s;
    }
  }
  if (auto s = MapVectors(); !s.ok()) return s;
  if (auto s = AddPrimaryMac(); !s.ok()) return s;
  if (was_running) {
    if (auto s = ConfigureQueues(); !s.ok()) return s;
    if (auto s = EnableQueues(); !s.ok()) return s;
  }
  if (caps_ & vc::kCapRssPf) {
    if (auto s = SetRssKeyLut(); !s.ok()) return s;
  }
  // iavf_restore_filters (VLANs re-added) and the VLAN offload settings.
  for (uint16_t vid : vlans_) {
    if (auto s = VlanFilterOp(vid, true); !s.ok()) return s;
  }
  if (auto s = ApplyVlanOffloads(); !s.ok()) return s;
  if (was_running) return WaitLink(true);
  return absl::OkStatus();
}

absl::Status IavfDriver::GetSupportedRxdids() {
  supported_rxdids_ = 0;
  rxdid_ = vc::kRxdidLegacy1;
  if (!(caps_ & vc::kCapRxFlexDesc)) return absl::OkStatus();
  auto r = Exec(vc::kOpGetSupportedRxdids, {});
  if (!r.ok()) return r.status();
  if (r->v_retval != 0 || r->payload.size() != sizeof(uint64_t)) {
    return absl::InternalError(absl::StrCat("GET_SUPPORTED_RXDIDS: ", r->v_retval, ", ",
                                            r->payload.size(), " bytes"));
  }
  supported_rxdids_ = vc::Load<uint64_t>(r->payload, 0);
  const uint8_t want = options_.rxdid.value_or(
      options_.flavor == Flavor::kDpdk ? vc::kRxdidCommsOvs1 : vc::kRxdidLegacy1);
  // Both drivers fall back to the legacy descriptor for an RXDID the PF
  // does not list (DPDK iavf_configure_queues, Linux
  // iavf_select_rx_desc_format).
  if (want < 64 && (supported_rxdids_ >> want & 1)) rxdid_ = want;
  return absl::OkStatus();
}

absl::Status IavfDriver::GetVlanV2Caps() {
  vlan_caps_ = {};
  if (!(caps_ & vc::kCapVlanV2)) return absl::OkStatus();
  auto r = Exec(vc::kOpGetOffloadVlanV2Caps, {});
  if (!r.ok()) return r.status();
  if (r->v_retval != 0 || r->payload.size() < sizeof(vc::VlanCaps)) {
    return absl::InternalError(absl::StrCat("GET_OFFLOAD_VLAN_V2_CAPS: ", r->v_retval));
  }
  vlan_caps_ = vc::Load<vc::VlanCaps>(r->payload, 0);
  return absl::OkStatus();
}

absl::Status IavfDriver::VlanFilterOp(uint16_t vid, bool add) {
  Msg m;
  uint32_t op;
  if (caps_ & vc::kCapVlanV2) {
    // iavf_add_vlans / DPDK iavf_add_del_vlan_v2: the tag goes where the
    // filtering caps support 802.1Q, outer first.
    const vc::VlanSupportedCaps& f = vlan_caps_.filtering.filtering_support;
    vc::VlanFilter e{};
    if (f.outer & vc::kVlanEthertype8100) {
      e.outer = {vid, 0, 0x8100};
    } else if (f.inner & vc::kVlanEthertype8100) {
      e.inner = {vid, 0, 0x8100};
    } else {
      return absl::FailedPreconditionError("VLAN_V2 caps offer no 802.1Q filtering");
    }
    m.Add(vsi_id_).Add(uint16_t{1}).Zero(4).Add(e);
    op = add ? vc::kOpAddVlanV2 : vc::kOpDelVlanV2;
  } else if (caps_ & vc::kCapVlan) {
    m.Add(vsi_id_).Add(uint16_t{1}).Add(vid);
    op = add ? vc::kOpAddVlan : vc::kOpDelVlan;
  } else {
    return absl::FailedPreconditionError("no VLAN capability");
  }
  auto r = Exec(op, m.span());
  if (!r.ok()) return r.status();
  if (r->v_retval != 0) return absl::InternalError(absl::StrCat(vc::OpName(op), ": ", r->v_retval));
  return absl::OkStatus();
}

absl::Status IavfDriver::AddVlan(uint16_t vid) {
  if (auto s = VlanFilterOp(vid, true); !s.ok()) return s;
  vlans_.insert(vid);
  return absl::OkStatus();
}

absl::Status IavfDriver::DelVlan(uint16_t vid) {
  if (auto s = VlanFilterOp(vid, false); !s.ok()) return s;
  vlans_.erase(vid);
  return absl::OkStatus();
}

// One stripping/insertion message: V2 with the 8100 ethertype in the outer
// or inner setting as the caps offer it toggleable
// (iavf_set_vc_offload_ethertype, DPDK iavf_config_vlan_strip_v2); legacy
// VLAN: ENABLE/DISABLE_VLAN_STRIPPING (`legacy_op`), nothing for insertion.
absl::Status IavfDriver::VlanSetting(uint32_t v2_op, uint32_t legacy_op, bool insertion) {
  uint32_t op;
  Msg m;
  if (caps_ & vc::kCapVlanV2) {
    const vc::VlanSupportedCaps& c =
        insertion ? vlan_caps_.offloads.insertion_support : vlan_caps_.offloads.stripping_support;
    vc::VlanSetting set{};
    set.vport_id = vsi_id_;
    auto toggles = [](uint32_t v) {
      return (v & vc::kVlanEthertype8100) && (v & vc::kVlanToggle);
    };
    if (toggles(c.outer)) {
      set.outer_ethertype_setting = vc::kVlanEthertype8100;
    } else if (toggles(c.inner)) {
      set.inner_ethertype_setting = vc::kVlanEthertype8100;
    } else {
      return absl::OkStatus();  // -ENOTSUP: the PF leaves it off
    }
    m.Add(set);
    op = v2_op;
  } else if ((caps_ & vc::kCapVlan) && !insertion) {
    op = legacy_op;
  } else {
    return absl::OkStatus();
  }
  auto r = Exec(op, m.span());
  if (!r.ok()) return r.status();
  if (r->v_retval != 0) return absl::InternalError(absl::StrCat(vc::OpName(op), ": ", r->v_retval));
  return absl::OkStatus();
}

absl::Status IavfDriver::SetVlanStripping(bool on) {
  vlan_strip_on_ = on;
  return VlanSetting(on ? vc::kOpEnableVlanStrippingV2 : vc::kOpDisableVlanStrippingV2,
                     on ? vc::kOpEnableVlanStripping : vc::kOpDisableVlanStripping, false);
}

absl::Status IavfDriver::SetVlanInsertion(bool on) {
  vlan_insert_on_ = on;
  return VlanSetting(on ? vc::kOpEnableVlanInsertionV2 : vc::kOpDisableVlanInsertionV2, 0, true);
}

absl::Status IavfDriver::ApplyVlanOffloads() {
  if (!(caps_ & (vc::kCapVlan | vc::kCapVlanV2))) return absl::OkStatus();
  if (auto s = SetVlanStripping(vlan_strip_on_); !s.ok()) return s;
  return SetVlanInsertion(vlan_insert_on_);
}

absl::Status IavfDriver::ConfigPromisc(bool unicast, bool multicast) {
  uint16_t flags = (unicast ? vc::kPromiscUnicast : 0) | (multicast ? vc::kPromiscMulticast : 0);
  auto r = Exec(vc::kOpConfigPromiscuousMode, Msg().Add(vc::PromiscInfo{vsi_id_, flags}).span());
  if (!r.ok()) return r.status();
  if (r->v_retval != 0) return absl::InternalError(absl::StrCat("CONFIG_PROMISCUOUS_MODE: ", r->v_retval));
  promisc_ = flags != 0;
  return absl::OkStatus();
}

absl::Status IavfDriver::RemoveDpdk() {
  // iavf_dev_close: iavf_dev_stop, promiscuous off only if it was on,
  // iavf_vf_reset (RESET_VF, no reply awaited), iavf_shutdown_adminq,
  // interrupt callback unregistered, iavf_disable_irq0.
  if (running_) {
    if (auto s = Close(); !s.ok()) return s;
  }
  if (promisc_) {
    if (auto s = ConfigPromisc(false, false); !s.ok()) return s;
  }
  if (aq_initialised_) {
    if (auto s = SendToPf(vc::kOpResetVf, {}); !s.ok()) return s;
  }
  if (auto s = ShutdownAdminQueue(); !s.ok()) return s;
  dpdk_irq0_ = false;
  inbox_.clear();
  if (auto s = DpdkDisableIrq0(); !s.ok()) return s;
  return bus_->DisableMsix();
}

absl::Status IavfDriver::Remove() {
  if (options_.flavor == Flavor::kDpdk) return RemoveDpdk();
  // iavf_remove: unregister_netdev (closes it), RESET_VF, 50 ms, once more
  // if the ATQ did not move, misc vector off, AQ shut down (the reset
  // already disabled it: no queue_shutdown command then).
  if (running_) {
    if (auto s = Close(); !s.ok()) return s;
  }
  if (aq_initialised_) {
    if (auto s = SendToPf(vc::kOpResetVf, {}); !s.ok()) return s;
    bus_->Sleep(absl::Milliseconds(50));
    auto done = AsqDone();
    if (!done.ok()) return done.status();
    if (!*done) {
      // Into a disabled ATQ after the reset: the device ignores it.
      if (auto s = SendToPf(vc::kOpResetVf, {}); !s.ok() && !absl::IsResourceExhausted(s)) return s;
      bus_->Sleep(absl::Milliseconds(50));
    }
  }
  if (auto s = MiscIrqDisable(); !s.ok()) return s;
  if (auto s = ShutdownAdminQueue(); !s.ok()) return s;
  return bus_->DisableMsix();
}

}  // namespace emud::guest
