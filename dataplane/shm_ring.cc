#include "dataplane/shm_ring.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/mapped_file.h"

namespace emud::dataplane {

namespace {
constexpr uint64_t kMagic = 0x474e495252444d45ull;  // "EMDRRING"
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderSize = 4096;
}  // namespace

struct ShmRing::Header {
  uint64_t magic;
  uint32_t version;
  uint32_t slots;
  uint32_t slot_size;
  alignas(64) std::atomic<uint64_t> head;  // producer: frames published
  alignas(64) std::atomic<uint64_t> tail;  // consumer: frames taken
  alignas(64) std::atomic<uint32_t> sleeping;
};
static_assert(sizeof(std::atomic<uint64_t>) == 8 && std::atomic<uint64_t>::is_always_lock_free);

ShmRing::~ShmRing() = default;

void ShmRing::Attach(MappedFile map) {
  map_ = std::move(map);
  hdr_ = map_.as<Header>();
  data_ = map_.data() + kHeaderSize;
}

absl::StatusOr<std::unique_ptr<ShmRing>> ShmRing::OpenConsumer(const std::string& path,
                                                               uint32_t slots,
                                                               uint32_t slot_size) {
  if (slots == 0 || slots > (1u << 16) || slot_size < 64 || slot_size > (1u << 16) ||
      (slot_size & 7) != 0) {
    return absl::InvalidArgumentError("bad ring geometry");
  }
  std::unique_ptr<ShmRing> r(new ShmRing());
  r->fd_.reset(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!r->fd_.valid()) {
    return absl::UnavailableError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  }
  size_t size = kHeaderSize + size_t{slots} * slot_size;
  struct stat st;
  if (::fstat(r->fd_.get(), &st) != 0) return absl::InternalError("fstat ring");
  bool fresh = static_cast<size_t>(st.st_size) != size;
  if (fresh && ::ftruncate(r->fd_.get(), 0) != 0) return absl::InternalError("truncate ring");
  // Allocated before it is mapped, every time (a ring left with holes by a
  // start on a full tmpfs): the producer's and our stores cannot SIGBUS.
  auto map = MappedFile::MapBacked(r->fd_.get(), size, absl::StrCat("peer ring ", path));
  if (!map.ok()) return map.status();
  r->Attach(std::move(*map));
  Header* h = r->hdr_;
  if (fresh || h->magic != kMagic || h->version != kVersion || h->slots != slots ||
      h->slot_size != slot_size) {
    std::memset(static_cast<void*>(h), 0, kHeaderSize);
    h->slots = slots;
    h->slot_size = slot_size;
    h->version = kVersion;
    std::atomic_thread_fence(std::memory_order_release);
    h->magic = kMagic;
  }
  r->slots_ = slots;
  r->slot_size_ = slot_size;
  r->fifo_path_ = path + ".wake";
  if (::mkfifo(r->fifo_path_.c_str(), 0600) != 0 && errno != EEXIST) {
    return absl::UnavailableError(absl::StrCat("mkfifo ", r->fifo_path_, ": ", std::strerror(errno)));
  }
  r->fifo_.reset(::open(r->fifo_path_.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!r->fifo_.valid()) {
    return absl::UnavailableError(absl::StrCat("open ", r->fifo_path_, ": ", std::strerror(errno)));
  }
  return r;
}

absl::StatusOr<std::unique_ptr<ShmRing>> ShmRing::OpenProducer(const std::string& path) {
  std::unique_ptr<ShmRing> r(new ShmRing());
  r->producer_ = true;
  r->fd_.reset(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!r->fd_.valid()) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("ring ", path, " not created yet"));
    return absl::UnavailableError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(r->fd_.get(), &st) != 0 || static_cast<size_t>(st.st_size) < kHeaderSize) {
    return absl::NotFoundError(absl::StrCat("ring ", path, " not initialised yet"));
  }
  Header probe;
  if (::pread(r->fd_.get(), &probe, offsetof(Header, head), 0) !=
      static_cast<ssize_t>(offsetof(Header, head))) {
    return absl::NotFoundError("ring header unreadable");
  }
  if (probe.magic != kMagic || probe.version != kVersion || probe.slots == 0 ||
      probe.slots > (1u << 16) || probe.slot_size < 64 || probe.slot_size > (1u << 16)) {
    return absl::NotFoundError(absl::StrCat("ring ", path, " not initialised"));
  }
  size_t size = kHeaderSize + size_t{probe.slots} * probe.slot_size;
  if (static_cast<size_t>(st.st_size) < size) return absl::NotFoundError("ring file short");
  // The consumer created and allocated the file (OpenConsumer); mapping
  // only what it allocated, the producer's stores cannot SIGBUS.
  auto map = MappedFile::Map(r->fd_.get(), 0, size, PROT_READ | PROT_WRITE);
  if (!map.ok()) return absl::InternalError(absl::StrCat("mmap ring: ", map.status().message()));
  r->Attach(std::move(*map));
  r->slots_ = probe.slots;  // our copy: the mapped header may change under us
  r->slot_size_ = probe.slot_size;
  r->fifo_path_ = path + ".wake";
  r->fifo_.reset(::open(r->fifo_path_.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC));
  return r;
}

bool ShmRing::Push(absl::Span<const uint8_t> frame) {
  if (frame.size() + 4 > slot_size_) return false;
  uint64_t head = hdr_->head.load(std::memory_order_relaxed);
  uint64_t tail = hdr_->tail.load(std::memory_order_acquire);
  if (head - tail >= slots_) {
    if (tail > head) ++errors_;  // consumer index corrupt: refuse, never overwrite
    return false;
  }
  uint8_t* slot = data_ + (head % slots_) * slot_size_;
  uint32_t len = static_cast<uint32_t>(frame.size());
  std::memcpy(slot, &len, 4);
  std::memcpy(slot + 4, frame.data(), frame.size());
  hdr_->head.store(head + 1, std::memory_order_seq_cst);
  return true;
}

void ShmRing::WakeIfSleeping() {
  if (hdr_->sleeping.load(std::memory_order_seq_cst) == 0) return;
  if (hdr_->sleeping.exchange(0, std::memory_order_seq_cst) == 0) return;
  if (!fifo_.valid()) {
    fifo_.reset(::open(fifo_path_.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC));
    if (!fifo_.valid()) return;
  }
  uint8_t b = 1;
  if (::write(fifo_.get(), &b, 1) < 0 && errno == EPIPE) fifo_.reset();
}

absl::Span<const uint8_t> ShmRing::Front() {
  for (;;) {
    uint64_t tail = hdr_->tail.load(std::memory_order_relaxed);
    uint64_t head = hdr_->head.load(std::memory_order_acquire);
    if (head == tail) return {};
    if (head - tail > slots_) {  // producer index corrupt: drop everything
      ++errors_;
      hdr_->tail.store(head, std::memory_order_release);
      return {};
    }
    const uint8_t* slot = data_ + (tail % slots_) * slot_size_;
    uint32_t len;
    std::memcpy(&len, slot, 4);
    if (len == 0 || len + 4 > slot_size_) {
      ++errors_;
      hdr_->tail.store(tail + 1, std::memory_order_release);
      continue;
    }
    return absl::Span<const uint8_t>(slot + 4, len);
  }
}

void ShmRing::Pop() {
  uint64_t tail = hdr_->tail.load(std::memory_order_relaxed);
  hdr_->tail.store(tail + 1, std::memory_order_release);
}

bool ShmRing::PrepareSleep() {
  hdr_->sleeping.store(1, std::memory_order_seq_cst);
  return hdr_->head.load(std::memory_order_seq_cst) != hdr_->tail.load(std::memory_order_relaxed);
}

void ShmRing::DrainWake() {
  uint8_t buf[64];
  while (::read(fifo_.get(), buf, sizeof(buf)) > 0) {
  }
}

}  // namespace emud::dataplane
