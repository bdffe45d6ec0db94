#include "dataplane/tap_rx_stage.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/mapped_file.h"
#include "base/unique_fd.h"

namespace emud::dataplane {
namespace {

constexpr uint32_t kMagic = 0x54415052;  // "TAPR"
constexpr uint32_t kEmpty = 0, kReading = 1, kHeld = 2;

uint16_t Be16(const uint8_t* p) { return uint16_t(p[0] << 8 | p[1]); }

}  // namespace

struct TapRxStage::Layout {
  uint32_t magic;
  std::atomic<uint32_t> state;
  uint32_t len;
  uint32_t reserved[13];
  uint8_t data[kCapacity];
};


std::optional<size_t> SelfDescribedFrameLength(absl::Span<const uint8_t> buf) {
  size_t l2 = 14;
  if (buf.size() < l2) return std::nullopt;
  uint16_t type = Be16(&buf[12]);
  if (type == 0x8100 || type == 0x88a8) {  // one VLAN tag
    l2 += 4;
    if (buf.size() < l2) return std::nullopt;
    type = Be16(&buf[16]);
  }
  size_t len = 0;
  const uint8_t* l3 = buf.data() + l2;
  const size_t room = buf.size() - l2;
  switch (type) {
    case 0x0800: {
      if (room < 20 || (l3[0] >> 4) != 4) return std::nullopt;
      const size_t ihl = size_t(l3[0] & 0xf) * 4;
      const size_t total = Be16(l3 + 2);
      if (ihl < 20 || total < ihl || room < ihl) return std::nullopt;
      uint32_t sum = 0;
      for (size_t i = 0; i < ihl; i += 2) sum += Be16(l3 + i);
      while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
      if (sum != 0xffff) return std::nullopt;  // not a header we can trust
      len = l2 + total;
      break;
    }
    case 0x86dd:
      if (room < 40 || (l3[0] >> 4) != 6) return std::nullopt;
      len = l2 + 40 + Be16(l3 + 4);
      break;
    case 0x0806:
      len = l2 + 28;  // Ethernet/IPv4 ARP; the kernel sends it unpadded
      break;
    default:
      return std::nullopt;
  }
  if (len > buf.size()) return std::nullopt;
  return len;
}

absl::StatusOr<std::unique_ptr<TapRxStage>> TapRxStage::Open(const std::string& path) {
  UniqueFd fd(path.empty() ? ::memfd_create("emud-tap-rx", MFD_CLOEXEC)
                           : ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd.valid()) return absl::InternalError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 ||
      (size_t(st.st_size) > sizeof(Layout) && ::ftruncate(fd.get(), sizeof(Layout)) != 0)) {
    return absl::InternalError(absl::StrCat("size ", path, ": ", std::strerror(errno)));
  }
  // Allocated before it is mapped: a full tmpfs fails here, not with SIGBUS
  // on a later read() into the stage (base/mapped_file.h).
  auto map = MappedFile::MapBacked(
      fd.get(), sizeof(Layout),
      absl::StrCat("tap receive stage ", path.empty() ? "(memfd)" : path), MAP_POPULATE);
  if (!map.ok()) return map.status();
  std::unique_ptr<TapRxStage> s(new TapRxStage(std::move(*map)));
  s->Recover();
  return s;
}

void TapRxStage::Recover() {
  static_assert(offsetof(Layout, data) == 64, "stage header is one cache line");
  if (l_->magic != kMagic) {  // new file (zeroes) or not ours
    l_->len = 0;
    l_->state.store(kEmpty, std::memory_order_relaxed);
    l_->magic = kMagic;
    return;
  }
  switch (l_->state.load(std::memory_order_acquire)) {
    case kHeld:
      if (l_->len >= 14 && l_->len <= kCapacity) {
        ++recovered_;
      } else {
        ++unrecoverable_;
        l_->state.store(kEmpty, std::memory_order_release);
      }
      break;
    case kReading:
      if (Be16(&l_->data[12]) == 0) {  // the read had not copied a frame
        l_->state.store(kEmpty, std::memory_order_release);
      } else if (auto n = SelfDescribedFrameLength(absl::MakeConstSpan(l_->data, kCapacity))) {
        l_->len = uint32_t(*n);
        l_->state.store(kHeld, std::memory_order_release);
        ++recovered_;
      } else {
        ++unrecoverable_;
        l_->state.store(kEmpty, std::memory_order_release);
      }
      break;
    default:
      l_->state.store(kEmpty, std::memory_order_release);
      break;
  }
}

absl::Span<const uint8_t> TapRxStage::held() const {
  if (l_->state.load(std::memory_order_relaxed) != kHeld) return {};
  return absl::MakeConstSpan(l_->data, l_->len);
}

uint8_t* TapRxStage::BeginRead() {
  // EtherType zeroed before the state says "reading" (see Recover).
  l_->data[12] = 0;
  l_->data[13] = 0;
  l_->state.store(kReading, std::memory_order_release);
  return l_->data;
}

void TapRxStage::EndRead(ssize_t n) {
  if (n <= 0) {
    l_->state.store(kEmpty, std::memory_order_release);
    return;
  }
  l_->len = uint32_t(n);
  l_->state.store(kHeld, std::memory_order_release);
}

void TapRxStage::Release() { l_->state.store(kEmpty, std::memory_order_release); }

}  // namespace emud::dataplane
