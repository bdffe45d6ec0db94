#include "base/unix_listener.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace emud {
namespace {

// A path in a fresh directory under /tmp (TEST_TMPDIR is often longer than
// a socket path may be).
std::string TempPath(const char* name) {
  char dir[] = "/tmp/emud-ul-XXXXXX";
  EXPECT_NE(::mkdtemp(dir), nullptr);
  return absl::StrCat(dir, "/", name);
}

// Removes the socket and the directory TempPath made for it.
void Remove(const std::string& path) {
  ::unlink(path.c_str());
  ::rmdir(path.substr(0, path.rfind('/')).c_str());
}

int ConnectTo(const std::string& path, int type) {
  int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::close(fd);
  return rc == 0 ? 0 : errno;
}

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  return st.st_mode & 07777;
}

// Restores the umask a test changed.
class UmaskGuard {
 public:
  explicit UmaskGuard(mode_t m) : old_(::umask(m)) {}
  ~UmaskGuard() { ::umask(old_); }

 private:
  mode_t old_;
};

TEST(UnixListenerTest, OwnerOnlyByDefaultWhateverTheUmask) {
  UmaskGuard permissive(0);  // bind alone would create the file 0777
  const std::string path = TempPath("ul-default");
  auto fd = ListenUnix(path, {});
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(ModeOf(path), 0600u);
  EXPECT_EQ(ConnectTo(path, SOCK_STREAM), 0);  // listening
  EXPECT_NE(::fcntl(fd->get(), F_GETFL) & O_NONBLOCK, 0);
  EXPECT_NE(::fcntl(fd->get(), F_GETFD) & FD_CLOEXEC, 0);
  Remove(path);
}

TEST(UnixListenerTest, FinalModeIsTheRequestedOne) {
  UmaskGuard strict(0077);  // the final mode does not depend on the umask either
  const std::string path = TempPath("ul-0660");
  auto fd = ListenUnix(path, {.mode = 0660});
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(ModeOf(path), 0660u);
  Remove(path);
}

TEST(UnixListenerTest, SeqpacketBlockingWithAStaleFileInTheWay) {
  const std::string path = TempPath("ul-seq");
  int stale = ::open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  ASSERT_GE(stale, 0);
  ::close(stale);
  auto fd = ListenUnix(path, {.type = SOCK_SEQPACKET, .backlog = 1, .nonblocking = false});
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(ModeOf(path), 0600u);
  EXPECT_EQ(::fcntl(fd->get(), F_GETFL) & O_NONBLOCK, 0);
  int type = 0;
  socklen_t len = sizeof(type);
  ASSERT_EQ(::getsockopt(fd->get(), SOL_SOCKET, SO_TYPE, &type, &len), 0);
  EXPECT_EQ(type, SOCK_SEQPACKET);
  EXPECT_EQ(ConnectTo(path, SOCK_SEQPACKET), 0);
  Remove(path);
}

TEST(UnixListenerTest, BadPathsAreInvalidArguments) {
  EXPECT_TRUE(absl::IsInvalidArgument(ListenUnix("", {}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ListenUnix(std::string(200, 'x'), {}).status()));
  const std::string in_dir = TempPath("s.sock");
  auto missing_dir = ListenUnix(in_dir + ".d/s.sock", {});
  EXPECT_TRUE(absl::IsInternal(missing_dir.status())) << missing_dir.status();
  Remove(in_dir);
}

TEST(UnixListenerTest, ChownFailureExplainsCapChown) {
  absl::Status s = ChownFailure("/x.sock", 107, static_cast<gid_t>(-1), EPERM);
  EXPECT_TRUE(absl::IsFailedPrecondition(s));
  EXPECT_NE(s.message().find("CAP_CHOWN"), absl::string_view::npos);
  EXPECT_NE(s.message().find("107:-"), absl::string_view::npos);
}

}  // namespace
}  // namespace emud
