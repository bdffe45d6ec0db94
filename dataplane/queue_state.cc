#include "dataplane/queue_state.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/mapped_file.h"
#include "base/unique_fd.h"

namespace emud::dataplane {
namespace {
constexpr uint64_t kMagic = 0x5345555145554d45ull;  // "EMUQUEUES"
constexpr uint32_t kVersion = 2;
}  // namespace

void QueueStateFile::Bind(void* base, uint32_t n) {
  header_ = static_cast<Header*>(base);
  queues_ = reinterpret_cast<HotQueue*>(static_cast<uint8_t*>(base) + 64);
  n_ = n;
}

absl::StatusOr<std::unique_ptr<QueueStateFile>> QueueStateFile::Open(const std::string& path,
                                                                     uint32_t queue_pairs) {
  const uint32_t n = StateQueuesFor(queue_pairs);
  const size_t size = FileSize(n);
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd.valid()) return absl::UnavailableError(absl::StrCat("open ", path, ": ", strerror(errno)));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return absl::InternalError("fstat");
  bool fresh = static_cast<size_t>(st.st_size) != size;
  if (fresh && ::ftruncate(fd.get(), 0) != 0) {
    return absl::InternalError(absl::StrCat("truncate ", path, ": ", strerror(errno)));
  }
  // Allocated every time, not only when fresh: a file of the right size left
  // by a start that failed on a full tmpfs may still have holes (a store into
  // one is a SIGBUS, see base/backed_file.h).
  auto map = MappedFile::MapBacked(fd.get(), size, absl::StrCat("queue state ", path));
  if (!map.ok()) return map.status();
  void* p = map->data();
  std::unique_ptr<QueueStateFile> f(new QueueStateFile());
  f->map_ = std::move(*map);
  f->Bind(p, n);
  if (!fresh && f->header_->magic == kMagic && f->header_->version == kVersion &&
      f->header_->num_queues == n) {
    f->reused_ = true;
    for (uint32_t q = 0; q < n; ++q) {
      HotQueue* qs[2] = {f->tx(q), f->rx(q)};
      for (HotQueue* h : qs) {
        if (h->ring_len > 8192 || h->head.load() >= std::max<uint32_t>(h->ring_len, 1) ||
            h->intent.load() >= std::max<uint32_t>(h->ring_len, 1) ||
            h->rs_count.load() > kMaxPendingRs) {
          // Corrupt entry: disable the queue rather than follow it.
          h->enabled = 0;
          h->ring_len = 0;
          h->head = 0;
          h->intent = 0;
          h->rs_count = 0;
        }
      }
    }
  } else {
    std::memset(p, 0, size);
    f->header_->version = kVersion;
    f->header_->num_queues = n;
    std::atomic_thread_fence(std::memory_order_release);
    f->header_->magic = kMagic;
  }
  return f;
}

std::unique_ptr<QueueStateFile> QueueStateFile::Anonymous(uint32_t queue_pairs) {
  const uint32_t n = StateQueuesFor(queue_pairs);
  std::unique_ptr<QueueStateFile> f(new QueueStateFile());
  // 64-byte aligned storage of at least FileSize(n) bytes (the first slot
  // covers the 64-byte header).
  static_assert(sizeof(HotQueue) >= 64);
  const size_t slots = 1 + 2 * size_t{n};
  f->anon_ = std::make_unique<HotQueue[]>(slots);
  std::memset(static_cast<void*>(f->anon_.get()), 0, slots * sizeof(HotQueue));
  f->Bind(f->anon_.get(), n);
  f->header_->num_queues = n;
  return f;
}

}  // namespace emud::dataplane
