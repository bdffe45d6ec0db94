#include "vfio_user/protocol.h"

#include <cerrno>
#include <cstddef>

#include <nlohmann/json.hpp>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace emud::vfio_user {
namespace {

using nlohmann::json;

constexpr absl::string_view kErrnoPayload = "vfio-user-errno";

// Reads an unsigned JSON number into *out, enforcing [min, max].
absl::Status GetUint(const json& obj, const char* key, uint64_t min, uint64_t max, uint64_t* out,
                     bool* present = nullptr) {
  auto it = obj.find(key);
  // null is "not given" (serde writes an absent Option as null).
  if (present) *present = it != obj.end() && !it->is_null();
  if (it == obj.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("capability ", key, " is not an unsigned integer"));
  }
  uint64_t v = it->get<uint64_t>();
  if (v < min || v > max) {
    return absl::InvalidArgumentError(absl::StrCat("capability ", key, "=", v, " out of range"));
  }
  *out = v;
  return absl::OkStatus();
}

}  // namespace

// operator[] reads a WRITE_MULTI entry's head as a RegionAccess.
static_assert(offsetof(WriteMultiEntry, offset) == offsetof(RegionAccess, offset) &&
              offsetof(WriteMultiEntry, region) == offsetof(RegionAccess, region) &&
              offsetof(WriteMultiEntry, count) == offsetof(RegionAccess, count) &&
              offsetof(WriteMultiEntry, data) == sizeof(RegionAccess));

bool RegionWrites::DecodeMulti(absl::Span<const uint8_t> payload, RegionWrites* out) {
  uint64_t cnt;
  if (!LoadStruct(payload, 0, &cnt) || cnt == 0 || cnt > kWriteMultiMax ||
      payload.size() != sizeof(cnt) + cnt * sizeof(WriteMultiEntry)) {
    return false;
  }
  for (uint64_t i = 0; i < cnt; ++i) {
    WriteMultiEntry e;
    LoadStruct(payload, sizeof(cnt) + i * sizeof(WriteMultiEntry), &e);
    if (e.count > kWriteMultiData) return false;
  }
  *out = RegionWrites(payload, cnt, true);
  return true;
}

const char* CommandName(uint16_t cmd) {
  switch (cmd) {
    case kCmdVersion: return "VERSION";
    case kCmdDmaMap: return "DMA_MAP";
    case kCmdDmaUnmap: return "DMA_UNMAP";
    case kCmdDeviceGetInfo: return "DEVICE_GET_INFO";
    case kCmdDeviceGetRegionInfo: return "DEVICE_GET_REGION_INFO";
    case kCmdDeviceGetRegionIoFds: return "DEVICE_GET_REGION_IO_FDS";
    case kCmdDeviceGetIrqInfo: return "DEVICE_GET_IRQ_INFO";
    case kCmdDeviceSetIrqs: return "DEVICE_SET_IRQS";
    case kCmdRegionRead: return "REGION_READ";
    case kCmdRegionWrite: return "REGION_WRITE";
    case kCmdDmaRead: return "DMA_READ";
    case kCmdDmaWrite: return "DMA_WRITE";
    case kCmdDeviceReset: return "DEVICE_RESET";
    case kCmdDirtyPages: return "DIRTY_PAGES";
    case kCmdRegionWriteMulti: return "REGION_WRITE_MULTI";
    case kCmdDeviceFeature: return "DEVICE_FEATURE";
    case kCmdMigDataRead: return "MIG_DATA_READ";
    case kCmdMigDataWrite: return "MIG_DATA_WRITE";
    default: return "UNKNOWN";
  }
}

absl::StatusOr<Capabilities> ParseCapabilities(absl::string_view text) {
  json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return absl::InvalidArgumentError("version JSON does not parse");
  if (!doc.is_object()) return absl::InvalidArgumentError("version JSON is not an object");
  Capabilities caps;
  auto cit = doc.find("capabilities");
  if (cit == doc.end() || cit->is_null()) return caps;
  if (!cit->is_object()) return absl::InvalidArgumentError("\"capabilities\" is not an object");
  const json& c = *cit;
  uint64_t v = 0;
  bool present = false;
  if (auto s = GetUint(c, "max_msg_fds", 0, 0xffffffffu, &v, &present); !s.ok()) return s;
  if (present) caps.max_msg_fds = static_cast<uint32_t>(v);
  if (auto s = GetUint(c, "max_data_xfer_size", 1, ~uint64_t{0}, &v, &present); !s.ok()) return s;
  if (present) caps.max_data_xfer_size = v;
  if (auto s = GetUint(c, "pgsizes", 1, ~uint64_t{0}, &v, &present); !s.ok()) return s;
  if (present) caps.pgsizes = v;
  if (auto s = GetUint(c, "max_dma_maps", 0, 0xffffffffu, &v, &present); !s.ok()) return s;
  if (present) caps.max_dma_maps = static_cast<uint32_t>(v);
  if (auto it = c.find("write_multiple"); it != c.end() && !it->is_null()) {
    if (!it->is_boolean()) return absl::InvalidArgumentError("write_multiple is not a boolean");
    caps.write_multiple = it->get<bool>();
  }
  if (auto it = c.find("twin_socket"); it != c.end() && !it->is_null()) {
    if (!it->is_object()) return absl::InvalidArgumentError("twin_socket is not an object");
    if (auto s = it->find("supported"); s != it->end() && !s->is_null()) {
      if (!s->is_boolean()) return absl::InvalidArgumentError("twin_socket.supported is not a boolean");
      caps.twin_socket_supported = s->get<bool>();
    }
    if (auto st = GetUint(*it, "fd_index", 0, 0xffffffffu, &v, &present); !st.ok()) return st;
    if (present) caps.twin_socket_fd_index = static_cast<uint32_t>(v);
  }
  if (auto it = c.find("migration"); it != c.end() && !it->is_null()) {
    if (!it->is_object()) return absl::InvalidArgumentError("migration is not an object");
    if (auto s = GetUint(*it, "pgsize", 1, ~uint64_t{0}, &v, &present); !s.ok()) return s;
    if (present) caps.migration_pgsize = v;
    if (auto s = GetUint(*it, "max_bitmap_size", 0, ~uint64_t{0}, &v, &present); !s.ok()) return s;
    if (present) caps.migration_max_bitmap_size = v;
  }
  return caps;
}

std::string EncodeCapabilities(const Capabilities& caps, bool minimal) {
  const Capabilities def;
  json c = json::object();
  if (!minimal || caps.max_msg_fds != def.max_msg_fds) c["max_msg_fds"] = caps.max_msg_fds;
  if (!minimal || caps.max_data_xfer_size != def.max_data_xfer_size) {
    c["max_data_xfer_size"] = caps.max_data_xfer_size;
  }
  if (!minimal || caps.pgsizes != def.pgsizes) c["pgsizes"] = caps.pgsizes;
  if (!minimal || caps.max_dma_maps != def.max_dma_maps) c["max_dma_maps"] = caps.max_dma_maps;
  if (!minimal || caps.write_multiple) c["write_multiple"] = caps.write_multiple;
  if (caps.twin_socket_supported) {
    json t = {{"supported", true}};
    if (caps.twin_socket_fd_index) t["fd_index"] = *caps.twin_socket_fd_index;
    c["twin_socket"] = t;
  }
  if (caps.migration_pgsize || caps.migration_max_bitmap_size) {
    json m = json::object();
    if (caps.migration_pgsize) m["pgsize"] = *caps.migration_pgsize;
    if (caps.migration_max_bitmap_size) m["max_bitmap_size"] = *caps.migration_max_bitmap_size;
    c["migration"] = m;
  }
  json doc = {{"capabilities", c}};
  return doc.dump();
}

absl::StatusOr<VersionPayload> DecodeVersion(absl::Span<const uint8_t> payload) {
  if (payload.size() < 4) return absl::InvalidArgumentError("VERSION payload shorter than 4 bytes");
  VersionPayload v;
  std::memcpy(&v.major, payload.data(), 2);
  std::memcpy(&v.minor, payload.data() + 2, 2);
  if (payload.size() > 4) {
    absl::Span<const uint8_t> js = payload.subspan(4);
    if (js.back() != 0) return absl::InvalidArgumentError("VERSION JSON is not NUL-terminated");
    if (std::memchr(js.data(), 0, js.size() - 1) != nullptr) {
      return absl::InvalidArgumentError("VERSION JSON has an embedded NUL");
    }
    v.json = std::string(reinterpret_cast<const char*>(js.data()), js.size() - 1);
  }
  return v;
}

std::vector<uint8_t> EncodeVersion(const VersionPayload& v) {
  size_t json_len = v.json ? v.json->size() + 1 : 0;
  std::vector<uint8_t> out(4 + json_len, 0);
  std::memcpy(out.data(), &v.major, 2);
  std::memcpy(out.data() + 2, &v.minor, 2);
  if (v.json && !v.json->empty()) std::memcpy(out.data() + 4, v.json->data(), v.json->size());
  return out;
}

absl::Status ErrnoStatus(int err, absl::string_view message) {
  absl::StatusCode code;
  switch (err) {
    case EINVAL: case E2BIG: code = absl::StatusCode::kInvalidArgument; break;
    case EEXIST: code = absl::StatusCode::kAlreadyExists; break;
    case ENOENT: code = absl::StatusCode::kNotFound; break;
    case ENOTSUP: case ENOSYS: code = absl::StatusCode::kUnimplemented; break;
    case EPERM: case EACCES: code = absl::StatusCode::kPermissionDenied; break;
    case ENOSPC: case ENOMEM: code = absl::StatusCode::kResourceExhausted; break;
    case EFAULT: code = absl::StatusCode::kOutOfRange; break;
    case ETIMEDOUT: code = absl::StatusCode::kDeadlineExceeded; break;
    case EAGAIN: case ENOTCONN: case ECONNRESET: case EPIPE: code = absl::StatusCode::kUnavailable; break;
    default: code = absl::StatusCode::kInternal; break;
  }
  absl::Status s(code, absl::StrCat(message, " (errno ", err, ")"));
  s.SetPayload(kErrnoPayload, absl::Cord(absl::StrCat(err)));
  return s;
}

int StatusToErrno(const absl::Status& s) {
  if (s.ok()) return 0;
  if (auto p = s.GetPayload(kErrnoPayload)) {
    int e = 0;
    if (absl::SimpleAtoi(std::string(*p), &e) && e > 0) return e;
  }
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument: return EINVAL;
    case absl::StatusCode::kOutOfRange: return EINVAL;
    case absl::StatusCode::kAlreadyExists: return EEXIST;
    case absl::StatusCode::kNotFound: return ENOENT;
    case absl::StatusCode::kUnimplemented: return ENOTSUP;
    case absl::StatusCode::kPermissionDenied: return EPERM;
    case absl::StatusCode::kResourceExhausted: return ENOSPC;
    case absl::StatusCode::kUnavailable: return EAGAIN;
    case absl::StatusCode::kDeadlineExceeded: return ETIMEDOUT;
    case absl::StatusCode::kFailedPrecondition: return EINVAL;
    default: return EIO;
  }
}

}  // namespace emud::vfio_user
