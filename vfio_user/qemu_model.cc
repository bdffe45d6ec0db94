#include "vfio_user/qemu_model.h"

#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/scm_rights.h"
#include "vfio_user/device.h"

namespace emud::vfio_user {
namespace {

using nlohmann::json;

// What QEMU's caps_json() produces (qobject_to_json, not pretty).
constexpr char kQemuCapsJson[] =
    "{\"capabilities\": {\"migration\": {\"pgsize\": 4096, \"max_bitmap_size\": 268435456}, "
    "\"max_msg_fds\": 16, \"max_data_xfer_size\": 1048576, \"pgsizes\": 4096, "
    "\"max_dma_maps\": 65535, \"write_multiple\": true}}";

constexpr uint64_t kMaxMaxXfer = 64ull << 20;     // VFIO_USER_MAX_MAX_XFER
constexpr uint64_t kDefMaxBitmap = 256ull << 20;  // VFIO_USER_DEF_MAX_BITMAP
constexpr size_t kDmaRwSize = 32;                 // sizeof(VFIOUserDMARW)
constexpr int kWaitMs = 5000;                     // x-msg-timeout default

absl::Status Fail(absl::string_view where, absl::string_view what) {
  return absl::FailedPreconditionError(absl::StrCat("QEMU ", where, ": ", what));
}

template <typename T>
std::vector<uint8_t> Bytes(const T& v) {
  std::vector<uint8_t> out(sizeof(T));
  std::memcpy(out.data(), &v, sizeof(T));
  return out;
}

bool GetU64(const json& v, uint64_t* out) {  // qnum_get_try_uint
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

bool IsPow2(uint64_t v) { return v && !(v & (v - 1)); }

ssize_t RecvAll(int fd, uint8_t* buf, size_t len, std::vector<UniqueFd>* fds) {
  size_t got = 0;
  while (got < len) {
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, kWaitMs);
    if (r <= 0) return -1;
    std::vector<UniqueFd> dropped;  // received without a caller to take them: closed
    RecvResult rr = RecvWithFds(fd, absl::MakeSpan(buf + got, len - got), fds ? fds : &dropped);
    if (!rr.ok()) {
      if (got) return static_cast<ssize_t>(got);
      errno = rr.error;
      return -1;
    }
    if (rr.bytes == 0) return static_cast<ssize_t>(got);
    got += rr.bytes;
  }
  return static_cast<ssize_t>(got);
}

}  // namespace

absl::StatusOr<std::unique_ptr<QemuModel>> QemuModel::Connect(const std::string& socket_path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) return absl::InvalidArgumentError("path too long");
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return absl::InternalError("socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(absl::StrCat("connect: ", std::strerror(errno)));
  }
  return std::make_unique<QemuModel>(std::move(fd));
}

QemuModel::QemuModel(UniqueFd sock) : sock_(std::move(sock)) {
  caps_.max_msg_fds = max_send_fds_;
}

QemuModel::~QemuModel() {
  for (auto& b : bars_) {
    for (auto& m : b.maps) {
      if (m.base) ::munmap(m.base, m.len);
    }
  }
}

uint8_t* QemuModel::bar_mmap(int bar, size_t i) const {
  if (bar < 0 || bar > 5 || i >= bars_[bar].maps.size()) return nullptr;
  return bars_[bar].maps[i].base;
}

// ---------------------------------------------------------------- transport

absl::StatusOr<uint16_t> QemuModel::Send(uint16_t cmd, absl::Span<const uint8_t> payload,
                                         absl::Span<const int> fds, uint32_t flags, size_t rsize,
                                         size_t recv_fds) {
  Header h;
  h.msg_id = next_id_++;
  h.command = cmd;
  h.flags = (flags & ~kFlagTypeMask) | kFlagTypeCommand;
  if (auto s = SendMessage(sock_.get(), h, payload, fds, absl::Milliseconds(kWaitMs)); !s.ok()) {
    return Fail("vfio_user_send_qio", s.message());
  }
  if (!(flags & kFlagNoReply)) {
    pending_[h.msg_id] = Pending{cmd, rsize ? rsize : kHeaderSize + payload.size(), recv_fds};
  }
  return h.msg_id;
}

absl::StatusOr<QemuModel::Reply> QemuModel::Wait(uint16_t id) {
  for (;;) {
    auto it = done_.find(id);
    if (it != done_.end()) {
      Reply r = std::move(it->second);
      done_.erase(it);
      return r;
    }
    if (auto s = RecvOne(true); !s.ok()) return s;
  }
}

absl::StatusOr<QemuModel::Reply> QemuModel::SendWait(uint16_t cmd, absl::Span<const uint8_t> payload,
                                                     absl::Span<const int> fds, size_t rsize,
                                                     size_t recv_fds) {
  auto id = Send(cmd, payload, fds, 0, rsize, recv_fds);
  if (!id.ok()) return id.status();
  return Wait(*id);
}

absl::Status QemuModel::RecvOne(bool blocking) {
  if (!blocking) {
    pollfd p{sock_.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) return absl::OkStatus();
  }
  Header hdr;
  std::vector<UniqueFd> fds;
  ssize_t n = RecvAll(sock_.get(), reinterpret_cast<uint8_t*>(&hdr), sizeof(hdr), &fds);
  if (n == 0) return Fail("vfio_user_recv_one", "server closed socket");
  if (n < 0) return Fail("vfio_user_send_wait", "timed out waiting for reply");
  if (static_cast<size_t>(n) < sizeof(hdr)) return Fail("vfio_user_recv_one", "short read of header");
  if (hdr.msg_size < sizeof(Header)) return Fail("vfio_user_recv_one", "bad header size");
  const uint32_t type = hdr.flags & kFlagTypeMask;
  if (type != kFlagTypeCommand && type != kFlagTypeReply) {
    return Fail("vfio_user_recv_one", "unknown message type");
  }
  std::vector<uint8_t> payload;
  if (type == kFlagTypeReply) {
    auto it = pending_.find(hdr.msg_id);
    // QEMU leaves the rest of the message in the stream on these errors.
    if (it == pending_.end()) return Fail("vfio_user_recv_one", "unexpected reply");
    Pending p = it->second;
    pending_.erase(it);
    if (fds.size() > p.max_fds) return Fail("vfio_user_recv_one", "unexpected FDs");
    if (hdr.msg_size > p.rsize) {
      return Fail("vfio_user_recv_one",
                  absl::StrCat("reply larger than recv buffer (", hdr.msg_size, " > ", p.rsize, ", cmd ",
                               p.command, ")"));
    }
  } else if (hdr.msg_size > max_xfer_ + kDmaRwSize) {
    return Fail("vfio_user_recv_one", "vfio_user_recv request larger than max");
  }
  payload.resize(hdr.msg_size - sizeof(hdr));
  if (!payload.empty()) {
    std::vector<UniqueFd> late;
    ssize_t m = RecvAll(sock_.get(), payload.data(), payload.size(), &late);
    if (m != static_cast<ssize_t>(payload.size())) return Fail("vfio_user_recv_one", "short message");
    if (!late.empty()) return Fail("vfio_user_recv_one", "fds in the middle of a message");
  }
  if (type == kFlagTypeReply) {
    done_[hdr.msg_id] = Reply{hdr, std::move(payload), std::move(fds)};
    return absl::OkStatus();
  }
  return HandleRequest(hdr, std::move(payload), std::move(fds));
}

absl::Status QemuModel::ServePending() {
  for (;;) {
    pollfd p{sock_.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) return absl::OkStatus();
    if (auto s = RecvOne(true); !s.ok()) return s;
  }
}

absl::Status QemuModel::HandleRequest(Header hdr, std::vector<uint8_t> payload, std::vector<UniqueFd> fds) {
  // vfio_user_pci_process_req / vfio_user_dma_read / vfio_user_dma_write.
  auto send_error = [&](uint32_t err) -> absl::Status {
    Header r = hdr;
    r.flags = kFlagTypeReply | kFlagError;
    r.error = err;
    return SendMessage(sock_.get(), r, {}, {}, absl::Milliseconds(kWaitMs));
  };
  if (!fds.empty()) return send_error(EINVAL);
  const size_t size = hdr.msg_size;
  uint64_t addr = 0;
  uint32_t count = 0;
  if (payload.size() >= 12) {
    std::memcpy(&addr, payload.data(), 8);
    std::memcpy(&count, payload.data() + 8, 4);
  }
  auto ram_at = [&](uint64_t a, uint64_t len) -> uint8_t* {
    if (!ram_ || a < ram_->base || len > ram_->bytes.size() || a - ram_->base > ram_->bytes.size() - len) {
      return nullptr;
    }
    return ram_->bytes.data() + (a - ram_->base);
  };
  switch (hdr.command) {
    case kCmdDmaRead: {
      if (size < kDmaRwSize) return send_error(EINVAL);
      if (count > max_xfer_) return send_error(E2BIG);
      std::vector<uint8_t> out(count + kDmaRwSize - kHeaderSize, 0);
      std::memcpy(out.data(), payload.data(), std::min<size_t>(payload.size(), 16));
      uint8_t* src = ram_at(addr, count);
      if (!src) return send_error(ENODEV);  // MEMTX_DECODE_ERROR
      std::memcpy(out.data() + 12, src, count);
      ++dma_served_;
      if (hdr.flags & kFlagNoReply) return absl::OkStatus();
      Header r = hdr;
      r.flags = kFlagTypeReply;
      return SendMessage(sock_.get(), r, out, {}, absl::Milliseconds(kWaitMs));
    }
    case kCmdDmaWrite: {
      if (size < kDmaRwSize) return send_error(EINVAL);
      if (count > size - kDmaRwSize) return send_error(E2BIG);
      uint8_t* dst = ram_at(addr, count);
      if (!dst) return send_error(ENODEV);
      std::memcpy(dst, payload.data() + 12, count);
      ++dma_served_;
      if (hdr.flags & kFlagNoReply) return absl::OkStatus();
      Header r = hdr;
      r.flags = kFlagTypeReply;
      return SendMessage(sock_.get(), r, {}, {}, absl::Milliseconds(kWaitMs));
    }
    default:
      return send_error(ENOSYS);
  }
}

// ---------------------------------------------------------------- VERSION

absl::Status QemuModel::ValidateVersion() {
  std::vector<uint8_t> payload(4 + sizeof(kQemuCapsJson), 0);  // includes the NUL
  std::memcpy(payload.data() + 4, kQemuCapsJson, sizeof(kQemuCapsJson));
  auto r = SendWait(kCmdVersion, payload);
  if (!r.ok()) return r.status();
  if (r->hdr.flags & kFlagError) return Fail("vfio_user_validate_version", absl::StrCat("version reply errno ", r->hdr.error));
  // QEMU reads the reply into its own request buffer: bytes the reply does
  // not cover keep the request's content.
  std::vector<uint8_t> buf = payload;
  std::memcpy(buf.data(), r->payload.data(), std::min(buf.size(), r->payload.size()));
  uint16_t major, minor;
  std::memcpy(&major, buf.data(), 2);
  std::memcpy(&minor, buf.data() + 2, 2);
  if (major != 0 || minor > 0) return Fail("vfio_user_validate_version", "incompatible server version");
  if (r->payload.size() < 4) return Fail("vfio_user_validate_version", "short version reply");
  const size_t caplen = r->payload.size() - 4;
  // reply[hdr.size - sizeof(*msgp) - 1] must be NUL (caplen 0 reads minor's high byte).
  const uint8_t last = caplen == 0 ? buf[3] : buf[4 + caplen - 1];
  if (last != 0) return Fail("vfio_user_validate_version", "corrupt version reply");
  const char* text = reinterpret_cast<const char*>(buf.data() + 4);
  json doc = json::parse(text, text + std::strlen(text), nullptr, false);
  if (doc.is_discarded()) return Fail("caps_check", "malformed capabilities");
  if (!doc.is_object()) return Fail("caps_check", "capabilities not an object");
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    if (it.key() != "capabilities") Warn("spurious capabilities");
  }
  auto cit = doc.find("capabilities");
  if (cit == doc.end()) return absl::OkStatus();
  if (!cit->is_object()) return Fail("check_cap", "malformed capabilities");
  uint64_t v = 0;
  for (auto it = cit->begin(); it != cit->end(); ++it) {
    const std::string& k = it.key();
    const json& val = it.value();
    if (k == "max_msg_fds") {
      if (!GetU64(val, &v) || v > 16) return Fail("check_max_fds", "malformed max_msg_fds");
      max_send_fds_ = static_cast<uint32_t>(v);
      caps_.max_msg_fds = max_send_fds_;
    } else if (k == "max_data_xfer_size") {
      if (!GetU64(val, &v) || v > kMaxMaxXfer) return Fail("check_max_xfer", "malformed max_data_xfer_size");
      max_xfer_ = v;
      caps_.max_data_xfer_size = v;
    } else if (k == "pgsizes") {
      if (!GetU64(val, &v)) return Fail("check_pgsizes", "malformed pgsizes");
      if (v & 4095) return Fail("check_pgsizes", "pgsize too small");
      caps_.pgsizes = v;
    } else if (k == "max_dma_maps") {
      if (!GetU64(val, &v)) return Fail("check_max_dma", "malformed max_dma_maps");
      if (v > 65535) return Fail("check_max_dma", "max_dma_maps too large");
      caps_.max_dma_maps = static_cast<uint32_t>(v);
    } else if (k == "migration") {
      if (!val.is_object()) return Fail("check_migr", "malformed migration");
      for (auto m = val.begin(); m != val.end(); ++m) {
        if (m.key() == "pgsize") {
          if (!GetU64(m.value(), &v) || (v & 4095)) return Fail("check_migr_pgsize", "bad pgsize");
        } else if (m.key() == "max_bitmap_size") {
          if (!GetU64(m.value(), &v) || v > kDefMaxBitmap) return Fail("check_bitmap", "bad max_bitmap_size");
        } else {
          Warn("spurious capabilities");
        }
      }
    } else if (k == "write_multiple") {
      if (!val.is_boolean()) return Fail("check_multi", "malformed write_multiple");
      use_multi_ = val.get<bool>();
      caps_.write_multiple = use_multi_;
    } else {
      Warn(absl::StrCat("spurious capabilities (", k, ")"));
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- DMA

absl::Status QemuModel::MapSections(absl::Span<const Section> sections) {
  std::vector<uint16_t> ids;
  for (const Section& s : sections) {
    DmaMap m;
    m.argsz = sizeof(DmaMap);  // sizeof(struct vfio_iommu_type1_dma_map)
    m.flags = kDmaFlagRead | (s.readonly ? 0 : kDmaFlagWrite);
    m.offset = s.fd >= 0 ? s.fd_offset : 0;
    m.addr = s.iova;
    m.size = s.size;
    std::vector<int> fds;
    if (s.fd >= 0) fds.push_back(s.fd);
    auto id = Send(kCmdDmaMap, Bytes(m), fds, 0, 0, 0);
    if (!id.ok()) return id.status();
    ids.push_back(*id);
  }
  absl::Status first;
  for (uint16_t id : ids) {
    auto r = Wait(id);
    if (!r.ok()) return r.status();
    if ((r->hdr.flags & kFlagError) && first.ok()) {
      first = Fail("vfio_user_wait_reqs", absl::StrCat("error reply on async DMA_MAP: errno ", r->hdr.error));
    }
  }
  return first;
}

absl::Status QemuModel::UnmapSections(absl::Span<const Section> sections) {
  std::vector<uint16_t> ids;
  for (const Section& s : sections) {
    DmaUnmap u;
    u.argsz = sizeof(DmaUnmap);
    u.addr = s.iova;
    u.size = s.size;
    auto id = Send(kCmdDmaUnmap, Bytes(u), {}, 0, 0, 0);
    if (!id.ok()) return id.status();
    ids.push_back(*id);
  }
  absl::Status first;
  for (uint16_t id : ids) {
    auto r = Wait(id);
    if (!r.ok()) return r.status();
    if ((r->hdr.flags & kFlagError) && first.ok()) {
      first = Fail("vfio_user_wait_reqs", absl::StrCat("error reply on async DMA_UNMAP: errno ", r->hdr.error));
    }
  }
  return first;
}

// ---------------------------------------------------------------- device info

absl::Status QemuModel::GetDeviceInfo() {
  DeviceInfo in;
  in.argsz = sizeof(DeviceInfo);
  auto r = SendWait(kCmdDeviceGetInfo, Bytes(in));
  if (!r.ok()) return r.status();
  if (r->hdr.flags & kFlagError) return Fail("vfio_user_get_device_info", "VFIO_USER_DEVICE_GET_INFO failed");
  std::vector<uint8_t> buf(sizeof(DeviceInfo), 0);
  std::memcpy(buf.data(), r->payload.data(), std::min(buf.size(), r->payload.size()));
  std::memcpy(&info_, buf.data(), sizeof(info_));
  if (info_.num_regions > 100 || info_.num_irqs > 50) return Fail("vfio_user_get_device_info", "invalid reply");
  reset_works_ = info_.flags & kDeviceFlagReset;
  return absl::OkStatus();
}

absl::StatusOr<RegionInfo> QemuModel::GetRegionInfo(uint32_t index, std::vector<uint8_t>* full, UniqueFd* fd) {
  uint32_t argsz = sizeof(RegionInfo);
  for (int round = 0; round < 8; ++round) {
    RegionInfo req;
    req.argsz = argsz;
    req.index = index;
    // Message of sizeof(VFIOUserRegionInfo); receive buffer argsz + header.
    auto r = SendWait(kCmdDeviceGetRegionInfo, Bytes(req), {}, kHeaderSize + argsz, 1);
    if (!r.ok()) return r.status();
    if (r->hdr.flags & kFlagError) {
      return absl::Status(absl::StatusCode::kFailedPrecondition,
                          absl::StrCat("QEMU vfio_user_get_region_info: errno ", r->hdr.error));
    }
    std::vector<uint8_t> buf(argsz, 0);
    std::memcpy(buf.data(), r->payload.data(), std::min<size_t>(argsz, r->payload.size()));
    RegionInfo info;
    std::memcpy(&info, buf.data(), sizeof(info));
    if (info.flags & kRegionFlagMmap) no_post_ = true;  // vfio_user_disable_posted_writes
    if ((info.flags & kRegionFlagCaps) && (info.cap_offset < sizeof(RegionInfo) || info.cap_offset > info.argsz)) {
      return Fail("vfio_user_device_io_get_region_info", "cap_offset outside the reply (-EINVAL)");
    }
    if (info.argsz > argsz) {
      argsz = info.argsz;  // the fd of this round is closed
      continue;
    }
    if (full) *full = std::move(buf);
    if (fd) *fd = r->fds.empty() ? UniqueFd() : std::move(r->fds[0]);
    return info;
  }
  return Fail("vfio_device_get_region_info", "argsz keeps growing");
}

absl::StatusOr<IrqInfo> QemuModel::GetIrqInfo(uint32_t index) {
  IrqInfo in;
  in.argsz = sizeof(IrqInfo);
  in.index = index;
  auto r = SendWait(kCmdDeviceGetIrqInfo, Bytes(in));
  if (!r.ok()) return r.status();
  if (r->hdr.flags & kFlagError) {
    return absl::Status(absl::StatusCode::kFailedPrecondition,
                        absl::StrCat("QEMU vfio_user_device_io_get_irq_info: errno ", r->hdr.error));
  }
  std::vector<uint8_t> buf(sizeof(IrqInfo), 0);
  std::memcpy(buf.data(), r->payload.data(), std::min(buf.size(), r->payload.size()));
  IrqInfo out;
  std::memcpy(&out, buf.data(), sizeof(out));
  return out;
}

absl::Status QemuModel::PopulateDevice() {
  if (!(info_.flags & kDeviceFlagPci)) return Fail("vfio_pci_populate_device", "this isn't a PCI device");
  if (info_.num_regions < kConfigRegion + 1) return Fail("vfio_pci_populate_device", "unexpected number of io regions");
  if (info_.num_irqs < kMsixIrq + 1) return Fail("vfio_pci_populate_device", "unexpected number of irqs");
  for (int i = 0; i < 6; ++i) {
    std::vector<uint8_t> full;
    UniqueFd fd;
    auto info = GetRegionInfo(i, &full, &fd);
    if (!info.ok()) return Fail("vfio_region_setup", absl::StrCat("failed to get region ", i, " info: ", info.status().message()));
    Bar& b = bars_[i];
    b.size = info->size;
    b.flags = info->flags;
    b.fd_offset = info->offset;
    b.fd = std::move(fd);
    if (b.size && (b.flags & kRegionFlagMmap)) {
      bool sparse = false;
      if (info->flags & kRegionFlagCaps) {
        // vfio_get_region_info_cap: walk the chain from cap_offset.
        uint32_t off = info->cap_offset;
        for (int guard = 0; off != 0; ++guard) {
          if (guard > 16 || off + sizeof(CapHeader) > full.size()) {
            return Fail("vfio_get_region_info_cap", "capability chain leaves the reply");
          }
          CapHeader ch;
          std::memcpy(&ch, full.data() + off, sizeof(ch));
          if (ch.id == kRegionCapSparseMmap) {
            SparseMmapHeader sh;
            if (off + sizeof(ch) + sizeof(sh) > full.size()) return Fail("vfio_setup_region_sparse_mmaps", "truncated");
            std::memcpy(&sh, full.data() + off + sizeof(ch), sizeof(sh));
            size_t at = off + sizeof(ch) + sizeof(sh);
            if (sh.nr_areas > (full.size() - at) / sizeof(SparseArea)) {
              return Fail("vfio_setup_region_sparse_mmaps", "areas beyond the reply");
            }
            for (uint32_t a = 0; a < sh.nr_areas; ++a) {
              SparseArea area;
              std::memcpy(&area, full.data() + at + a * sizeof(area), sizeof(area));
              if (area.size) b.areas.emplace_back(area.offset, area.size);
            }
            sparse = true;
            break;
          }
          off = ch.next;
        }
      }
      if (!sparse) b.areas.emplace_back(0, b.size);
    }
  }
  UniqueFd cfg_fd;
  auto cfg = GetRegionInfo(kConfigRegion, nullptr, &cfg_fd);
  if (!cfg.ok()) return Fail("vfio_pci_populate_device", absl::StrCat("failed to get config info: ", cfg.status().message()));
  config_size_ = static_cast<uint32_t>(std::min<uint64_t>(cfg->size, 4096));
  if (cfg->size < 64) return Fail("vfio_pci_config_setup", "config region smaller than the header");
  auto err = GetIrqInfo(kErrIrq);
  if (err.ok() && err->count == 1) {
    pci_aer_ = true;
  } else if (err.ok()) {
    Warn("Could not enable error recovery for the device");
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- region I/O

absl::StatusOr<int> QemuModel::RegionRead(uint32_t index, uint64_t off, absl::Span<uint8_t> out) {
  if (out.size() > max_xfer_) return -EINVAL;
  RegionAccess ra{off, index, static_cast<uint32_t>(out.size())};
  auto r = SendWait(kCmdRegionRead, Bytes(ra), {}, kHeaderSize + sizeof(RegionAccess) + out.size());
  if (!r.ok()) return r.status();
  if (r->hdr.flags & kFlagError) return -static_cast<int>(r->hdr.error);
  RegionAccess back;
  if (r->payload.size() < sizeof(back)) return Fail("vfio_user_device_io_region_read", "reply without header");
  std::memcpy(&back, r->payload.data(), sizeof(back));
  if (back.count > out.size()) return -E2BIG;
  if (r->payload.size() != sizeof(back) + back.count) {
    return Fail("vfio_user_device_io_region_read", "reply size does not match its count");
  }
  std::memcpy(out.data(), r->payload.data() + sizeof(back), back.count);
  return static_cast<int>(back.count);
}

absl::StatusOr<int> QemuModel::RegionWrite(uint32_t index, uint64_t off, absl::Span<const uint8_t> data,
                                           bool post) {
  if (data.size() > max_xfer_) return -EINVAL;
  if (no_post_) post = false;
  std::vector<uint8_t> p = Bytes(RegionAccess{off, index, static_cast<uint32_t>(data.size())});
  p.insert(p.end(), data.begin(), data.end());
  if (post) {
    auto id = Send(kCmdRegionWrite, p, {}, kFlagNoReply, 0, 0);
    if (!id.ok()) return id.status();
    return static_cast<int>(data.size());
  }
  auto r = SendWait(kCmdRegionWrite, p);
  if (!r.ok()) return r.status();
  if (r->hdr.flags & kFlagError) return -static_cast<int>(r->hdr.error);
  return static_cast<int>(data.size());
}

absl::StatusOr<uint32_t> QemuModel::ConfigRead(uint32_t offset, int len) {
  uint8_t b[4] = {};
  auto n = RegionRead(kConfigRegion, offset, absl::MakeSpan(b, len));
  if (!n.ok()) return n.status();
  if (*n != len) return Fail("vfio_pci_read_config", absl::StrCat("read of 0x", absl::Hex(offset), " failed: ", *n));
  uint32_t v = 0;
  std::memcpy(&v, b, len);
  return v;
}

absl::Status QemuModel::ConfigWrite(uint32_t offset, uint32_t value, int len) {
  uint8_t b[4];
  std::memcpy(b, &value, 4);
  auto n = RegionWrite(kConfigRegion, offset, absl::MakeConstSpan(b, len), false);
  if (!n.ok()) return n.status();
  if (*n != len) Warn(absl::StrFormat("vfio_pci_write_config(0x%x, 0x%x, %d) failed: %d", offset, value, len, *n));
  // QEMU's emulation of the MSI-X capability (msix_enabled transitions).
  if (msix_cap_ && offset < msix_cap_ + 12u && offset + len > msix_cap_) {
    const bool was = msix_enabled_;
    for (int i = 0; i < len; ++i) {
      uint32_t o = offset + i;
      if (o == msix_cap_ + 3u) config_[o] = (config_[o] & 0x3f) | (b[i] & 0xc0);
    }
    const bool is = config_[msix_cap_ + 3] & 0x80;
    if (!was && is) {
      // vfio_msix_enable with no vector in use: vfio_enable_msix_no_vec.
      msix_enabled_ = true;
      nr_vectors_ = 0;
      const int none[1] = {-1};
      if (auto s = SetIrqs(kIrqSetDataEventfd | kIrqSetActionTrigger, kMsixIrq, 0, none); !s.ok()) {
        Warn(absl::StrCat("vfio: failed to enable MSI-X: ", s.message()));
      }
    } else if (was && !is) {
      // vfio_msix_disable: release, then disable the index.
      msix_enabled_ = false;
      nr_vectors_ = 0;
      if (auto s = SetIrqs(kIrqSetDataNone | kIrqSetActionTrigger, kMsixIrq, 0, {}, 0); !s.ok()) {
        Warn(absl::StrCat("MSI-X disable: ", s.message()));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> QemuModel::BarRead(int bar, uint64_t offset, int size) {
  if (bar < 0 || bar > 5 || !bars_[bar].size) return absl::InvalidArgumentError("no such BAR");
  const Bar& b = bars_[bar];
  for (size_t i = 0; i < b.maps.size(); ++i) {
    const auto& [aoff, asz] = b.areas[i];
    if (b.maps[i].base && offset >= aoff && offset + size <= aoff + asz) {
      uint64_t v = 0;
      std::memcpy(&v, b.maps[i].base + (offset - aoff), size);
      return v;
    }
  }
  uint8_t buf[8] = {};
  auto n = RegionRead(bar, offset, absl::MakeSpan(buf, size));
  if (!n.ok()) return n.status();
  if (*n != size) {
    Warn(absl::StrFormat("vfio_region_read(region%d+0x%x, %d) failed: %d", bar, offset, size, *n));
    return ~uint64_t{0};
  }
  uint64_t v = 0;
  std::memcpy(&v, buf, size);
  return v;
}

absl::Status QemuModel::BarWrite(int bar, uint64_t offset, uint64_t value, int size) {
  if (bar < 0 || bar > 5 || !bars_[bar].size) return absl::InvalidArgumentError("no such BAR");
  Bar& b = bars_[bar];
  for (size_t i = 0; i < b.maps.size(); ++i) {
    const auto& [aoff, asz] = b.areas[i];
    if (b.maps[i].base && offset >= aoff && offset + size <= aoff + asz) {
      std::memcpy(b.maps[i].base + (offset - aoff), &value, size);
      return absl::OkStatus();
    }
  }
  uint8_t buf[8];
  std::memcpy(buf, &value, 8);
  auto n = RegionWrite(bar, offset, absl::MakeConstSpan(buf, size), !b.ioport);
  if (!n.ok()) return n.status();
  if (*n != size) Warn(absl::StrFormat("vfio_region_write(region%d+0x%x, %d) failed: %d", bar, offset, size, *n));
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> QemuModel::PbaRead(uint32_t qword) {
  if (msix_pba_bar_ < 0) return absl::FailedPreconditionError("no MSI-X");
  uint64_t v = 0;
  for (int half = 0; half < 2; ++half) {  // the PBA overlay has 4-byte ops
    uint8_t buf[4] = {};
    auto n = RegionRead(msix_pba_bar_, msix_pba_off_ + qword * 8 + half * 4, absl::MakeSpan(buf, 4));
    if (!n.ok()) return n.status();
    if (*n != 4) return Fail("vfio_user_pba_read", absl::StrCat("region read failed: ", *n));
    uint32_t w;
    std::memcpy(&w, buf, 4);
    v |= uint64_t{w} << (32 * half);
  }
  return v;
}

// ---------------------------------------------------------------- config setup

absl::Status QemuModel::ConfigSetup() {
  const uint32_t n = std::min<uint32_t>(4096, config_size_);
  config_.assign(4096, 0);
  auto got = RegionRead(kConfigRegion, 0, absl::MakeSpan(config_.data(), n));
  if (!got.ok()) return got.status();
  if (*got < static_cast<int>(n)) return Fail("vfio_pci_config_setup", "failed to read device config space");
  std::memset(&config_[0x10], 0, 24);
  std::memset(&config_[0x30], 0, 4);
  // vfio_pci_size_rom.
  {
    uint32_t orig = 0, size = 0xfffff800;
    uint8_t b[4];
    bool ok = true;
    auto rd = [&](uint32_t* out) {
      auto r = RegionRead(kConfigRegion, 0x30, absl::MakeSpan(b, 4));
      if (!r.ok() || *r != 4) return false;
      std::memcpy(out, b, 4);
      return true;
    };
    auto wr = [&](uint32_t v) {
      std::memcpy(b, &v, 4);
      auto r = RegionWrite(kConfigRegion, 0x30, absl::MakeConstSpan(b, 4), false);
      return r.ok() && *r == 4;
    };
    ok = rd(&orig) && wr(size) && rd(&size) && wr(orig);
    if (!ok) {
      Warn("vfio_pci_size_rom: ROM access failed");
    } else {
      uint32_t rom = ~(size & 0xfffff800u) + 1;
      if (rom) {
        auto ri = GetRegionInfo(kRomRegion, nullptr, nullptr);
        if (!ri.ok() || ri->size == 0) Warn("vfio-pci: Cannot read device rom");
      }
    }
  }
  // vfio_bars_prepare.
  for (int i = 0; i < 6; ++i) {
    Bar& b = bars_[i];
    if (!b.size) continue;
    uint8_t buf[4];
    auto r = RegionRead(kConfigRegion, 0x10 + 4 * i, absl::MakeSpan(buf, 4));
    if (!r.ok() || *r != 4) {
      Warn(absl::StrCat("vfio: Failed to read BAR ", i));
      continue;
    }
    uint32_t v;
    std::memcpy(&v, buf, 4);
    b.ioport = v & 1;
    b.mem64 = !b.ioport && (v & 0x6) == 0x4;
  }
  for (int i = 0; i < 6; ++i) {
    const Bar& b = bars_[i];
    if (!b.size) continue;
    if (!IsPow2(b.size)) return Fail("pci_register_bar", absl::StrCat("assert(is_power_of_2(size)) BAR", i, " size ", b.size));
    if (b.mem64 && (i == 5 || bars_[i + 1].size)) {
      return Fail("vfio_bar_prepare", absl::StrCat("64-bit BAR", i, " but region ", i + 1, " is not empty"));
    }
  }
  // vfio_msix_early_setup.
  uint8_t pos = 0;
  if (config_[0x06] & 0x10) {
    int guard = 0;
    for (uint8_t p = config_[0x34]; p; p = config_[p + 1]) {
      if (++guard > 48) return Fail("pci_find_capability", "capability list loops");
      if (config_[p] == 0x11) {
        pos = p;
        break;
      }
    }
  }
  if (pos) {
    auto ctrl = ConfigRead(pos + 2, 2);
    auto table = ConfigRead(pos + 4, 4);
    auto pba = ConfigRead(pos + 8, 4);
    if (!ctrl.ok() || !table.ok() || !pba.ok()) return Fail("vfio_msix_early_setup", "failed to read MSI-X capability");
    msix_table_bar_ = *table & 7;
    msix_table_off_ = *table & ~7u;
    msix_pba_bar_ = *pba & 7;
    msix_pba_off_ = *pba & ~7u;
    msix_entries_ = (*ctrl & 0x7ff) + 1;
    auto irq = GetIrqInfo(kMsixIrq);
    if (!irq.ok()) return Fail("vfio_msix_early_setup", "failed to get MSI-X irq info");
    if (irq->flags & kIrqInfoNoresize) noresize_ = true;
    msix_irq_count_ = irq->count;
    if (msix_table_bar_ > 5 || msix_pba_bar_ > 5) return Fail("vfio_msix_early_setup", "BIR out of range");
    if (msix_pba_off_ >= bars_[msix_pba_bar_].size) {
      return Fail("vfio_msix_early_setup", "hardware reports invalid configuration, MSIX PBA outside of specified BAR");
    }
    msix_cap_ = pos;
    // vfio_pci_fixup_msix_region: one mmap covering the whole table BAR.
    Bar& tb = bars_[msix_table_bar_];
    if (tb.areas.size() == 1 && tb.areas[0].first == 0 && tb.areas[0].second == tb.size) {
      const uint64_t page = 4096;
      uint64_t start = msix_table_off_ & ~(page - 1);
      uint64_t end = (uint64_t{msix_table_off_} + msix_entries_ * 16 + page - 1) & ~(page - 1);
      std::vector<std::pair<uint64_t, uint64_t>> a;
      if (start) a.emplace_back(0, start);
      if (end < tb.size) a.emplace_back(end, tb.size - end);
      tb.areas = a;
    }
  }
  // vfio_bars_register: region mmaps.
  for (int i = 0; i < 6; ++i) {
    Bar& b = bars_[i];
    if (!b.size) continue;
    int prot = ((b.flags & kRegionFlagRead) ? PROT_READ : 0) | ((b.flags & kRegionFlagWrite) ? PROT_WRITE : 0);
    for (const auto& [aoff, asz] : b.areas) {
      if (aoff > b.size || asz > b.size - aoff) {
        return Fail("vfio_region_mmap", absl::StrCat("BAR", i, " mmap area beyond the region"));
      }
      void* p = ::mmap(nullptr, asz, prot, MAP_SHARED, b.fd.get(), static_cast<off_t>(b.fd_offset + aoff));
      if (p == MAP_FAILED) {
        Warn(absl::StrCat("Failed to mmap BAR ", i, ". Performance may be slow (", std::strerror(errno), ")"));
        for (auto& m : b.maps) ::munmap(m.base, m.len);
        b.maps.clear();
        break;
      }
      b.maps.push_back({static_cast<uint8_t*>(p), asz});
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- capabilities

absl::Status QemuModel::AddStdCap(uint8_t pos, int depth) {
  if (depth > 48) return Fail("vfio_add_std_cap", "capability chain loops");
  if (pos < 0x40) return Fail("pci_add_capability", absl::StrCat("capability at 0x", absl::Hex(pos), " overlaps the header"));
  const uint8_t id = config_[pos];
  const uint8_t next = config_[pos + 1];
  // vfio_std_cap_max_size over the device's chain.
  uint16_t limit = 256;
  int guard = 0;
  for (uint8_t p = config_[0x34]; p && ++guard < 64; p = config_[p + 1]) {
    if (p > pos && p < limit) limit = p;
  }
  const uint8_t size = static_cast<uint8_t>(limit - pos);
  if (next) {
    if (auto s = AddStdCap(next, depth + 1); !s.ok()) return s;
  }
  auto add = [&](uint8_t cap_size) -> absl::Status {
    if (pos + cap_size > 256) return Fail("pci_add_capability", "capability beyond config space");
    for (uint32_t i = pos; i < pos + cap_size; ++i) {
      if (cap_used_[i]) {
        return Fail("pci_add_capability", absl::StrFormat("Attempt to add PCI capability %x at offset %x overlaps existing capability", id, pos));
      }
    }
    for (uint32_t i = pos; i < pos + cap_size; ++i) cap_used_[i] = true;
    return absl::OkStatus();
  };
  switch (id) {
    case 0x10: {  // PCI Express: vfio_setup_pcie_cap
      uint8_t type = (config_[pos + 2] >> 4) & 0xf;
      if (type != 0x0 && type != 0x1 && type != 0x9) {
        return Fail("vfio_setup_pcie_cap", absl::StrCat("assignment of PCIe type 0x", absl::Hex(type), " devices is not currently supported"));
      }
      return add(size);
    }
    case 0x11: {  // MSI-X: msix_init
      if (pos != msix_cap_) return Fail("vfio_msix_setup", "a second MSI-X capability");
      const uint64_t table_size = uint64_t{msix_entries_} * 16;
      const uint64_t pba_size = ((msix_entries_ + 63) / 64) * 8;
      const uint64_t tbar = bars_[msix_table_bar_].size, pbar = bars_[msix_pba_bar_].size;
      if (msix_entries_ > 2048 || !tbar || !pbar ||
          (msix_table_bar_ == msix_pba_bar_ && msix_table_off_ < msix_pba_off_ + pba_size &&
           msix_pba_off_ < msix_table_off_ + table_size) ||
          msix_table_off_ + table_size > tbar || msix_pba_off_ + pba_size > pbar) {
        return Fail("msix_init", "table & pba overlap, or they don't fit in BARs, or don't align");
      }
      return add(12);
    }
    case 0x01:  // PM: pci_pm_init
      pm_cap_ = pos;
      return add(8);
    case 0x05:  // MSI: msi_init needs at least the 32-bit layout
      return add(std::max<uint8_t>(10, std::min<uint8_t>(size, 24)));
    default:
      return add(size);
  }
}

absl::Status QemuModel::AddCapabilities() {
  cap_used_.assign(256, false);
  for (int i = 0; i < 0x40; ++i) cap_used_[i] = true;
  if ((config_[0x06] & 0x10) && config_[0x34]) {
    if (auto s = AddStdCap(config_[0x34], 0); !s.ok()) return s;
  }
  // vfio_add_ext_cap: the chain from 0x100 (QEMU loops forever on a cycle).
  if (config_size_ > 256) {
    uint32_t hdr;
    std::memcpy(&hdr, &config_[0x100], 4);
    if (hdr) {
      int guard = 0;
      for (uint32_t next = 0x100; next; ) {
        if (++guard > 512) return Fail("vfio_add_ext_cap", "extended capability chain loops");
        if (next + 4 > config_size_) return Fail("vfio_add_ext_cap", "extended capability beyond config space");
        std::memcpy(&hdr, &config_[next], 4);
        next = (hdr >> 20) & 0xffc;
      }
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- interrupts

absl::Status QemuModel::SetIrqs(uint32_t flags, uint32_t index, uint32_t start, absl::Span<const int> fds,
                                uint32_t count_if_no_data) {
  IrqSet s;
  s.argsz = sizeof(IrqSet);
  s.flags = flags;
  s.index = index;
  if (!(flags & kIrqSetDataEventfd)) {
    s.start = start;
    s.count = count_if_no_data;
    auto r = SendWait(kCmdDeviceSetIrqs, Bytes(s));
    if (!r.ok()) return r.status();
    if (r->hdr.flags & kFlagError) return Fail("vfio_user_device_io_set_irqs", absl::StrCat("errno ", r->hdr.error));
    return absl::OkStatus();
  }
  const uint32_t nfds = static_cast<uint32_t>(fds.size());
  for (uint32_t sent = 0; sent < nfds;) {
    uint32_t max = std::min(nfds - sent, max_send_fds_);
    // irq_howmany: a run of valid fds or a run of -1, at most `max`.
    uint32_t n = 0;
    const bool valid = fds[sent] != -1;
    do {
      ++n;
    } while (n < max && (fds[sent + n] != -1) == valid);
    s.start = start + sent;
    s.count = n;
    std::vector<int> send;
    if (valid) send.assign(fds.begin() + sent, fds.begin() + sent + n);
    auto r = SendWait(kCmdDeviceSetIrqs, Bytes(s), send);
    if (!r.ok()) return r.status();
    if (r->hdr.flags & kFlagError) return Fail("vfio_user_device_io_set_irqs", absl::StrCat("errno ", r->hdr.error));
    sent += n;
  }
  return absl::OkStatus();
}

absl::Status QemuModel::InterruptSetup() {
  auto pin = ConfigRead(0x3d, 1);
  if (!pin.ok()) return pin.status();
  if (*pin) {
    // vfio_intx_enable (+ vfio_intx_enable_kvm).
    UniqueFd irq(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    const int fd[1] = {irq.get()};
    if (auto s = SetIrqs(kIrqSetDataEventfd | kIrqSetActionTrigger, kIntxIrq, 0, fd); !s.ok()) {
      return Fail("vfio_intx_enable", s.message());
    }
    (void)SetIrqs(kIrqSetDataNone | kIrqSetActionMask, kIntxIrq, 0, {}, 1);  // return ignored
    UniqueFd unmask(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    const int ufd[1] = {unmask.get()};
    if (auto s = SetIrqs(kIrqSetDataEventfd | kIrqSetActionUnmask, kIntxIrq, 0, ufd); !s.ok()) {
      Warn(absl::StrCat("vfio_intx_enable_kvm: failed to setup resample irqfd: ", s.message()));
    }
    (void)SetIrqs(kIrqSetDataNone | kIrqSetActionUnmask, kIntxIrq, 0, {}, 1);
    intx_ = true;
  }
  // vfio_pci_register_err_notifier.
  if (pci_aer_) {
    err_efd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    const int fd[1] = {err_efd_.get()};
    if (auto s = SetIrqs(kIrqSetDataEventfd | kIrqSetActionTrigger, kErrIrq, 0, fd); !s.ok()) {
      Warn(absl::StrCat("Failed to set up TRIGGER eventfd signaling for interrupt ERR-0: ", s.message()));
      pci_aer_ = false;
    }
  }
  return absl::OkStatus();
}

absl::Status QemuModel::MsixVectorUse(uint32_t nr, int efd) {
  if (!msix_enabled_) return absl::FailedPreconditionError("MSI-X not enabled by the guest");
  if (nr >= msix_entries_) return absl::InvalidArgumentError("vector beyond the table");
  const bool resizing = nr_vectors_ < nr + 1;
  if (resizing) nr_vectors_ = nr + 1;
  if (noresize_ && resizing) {
    return absl::UnimplementedError("NORESIZE re-enable path not modelled");
  }
  const int fd[1] = {efd};
  return SetIrqs(kIrqSetDataEventfd | kIrqSetActionTrigger, kMsixIrq, nr, fd);
}

absl::Status QemuModel::MsixVectorRelease(uint32_t nr, int qemu_efd) {
  const int fd[1] = {qemu_efd};
  return SetIrqs(kIrqSetDataEventfd | kIrqSetActionTrigger, kMsixIrq, nr, fd);
}

absl::Status QemuModel::MsixEnableVectors(absl::Span<const int> fds) {
  if (!noresize_) {
    const int none[1] = {-1};
    if (auto s = SetIrqs(kIrqSetDataEventfd | kIrqSetActionTrigger, kMsixIrq, 0, none); !s.ok()) return s;
  }
  nr_vectors_ = static_cast<uint32_t>(fds.size());
  return SetIrqs(kIrqSetDataEventfd | kIrqSetActionTrigger, kMsixIrq, 0, fds);
}

// ---------------------------------------------------------------- realize / reset

absl::Status QemuModel::Realize(absl::Span<const Section> sections) {
  if (auto s = ValidateVersion(); !s.ok()) return s;
  if (auto s = MapSections(sections); !s.ok()) return s;
  if (auto s = GetDeviceInfo(); !s.ok()) return s;
  if (auto s = PopulateDevice(); !s.ok()) return s;
  if (auto s = ConfigSetup(); !s.ok()) return s;
  if (auto s = AddCapabilities(); !s.ok()) return s;
  return InterruptSetup();
}

absl::Status QemuModel::LintDevice() {
  for (int i = 0; i < 6; ++i) {
    const Bar& b = bars_[i];
    if (!b.size || b.ioport) continue;
    const uint32_t reg = 0x10 + 4 * i;
    auto lo = ConfigRead(reg, 4);
    absl::StatusOr<uint32_t> hi = uint32_t{0};
    if (b.mem64) hi = ConfigRead(reg + 4, 4);
    if (!lo.ok() || !hi.ok()) return Fail("device", "BAR register unreadable");
    if (auto s = ConfigWrite(reg, 0xffffffff, 4); !s.ok()) return s;
    if (b.mem64) {
      if (auto s = ConfigWrite(reg + 4, 0xffffffff, 4); !s.ok()) return s;
    }
    auto slo = ConfigRead(reg, 4);
    absl::StatusOr<uint32_t> shi = 0xffffffffu;
    if (b.mem64) shi = ConfigRead(reg + 4, 4);
    if (!slo.ok() || !shi.ok()) return Fail("device", "BAR register unreadable");
    (void)ConfigWrite(reg, *lo, 4);
    if (b.mem64) (void)ConfigWrite(reg + 4, *hi, 4);
    const uint64_t mask = (uint64_t{*shi} << 32) | (*slo & ~0xfu);
    const uint64_t size = ~mask + 1;
    if (size != b.size) {
      return Fail("device", absl::StrCat("BAR", i, " decodes ", size, " bytes but its region is ", b.size,
                                         " (QEMU shows the guest the region size)"));
    }
  }
  if (msix_cap_ && msix_irq_count_ < msix_entries_) {
    return Fail("device", absl::StrCat("MSI-X table has ", msix_entries_, " entries but GET_IRQ_INFO(MSIX) count is ",
                                       msix_irq_count_, ": SET_IRQS for the vectors above fail"));
  }
  int guard = 0;
  for (uint8_t p = config_[0x34]; p && ++guard < 64; p = config_[p + 1]) {
    if (p & 3) return Fail("device", absl::StrCat("capability at 0x", absl::Hex(p), " is not dword aligned"));
  }
  return absl::OkStatus();
}

absl::Status QemuModel::SystemReset() {
  // vfio_pci_pre_reset: vfio_disable_interrupts, then COMMAND and D0.
  if (msix_enabled_) {
    msix_enabled_ = false;
    nr_vectors_ = 0;
    if (auto s = SetIrqs(kIrqSetDataNone | kIrqSetActionTrigger, kMsixIrq, 0, {}, 0); !s.ok()) {
      Warn(absl::StrCat("MSI-X disable at reset: ", s.message()));
    }
  }
  if (intx_) {
    if (auto s = SetIrqs(kIrqSetDataNone | kIrqSetActionTrigger, kIntxIrq, 0, {}, 0); !s.ok()) {
      Warn(absl::StrCat("INTx disable at reset: ", s.message()));
    }
  }
  auto cmd = ConfigRead(0x04, 2);
  if (!cmd.ok()) return cmd.status();
  if (auto s = ConfigWrite(0x04, *cmd & ~0x0407u, 2); !s.ok()) return s;
  if (pm_cap_) {
    auto pmcsr = ConfigRead(pm_cap_ + 4, 2);
    if (!pmcsr.ok()) return pmcsr.status();
    if (*pmcsr & 3) {
      if (auto s = ConfigWrite(pm_cap_ + 4, *pmcsr & ~3u, 2); !s.ok()) return s;
      auto again = ConfigRead(pm_cap_ + 4, 2);
      if (!again.ok()) return again.status();
      if (*again & 3) Warn("vfio: Unable to power on device");
    }
  }
  if (reset_works_) {
    auto r = SendWait(kCmdDeviceReset, {});
    if (!r.ok()) return r.status();
    if (r->hdr.flags & kFlagError) Warn(absl::StrCat("reset reply error ", r->hdr.error));
  }
  // vfio_pci_post_reset: INTx back on, BARs zeroed in the device.
  if (intx_) {
    UniqueFd irq(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    const int fd[1] = {irq.get()};
    if (auto s = SetIrqs(kIrqSetDataEventfd | kIrqSetActionTrigger, kIntxIrq, 0, fd); !s.ok()) {
      Warn(absl::StrCat("vfio_intx_enable after reset: ", s.message()));
    }
  }
  for (int nr = 0; nr < 6; ++nr) {
    uint8_t zero[4] = {};
    auto r = RegionWrite(kConfigRegion, 0x10 + 4 * nr, zero, false);
    if (!r.ok()) return r.status();
    if (*r != 4) Warn(absl::StrCat("vfio_pci_post_reset: reset bar ", nr, " failed: ", *r));
  }
  if (msix_cap_) config_[msix_cap_ + 3] &= 0x3f;  // the PCI core resets QEMU's emulation
  return absl::OkStatus();
}

}  // namespace emud::vfio_user
