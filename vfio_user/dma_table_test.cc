#include "vfio_user/dma_table.h"

#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "gtest/gtest.h"
#include "vfio_user/protocol.h"

namespace emud::vfio_user {
namespace {

UniqueFd Memfd(size_t n) {
  UniqueFd fd(::memfd_create("dma-test", MFD_CLOEXEC));
  EXPECT_EQ(::ftruncate(fd.get(), n), 0);
  return fd;
}

class FakeMessageDma : public MessageDma {
 public:
  absl::Status DmaRead(uint64_t iova, absl::Span<uint8_t> dst) override {
    for (size_t i = 0; i < dst.size(); ++i) dst[i] = static_cast<uint8_t>(iova + i);
    ++reads;
    return absl::OkStatus();
  }
  absl::Status DmaWrite(uint64_t, absl::Span<const uint8_t> src) override {
    written += src.size();
    return absl::OkStatus();
  }
  int reads = 0;
  size_t written = 0;
};

TEST(DmaTableTest, TranslateIsBoundsAndPermissionChecked) {
  DmaTable t(16, false);
  UniqueFd fd = Memfd(0x4000);
  ASSERT_TRUE(t.Map(0x10000, 0x2000, kDmaFlagRead | kDmaFlagWrite, std::move(fd), 0x1000).ok());
  auto p = t.Translate(0x10000, 0x2000, DmaMemory::kWrite);
  ASSERT_TRUE(p.ok());
  std::memset(*p, 0x5a, 0x2000);
  EXPECT_EQ(t.Translate(0x11fff, 2, DmaMemory::kRead).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(t.Translate(0xffff, 1, DmaMemory::kRead).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(t.Translate(0x12000, 1, DmaMemory::kRead).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(t.Translate(0x10000, 0, DmaMemory::kRead).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.Translate(0x10000, ~uint64_t{0}, DmaMemory::kRead).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(t.Translate(0x11fff, 1, DmaMemory::kRead).ok());
  // Read-only window.
  ASSERT_TRUE(t.Map(0x20000, 0x1000, kDmaFlagRead, Memfd(0x1000), 0).ok());
  EXPECT_EQ(t.Translate(0x20000, 4, DmaMemory::kWrite).status().code(), absl::StatusCode::kPermissionDenied);
  uint8_t b[4] = {};
  EXPECT_EQ(t.Write(0x20000, b).code(), absl::StatusCode::kPermissionDenied);
}

// Translate remembers the last window found; a removed window is never
// served from that memory, and a new window at the same iova is.
TEST(DmaTableTest, RememberedWindowNeverOutlivesItsUnmap) {
  DmaTable t(16, false);
  ASSERT_TRUE(t.Map(0x10000, 0x1000, kDmaFlagRead | kDmaFlagWrite, Memfd(0x1000), 0).ok());
  auto a = t.Translate(0x10010, 4, DmaMemory::kWrite);
  ASSERT_TRUE(a.ok());
  std::memset(*a, 0x11, 4);
  ASSERT_TRUE(t.Unmap(0x10000, 0x1000, nullptr).ok());
  EXPECT_EQ(t.Translate(0x10010, 4, DmaMemory::kRead).status().code(), absl::StatusCode::kOutOfRange);
  ASSERT_TRUE(t.Map(0x10000, 0x1000, kDmaFlagRead, Memfd(0x1000), 0).ok());
  auto b = t.Translate(0x10010, 4, DmaMemory::kRead);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)[0], 0) << "the new window's memory, not the old one's";
  EXPECT_EQ(t.Translate(0x10010, 4, DmaMemory::kWrite).status().code(),
            absl::StatusCode::kPermissionDenied);
  // Alternating between two windows, and an address just past one.
  ASSERT_TRUE(t.Map(0x20000, 0x1000, kDmaFlagRead, Memfd(0x1000), 0).ok());
  EXPECT_TRUE(t.Translate(0x20000, 1, DmaMemory::kRead).ok());
  EXPECT_TRUE(t.Translate(0x10fff, 1, DmaMemory::kRead).ok());
  EXPECT_EQ(t.Translate(0x11000, 1, DmaMemory::kRead).status().code(), absl::StatusCode::kOutOfRange);
  t.UnmapAll(nullptr);
  EXPECT_EQ(t.Translate(0x10000, 1, DmaMemory::kRead).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(t.Translate(0x20000, 1, DmaMemory::kRead).status().code(), absl::StatusCode::kOutOfRange);
}

// FindWindow hands out a whole window (the data path caches it and checks
// each buffer against it): the mapped window with its permissions, never a
// window without an fd or one that forbids the access.
TEST(DmaTableTest, FindWindowReturnsMappedWindowsOnly) {
  DmaTable t(16, false);
  ASSERT_TRUE(t.Map(0x10000, 0x2000, kDmaFlagRead | kDmaFlagWrite, Memfd(0x3000), 0x1000).ok());
  ASSERT_TRUE(t.Map(0x20000, 0x1000, kDmaFlagRead, Memfd(0x1000), 0).ok());
  ASSERT_TRUE(t.Map(0x30000, 0x1000, kDmaFlagRead | kDmaFlagWrite, UniqueFd(), 0).ok());
  DmaMemory::Window w;
  ASSERT_TRUE(t.FindWindow(0x11234, DmaMemory::kWrite, &w));
  EXPECT_EQ(w.iova, 0x10000u);
  EXPECT_EQ(w.size, 0x2000u);
  EXPECT_EQ(w.access, uint32_t{DmaMemory::kRead} | DmaMemory::kWrite);
  EXPECT_EQ(w.host, *t.Translate(0x10000, 1, DmaMemory::kRead));
  EXPECT_TRUE(t.FindWindow(0x20000, DmaMemory::kRead, &w));
  EXPECT_EQ(w.access, uint32_t{DmaMemory::kRead});
  EXPECT_FALSE(t.FindWindow(0x20000, DmaMemory::kWrite, &w));  // read-only
  EXPECT_FALSE(t.FindWindow(0x30000, DmaMemory::kRead, &w));   // no fd: messages only
  EXPECT_FALSE(t.FindWindow(0x12000, DmaMemory::kRead, &w));   // just past the first
  ASSERT_TRUE(t.Unmap(0x10000, 0x2000, nullptr).ok());
  EXPECT_FALSE(t.FindWindow(0x11234, DmaMemory::kRead, &w));
}

TEST(DmaTableTest, ReadWriteSpanAdjacentWindowsAndUseMessagesWithoutFd) {
  DmaTable t(16, true);
  FakeMessageDma msg;
  t.set_message_dma(&msg);
  ASSERT_TRUE(t.Map(0x1000, 0x1000, kDmaFlagRead | kDmaFlagWrite, Memfd(0x1000), 0).ok());
  ASSERT_TRUE(t.Map(0x2000, 0x1000, kDmaFlagRead | kDmaFlagWrite, UniqueFd(), 0).ok());
  std::vector<uint8_t> src(0x200, 7);
  ASSERT_TRUE(t.Write(0x1f00, src).ok());  // 0x100 to memory, 0x100 by message
  EXPECT_EQ(msg.written, 0x100u);
  std::vector<uint8_t> dst(0x200);
  ASSERT_TRUE(t.Read(0x1f00, absl::MakeSpan(dst)).ok());
  EXPECT_EQ(dst[0], 7);
  EXPECT_EQ(dst[0x100], static_cast<uint8_t>(0x2000));
  EXPECT_EQ(msg.reads, 1);
  EXPECT_EQ(t.Translate(0x2000, 1, DmaMemory::kRead).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(t.Read(0x2f00, absl::MakeSpan(dst)).ok());  // runs past the end
  EXPECT_TRUE(t.windows().at(0x1000).fd.valid());           // keep_fds
}

TEST(DmaTableTest, TruncatedGuestMemoryDoesNotKillTheProcess) {
  DmaTable t(4, false);
  UniqueFd fd = Memfd(0x2000);
  ASSERT_TRUE(t.Map(0x10000, 0x2000, kDmaFlagRead | kDmaFlagWrite, UniqueFd(::dup(fd.get())), 0).ok());
  auto p = t.Translate(0x10000, 0x2000, DmaMemory::kWrite);
  ASSERT_TRUE(p.ok());
  (*p)[0x1000] = 42;
  uint64_t before = DmaTable::PoisonedPages();
  ASSERT_EQ(::ftruncate(fd.get(), 0), 0);  // a hostile client shrinks guest RAM
  volatile uint8_t* v = *p;
  EXPECT_EQ(v[0x1000], 0);  // SIGBUS -> zero page, the access retried
  v[0x10] = 1;              // writable too (lost, private page)
  EXPECT_EQ(DmaTable::PoisonedPages(), before + 2);
  uint8_t buf[16];
  EXPECT_TRUE(t.Read(0x10000, absl::MakeSpan(buf)).ok());
  EXPECT_TRUE(t.Unmap(0x10000, 0x2000, nullptr).ok());
}

TEST(DmaTableTest, MapValidationAndUnmap) {
  DmaTable t(2, false);
  EXPECT_EQ(StatusToErrno(t.Map(0x1000, 0, kDmaFlagRead, UniqueFd(), 0)), EINVAL);
  EXPECT_EQ(StatusToErrno(t.Map(~uint64_t{0}, 2, kDmaFlagRead, UniqueFd(), 0)), EINVAL);
  EXPECT_EQ(StatusToErrno(t.Map(0x1000, 0x1000, 8, UniqueFd(), 0)), EINVAL);
  EXPECT_EQ(StatusToErrno(t.Map(0x1000, 0x2000, kDmaFlagRead, Memfd(0x1000), 0)), EINVAL);  // beyond EOF
  ASSERT_TRUE(t.Map(0x1000, 0x1000, kDmaFlagRead, UniqueFd(), 0).ok());
  EXPECT_EQ(StatusToErrno(t.Map(0x1800, 0x1000, kDmaFlagRead, UniqueFd(), 0)), EEXIST);
  ASSERT_TRUE(t.Map(0x3000, 0x1000, kDmaFlagRead, UniqueFd(), 0).ok());
  EXPECT_EQ(StatusToErrno(t.Map(0x5000, 0x1000, kDmaFlagRead, UniqueFd(), 0)), ENOSPC);
  int calls = 0;
  auto cb = [&](uint64_t, uint64_t) { ++calls; };
  EXPECT_EQ(StatusToErrno(t.Unmap(0x1000, 0x800, cb)), ENOENT);
  EXPECT_EQ(calls, 0);
  EXPECT_TRUE(t.Unmap(0x1000, 0x1000, cb).ok());
  EXPECT_EQ(calls, 1);
  t.UnmapAll(cb);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(t.size(), 0u);
}

}  // namespace
}  // namespace emud::vfio_user
