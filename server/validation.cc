#include "server/validation.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/socket_access.h"
#include "state_store/state_dir.h"

namespace emud::server {
namespace {

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

uint64_t Fnv1a(absl::string_view s, uint32_t salt) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](unsigned char c) {
    h ^= c;
    h *= 1099511628211ull;
  };
  for (char c : s) mix(static_cast<unsigned char>(c));
  for (int i = 0; i < 4; ++i) mix(static_cast<unsigned char>(salt >> (8 * i)));
  return h;
}

}  // namespace

absl::Status WithField(absl::Status s, absl::string_view field) {
  if (!s.ok()) s.SetPayload(kFieldPayloadUrl, absl::Cord(field));
  return s;
}

std::string FieldOf(const absl::Status& s) {
  auto f = s.GetPayload(kFieldPayloadUrl);
  return f.has_value() ? std::string(*f) : std::string();
}

absl::StatusOr<Mac> ParseUnicastMac(absl::string_view text) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.mac '", absl::CHexEscape(text), "' ", why,
        "; expected 6 hex octets like 02:00:00:00:00:01"));
  };
  if (text.size() != 17) return bad("has the wrong length");
  Mac mac{};
  const char sep = text[2];
  if (sep != ':' && sep != '-') return bad("must separate octets with ':' or '-'");
  for (int i = 0; i < 6; ++i) {
    int hi = HexDigit(text[i * 3]), lo = HexDigit(text[i * 3 + 1]);
    if (hi < 0 || lo < 0) return bad("contains a non-hex digit");
    if (i < 5 && text[i * 3 + 2] != sep) return bad("mixes or misplaces separators");
    mac[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  if (mac[0] & 1) return bad("is a multicast or broadcast address (low bit of first octet set)");
  bool zero = true;
  for (uint8_t b : mac) zero = zero && b == 0;
  if (zero) return bad("is the all-zero address");
  return mac;
}

std::string FormatMac(const Mac& m) {
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

Mac DefaultMac(absl::string_view name, uint32_t salt) {
  uint64_t h = Fnv1a(name, salt);
  Mac m{};
  m[0] = 0x02;  // locally administered, unicast
  for (int i = 1; i < 6; ++i) m[i] = static_cast<uint8_t>(h >> (8 * (i - 1)));
  if (m[1] == 0 && m[2] == 0 && m[3] == 0 && m[4] == 0 && m[5] == 0) m[5] = 1;
  return m;
}

absl::StatusOr<Backend> ParseBackend(absl::string_view spec, absl::string_view self) {
  const char* kForms = "expected 'loopback', 'tap:IFNAME' or 'peer:DEVICE'";
  Backend b;
  if (spec.empty() || spec == "loopback") return b;
  if (absl::StartsWith(spec, "tap:")) {
    absl::string_view ifname = spec.substr(4);
    if (ifname.empty() || ifname.size() > kMaxIfNameLength) {
      return absl::InvalidArgumentError(absl::StrCat(
          "spec.backend '", absl::CHexEscape(spec), "': interface name must be 1 to ",
          kMaxIfNameLength, " characters"));
    }
    if (ifname == "." || ifname == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.backend '", spec, "': '", ifname, "' is not a valid interface name"));
    }
    for (char c : ifname) {
      if (c == '/' || c == ':' || absl::ascii_isspace(static_cast<unsigned char>(c)) ||
          !absl::ascii_isprint(static_cast<unsigned char>(c))) {
        return absl::InvalidArgumentError(absl::StrCat(
            "spec.backend '", absl::CHexEscape(spec),
            "': interface name must not contain '/', ':', whitespace or control characters"));
      }
    }
    b.kind = Backend::Kind::kTap;
    b.arg = std::string(ifname);
    return b;
  }
  if (absl::StartsWith(spec, "peer:")) {
    absl::string_view peer = spec.substr(5);
    absl::Status s = state_store::ValidateDeviceName(peer);
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.backend '", absl::CHexEscape(spec), "': peer ", s.message()));
    }
    if (peer == self) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.backend '", spec, "': a device cannot be its own peer"));
    }
    b.kind = Backend::Kind::kPeer;
    b.arg = std::string(peer);
    return b;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("spec.backend '", absl::CHexEscape(spec), "' is not understood; ", kForms));
}

absl::Status ValidateSocketPath(absl::string_view path) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat("spec.socket_path '", absl::CHexEscape(path),
                                                   "' must be an absolute path"));
  }
  if (path.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("spec.socket_path must not contain NUL bytes");
  }
  if (path.size() > kMaxSocketPathLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.socket_path is ", path.size(), " bytes long; a UNIX socket path holds at most ",
        kMaxSocketPathLength, ": choose a shorter path"));
  }
  if (path.back() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.socket_path '", path, "' names a directory; add a file name"));
  }
  for (absl::string_view part : absl::StrSplit(path.substr(1), '/')) {
    if (part == "." || part == ".." || part.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "spec.socket_path '", path, "' must be normalised (no '.', '..' or '//' parts)"));
    }
  }
  // The parent must exist or be creatable: its nearest existing ancestor
  // must be a directory.
  std::string dir(path.substr(0, path.rfind('/')));
  if (dir.empty()) dir = "/";
  while (true) {
    struct stat st;
    if (::stat(dir.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "spec.socket_path '", path, "': '", dir, "' exists and is not a directory"));
      }
      break;
    }
    if (errno != ENOENT) {
      return absl::FailedPreconditionError(absl::StrCat("spec.socket_path '", path, "': cannot stat '",
                                                        dir, "': ", std::strerror(errno)));
    }
    dir = dir.substr(0, dir.rfind('/'));
    if (dir.empty()) dir = "/";
  }
  return absl::OkStatus();
}

absl::StatusOr<emud::internal::DeviceRecord> NormalizeCreateRequest(
    const emud::v1::CreateDeviceRequest& req, absl::string_view socket_dir,
    std::optional<uint32_t> default_socket_gid, const std::vector<std::string>& socket_roots) {
  absl::Status s = state_store::ValidateDeviceName(req.name());
  if (!s.ok()) {
    return WithField(absl::InvalidArgumentError(absl::StrCat("name: ", s.message())), "name");
  }
  if (req.type() != emud::v1::DEVICE_TYPE_AVF) {
    return WithField(absl::InvalidArgumentError(absl::StrCat(
        "type ", emud::v1::DeviceType_Name(req.type()).empty() ? absl::StrCat(int(req.type()))
                                                              : emud::v1::DeviceType_Name(req.type()),
        " is not supported; set type to DEVICE_TYPE_AVF")), "type");
  }
  emud::internal::DeviceRecord rec;
  rec.set_name(req.name());
  rec.set_type(req.type());
  emud::v1::DeviceSpec* spec = rec.mutable_spec();
  *spec = req.spec();

  if (!spec->mac().empty()) {
    auto mac = ParseUnicastMac(spec->mac());
    if (!mac.ok()) return WithField(mac.status(), "spec.mac");
    spec->set_mac(FormatMac(*mac));
  }
  if (spec->queue_pairs() == 0) spec->set_queue_pairs(kDefaultQueuePairs);
  if (spec->queue_pairs() > kMaxQueuePairs) {
    return WithField(
        absl::InvalidArgumentError(absl::StrCat("spec.queue_pairs ", spec->queue_pairs(),
                                                " is out of range; use 1 to ", kMaxQueuePairs,
                                                " (more than 16 only for guest drivers with "
                                                "LARGE_NUM_QPAIRS, such as DPDK's iavf)")),
        "spec.queue_pairs");
  }
  auto backend = ParseBackend(spec->backend(), req.name());
  if (!backend.ok()) return WithField(backend.status(), "spec.backend");
  if (spec->backend().empty()) spec->set_backend("loopback");

  if (spec->socket_path().empty()) {
    spec->set_socket_path(absl::StrCat(socket_dir, "/", req.name(), "/", kDefaultSocketFile));
    s = ValidateSocketPath(spec->socket_path());
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("default socket path under --socket-dir is invalid (",
                                                 s.message(), "); pass spec.socket_path"));
    }
  } else {
    s = ValidateSocketPath(spec->socket_path());
    if (!s.ok()) return WithField(s, "spec.socket_path");
    // Normalised (no '.', '..', '//'), so a prefix test is a containment test.
    std::vector<std::string> roots = {std::string(socket_dir)};
    roots.insert(roots.end(), socket_roots.begin(), socket_roots.end());
    bool inside = false;
    for (std::string root : roots) {
      while (root.size() > 1 && root.back() == '/') root.pop_back();
      inside |= absl::StartsWith(spec->socket_path(), root == "/" ? "/" : root + "/");
    }
    if (!inside) {
      return WithField(absl::InvalidArgumentError(absl::StrCat(
          "spec.socket_path '", spec->socket_path(), "' is outside the directories emud may put "
          "sockets in (", absl::StrJoin(roots, ", "),
          "); leave it empty for the default <socket-dir>/NAME/vfio-user.sock, or have the "
          "operator allow its directory with emud --socket-roots")),
          "spec.socket_path");
    }
  }
  if (!spec->has_socket_gid() && default_socket_gid.has_value()) {
    spec->set_socket_gid(*default_socket_gid);
  }
  if (spec->socket_mode() == 0) spec->set_socket_mode(kDefaultSocketMode);
  s = ValidateSocketMode(spec->socket_mode(), "spec.socket_mode");
  if (!s.ok()) return WithField(s, "spec.socket_mode");
  for (auto [set, id, field] : {std::make_tuple(spec->has_socket_uid(), spec->socket_uid(), "spec.socket_uid"),
                                std::make_tuple(spec->has_socket_gid(), spec->socket_gid(), "spec.socket_gid")}) {
    if (set && id == UINT32_MAX) {
      return WithField(absl::InvalidArgumentError(absl::StrCat(
                           field, " 4294967295 is not an id (it means 'unchanged' to chown); "
                           "leave the field unset instead")),
                       field);
    }
  }
  switch (spec->doorbell()) {
    case emud::v1::DOORBELL_MODE_UNSPECIFIED:
      spec->set_doorbell(emud::v1::DOORBELL_MODE_TRAP);
      break;
    case emud::v1::DOORBELL_MODE_TRAP:
    case emud::v1::DOORBELL_MODE_MMAP:
      break;
    default:
      return WithField(absl::InvalidArgumentError(absl::StrCat(
                           "spec.doorbell ", int(spec->doorbell()),
                           " is not a known mode; use DOORBELL_MODE_TRAP or DOORBELL_MODE_MMAP")),
                       "spec.doorbell");
  }
  return rec;
}

std::string DeviceSocketDir(const emud::internal::DeviceRecord& rec, absl::string_view socket_dir) {
  return absl::StrCat(socket_dir, "/", rec.name());
}

bool InDeviceSocketDir(const emud::internal::DeviceRecord& rec, absl::string_view socket_dir) {
  const std::string& path = rec.spec().socket_path();
  std::string dir = DeviceSocketDir(rec, socket_dir);
  return path.size() > dir.size() + 1 && absl::StartsWith(path, dir + "/") &&
         path.find('/', dir.size() + 1) == std::string::npos;
}

absl::Status CheckConflictsAndAssignMac(
    emud::internal::DeviceRecord& cand,
    const std::vector<const emud::internal::DeviceRecord*>& existing) {
  auto backend = ParseBackend(cand.spec().backend(), cand.name());
  if (!backend.ok()) return WithField(backend.status(), "spec.backend");
  for (const auto* e : existing) {
    if (e->name() == cand.name()) {
      return WithField(absl::AlreadyExistsError(absl::StrCat(
                           "device '", cand.name(),
                           "' already exists; delete it first or choose another name")),
                       "name");
    }
    if (e->spec().socket_path() == cand.spec().socket_path()) {
      return WithField(
          absl::AlreadyExistsError(absl::StrCat("spec.socket_path '", cand.spec().socket_path(),
                                                "' is already used by device '", e->name(), "'")),
          "spec.socket_path");
    }
    if (!cand.spec().mac().empty() && e->spec().mac() == cand.spec().mac()) {
      return WithField(absl::AlreadyExistsError(absl::StrCat(
                           "spec.mac ", cand.spec().mac(), " is already used by device '",
                           e->name(), "'")),
                       "spec.mac");
    }
    auto eb = ParseBackend(e->spec().backend(), e->name());
    if (!eb.ok()) continue;  // cannot happen for stored records
    if (backend->kind == Backend::Kind::kTap && eb->kind == Backend::Kind::kTap &&
        eb->arg == backend->arg) {
      return WithField(absl::AlreadyExistsError(absl::StrCat(
                           "spec.backend tap:", backend->arg, " is already used by device '",
                           e->name(), "'")),
                       "spec.backend");
    }
    if (backend->kind == Backend::Kind::kPeer && e->name() == backend->arg &&
        eb->kind == Backend::Kind::kPeer && eb->arg != cand.name()) {
      return WithField(absl::FailedPreconditionError(absl::StrCat(
                           "spec.backend peer:", backend->arg, ": that device is paired with '",
                           eb->arg, "', not with '", cand.name(), "'")),
                       "spec.backend");
    }
    if (eb->kind == Backend::Kind::kPeer && eb->arg == cand.name() &&
        !(backend->kind == Backend::Kind::kPeer && backend->arg == e->name())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "device '", e->name(), "' expects '", cand.name(), "' as its peer; create '", cand.name(),
          "' with backend peer:", e->name(), " or delete '", e->name(), "' first"));
    }
  }
  if (cand.spec().mac().empty()) {
    for (uint32_t salt = 0;; ++salt) {
      std::string mac = FormatMac(DefaultMac(cand.name(), salt));
      bool used = false;
      for (const auto* e : existing) used = used || e->spec().mac() == mac;
      if (!used) {
        cand.mutable_spec()->set_mac(mac);
        break;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace emud::server
