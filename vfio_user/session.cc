#include "vfio_user/session.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/log.h"
#include "absl/time/clock.h"
#include "base/unix_listener.h"
#include "state_store/store.h"
#include "vfio_user/session_store.h"
#include "worker_api/fd_keys.h"

namespace emud::vfio_user {
namespace {

using worker_api::DmaFdKey;
using worker_api::IrqFdKey;
using worker_api::kConnFdKey;

constexpr size_t kMaxRegions = 100;          // QEMU refuses more
constexpr int kMaxMessagesPerRound = 64;     // fairness with other fds on the loop

bool IsEventFd(int fd) {
  char path[64], target[64];
  std::snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  ssize_t n = ::readlink(path, target, sizeof(target) - 1);
  if (n <= 0) return false;
  target[n] = 0;
  return std::strcmp(target, "anon_inode:[eventfd]") == 0;
}

template <typename T>
std::vector<uint8_t> Bytes(const T& v) {
  std::vector<uint8_t> out;
  AppendStruct(&out, v);
  return out;
}

}  // namespace

std::vector<std::string> SessionTables() { return {session_store::kTable}; }

// ---------------------------------------------------------------- message DMA

class Session::MessageDmaImpl : public MessageDma {
 public:
  explicit MessageDmaImpl(Session* s) : s_(s) {}

  absl::Status DmaRead(uint64_t iova, absl::Span<uint8_t> dst) override {
    size_t done = 0;
    const uint64_t chunk_max = s_->DmaChunkMax();
    const size_t data_off = DmaRwDataOffset(s_->dma_layout_);
    while (done < dst.size()) {
      uint64_t n = std::min<uint64_t>(chunk_max, dst.size() - done);
      DmaAccess req{iova + done, n};  // count's low half doubles as QEMU's u32
      auto reply = s_->ServerRequest(kCmdDmaRead, Bytes(req));
      if (!reply.ok()) return reply.status();
      const auto& p = reply->payload;
      if (p.size() < data_off + n) return absl::DataLossError("DMA_READ reply too short");
      std::memcpy(dst.data() + done, p.data() + data_off, n);
      done += n;
    }
    return absl::OkStatus();
  }

  absl::Status DmaWrite(uint64_t iova, absl::Span<const uint8_t> src) override {
    size_t done = 0;
    const uint64_t chunk_max = s_->DmaChunkMax();
    const size_t data_off = DmaRwDataOffset(s_->dma_layout_);
    while (done < src.size()) {
      uint64_t n = std::min<uint64_t>(chunk_max, src.size() - done);
      // 16 + n bytes either way; QEMU's layout leaves 4 bytes of padding.
      std::vector<uint8_t> payload(sizeof(DmaAccess) + n, 0);
      uint64_t addr = iova + done;
      std::memcpy(payload.data(), &addr, 8);
      if (s_->dma_layout_ == DmaRwLayout::kQemu) {
        uint32_t c = static_cast<uint32_t>(n);
        std::memcpy(payload.data() + 8, &c, 4);
      } else {
        std::memcpy(payload.data() + 8, &n, 8);
      }
      std::memcpy(payload.data() + data_off, src.data() + done, n);
      auto reply = s_->ServerRequest(kCmdDmaWrite, payload);
      if (!reply.ok()) return reply.status();
      done += n;
    }
    return absl::OkStatus();
  }

 private:
  Session* s_;
};

// ---------------------------------------------------------------- lifecycle

Session::Session(PciDevice* device, EventLoop* loop, SessionOptions options)
    : device_(device), loop_(loop), options_(std::move(options)),
      reader_(options_.max_msg_size, options_.max_msg_fds) {}

Session::~Session() {
  if (conn_.valid()) Disconnect("session destroyed");
  if (loop_ && kick_fd_.valid()) loop_->Remove(kick_fd_.get());
  DisarmHandshakeTimer();
}

void Session::ArmHandshakeTimer() {
  if (loop_ == nullptr || options_.handshake_timeout <= absl::ZeroDuration()) return;
  DisarmHandshakeTimer();
  handshake_timer_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!handshake_timer_.valid()) return;  // no timer: the client is served without one
  itimerspec its{};
  its.it_value = absl::ToTimespec(options_.handshake_timeout);
  if (::timerfd_settime(handshake_timer_.get(), 0, &its, nullptr) != 0 ||
      !loop_->Add(handshake_timer_.get(), EPOLLIN, [this](uint32_t) {
               DisarmHandshakeTimer();
               if (!conn_.valid() || negotiated_) return;
               ++stats_.handshake_timeouts;
               emud::log::Warning(absl::StrFormat(
                   "vfio-user: client dropped: no VERSION within %s of connecting",
                   absl::FormatDuration(options_.handshake_timeout)));
               Disconnect("no VERSION");
             }).ok()) {
    handshake_timer_.reset();
  }
}

void Session::DisarmHandshakeTimer() {
  if (!handshake_timer_.valid()) return;
  if (loop_) loop_->Remove(handshake_timer_.get());
  handshake_timer_.reset();
}

absl::StatusOr<std::unique_ptr<Session>> Session::Create(PciDevice* device, EventLoop* loop,
                                                         SessionOptions options) {
  if (!device) return absl::InvalidArgumentError("null device");
  if (options.crash_consistent) {
    if (!options.store || options.journal_path.empty()) {
      return absl::InvalidArgumentError("crash_consistent needs a store and a journal path");
    }
    // A whole request must fit in the socket buffer to be peeked.
    options.max_data_xfer_size = std::min<uint64_t>(options.max_data_xfer_size, 64 << 10);
    options.max_msg_size = std::min<size_t>(options.max_msg_size, (64 << 10) + 4096);
  }
  options.max_msg_fds = std::clamp<uint32_t>(options.max_msg_fds, 1, 16);
  // What QEMU accepts in our VERSION reply (hw/vfio-user/proxy.c:
  // check_max_xfer <= 64 MiB, check_max_dma <= 65535) and what it needs: the
  // whole config space in one REGION_READ (hw/vfio/pci.c:
  // vfio_pci_config_setup), i.e. 4 KiB for a PCIe device.
  options.max_data_xfer_size = std::clamp<uint64_t>(options.max_data_xfer_size, 4096, 64ull << 20);
  options.max_dma_maps = std::clamp<uint32_t>(options.max_dma_maps, 1, 65535);
  options.max_msg_size = std::max<size_t>(options.max_msg_size, options.max_data_xfer_size + 4096);
  std::unique_ptr<Session> s(new Session(device, loop, std::move(options)));
  if (auto st = s->Init(); !st.ok()) return st;
  return s;
}

absl::Status Session::Init() {
  std::vector<RegionDesc> regions = device_->Regions();
  for (const auto& r : regions) {
    if (r.index >= kMaxRegions) return absl::InvalidArgumentError(absl::StrCat("region index ", r.index, " too large"));
    num_regions_ = std::max(num_regions_, r.index + 1);
  }
  num_regions_ = std::max<uint32_t>(num_regions_, kNumPciRegions);
  regions_.assign(num_regions_, RegionDesc{});
  for (uint32_t i = 0; i < num_regions_; ++i) regions_[i].index = i;
  for (auto& r : regions) {
    for (const auto& a : r.mmap_areas) {
      if (r.mmap_fd < 0 || a.size == 0 || a.offset + a.size < a.offset || a.offset + a.size > r.size) {
        return absl::InvalidArgumentError(absl::StrCat("region ", r.index, " has a bad mmap area"));
      }
    }
    regions_[r.index] = r;
  }
  if (regions_[kConfigRegion].size == 0) return absl::InvalidArgumentError("device has no CONFIG region");
  std::vector<uint32_t> counts(kNumPciIrqs, 0);
  irq_descs_.assign(kNumPciIrqs, IrqDesc{});
  for (uint32_t i = 0; i < kNumPciIrqs; ++i) irq_descs_[i].index = i;
  for (const auto& d : device_->Irqs()) {
    if (d.index >= kNumPciIrqs) return absl::InvalidArgumentError(absl::StrCat("unknown IRQ index ", d.index));
    if (d.count > 2048) return absl::InvalidArgumentError("too many vectors");
    counts[d.index] = d.count;
    irq_descs_[d.index] = d;
  }
  // ERR and REQ are transport notifiers: one vector each whatever the device
  // says. QEMU probes ERR at realize and warns "Could not enable error
  // recovery for the device" unless its count is exactly 1
  // (hw/vfio/pci.c:vfio_pci_populate_device), then hands it an eventfd
  // (vfio_pci_register_err_notifier); libvfio-user servers report 1 as well.
  for (uint32_t i : {uint32_t{kErrIrq}, uint32_t{kReqIrq}}) {
    counts[i] = 1;
    irq_descs_[i].count = 1;
  }
  bool keep_fds = options_.store != nullptr || options_.fd_depositor != nullptr;
  dma_ = std::make_unique<DmaTable>(options_.max_dma_maps, keep_fds);
  irqs_ = std::make_unique<IrqState>(counts);
  message_dma_ = std::make_unique<MessageDmaImpl>(this);
  dma_->set_message_dma(message_dma_.get());
  if (options_.crash_consistent) {
    auto journal = RequestJournal::Open(options_.journal_path);
    if (!journal.ok()) return journal.status();
    journal_.emplace(std::move(*journal));
  }
  return absl::OkStatus();
}

absl::Status Session::Watch() {
  if (!loop_) return absl::OkStatus();
  if (!kick_fd_.valid()) {
    kick_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!kick_fd_.valid()) return absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));
    auto s = loop_->Add(kick_fd_.get(), EPOLLIN, [this](uint32_t) {
      uint64_t v;
      while (::read(kick_fd_.get(), &v, sizeof(v)) > 0) {
      }
      ProcessReady();
    });
    if (!s.ok()) return s;
  }
  // Crash-consistent mode: edge-triggered, because a deferred run of
  // self-durable writes stays in the socket (DrainSelfDurable) and would keep
  // a level-triggered watch firing. Every arrival is an edge; ProcessReady
  // reads until nothing more can be handled or re-schedules itself.
  const uint32_t events = EPOLLIN | EPOLLRDHUP | (options_.crash_consistent ? EPOLLET : 0u);
  return loop_->Add(conn_.get(), events, [this](uint32_t) { ProcessReady(); });
}

absl::Status Session::AttachClient(UniqueFd conn) {
  if (conn_.valid()) return absl::FailedPreconditionError("a client is already attached");
  if (!conn.valid()) return absl::InvalidArgumentError("invalid connection fd");
  if (journal_) {  // about an older connection
    journal_->ClearRun();
    journal_->ClearPure();
  }
  int fl = ::fcntl(conn.get(), F_GETFL);
  if (fl < 0 || ::fcntl(conn.get(), F_SETFL, fl | O_NONBLOCK) != 0) {
    return absl::InternalError(absl::StrCat("fcntl O_NONBLOCK: ", std::strerror(errno)));
  }
  if (auto s = DepositFd(kConnFdKey, conn.get()); !s.ok()) return s;
  conn_ = std::move(conn);
  peek_offset_ = false;  // a new socket peeks from its head
  deferred_ = 0;
  reader_ = MessageReader(options_.max_msg_size, options_.max_msg_fds);
  reader_.set_exact_reads(options_.store != nullptr);
  backlog_.clear();
  negotiated_ = false;
  client_caps_ = Capabilities();
  ++stats_.clients;
  state_dirty_ = true;
  if (auto s = Watch(); !s.ok()) {
    conn_.reset();
    ReleaseFd(kConnFdKey);
    return s;
  }
  ArmHandshakeTimer();
  return absl::OkStatus();
}

void Session::BeforeUnmap(uint64_t iova, uint64_t size) {
  device_->OnDmaUnmap(iova, size);
  dirty_windows_.push_back(iova);
  if (options_.fd_depositor) ReleaseFd(DmaFdKey(iova));
}

void Session::Disconnect(absl::string_view why) {
  if (!conn_.valid()) return;
  DisarmHandshakeTimer();
  last_disconnect_reason_ = std::string(why);
  if (loop_) loop_->Remove(conn_.get());
  conn_.reset();
  peek_offset_ = false;
  deferred_ = 0;
  backlog_.clear();
  dma_->UnmapAll([this](uint64_t iova, uint64_t size) { BeforeUnmap(iova, size); });
  if (attached_) {
    device_->Detach();
    attached_ = false;
  }
  if (options_.fd_depositor) {
    for (uint32_t i = 0; i < kNumPciIrqs; ++i) {
      for (uint32_t v = 0; v < irqs_->count(i); ++v) {
        if (irqs_->HasEventfd(i, v)) ReleaseFd(IrqFdKey(i, v));
      }
    }
  }
  irqs_->DisconnectAll();
  negotiated_ = false;
  state_dirty_ = true;
  ReleaseFd(kConnFdKey);
  if (options_.store) {
    // The disconnect is state too: a successor must not resume a dead client.
    auto s = Commit(nullptr);
    (void)s;
  }
  if (on_disconnect_) on_disconnect_();
}

void Session::Abandon() {
  DisarmHandshakeTimer();
  if (loop_ && conn_.valid()) loop_->Remove(conn_.get());
  conn_.reset();
  peek_offset_ = false;
  deferred_ = 0;
  backlog_.clear();
  negotiated_ = false;
  attached_ = false;
  FdDepositor* dep = options_.fd_depositor;
  state_store::Env* store = options_.store;
  options_.fd_depositor = nullptr;  // nothing is released
  options_.store = nullptr;         // nothing is committed
  pending_releases_.clear();
  dma_->UnmapAll(nullptr);
  irqs_->DisconnectAll();
  options_.fd_depositor = dep;
  options_.store = store;
}

// ---------------------------------------------------------------- main loop

void Session::ProcessReady() {
  if (in_process_) return;
  in_process_ = true;
  bool more = false;  // crash-consistent: the round ended at its cap, not on "nothing more"
  for (int i = 0; i < kMaxMessagesPerRound && conn_.valid(); ++i) {
    if (!backlog_.empty()) {
      Message m = std::move(backlog_.front());
      backlog_.pop_front();
      HandleMessage(std::move(m));
      continue;
    }
    if (options_.crash_consistent) {
      if (!HandleMessageCrashConsistent()) break;
      more = i + 1 == kMaxMessagesPerRound;
      continue;
    }
    Message m;
    std::string err;
    auto r = reader_.Read(conn_.get(), &m, &err);
    if (r == MessageReader::Result::kMessage) {
      HandleMessage(std::move(m));
    } else if (r == MessageReader::Result::kWouldBlock) {
      break;
    } else {
      if (r == MessageReader::Result::kFramingError) {
        ++stats_.framing_errors;
        Header h;
        if (reader_.BufferedHeader(&h)) RefuseUnframeable(h);
      }
      Disconnect(err);
      break;
    }
  }
  in_process_ = false;
  if (conn_.valid() && kick_fd_.valid() && (HasBufferedInput() || more)) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t r = ::write(kick_fd_.get(), &one, sizeof(one));
  }
}

bool Session::HandleMessage(Message msg) {
  const Header hdr = msg.hdr;
  if ((hdr.flags & kFlagTypeMask) == kFlagTypeReply) {
    ++stats_.stray_replies;  // nobody waits for it (see ServerRequest)
    return true;
  }
  ++stats_.requests;
  const bool self_durable = IsSelfDurable(msg);
  const bool pure = options_.store != nullptr && IsPure(msg, kHeaderSize + msg.payload.size());
  Reply reply = Dispatch(msg);
  CountCommand(hdr.command, reply.err != 0);
  if (options_.store && !self_durable && !pure) {
    if (auto s = Commit(nullptr); !s.ok()) {
      // The effect is applied in memory but not durable: tell the client.
      reply = Reply{};
      reply.err = EIO;
    }
  }
  if (hdr.flags & kFlagNoReply) {
    if (reply.err) ++stats_.posted_errors;
    return true;
  }
  return SendReply(hdr, reply);
}

void Session::RefuseUnframeable(const Header& h) {
  // libvfio-user answers a header whose size is below 16 or above its limit
  // with EINVAL (test/py/test_request_errors.py: test_too_small,
  // test_too_large); the stream cannot be trusted after it, so the caller
  // closes the connection next. Replies and posted requests get nothing.
  if ((h.flags & kFlagTypeMask) != kFlagTypeCommand || (h.flags & kFlagNoReply)) return;
  ++stats_.requests;
  CountCommand(h.command, true);
  Reply r;
  r.err = EINVAL;
  (void)SendReply(h, r);
}

bool Session::PrepareReply(const Header& req, const Reply& reply, PreparedMessage* out) {
  if (!conn_.valid()) return false;
  Header h;
  h.msg_id = req.msg_id;
  h.command = req.command;
  h.flags = kFlagTypeReply | (reply.err ? kFlagError : 0);
  h.error = reply.err;
  if (reply.err) ++stats_.error_replies;
  absl::Span<const uint8_t> payload = reply.err ? absl::Span<const uint8_t>() : absl::MakeConstSpan(reply.payload);
  absl::Span<const int> fds = reply.err ? absl::Span<const int>() : absl::MakeConstSpan(reply.fds);
  if (absl::Status s = PrepareMessage(h, payload, fds, out); !s.ok()) {
    Disconnect(absl::StrCat("preparing reply: ", s.message()));
    return false;
  }
  return true;
}

bool Session::SendReply(const Header& req, const Reply& reply, MarkBeforeSend mark) {
  PreparedMessage out;
  if (!PrepareReply(req, reply, &out)) return false;
  if (absl::Status s = SendPrepared(conn_.get(), out, options_.send_timeout, mark); !s.ok()) {
    Disconnect(absl::StrCat("sending reply: ", s.message()));
    return false;
  }
  return true;
}

Session::Reply Session::Dispatch(Message& m) {
  Reply err;
  const Header& h = m.hdr;
  auto fail = [&](int e) {
    Reply r;
    r.err = static_cast<uint32_t>(e);
    return r;
  };
  if ((h.flags & kFlagTypeMask) != kFlagTypeCommand) return fail(EINVAL);
  if (h.flags & ~(kFlagTypeMask | kFlagNoReply)) return fail(EINVAL);
  if (h.error != 0) return fail(EINVAL);
  if (m.fds_truncated) return fail(EINVAL);
  size_t max_fds = 0;
  // DMA_UNMAP: SPDK's client sends the region's fd with every unmap
  // (lib/vfio_user/host/vfio_user.c: vfio_user_dev_dma_map_unmap); like
  // libvfio-user we accept it and close it with the message.
  if (h.command == kCmdDmaMap || h.command == kCmdDmaUnmap) max_fds = 1;
  if (h.command == kCmdDeviceSetIrqs) max_fds = options_.max_msg_fds;
  if (m.fds.size() > max_fds) return fail(EINVAL);
  if (!negotiated_ && h.command != kCmdVersion) return fail(EINVAL);
  switch (h.command) {
    case kCmdVersion: return HandleVersion(m);
    case kCmdDmaMap: return HandleDmaMap(m);
    case kCmdDmaUnmap: return HandleDmaUnmap(m);
    case kCmdDeviceGetInfo: return HandleGetInfo(m);
    case kCmdDeviceGetRegionInfo: return HandleGetRegionInfo(m);
    case kCmdDeviceGetRegionIoFds: return HandleGetRegionIoFds(m);
    case kCmdDeviceGetIrqInfo: return HandleGetIrqInfo(m);
    case kCmdDeviceSetIrqs: return HandleSetIrqs(m);
    case kCmdRegionRead: return HandleRegionRead(m);
    case kCmdRegionWrite:
    case kCmdRegionWriteMulti:
      return HandleRegionWrites(m);
    case kCmdDeviceReset: return HandleReset(m);
    case kCmdDmaRead:
    case kCmdDmaWrite:
      return fail(EINVAL);  // server-to-client only
    case kCmdDirtyPages:
    case kCmdDeviceFeature:
    case kCmdMigDataRead:
    case kCmdMigDataWrite:
      return fail(ENOTSUP);  // no migration yet
    default:
      return fail(EINVAL);
  }
}

// ---------------------------------------------------------------- commands

Session::Reply Session::HandleVersion(Message& m) {
  Reply r;
  if (negotiated_) { r.err = EINVAL; return r; }
  auto v = DecodeVersion(m.payload);
  if (!v.ok()) { r.err = EINVAL; return r; }
  // A major we do not speak: EINVAL, as libvfio-user answers
  // (test/py/test_negotiate.py: test_invalid_major).
  if (v->major != kMajorVersion) { r.err = EINVAL; return r; }
  Capabilities client;
  if (v->json) {
    auto c = ParseCapabilities(*v->json);
    if (!c.ok()) { r.err = EINVAL; return r; }
    client = *c;
  }
  if (client.max_msg_fds > 1024) { r.err = EINVAL; return r; }
  Capabilities ours;
  ours.max_msg_fds = options_.max_msg_fds;
  ours.max_data_xfer_size = options_.max_data_xfer_size;
  ours.pgsizes = 4096;
  ours.max_dma_maps = options_.max_dma_maps;
  ours.write_multiple = client.write_multiple;  // a subset of what the client offered
  VersionPayload reply{kMajorVersion, kMinorVersion, std::nullopt};
  if (v->json && client.migration_max_bitmap_size) {
    // QEMU (the client that sends migration.max_bitmap_size) sizes its
    // receive buffer to its own request: the reply must fit it - full JSON,
    // else defaults omitted, else an empty object. Other clients (rust-vmm,
    // SPDK, libvfio-user) read msg_size bytes and get the full JSON, so that
    // they never assume spec defaults looser than what we enforce.
    size_t budget = m.payload.size() - 4;
    std::string js = EncodeCapabilities(ours, false);
    if (js.size() + 1 > budget) js = EncodeCapabilities(ours, true);
    if (js.size() + 1 > budget) {
      js = "{}";
      ours = Capabilities();  // spec defaults then apply to both sides
      ours.max_data_xfer_size = std::min<uint64_t>(ours.max_data_xfer_size, options_.max_data_xfer_size);
    }
    reply.json = js;
  } else if (v->json) {
    reply.json = EncodeCapabilities(ours, false);
  }
  client_caps_ = client;
  server_max_xfer_ = ours.max_data_xfer_size;
  dma_layout_ = options_.dma_rw_layout;
  if (dma_layout_ == DmaRwLayout::kAuto) {
    dma_layout_ = client.migration_max_bitmap_size ? DmaRwLayout::kQemu : DmaRwLayout::kSpec;
  }
  negotiated_ = true;
  DisarmHandshakeTimer();
  state_dirty_ = true;
  if (!attached_) {
    device_->Attach(DeviceContext{dma_.get(), irqs_.get()});
    attached_ = true;
  }
  r.payload = EncodeVersion(reply);
  return r;
}

Session::Reply Session::HandleDmaMap(Message& m) {
  Reply r;
  DmaMap req;
  if (!LoadStruct(m.payload, 0, &req) || req.argsz < sizeof(DmaMap) || req.argsz > m.payload.size()) {
    r.err = EINVAL;
    return r;
  }
  if ((req.flags & ~(kDmaFlagRead | kDmaFlagWrite)) || req.flags == 0 || req.size == 0 ||
      req.addr + req.size < req.addr) {
    r.err = EINVAL;
    return r;
  }
  UniqueFd fd;
  if (!m.fds.empty()) fd = std::move(m.fds[0]);
  if (!fd.valid() && req.offset != 0) { r.err = EINVAL; return r; }
  bool deposited = false;
  if (fd.valid() && options_.fd_depositor) {
    // Refuse before depositing anything a map would refuse anyway.
    auto next = dma_->windows().lower_bound(req.addr);
    bool overlap = (next != dma_->windows().end() && next->first < req.addr + req.size);
    if (!overlap && next != dma_->windows().begin()) {
      auto prev = std::prev(next);
      overlap = prev->first + prev->second.size > req.addr;
    }
    if (overlap) { r.err = EEXIST; return r; }
    if (auto s = DepositFd(DmaFdKey(req.addr), fd.get()); !s.ok()) { r.err = EIO; return r; }
    deposited = true;
  }
  auto s = dma_->Map(req.addr, req.size, req.flags, std::move(fd), req.offset);
  if (!s.ok()) {
    if (deposited) ReleaseFd(DmaFdKey(req.addr));
    r.err = static_cast<uint32_t>(StatusToErrno(s));
    return r;
  }
  dirty_windows_.push_back(req.addr);
  return r;
}

Session::Reply Session::HandleDmaUnmap(Message& m) {
  Reply r;
  DmaUnmap req;
  // As libvfio-user's is_valid_unmap: payload at least the struct (a legacy
  // dirty-bitmap request appends more), argsz within [24, max transfer];
  // flags 0 or ALL alone. The legacy GET_DIRTY_BITMAP (no dirty tracking
  // here: libvfio-user answers EINVAL then) and any combination are EINVAL.
  if (!LoadStruct(m.payload, 0, &req) || req.argsz < sizeof(DmaUnmap) ||
      req.argsz > options_.max_data_xfer_size) {
    r.err = EINVAL;
    return r;
  }
  if (req.flags != 0 && req.flags != kDmaUnmapFlagAll) { r.err = EINVAL; return r; }
  auto before = [this](uint64_t iova, uint64_t size) { BeforeUnmap(iova, size); };
  if (req.flags & kDmaUnmapFlagAll) {
    if (req.addr != 0 || req.size != 0) { r.err = EINVAL; return r; }
    dma_->UnmapAll(before);
  } else {
    if (req.size == 0) { r.err = EINVAL; return r; }
    auto s = dma_->Unmap(req.addr, req.size, before);
    if (!s.ok()) { r.err = static_cast<uint32_t>(StatusToErrno(s)); return r; }
  }
  // The spec: "The server responds with the original DMA entry in the
  // request" (argsz included, as libvfio-user echoes it).
  r.payload = Bytes(req);
  return r;
}

Session::Reply Session::HandleGetInfo(Message& m) {
  Reply r;
  DeviceInfo req;
  // A longer payload is accepted (libvfio-user: handle_device_get_info).
  if (!LoadStruct(m.payload, 0, &req) || req.argsz < sizeof(DeviceInfo)) {
    r.err = EINVAL;
    return r;
  }
  DeviceInfo out;
  out.argsz = sizeof(DeviceInfo);
  out.flags = kDeviceFlagReset | kDeviceFlagPci;
  out.num_regions = num_regions_;
  out.num_irqs = kNumPciIrqs;
  // A client whose struct carries the kernel's cap_offset (20 bytes: the
  // rust-vmm vfio-user crate's DeviceGetInfo) reads exactly that many back:
  // answer with cap_offset 0 (no capabilities). Everyone else gets 16.
  constexpr size_t kWithCapOffset = sizeof(DeviceInfo) + sizeof(uint32_t);
  if (m.payload.size() == kWithCapOffset) {
    out.argsz = kWithCapOffset;
    r.payload = Bytes(out);
    r.payload.resize(kWithCapOffset, 0);
    return r;
  }
  r.payload = Bytes(out);
  return r;
}

const RegionDesc* Session::Region(uint32_t index) const {
  if (index >= regions_.size()) return nullptr;
  return &regions_[index];
}

Session::Reply Session::HandleGetRegionInfo(Message& m) {
  Reply r;
  RegionInfo req;
  // A payload padded to argsz is accepted (libvfio-user's own client sends
  // one: test/py/test_device_get_region_info.py, test_..._caps).
  if (!LoadStruct(m.payload, 0, &req) || req.argsz < sizeof(RegionInfo)) {
    r.err = EINVAL;
    return r;
  }
  const RegionDesc* d = Region(req.index);
  if (!d) { r.err = EINVAL; return r; }
  RegionInfo out;
  out.index = req.index;
  out.size = d->size;
  if (d->readable) out.flags |= kRegionFlagRead;
  if (d->writable) out.flags |= kRegionFlagWrite;
  std::vector<uint8_t> caps;
  // A client that takes no fds (max_msg_fds 0) gets a trap-only region.
  bool mmap = !d->mmap_areas.empty() && d->mmap_fd >= 0 && d->size > 0 && client_caps_.max_msg_fds > 0;
  if (mmap) {
    out.flags |= kRegionFlagMmap | kRegionFlagCaps;
    out.offset = d->fd_offset;
    CapHeader ch{kRegionCapSparseMmap, 1, 0};
    SparseMmapHeader sh{static_cast<uint32_t>(d->mmap_areas.size()), 0};
    AppendStruct(&caps, ch);
    AppendStruct(&caps, sh);
    for (const auto& a : d->mmap_areas) AppendStruct(&caps, SparseArea{a.offset, a.size});
  }
  uint64_t needed = sizeof(RegionInfo) + caps.size();
  out.argsz = static_cast<uint32_t>(needed);
  if (needed <= req.argsz) {
    if (mmap) out.cap_offset = sizeof(RegionInfo);
    r.payload = Bytes(out);
    AppendBytes(&r.payload, caps);
    if (mmap) r.fds.push_back(d->mmap_fd);
  } else {
    // Too small: report the size needed, without caps or fd; the client
    // retries. CAPS must be clear then: QEMU refuses CAPS with cap_offset 0.
    out.flags &= ~kRegionFlagCaps;
    out.cap_offset = 0;
    r.payload = Bytes(out);
  }
  return r;
}

Session::Reply Session::HandleGetRegionIoFds(Message& m) {
  Reply r;
  RegionIoFds req;
  if (!LoadStruct(m.payload, 0, &req) || m.payload.size() != sizeof(RegionIoFds) ||
      req.argsz < sizeof(RegionIoFds) || req.flags != 0 || req.count != 0) {
    r.err = EINVAL;
    return r;
  }
  const RegionDesc* d = Region(req.index);
  if (!d || d->size == 0) { r.err = EINVAL; return r; }
  RegionIoFds out;
  out.argsz = sizeof(RegionIoFds);
  out.index = req.index;
  out.count = 0;  // no ioeventfds offered
  r.payload = Bytes(out);
  return r;
}

Session::Reply Session::HandleGetIrqInfo(Message& m) {
  Reply r;
  IrqInfo req;
  if (!LoadStruct(m.payload, 0, &req) || m.payload.size() != sizeof(IrqInfo) || req.argsz < sizeof(IrqInfo) ||
      req.index >= kNumPciIrqs) {
    r.err = EINVAL;
    return r;
  }
  IrqInfo out;
  out.argsz = sizeof(IrqInfo);
  out.index = req.index;
  out.count = irqs_->count(req.index);
  out.flags = kIrqInfoEventfd;
  // MASK/UNMASK (DATA_NONE/BOOL) are accepted for INTx, MSI and MSI-X
  // vectors, not for the ERR/REQ notifiers: say so (spec: MASKABLE).
  if (req.index != kErrIrq && req.index != kReqIrq) out.flags |= kIrqInfoMaskable;
  r.payload = Bytes(out);
  return r;
}

Session::Reply Session::HandleSetIrqs(Message& m) {
  Reply r;
  r.err = EINVAL;
  IrqSet req;
  // argsz describes the request itself and must match it (libvfio-user:
  // handle_device_set_irqs; QEMU's vfio_user_device_io_set_irqs always
  // sends argsz == payload size).
  if (!LoadStruct(m.payload, 0, &req) || req.argsz < sizeof(IrqSet) || req.argsz != m.payload.size() ||
      req.index >= kNumPciIrqs) {
    return r;
  }
  uint32_t data = req.flags & kIrqSetDataMask;
  uint32_t action = req.flags & kIrqSetActionMaskAll;
  if (req.flags & ~(kIrqSetDataMask | kIrqSetActionMaskAll)) return r;
  if (__builtin_popcount(data) != 1 || __builtin_popcount(action) != 1) return r;
  uint32_t n = irqs_->count(req.index);
  if (req.count == 0) {
    // Only "disable all" (DATA_NONE|ACTION_TRIGGER, start 0) takes count 0
    // (libvfio-user irq.c:dev_set_irqs_validate).
    if (data != kIrqSetDataNone || action != kIrqSetActionTrigger || req.start != 0 || !m.fds.empty()) return r;
  } else if (uint64_t{req.start} + req.count > n) {
    return r;
  }
  // Masking applies to INTx/MSI/MSI-X vectors; ERR and REQ only trigger
  // (libvfio-user irq.c). QEMU masks/unmasks INTx with DATA_NONE
  // (hw/vfio/device.c:vfio_device_irq_mask/unmask from vfio_intx_enable_kvm).
  if ((action == kIrqSetActionMask || action == kIrqSetActionUnmask) &&
      (req.index == kErrIrq || req.index == kReqIrq)) {
    return r;
  }
  std::vector<uint8_t> bools;
  if (data == kIrqSetDataBool) {
    // Exactly one byte per vector (test_device_set_irqs_trigger_bool_too_large).
    if (m.payload.size() != sizeof(IrqSet) + uint64_t{req.count} || !m.fds.empty()) return r;
    bools.assign(m.payload.begin() + sizeof(IrqSet), m.payload.begin() + sizeof(IrqSet) + req.count);
  } else if (data == kIrqSetDataEventfd) {
    if (action != kIrqSetActionTrigger) return r;
    if (!m.fds.empty() && m.fds.size() != req.count) return r;
    for (const auto& fd : m.fds) {
      if (!IsEventFd(fd.get())) return r;
    }
  } else if (!m.fds.empty()) {
    return r;
  }
  // Fd-store bookkeeping: release replaced eventfds, deposit new ones.
  if (options_.fd_depositor && data == kIrqSetDataEventfd) {
    for (uint32_t i = 0; i < req.count; ++i) {
      if (irqs_->HasEventfd(req.index, req.start + i)) ReleaseFd(IrqFdKey(req.index, req.start + i));
      if (!m.fds.empty()) {
        if (auto s = DepositFd(IrqFdKey(req.index, req.start + i), m.fds[i].get()); !s.ok()) {
          r.err = EIO;
          return r;
        }
      }
    }
  }
  if (options_.fd_depositor && data == kIrqSetDataNone && action == kIrqSetActionTrigger && req.count == 0) {
    for (uint32_t v = 0; v < n; ++v) {
      if (irqs_->HasEventfd(req.index, v)) ReleaseFd(IrqFdKey(req.index, v));
    }
  }
  auto s = irqs_->SetIrqs(req.flags, req.index, req.start, req.count, std::move(m.fds), bools);
  if (!s.ok()) {
    r.err = static_cast<uint32_t>(StatusToErrno(s));
    return r;
  }
  r.err = 0;
  return r;
}

absl::Status Session::CheckRegionAccess(uint32_t region, uint64_t offset, uint64_t count, bool write) const {
  if (count == 0) return ErrnoStatus(EINVAL, "zero-length region access");
  if (count > options_.max_data_xfer_size) return ErrnoStatus(E2BIG, "region access larger than max_data_xfer_size");
  const RegionDesc* d = Region(region);
  if (!d || d->size == 0) return ErrnoStatus(EINVAL, "no such region");
  if (write ? !d->writable : !d->readable) return ErrnoStatus(EINVAL, "region access not permitted");
  if (offset > d->size || count > d->size - offset) return ErrnoStatus(EINVAL, "region access out of bounds");
  return absl::OkStatus();
}

Session::Reply Session::HandleRegionRead(Message& m) {
  Reply r;
  RegionAccess req;
  if (!LoadStruct(m.payload, 0, &req) || m.payload.size() != sizeof(RegionAccess)) {
    r.err = EINVAL;
    return r;
  }
  if (auto s = CheckRegionAccess(req.region, req.offset, req.count, false); !s.ok()) {
    r.err = static_cast<uint32_t>(StatusToErrno(s));
    return r;
  }
  r.payload = Bytes(req);
  r.payload.resize(sizeof(RegionAccess) + req.count);
  auto s = device_->RegionRead(req.region, req.offset,
                               absl::MakeSpan(r.payload.data() + sizeof(RegionAccess), req.count));
  if (!s.ok()) {
    r.payload.clear();
    r.err = EINVAL;
  }
  return r;
}

Session::Reply Session::HandleRegionWrites(Message& m) {
  Reply r;
  RegionWrites writes;
  if (WriteMultiRefused(m.hdr.command)) {
    r.err = ENOTSUP;
  } else if (!RegionWrites::Decode(m.hdr.command, m.payload, &writes)) {
    r.err = EINVAL;
  } else {
    r.err = ApplyRegionWrites(writes);
  }
  if (r.err == 0) r.payload.assign(writes.reply().begin(), writes.reply().end());
  return r;
}

uint32_t Session::ApplyRegionWrites(const RegionWrites& writes) {
  // A WRITE_MULTI entry (<= 8 bytes) can only fail the check with EINVAL;
  // a REGION_WRITE also with E2BIG.
  if (writes.size() == 1) {  // REGION_WRITE: every trapped doorbell
    const RegionWrite w = writes[0];
    if (auto s = CheckRegionAccess(w.region, w.offset, w.data.size(), true); !s.ok()) {
      return static_cast<uint32_t>(StatusToErrno(s));
    }
    return device_->RegionWrite(w.region, w.offset, w.data).ok() ? 0 : EINVAL;
  }
  for (size_t i = 0; i < writes.size(); ++i) {
    const RegionWrite w = writes[i];
    if (auto s = CheckRegionAccess(w.region, w.offset, w.data.size(), true); !s.ok()) {
      return static_cast<uint32_t>(StatusToErrno(s));
    }
  }
  for (size_t i = 0; i < writes.size(); ++i) {
    const RegionWrite w = writes[i];
    if (!device_->RegionWrite(w.region, w.offset, w.data).ok()) return EINVAL;
  }
  return 0;
}

Session::Reply Session::HandleReset(Message& m) {
  Reply r;
  if (!m.payload.empty()) { r.err = EINVAL; return r; }
  auto s = device_->Reset();
  irqs_->ClearPending();
  if (!s.ok()) r.err = static_cast<uint32_t>(StatusToErrno(s));
  return r;
}

// ---------------------------------------------------------------- server -> client

absl::StatusOr<Message> Session::ServerRequest(uint16_t cmd, absl::Span<const uint8_t> payload) {
  if (!conn_.valid()) return absl::UnavailableError("no client");
  if (options_.crash_consistent) {
    // The request being applied is still unconsumed at the socket head; a
    // reply read here would re-read it. Windows without an fd are refused.
    return absl::UnavailableError("message-based DMA is not available in crash-consistent mode");
  }
  if (payload.size() + kHeaderSize > options_.max_msg_size) return absl::InvalidArgumentError("request too big");
  Header h;
  h.msg_id = next_server_msg_id_++;
  h.command = cmd;
  h.flags = kFlagTypeCommand;
  ++stats_.dma_messages;
  if (auto s = SendMessage(conn_.get(), h, payload, {}, options_.send_timeout); !s.ok()) return s;
  absl::Time deadline = absl::Now() + options_.dma_timeout;
  for (;;) {
    Message m;
    std::string err;
    auto r = reader_.Read(conn_.get(), &m, &err);
    if (r == MessageReader::Result::kMessage) {
      if ((m.hdr.flags & kFlagTypeMask) == kFlagTypeReply) {
        if (m.hdr.msg_id == h.msg_id && m.hdr.command == cmd) {
          if (m.hdr.flags & kFlagError) return ErrnoStatus(m.hdr.error ? int(m.hdr.error) : EIO, "client refused DMA");
          return m;
        }
        ++stats_.stray_replies;
        continue;
      }
      backlog_.push_back(std::move(m));  // handled in order after the current request
      continue;
    }
    if (r == MessageReader::Result::kWouldBlock) {
      absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return absl::DeadlineExceededError("client did not answer DMA request");
      pollfd p{conn_.get(), POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
      continue;
    }
    // The connection is gone; the caller's request completes with an error
    // and the next ProcessReady round notices EOF again.
    return absl::UnavailableError(err);
  }
}

// ---------------------------------------------------------------- persistence

absl::Status Session::DepositFd(absl::string_view key, int fd) {
  if (!options_.fd_depositor) return absl::OkStatus();
  // A release of the same key still waiting for its commit must not drop
  // the new deposit.
  pending_releases_.erase(std::remove(pending_releases_.begin(), pending_releases_.end(), key),
                          pending_releases_.end());
  return options_.fd_depositor->Deposit(key, fd);
}

void Session::ReleaseFd(absl::string_view key) {
  if (!options_.fd_depositor) return;
  if (options_.store != nullptr) {
    // State before effect: the records still name this fd (a DMA window,
    // an eventfd) until the commit of the request that dropped it; a
    // successor started before that commit needs it. Released by Commit.
    pending_releases_.emplace_back(key);
    return;
  }
  options_.fd_depositor->Release(key);
}

absl::Status Session::WriteAllState(state_store::WriteTxn& txn) {
  if (state_dirty_) {
    session_store::Negotiated n;
    n.live = negotiated_ && conn_.valid();
    n.client_caps = client_caps_;
    n.seq = seq_;
    n.next_server_msg_id = next_server_msg_id_;
    n.dma_layout = dma_layout_;
    if (auto s = session_store::PutNegotiated(txn, n); !s.ok()) return s;
  }
  for (uint64_t iova : dirty_windows_) {
    if (auto s = session_store::PutDmaWindow(txn, *dma_, iova); !s.ok()) return s;
  }
  if (irqs_->TakeDirty() || state_dirty_) {
    if (auto s = session_store::PutIrqs(txn, *irqs_); !s.ok()) return s;
  }
  if (options_.save_device && attached_) {
    if (auto s = session_store::SaveDevice(txn, *device_); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status Session::Commit(const std::function<absl::Status(state_store::WriteTxn&)>& extra) {
  if (!options_.store) return absl::OkStatus();
  // Save runs on this thread inside the transaction, and so does everything
  // that moves the generation (the data path's lane 0 included).
  const bool saves_device = options_.save_device && attached_;
  const uint64_t generation = device_->StateGeneration();
  auto s = options_.store->Update([&](state_store::WriteTxn& txn) -> absl::Status {
    if (auto st = WriteAllState(txn); !st.ok()) return st;
    if (extra) return extra(txn);
    return absl::OkStatus();
  });
  if (s.ok()) {
    ++stats_.commits;
    if (saves_device) {
      committed_generation_ = generation;
    } else {
      committed_generation_.reset();
    }
    state_dirty_ = false;
    dirty_windows_.clear();
    if (options_.fd_depositor != nullptr) {
      for (const std::string& key : pending_releases_) options_.fd_depositor->Release(key);
    }
    pending_releases_.clear();
  } else {
    state_dirty_ = true;
    committed_generation_.reset();
  }
  return s;
}

absl::Status Session::LoadState(const FdLookup& fds) {
  auto n = session_store::Restore(*options_.store, fds, *dma_, *irqs_);
  if (!n.ok()) return n.status();
  client_caps_ = n->client_caps;
  server_max_xfer_ = options_.max_data_xfer_size;  // what HandleVersion announced
  seq_ = n->seq;
  next_server_msg_id_ = n->next_server_msg_id;
  dma_layout_ = n->dma_layout;
  negotiated_ = true;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Session>> Session::Resume(PciDevice* device, EventLoop* loop,
                                                         SessionOptions options, UniqueFd conn,
                                                         const FdLookup& fds) {
  if (!options.store) return absl::InvalidArgumentError("Resume needs a store");
  FdDepositor* depositor = options.fd_depositor;
  options.fd_depositor = nullptr;  // the fds are already in the store
  auto created = Create(device, loop, std::move(options));
  if (!created.ok()) return created.status();
  std::unique_ptr<Session> s = std::move(*created);
  if (auto st = s->LoadState(fds); !st.ok()) return st;
  s->options_.fd_depositor = depositor;
  int fl = ::fcntl(conn.get(), F_GETFL);
  if (fl < 0 || ::fcntl(conn.get(), F_SETFL, fl | O_NONBLOCK) != 0) {
    return absl::InternalError("fcntl O_NONBLOCK on resumed connection");
  }
  s->conn_ = std::move(conn);
  s->reader_.set_exact_reads(true);
  // The peek offset is the socket's, not the process's: a predecessor that
  // deferred a run left it past that run. Peek from the head (a kernel
  // without SO_PEEK_OFF on AF_UNIX never had one set).
  const int no_offset = -1;
  (void)::setsockopt(s->conn_.get(), SOL_SOCKET, SO_PEEK_OFF, &no_offset, sizeof(no_offset));
  device->Attach(DeviceContext{s->dma_.get(), s->irqs_.get()});
  s->attached_ = true;

  if (s->options_.crash_consistent) {
    if (auto st = s->SettleLastRequest(); !st.ok()) return st;
    if (auto st = s->SettleSelfDurableRun(); !st.ok()) return st;
    if (auto st = s->SettlePure(); !st.ok()) return st;
  }
  if (auto st = s->Watch(); !st.ok()) return st;
  return s;
}

// ---------------------------------------------------------------- Server

absl::StatusOr<std::unique_ptr<Server>> Server::Listen(const std::string& socket_path, PciDevice* device,
                                                       EventLoop* loop, SessionOptions options) {
  auto listener = ListenUnix(socket_path, {});  // owner-only, non-blocking
  if (!listener.ok()) return listener.status();
  UniqueFd fd = std::move(*listener);
  if (options.fd_depositor) {
    if (auto s = options.fd_depositor->Deposit(worker_api::kListenFdKey, fd.get()); !s.ok()) return s;
  }
  auto session = Session::Create(device, loop, std::move(options));
  if (!session.ok()) return session.status();
  auto server = FromListener(std::move(fd), std::move(*session), loop);
  if (server.ok()) (*server)->path_ = socket_path;
  return server;
}

absl::StatusOr<std::unique_ptr<Server>> Server::FromListener(UniqueFd listen_fd, std::unique_ptr<Session> session,
                                                             EventLoop* loop) {
  if (!loop) return absl::InvalidArgumentError("Server needs an event loop");
  int fl = ::fcntl(listen_fd.get(), F_GETFL);
  if (fl < 0 || ::fcntl(listen_fd.get(), F_SETFL, fl | O_NONBLOCK) != 0) {
    return absl::InvalidArgumentError("listening fd unusable");
  }
  std::unique_ptr<Server> s(new Server());
  s->listen_fd_ = std::move(listen_fd);
  s->session_ = std::move(session);
  s->loop_ = loop;
  Server* raw = s.get();
  s->session_->set_on_disconnect([raw] { raw->Arm(); });
  if (!s->session_->connected()) s->Arm();
  return s;
}

Server::~Server() {
  if (loop_ && listen_fd_.valid()) loop_->Remove(listen_fd_.get());
  if (session_) session_->set_on_disconnect(nullptr);
  session_.reset();
  if (!path_.empty()) ::unlink(path_.c_str());
}

void Server::Arm() {
  if (!loop_->Watching(listen_fd_.get())) {
    (void)loop_->Add(listen_fd_.get(), EPOLLIN, [this](uint32_t) { OnAcceptable(); });
  }
}

void Server::OnAcceptable() {
  if (session_->connected()) {
    loop_->Remove(listen_fd_.get());
    return;
  }
  UniqueFd conn(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  if (!conn.valid()) return;
  if (session_->AttachClient(std::move(conn)).ok()) {
    loop_->Remove(listen_fd_.get());  // one client at a time; others wait in the backlog
    session_->ProcessReady();
  }
}

}  // namespace emud::vfio_user
