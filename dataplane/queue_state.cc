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

absl::StatusOr<std::unique_ptr<QueueStateFile>> QueueStateFile::Open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd.valid()) return absl::UnavailableError(absl::StrCat("open ", path, ": ", strerror(errno)));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return absl::InternalError("fstat");
  bool fresh = static_cast<size_t>(st.st_size) != sizeof(Layout);
  if (fresh && ::ftruncate(fd.get(), 0) != 0) {
    return absl::InternalError(absl::StrCat("truncate ", path, ": ", strerror(errno)));
  }
  // Allocated every time, not only when fresh: a file of the right size left
  // by a start that failed on a full tmpfs may still have holes (a store into
  // one is a SIGBUS, see base/backed_file.h).
  auto map = MappedFile::MapBacked(fd.get(), sizeof(Layout), absl::StrCat("queue state ", path));
  if (!map.ok()) return map.status();
  void* p = map->data();
  std::unique_ptr<QueueStateFile> f(new QueueStateFile());
  f->map_ = std::move(*map);
  f->base_ = f->map_.as<Layout>();
  if (!fresh && f->base_->magic == kMagic && f->base_->version == kVersion &&
      f->base_->num_queues == kMaxQueues) {
    f->reused_ = true;
    for (uint32_t q = 0; q < kMaxQueues; ++q) {
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
    std::memset(p, 0, sizeof(Layout));
    f->base_->version = kVersion;
    f->base_->num_queues = kMaxQueues;
    std::atomic_thread_fence(std::memory_order_release);
    f->base_->magic = kMagic;
  }
  return f;
}

std::unique_ptr<QueueStateFile> QueueStateFile::Anonymous() {
  std::unique_ptr<QueueStateFile> f(new QueueStateFile());
  f->anon_ = std::make_unique<Layout>();
  f->base_ = f->anon_.get();
  std::memset(static_cast<void*>(f->base_), 0, sizeof(Layout));
  return f;
}

}  // namespace emud::dataplane
