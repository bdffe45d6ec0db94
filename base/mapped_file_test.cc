#include "base/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace emud {
namespace {

// Whether the page holding `p` is mapped in this process (msync fails with
// ENOMEM on an unmapped address).
bool IsMapped(const void* p) {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  void* start = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) & ~(page - 1));
  return ::msync(start, page, MS_ASYNC) == 0;
}

class Memfd {
 public:
  Memfd() : fd_(::memfd_create("mapped-file-test", MFD_CLOEXEC)) {}
  ~Memfd() { ::close(fd_); }
  int get() const { return fd_; }

 private:
  int fd_;
};

TEST(MappedFileTest, EmptyOwnerHoldsNothing) {
  MappedFile m;
  EXPECT_FALSE(m.mapped());
  EXPECT_EQ(m.data(), nullptr);
  EXPECT_EQ(m.size(), 0u);
  m.reset();  // harmless
}

TEST(MappedFileTest, MapBackedAllocatesBeforeMappingAndSharesTheFile) {
  Memfd fd;
  ASSERT_GE(fd.get(), 0);
  auto m = MappedFile::MapBacked(fd.get(), 2 * 4096, "test file");
  ASSERT_TRUE(m.ok()) << m.status();
  struct stat st {};
  ASSERT_EQ(::fstat(fd.get(), &st), 0);
  EXPECT_EQ(st.st_size, 2 * 4096);
  EXPECT_GE(st.st_blocks * 512, 2 * 4096);  // allocated: no hole a store could fault on
  std::memcpy(m->data() + 4096, "hello", 5);
  char back[5];
  ASSERT_EQ(::pread(fd.get(), back, 5, 4096), 5);  // MAP_SHARED: the file sees the store
  EXPECT_EQ(std::memcmp(back, "hello", 5), 0);
}

TEST(MappedFileTest, MapBackedKeepsExistingContents) {
  Memfd fd;
  ASSERT_EQ(::pwrite(fd.get(), "kept", 4, 0), 4);
  auto m = MappedFile::MapBacked(fd.get(), 4096, "test file");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(std::memcmp(m->data(), "kept", 4), 0);
}

TEST(MappedFileTest, UnmapsOnDestructionResetAndMoveAssignment) {
  Memfd fd;
  const uint8_t* first;
  {
    auto m = MappedFile::MapBacked(fd.get(), 4096, "test file");
    ASSERT_TRUE(m.ok()) << m.status();
    first = m->data();
    EXPECT_TRUE(IsMapped(first));
  }
  EXPECT_FALSE(IsMapped(first));

  auto a = MappedFile::MapBacked(fd.get(), 4096, "test file");
  ASSERT_TRUE(a.ok());
  const uint8_t* pa = a->data();
  MappedFile moved(std::move(*a));
  EXPECT_FALSE(a->mapped());  // the source gives up the mapping
  EXPECT_EQ(moved.data(), pa);
  EXPECT_TRUE(IsMapped(pa));

  auto b = MappedFile::MapBacked(fd.get(), 4096, "test file");
  ASSERT_TRUE(b.ok());
  const uint8_t* pb = b->data();
  moved = std::move(*b);  // the old mapping goes, the new one stays
  EXPECT_FALSE(IsMapped(pa));
  EXPECT_TRUE(IsMapped(pb));
  moved.reset();
  EXPECT_FALSE(IsMapped(pb));
  EXPECT_FALSE(moved.mapped());
}

TEST(MappedFileTest, MapAcceptsAnUnalignedOffset) {
  Memfd fd;
  ASSERT_EQ(::ftruncate(fd.get(), 3 * 4096), 0);
  ASSERT_EQ(::pwrite(fd.get(), "xyz", 3, 4096 + 100), 3);
  auto m = MappedFile::Map(fd.get(), 4096 + 100, 50, PROT_READ);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->size(), 50u);
  EXPECT_EQ(std::memcmp(m->data(), "xyz", 3), 0);
}

TEST(MappedFileTest, MapReportsTheErrno) {
  int err = 0;
  auto m = MappedFile::Map(-1, 0, 4096, PROT_READ, &err);
  EXPECT_FALSE(m.ok());
  EXPECT_EQ(err, EBADF);
  err = 0;
  Memfd fd;
  EXPECT_TRUE(absl::IsInvalidArgument(MappedFile::Map(fd.get(), 0, 0, PROT_READ, &err).status()));
  EXPECT_EQ(err, EINVAL);
}

TEST(MappedFileTest, MapBackedNamesTheFileInErrors) {
  absl::Status s = MappedFile::MapBacked(-1, 4096, "journal /x").status();
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "journal /x")) << s;
}

}  // namespace
}  // namespace emud
