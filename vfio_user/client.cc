#include "vfio_user/client.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/scm_rights.h"

namespace emud::vfio_user {
namespace {

template <typename T>
std::vector<uint8_t> Bytes(const T& v) {
  std::vector<uint8_t> out;
  AppendStruct(&out, v);
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& socket_path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError("socket path empty or too long");
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(absl::StrCat("connect ", socket_path, ": ", std::strerror(errno)));
  }
  return FromFd(std::move(fd));
}

absl::StatusOr<std::unique_ptr<Client>> Client::FromFd(UniqueFd sock) {
  if (!sock.valid()) return absl::InvalidArgumentError("invalid socket");
  int fl = ::fcntl(sock.get(), F_GETFL);
  if (fl >= 0) ::fcntl(sock.get(), F_SETFL, fl | O_NONBLOCK);
  return std::unique_ptr<Client>(new Client(std::move(sock)));
}

absl::Status Client::ReplyStatus(const Message& m) {
  if (m.hdr.flags & kFlagError) {
    int e = m.hdr.error ? static_cast<int>(m.hdr.error) : EIO;
    return ErrnoStatus(e, absl::StrCat(CommandName(m.hdr.command), " failed: ", std::strerror(e)));
  }
  return absl::OkStatus();
}

absl::StatusOr<Message> Client::Receive() {
  absl::Time deadline = absl::Now() + timeout_;
  for (;;) {
    Message m;
    std::string err;
    auto r = reader_.Read(sock_.get(), &m, &err);
    if (r == MessageReader::Result::kMessage) return m;
    if (r == MessageReader::Result::kClosed) return absl::UnavailableError(err);
    if (r == MessageReader::Result::kFramingError) return absl::DataLossError(err);
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return absl::DeadlineExceededError("no reply from the server");
    if (busy_wait_) continue;
    pollfd p{sock_.get(), POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
  }
}

absl::Status Client::HandleServerRequest(Message& m) {
  Header h;
  h.msg_id = m.hdr.msg_id;
  h.command = m.hdr.command;
  h.flags = kFlagTypeReply;
  std::vector<uint8_t> payload;
  int err = 0;
  const bool qemu = dma_layout_ == DmaRwLayout::kQemu;
  const size_t data_off = DmaRwDataOffset(dma_layout_);
  uint64_t addr = 0, count = 0;
  if (m.payload.size() >= sizeof(DmaAccess)) {
    std::memcpy(&addr, m.payload.data(), 8);
    if (qemu) {
      uint32_t c;
      std::memcpy(&c, m.payload.data() + 8, 4);
      count = c;
    } else {
      std::memcpy(&count, m.payload.data() + 8, 8);
    }
  }
  if (!m.fds.empty() || m.payload.size() < sizeof(DmaAccess) || count > (64u << 20)) {
    err = EINVAL;
  } else if (m.hdr.command == kCmdDmaRead) {
    // Reply: the request's header fields, then the data (16 + count bytes).
    payload.assign(sizeof(DmaAccess) + count, 0);
    std::memcpy(payload.data(), m.payload.data(), sizeof(DmaAccess));
    err = dma_handler_ ? dma_handler_->Read(addr, absl::MakeSpan(payload.data() + data_off, count)) : EFAULT;
  } else if (m.hdr.command == kCmdDmaWrite) {
    if (m.payload.size() < data_off + count) {
      err = EINVAL;
    } else {
      err = dma_handler_ ? dma_handler_->Write(addr, absl::MakeConstSpan(m.payload.data() + data_off, count)) : EFAULT;
      payload.assign(m.payload.begin(), m.payload.begin() + sizeof(DmaAccess));
    }
  } else {
    err = ENOSYS;
  }
  ++dma_served_;
  if (err) {
    h.flags |= kFlagError;
    h.error = static_cast<uint32_t>(err);
    payload.clear();
  }
  if (m.hdr.flags & kFlagNoReply) return absl::OkStatus();
  return SendMessage(sock_.get(), h, payload, {});
}

absl::StatusOr<Message> Client::ReceiveReply(uint16_t msg_id, uint16_t command) {
  for (;;) {
    auto m = Receive();
    if (!m.ok()) return m.status();
    if ((m->hdr.flags & kFlagTypeMask) == kFlagTypeCommand) {
      if (auto s = HandleServerRequest(*m); !s.ok()) return s;
      continue;
    }
    if (m->hdr.msg_id != msg_id || m->hdr.command != command) {
      return absl::DataLossError(absl::StrCat("unexpected reply id ", m->hdr.msg_id, " cmd ", m->hdr.command,
                                              " (waiting for id ", msg_id, " cmd ", command, ")"));
    }
    return m;
  }
}

absl::Status Client::ServePending() {
  for (;;) {
    Message m;
    std::string err;
    auto r = reader_.Read(sock_.get(), &m, &err);
    if (r == MessageReader::Result::kWouldBlock) return absl::OkStatus();
    if (r != MessageReader::Result::kMessage) return absl::UnavailableError(err);
    if ((m.hdr.flags & kFlagTypeMask) != kFlagTypeCommand) return absl::DataLossError("unexpected reply");
    if (auto s = HandleServerRequest(m); !s.ok()) return s;
  }
}

absl::StatusOr<Message> Client::Request(uint16_t command, absl::Span<const uint8_t> payload,
                                        absl::Span<const int> fds, uint32_t flags, size_t max_reply) {
  Header h;
  h.msg_id = NextId();
  h.command = command;
  h.flags = flags;
  const absl::Time sent = absl::Now();
  auto note_wait = [&] {
    if (absl::Duration w = absl::Now() - sent; w > max_reply_wait_) {
      max_reply_wait_ = w;
      max_reply_wait_command_ = command;
    }
  };
  if (auto s = SendMessage(sock_.get(), h, payload, fds, timeout_); !s.ok()) {
    if (!(flags & kFlagNoReply)) note_wait();
    return s;
  }
  if (flags & kFlagNoReply) return Message{};
  auto m = ReceiveReply(h.msg_id, command);
  note_wait();
  if (!m.ok()) return m;
  size_t limit = max_reply ? max_reply : kHeaderSize + payload.size();
  if (m->hdr.msg_size > limit) {
    return absl::DataLossError(absl::StrCat(CommandName(command), ": reply larger than recv buffer (",
                                            m->hdr.msg_size, " > ", limit, ")"));
  }
  return m;
}

absl::Status Client::SendRaw(absl::Span<const uint8_t> bytes, absl::Span<const int> fds) {
  // SendMessage frames; here the bytes are sent as they are.
  if (fds.size() > kMaxRecvFds) return absl::InvalidArgumentError("too many fds");
  const SendResult r = SendWithFds(sock_.get(), bytes, fds);
  if (!r.ok() || r.bytes != bytes.size()) return absl::UnavailableError("short raw send");
  return absl::OkStatus();
}

absl::StatusOr<VersionResult> Client::Version() {
  Capabilities caps;
  caps.max_msg_fds = 16;
  caps.max_data_xfer_size = 1 << 20;
  caps.pgsizes = 4096;
  caps.max_dma_maps = 65535;
  caps.write_multiple = true;
  if (dma_layout_ == DmaRwLayout::kQemu) {  // what QEMU 10.1 sends
    caps.migration_pgsize = 4096;
    caps.migration_max_bitmap_size = 256u << 20;
  }
  return Version(caps);
}

absl::StatusOr<VersionResult> Client::Version(const Capabilities& caps, uint16_t minor) {
  VersionPayload v{kMajorVersion, minor, EncodeCapabilities(caps, false)};
  auto m = Request(kCmdVersion, EncodeVersion(v));
  if (!m.ok()) return m.status();
  if (auto s = ReplyStatus(*m); !s.ok()) return s;
  auto rv = DecodeVersion(m->payload);
  if (!rv.ok()) return rv.status();
  if (rv->major != kMajorVersion || rv->minor > minor) {
    return absl::FailedPreconditionError(absl::StrCat("server answered version ", rv->major, ".", rv->minor));
  }
  VersionResult out;
  out.major = rv->major;
  out.minor = rv->minor;
  if (rv->json) {
    auto c = ParseCapabilities(*rv->json);
    if (!c.ok()) return c.status();
    out.server_caps = *c;
    out.had_json = true;
  }
  server_caps_ = out.server_caps;
  return out;
}

absl::Status Client::DmaMap(int fd, uint64_t offset, uint64_t iova, uint64_t size, uint32_t flags) {
  vfio_user::DmaMap req;
  req.flags = flags;
  req.offset = offset;
  req.addr = iova;
  req.size = size;
  std::vector<int> fds;
  if (fd >= 0) fds.push_back(fd);
  auto m = Request(kCmdDmaMap, Bytes(req), fds);
  if (!m.ok()) return m.status();
  return ReplyStatus(*m);
}

absl::Status Client::DmaUnmap(uint64_t iova, uint64_t size, uint32_t flags) {
  vfio_user::DmaUnmap req;
  req.flags = flags;
  req.addr = iova;
  req.size = size;
  auto m = Request(kCmdDmaUnmap, Bytes(req));
  if (!m.ok()) return m.status();
  return ReplyStatus(*m);
}

absl::StatusOr<DeviceInfo> Client::GetInfo() {
  auto m = Request(kCmdDeviceGetInfo, Bytes(DeviceInfo{}));
  if (!m.ok()) return m.status();
  if (auto s = ReplyStatus(*m); !s.ok()) return s;
  DeviceInfo out;
  if (!LoadStruct(m->payload, 0, &out)) return absl::DataLossError("short GET_INFO reply");
  return out;
}

absl::StatusOr<RegionInfoResult> Client::GetRegionInfo(uint32_t index) {
  uint32_t argsz = sizeof(RegionInfo);
  for (int attempt = 0; attempt < 3; ++attempt) {
    RegionInfo req;
    req.argsz = argsz;
    req.index = index;
    auto m = Request(kCmdDeviceGetRegionInfo, Bytes(req), {}, 0, kHeaderSize + argsz);
    if (!m.ok()) return m.status();
    if (auto s = ReplyStatus(*m); !s.ok()) return s;
    RegionInfoResult out;
    if (!LoadStruct(m->payload, 0, &out.info)) return absl::DataLossError("short REGION_INFO reply");
    // QEMU's check (hw/vfio-user/device.c): CAPS needs a cap_offset inside the reply.
    if ((out.info.flags & kRegionFlagCaps) &&
        (out.info.cap_offset < sizeof(RegionInfo) || out.info.cap_offset > std::min(out.info.argsz, argsz))) {
      return absl::DataLossError("REGION_INFO CAPS with an invalid cap_offset");
    }
    if (out.info.argsz > argsz) {
      if (out.info.argsz > 65536) return absl::DataLossError("absurd REGION_INFO argsz");
      argsz = out.info.argsz;
      continue;
    }
    if (m->payload.size() > argsz) return absl::DataLossError("REGION_INFO reply larger than argsz");
    if (!m->fds.empty()) out.fd = std::move(m->fds[0]);
    if ((out.info.flags & kRegionFlagCaps) && out.info.cap_offset) {
      uint32_t off = out.info.cap_offset;
      for (int guard = 0; off && guard < 16; ++guard) {
        CapHeader ch;
        if (!LoadStruct(m->payload, off, &ch)) return absl::DataLossError("bad cap offset");
        if (ch.id == kRegionCapSparseMmap) {
          SparseMmapHeader sh;
          if (!LoadStruct(m->payload, off + sizeof(CapHeader), &sh)) return absl::DataLossError("bad sparse cap");
          for (uint32_t i = 0; i < sh.nr_areas && i < 1024; ++i) {
            SparseArea a;
            if (!LoadStruct(m->payload, off + sizeof(CapHeader) + sizeof(SparseMmapHeader) + i * sizeof(SparseArea), &a)) {
              return absl::DataLossError("sparse cap truncated");
            }
            out.sparse_areas.push_back(MmapArea{a.offset, a.size});
          }
        }
        if (ch.next <= off) break;
        off = ch.next;
      }
    }
    return out;
  }
  return absl::DataLossError("REGION_INFO argsz keeps growing");
}

absl::StatusOr<IrqInfo> Client::GetIrqInfo(uint32_t index) {
  IrqInfo req;
  req.index = index;
  auto m = Request(kCmdDeviceGetIrqInfo, Bytes(req));
  if (!m.ok()) return m.status();
  if (auto s = ReplyStatus(*m); !s.ok()) return s;
  IrqInfo out;
  if (!LoadStruct(m->payload, 0, &out)) return absl::DataLossError("short IRQ_INFO reply");
  return out;
}

absl::Status Client::SetIrqs(uint32_t index, uint32_t flags, uint32_t start, uint32_t count,
                             absl::Span<const int> fds, absl::Span<const uint8_t> bools) {
  IrqSet req;
  req.flags = flags;
  req.index = index;
  req.start = start;
  req.count = count;
  req.argsz = static_cast<uint32_t>(sizeof(IrqSet) + bools.size());
  std::vector<uint8_t> payload = Bytes(req);
  AppendBytes(&payload, bools);
  auto m = Request(kCmdDeviceSetIrqs, payload, fds);
  if (!m.ok()) return m.status();
  return ReplyStatus(*m);
}

absl::Status Client::SetIrqEventfds(uint32_t index, uint32_t start, absl::Span<const int> fds) {
  size_t chunk = std::max<uint32_t>(1, server_caps_.max_msg_fds);
  for (size_t done = 0; done < fds.size(); done += chunk) {
    auto part = fds.subspan(done, std::min(chunk, fds.size() - done));
    if (auto s = SetIrqs(index, kIrqSetDataEventfd | kIrqSetActionTrigger, start + static_cast<uint32_t>(done),
                         static_cast<uint32_t>(part.size()), part);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status Client::MaskIrq(uint32_t index, uint32_t start, uint32_t count, bool mask) {
  return SetIrqs(index, kIrqSetDataNone | (mask ? kIrqSetActionMask : kIrqSetActionUnmask), start, count);
}

absl::Status Client::RegionRead(uint32_t region, uint64_t offset, absl::Span<uint8_t> out) {
  RegionAccess req{offset, region, static_cast<uint32_t>(out.size())};
  if (out.size() > 0xffffffffu) return absl::InvalidArgumentError("read too large");
  auto m = Request(kCmdRegionRead, Bytes(req), {}, 0, kHeaderSize + sizeof(RegionAccess) + out.size());
  if (!m.ok()) return m.status();
  if (auto s = ReplyStatus(*m); !s.ok()) return s;
  RegionAccess got;
  if (!LoadStruct(m->payload, 0, &got) || got.count != out.size() ||
      m->payload.size() != sizeof(RegionAccess) + out.size()) {
    return absl::DataLossError("REGION_READ reply has the wrong size");
  }
  if (!out.empty()) std::memcpy(out.data(), m->payload.data() + sizeof(RegionAccess), out.size());
  return absl::OkStatus();
}

absl::Status Client::RegionWrite(uint32_t region, uint64_t offset, absl::Span<const uint8_t> data, bool posted) {
  RegionAccess req{offset, region, static_cast<uint32_t>(data.size())};
  std::vector<uint8_t> payload = Bytes(req);
  AppendBytes(&payload, data);
  auto m = Request(kCmdRegionWrite, payload, {}, posted ? kFlagNoReply : 0);
  if (!m.ok()) return m.status();
  if (posted) return absl::OkStatus();
  return ReplyStatus(*m);
}

absl::StatusOr<uint32_t> Client::Read32(uint32_t region, uint64_t offset) {
  uint32_t v = 0;
  if (auto s = RegionRead(region, offset, absl::MakeSpan(reinterpret_cast<uint8_t*>(&v), 4)); !s.ok()) return s;
  return v;
}

absl::Status Client::Write32(uint32_t region, uint64_t offset, uint32_t value, bool posted) {
  return RegionWrite(region, offset, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&value), 4), posted);
}

absl::Status Client::WriteMulti(absl::Span<const MultiWrite> writes, bool posted) {
  std::vector<uint8_t> payload = Bytes(uint64_t{writes.size()});
  for (const auto& w : writes) {
    WriteMultiEntry e;
    e.offset = w.offset;
    e.region = w.region;
    e.count = static_cast<uint32_t>(w.data.size());
    if (w.data.size() > kWriteMultiData) return absl::InvalidArgumentError("multi write > 8 bytes");
    std::memcpy(e.data, w.data.data(), w.data.size());
    AppendStruct(&payload, e);
  }
  auto m = Request(kCmdRegionWriteMulti, payload, {}, posted ? kFlagNoReply : 0);
  if (!m.ok()) return m.status();
  if (posted) return absl::OkStatus();
  return ReplyStatus(*m);
}

absl::Status Client::Reset() {
  auto m = Request(kCmdDeviceReset, {});
  if (!m.ok()) return m.status();
  return ReplyStatus(*m);
}

}  // namespace emud::vfio_user
