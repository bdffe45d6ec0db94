// vfio-user wire format: message header, per-command payload structs, the
// VERSION capabilities JSON, and the errno <-> absl::Status mapping.
//
// Everything is host-endian and naturally aligned (the spec's layout); the
// structs are copied in and out of byte buffers with memcpy, never cast in
// place, so a malformed buffer can only ever produce a validation error.
#ifndef EMUD_VFIO_USER_PROTOCOL_H_
#define EMUD_VFIO_USER_PROTOCOL_H_

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace emud::vfio_user {

// ---- Header ----

enum Command : uint16_t {
  kCmdVersion = 1,
  kCmdDmaMap = 2,
  kCmdDmaUnmap = 3,
  kCmdDeviceGetInfo = 4,
  kCmdDeviceGetRegionInfo = 5,
  kCmdDeviceGetRegionIoFds = 6,
  kCmdDeviceGetIrqInfo = 7,
  kCmdDeviceSetIrqs = 8,
  kCmdRegionRead = 9,
  kCmdRegionWrite = 10,
  kCmdDmaRead = 11,
  kCmdDmaWrite = 12,
  kCmdDeviceReset = 13,
  kCmdDirtyPages = 14,  // removed from the spec; answered ENOTSUP
  kCmdRegionWriteMulti = 15,
  kCmdDeviceFeature = 16,
  kCmdMigDataRead = 17,
  kCmdMigDataWrite = 18,
  kCmdMax = 19,
};
const char* CommandName(uint16_t cmd);

inline constexpr uint32_t kFlagTypeMask = 0xf;
inline constexpr uint32_t kFlagTypeCommand = 0x0;
inline constexpr uint32_t kFlagTypeReply = 0x1;
inline constexpr uint32_t kFlagNoReply = 0x10;
inline constexpr uint32_t kFlagError = 0x20;
inline constexpr uint32_t kFlagKnownMask = kFlagTypeMask | kFlagNoReply | kFlagError;

struct Header {
  uint16_t msg_id = 0;
  uint16_t command = 0;
  uint32_t msg_size = 0;  // including this header
  uint32_t flags = 0;
  uint32_t error = 0;
};
static_assert(sizeof(Header) == 16);
inline constexpr size_t kHeaderSize = sizeof(Header);

// ---- Payloads (offsets are after the header) ----

inline constexpr uint32_t kDmaFlagRead = 1 << 0;
inline constexpr uint32_t kDmaFlagWrite = 1 << 1;
struct DmaMap {
  uint32_t argsz = sizeof(DmaMap);
  uint32_t flags = 0;
  uint64_t offset = 0;  // into the passed fd
  uint64_t addr = 0;
  uint64_t size = 0;
};
static_assert(sizeof(DmaMap) == 32);

inline constexpr uint32_t kDmaUnmapFlagDirtyBitmap = 1 << 0;  // legacy, refused
inline constexpr uint32_t kDmaUnmapFlagAll = 1 << 1;
struct DmaUnmap {
  uint32_t argsz = sizeof(DmaUnmap);
  uint32_t flags = 0;
  uint64_t addr = 0;
  uint64_t size = 0;
};
static_assert(sizeof(DmaUnmap) == 24);

inline constexpr uint32_t kDeviceFlagReset = 1 << 0;
inline constexpr uint32_t kDeviceFlagPci = 1 << 1;
struct DeviceInfo {
  uint32_t argsz = sizeof(DeviceInfo);
  uint32_t flags = 0;
  uint32_t num_regions = 0;
  uint32_t num_irqs = 0;
};
static_assert(sizeof(DeviceInfo) == 16);

inline constexpr uint32_t kRegionFlagRead = 1 << 0;
inline constexpr uint32_t kRegionFlagWrite = 1 << 1;
inline constexpr uint32_t kRegionFlagMmap = 1 << 2;
inline constexpr uint32_t kRegionFlagCaps = 1 << 3;
struct RegionInfo {
  uint32_t argsz = sizeof(RegionInfo);
  uint32_t flags = 0;
  uint32_t index = 0;
  uint32_t cap_offset = 0;
  uint64_t size = 0;
  uint64_t offset = 0;
};
static_assert(sizeof(RegionInfo) == 32);

inline constexpr uint16_t kRegionCapSparseMmap = 1;
inline constexpr uint16_t kRegionCapType = 2;
inline constexpr uint16_t kRegionCapMsixMappable = 3;
struct CapHeader {
  uint16_t id = 0;
  uint16_t version = 0;
  uint32_t next = 0;
};
static_assert(sizeof(CapHeader) == 8);
struct SparseMmapHeader {
  uint32_t nr_areas = 0;
  uint32_t reserved = 0;
};
struct SparseArea {
  uint64_t offset = 0;
  uint64_t size = 0;
};

struct RegionIoFds {
  uint32_t argsz = sizeof(RegionIoFds);
  uint32_t flags = 0;
  uint32_t index = 0;
  uint32_t count = 0;
};
static_assert(sizeof(RegionIoFds) == 16);

inline constexpr uint32_t kIrqInfoEventfd = 1 << 0;
inline constexpr uint32_t kIrqInfoMaskable = 1 << 1;
inline constexpr uint32_t kIrqInfoAutomasked = 1 << 2;
inline constexpr uint32_t kIrqInfoNoresize = 1 << 3;
struct IrqInfo {
  uint32_t argsz = sizeof(IrqInfo);
  uint32_t flags = 0;
  uint32_t index = 0;
  uint32_t count = 0;
};
static_assert(sizeof(IrqInfo) == 16);

inline constexpr uint32_t kIrqSetDataNone = 1 << 0;
inline constexpr uint32_t kIrqSetDataBool = 1 << 1;
inline constexpr uint32_t kIrqSetDataEventfd = 1 << 2;
inline constexpr uint32_t kIrqSetActionMask = 1 << 3;
inline constexpr uint32_t kIrqSetActionUnmask = 1 << 4;
inline constexpr uint32_t kIrqSetActionTrigger = 1 << 5;
inline constexpr uint32_t kIrqSetDataMask = kIrqSetDataNone | kIrqSetDataBool | kIrqSetDataEventfd;
inline constexpr uint32_t kIrqSetActionMaskAll =
    kIrqSetActionMask | kIrqSetActionUnmask | kIrqSetActionTrigger;
struct IrqSet {
  uint32_t argsz = sizeof(IrqSet);
  uint32_t flags = 0;
  uint32_t index = 0;
  uint32_t start = 0;
  uint32_t count = 0;
};
static_assert(sizeof(IrqSet) == 20);

struct RegionAccess {
  uint64_t offset = 0;
  uint32_t region = 0;
  uint32_t count = 0;
};
static_assert(sizeof(RegionAccess) == 16);

// DMA_READ / DMA_WRITE (server -> client), spec layout: data at +16.
struct DmaAccess {
  uint64_t addr = 0;
  uint64_t count = 0;
};
static_assert(sizeof(DmaAccess) == 16);

// Where DMA_READ/DMA_WRITE data sits. The spec (and libvfio-user) use
// {addr u64, count u64, data} (data at +16). QEMU's client uses
// {addr u64, count u32, data} (data at +12) while still sizing messages as
// 16 + count. kAuto picks kQemu when the client's VERSION capabilities carry
// migration.max_bitmap_size (which only QEMU sends), else kSpec.
enum class DmaRwLayout { kAuto, kSpec, kQemu };
inline size_t DmaRwDataOffset(DmaRwLayout l) { return l == DmaRwLayout::kQemu ? 12 : 16; }

inline constexpr uint32_t kWriteMultiData = 8;
inline constexpr uint32_t kWriteMultiMax = 200;  // QEMU's batch size; our limit too
struct WriteMultiEntry {
  uint64_t offset = 0;
  uint32_t region = 0;
  uint32_t count = 0;
  uint8_t data[kWriteMultiData] = {};
};
static_assert(sizeof(WriteMultiEntry) == 24);

// ---- Byte helpers ----

// Copies a T out of `bytes` at `off`; false if it does not fit.
template <typename T>
bool LoadStruct(absl::Span<const uint8_t> bytes, size_t off, T* out) {
  if (off > bytes.size() || bytes.size() - off < sizeof(T)) return false;
  std::memcpy(out, bytes.data() + off, sizeof(T));
  return true;
}
template <typename T>
void AppendStruct(std::vector<uint8_t>* out, const T& v) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(&v);
  out->insert(out->end(), p, p + sizeof(T));
}
inline void AppendBytes(std::vector<uint8_t>* out, absl::Span<const uint8_t> b) {
  out->insert(out->end(), b.begin(), b.end());
}

// ---- REGION_WRITE / REGION_WRITE_MULTI ----

// One write: data.size() bytes at `offset` of `region`.
struct RegionWrite {
  uint32_t region = 0;
  uint64_t offset = 0;
  absl::Span<const uint8_t> data;
};

// The payload of a REGION_WRITE (one write) or a REGION_WRITE_MULTI (1..
// kWriteMultiMax writes), decoded in place: a view of the request's bytes,
// valid while they are. The one parser of both commands (the session's
// handlers, its self-durable check and its doorbell path use it). Region
// bounds and permissions are the caller's to check.
class RegionWrites {
 public:
  RegionWrites() = default;
  // False unless `payload` is a well-formed `command`: REGION_WRITE is a
  // RegionAccess followed by exactly `count` bytes; REGION_WRITE_MULTI a u64
  // count in 1..kWriteMultiMax followed by exactly that many entries, each
  // with count <= kWriteMultiData. Any other command is false too.
  static bool Decode(uint16_t command, absl::Span<const uint8_t> payload, RegionWrites* out) {
    if (command == kCmdRegionWrite) {
      RegionAccess a;
      if (!LoadStruct(payload, 0, &a) || payload.size() - sizeof(a) != a.count) return false;
      *out = RegionWrites(payload, 1, false);
      return true;
    }
    return command == kCmdRegionWriteMulti && DecodeMulti(payload, out);
  }
  size_t size() const { return count_; }
  // Write i < size(). A WRITE_MULTI entry starts with RegionAccess's fields.
  RegionWrite operator[](size_t i) const {
    const size_t at = multi_ ? sizeof(uint64_t) + i * sizeof(WriteMultiEntry) : 0;
    RegionAccess a;
    std::memcpy(&a, payload_.data() + at, sizeof(a));
    return RegionWrite{a.region, a.offset, absl::MakeConstSpan(payload_.data() + at + sizeof(a), a.count)};
  }
  // The payload of a successful reply: the request's RegionAccess
  // (REGION_WRITE) or its count (REGION_WRITE_MULTI), verbatim.
  absl::Span<const uint8_t> reply() const {
    return payload_.first(multi_ ? sizeof(uint64_t) : sizeof(RegionAccess));
  }

 private:
  RegionWrites(absl::Span<const uint8_t> payload, size_t count, bool multi)
      : payload_(payload), count_(count), multi_(multi) {}
  static bool DecodeMulti(absl::Span<const uint8_t> payload, RegionWrites* out);

  absl::Span<const uint8_t> payload_;
  size_t count_ = 0;
  bool multi_ = false;
};

// ---- VERSION ----

inline constexpr uint16_t kMajorVersion = 0;
inline constexpr uint16_t kMinorVersion = 0;

struct Capabilities {
  uint32_t max_msg_fds = 1;
  uint64_t max_data_xfer_size = 1 << 20;
  uint64_t pgsizes = 4096;
  uint32_t max_dma_maps = 65535;
  bool write_multiple = false;
  bool twin_socket_supported = false;
  std::optional<uint32_t> twin_socket_fd_index;
  // Legacy "migration" object (QEMU still sends it); parsed, never required.
  std::optional<uint64_t> migration_pgsize;
  std::optional<uint64_t> migration_max_bitmap_size;
};

// Parses the JSON text (without its NUL) `{"capabilities": {...}}`. Absent
// keys keep their spec defaults; unknown keys are ignored. INVALID_ARGUMENT for
// text that is not a JSON object, or a known key with a wrong type or a value
// out of range (negative, zero fds/sizes, > 32 bits where 32 are used).
absl::StatusOr<Capabilities> ParseCapabilities(absl::string_view json);

// Encodes `caps` as JSON. With `minimal`, keys equal to the spec default are
// left out (used to fit a reply into the client's buffer).
std::string EncodeCapabilities(const Capabilities& caps, bool minimal);

struct VersionPayload {
  uint16_t major = 0;
  uint16_t minor = 0;
  std::optional<std::string> json;  // without the NUL
};
// INVALID_ARGUMENT: payload < 4 bytes, or JSON bytes not NUL-terminated or
// with an embedded NUL.
absl::StatusOr<VersionPayload> DecodeVersion(absl::Span<const uint8_t> payload);
std::vector<uint8_t> EncodeVersion(const VersionPayload& v);

// ---- Errors ----

// A status that carries a vfio-user errno (payload "vfio-user-errno").
absl::Status ErrnoStatus(int err, absl::string_view message);
// The errno to put in an error reply for `s` (the carried errno if any, else
// a mapping of the status code; EIO as the last resort). 0 for OK.
int StatusToErrno(const absl::Status& s);

}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_PROTOCOL_H_
