#include "base/backed_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace emud {
namespace {

TEST(BackFileTest, GrowsAndAllocatesWithoutShrinking) {
  int fd = ::memfd_create("backed", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(BackFile(fd, 3 * 4096, "test file").ok());
  struct stat st {};
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, 3 * 4096);
  EXPECT_GE(st.st_blocks * 512, 3 * 4096);  // allocated, not a hole
  ASSERT_TRUE(BackFile(fd, 4096, "test file").ok());
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, 3 * 4096);  // never shrinks
  ::close(fd);
}

TEST(BackFileTest, SparseFileGetsItsHolesAllocated) {
  int fd = ::memfd_create("sparse", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 8 * 4096), 0);
  struct stat st {};
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_EQ(st.st_blocks, 0);
  ASSERT_TRUE(BackFile(fd, 8 * 4096, "test file").ok());
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_GE(st.st_blocks * 512, 8 * 4096);
  ::close(fd);
}

TEST(BackFileTest, BadFdIsAnError) {
  absl::Status s = BackFile(-1, 4096, "nothing");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "nothing")) << s;
}

}  // namespace
}  // namespace emud
