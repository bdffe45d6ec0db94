#include "base/poison_guard.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/unique_fd.h"

namespace emud {
namespace {
constexpr size_t kFileSize = 4096;
}  // namespace

absl::StatusOr<std::unique_ptr<PoisonGuard>> PoisonGuard::Open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    return absl::InternalError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  }
  // Allocated before it is mapped: a store into a hole of a full tmpfs is a
  // SIGBUS.
  auto map = MappedFile::MapBacked(fd.get(), kFileSize, absl::StrCat("poison guard ", path));
  if (!map.ok()) return map.status();
  std::unique_ptr<PoisonGuard> g(new PoisonGuard(std::move(*map), nullptr));
  g->Settle();
  return g;
}

std::unique_ptr<PoisonGuard> PoisonGuard::InMemory() {
  return std::unique_ptr<PoisonGuard>(
      new PoisonGuard(MappedFile(), std::unique_ptr<Slot[]>(new Slot[kLevels]())));
}

PoisonGuard::PoisonGuard(MappedFile map, std::unique_ptr<Slot[]> heap)
    : map_(std::move(map)),
      heap_(std::move(heap)),
      slots_(heap_ != nullptr ? heap_.get() : map_.as<Slot>()) {}

void PoisonGuard::Settle() {
  // The deepest active level was running when the predecessor died.
  int deepest = -1;
  for (int l = 0; l < int{kLevels}; ++l) {
    if (slots_[l].active == 1) deepest = l;
  }
  for (int l = 0; l < int{kLevels}; ++l) {
    Slot& s = slots_[l];
    if (s.active != 1) continue;
    if (l == deepest && s.deaths < UINT32_MAX) ++s.deaths;
    s.active = 0;  // a successor that dies before re-entering adds nothing
    deaths_at_open_[l] = s.deaths;
  }
}

uint32_t PoisonGuard::Enter(Level level, uint64_t key) {
  Slot& s = slots_[level];
  const uint32_t deaths = s.key == key ? s.deaths : 0;
  // Order matters for a kill between the stores: "active" last, so a torn
  // Enter is never charged.
  s.key = key;
  s.deaths = deaths;
  s.active = 1;
  depth_ |= 1u << level;
  return deaths;
}

void PoisonGuard::Leave(Level level) {
  Slot& s = slots_[level];
  s.active = 0;
  s.deaths = 0;
  depth_ &= ~(1u << level);
}

}  // namespace emud
