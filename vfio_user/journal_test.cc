#include "vfio_user/journal.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace emud::vfio_user {
namespace {

class JournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // mkdtemp: parallel runs in sandboxes may share a pid.
    std::string tmpl = absl::StrCat(testing::TempDir(), "/journal-XXXXXX");
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/journal";
  }
  void TearDown() override {
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  // The word at `offset` of the file, as a successor's pread would see it.
  uint64_t FileWord(off_t offset) const {
    int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    uint64_t v = ~uint64_t{0};
    EXPECT_EQ(::pread(fd, &v, sizeof(v), offset), static_cast<ssize_t>(sizeof(v)));
    ::close(fd);
    return v;
  }
  std::string dir_;
  std::string path_;
};

std::vector<uint8_t> Bytes(absl::string_view s) { return std::vector<uint8_t>(s.begin(), s.end()); }

TEST(Fnv1aTest, KnownValuesAndContinuation) {
  EXPECT_EQ(Fnv1a({}), 0xcbf29ce484222325ull);
  EXPECT_EQ(Fnv1a(Bytes("a")), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(Fnv1a(Bytes("foobar")), 0x85944171f73967e8ull);
  // A run's digest is built message by message.
  EXPECT_EQ(Fnv1a(Bytes("bar"), Fnv1a(Bytes("foo"))), Fnv1a(Bytes("foobar")));
}

TEST_F(JournalTest, FreshFileHasTwoZeroPages) {
  auto j = RequestJournal::Open(path_);
  ASSERT_TRUE(j.ok()) << j.status();
  struct stat st;
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(2 * RequestJournal::kPage));
  EXPECT_EQ((st.st_mode & 0777), 0600u);
  EXPECT_EQ(j->replying(), 0u);
  EXPECT_EQ(j->run(), 0u);
}

TEST_F(JournalTest, MarksAreStoresIntoTheFileAndOutliveTheProcessView) {
  {
    auto j = RequestJournal::Open(path_);
    ASSERT_TRUE(j.ok()) << j.status();
    j->MarkReplying(41);
    j->MarkReplying(42);
    j->RecordRun(0x1234567890abcdefull, 96);
    // No syscall in between: the file (tmpfs page cache) already has them.
    EXPECT_EQ(FileWord(0), 42u);
    EXPECT_EQ(FileWord(RequestJournal::kPage), RequestJournal::RunProgress(0x1234567890abcdefull, 96));
  }
  // A successor opening the same file finds the predecessor's marks.
  auto j = RequestJournal::Open(path_);
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(j->replying(), 42u);
  EXPECT_EQ(j->run(), RequestJournal::RunProgress(0x1234567890abcdefull, 96));
  j->ClearRun();
  EXPECT_EQ(j->run(), 0u);
  EXPECT_EQ(FileWord(RequestJournal::kPage), 0u);
  EXPECT_EQ(j->replying(), 42u) << "clearing the run leaves the reply mark";
}

TEST_F(JournalTest, RunProgressEncoding) {
  const uint64_t digest = Fnv1a(Bytes("two doorbells"));
  const uint64_t p = RequestJournal::RunProgress(digest, 64);
  EXPECT_NE(p, 0u);
  EXPECT_EQ(RequestJournal::RunBytes(p), 64u);
  EXPECT_EQ(p >> 32, digest & 0xffffffffu);
  // The same length with other bytes is another word.
  EXPECT_NE(RequestJournal::RunProgress(Fnv1a(Bytes("two doorbellz")), 64), p);
}

TEST_F(JournalTest, MovedJournalKeepsItsMapping) {
  auto j = RequestJournal::Open(path_);
  ASSERT_TRUE(j.ok()) << j.status();
  RequestJournal moved = std::move(*j);
  moved.MarkReplying(7);
  EXPECT_EQ(FileWord(0), 7u);
}

TEST_F(JournalTest, LongerFileIsNotShrunk) {
  int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 4 * RequestJournal::kPage), 0);
  ::close(fd);
  auto j = RequestJournal::Open(path_);
  ASSERT_TRUE(j.ok()) << j.status();
  struct stat st;
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(4 * RequestJournal::kPage));
}

TEST_F(JournalTest, OpenFailsInAMissingDirectory) {
  auto j = RequestJournal::Open(path_ + "/no/such/journal");
  ASSERT_FALSE(j.ok());
  EXPECT_NE(j.status().message().find("open journal"), absl::string_view::npos) << j.status();
}

}  // namespace
}  // namespace emud::vfio_user
