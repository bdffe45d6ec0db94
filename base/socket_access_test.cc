#include "base/socket_access.h"
#include "base/unix_listener.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <grp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace emud {
namespace {

// A directory every test user can traverse, with short socket paths.
std::string TempDir() {
  const char* d = std::getenv("EMUD_TEST_TMPDIR");
  return d != nullptr ? d : "/dev/shm";
}

TEST(SocketAccessTest, ParsesOwner) {
  auto o = ParseSocketOwner("107", "--socket-owner");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(*o->uid, 107u);
  EXPECT_FALSE(o->gid.has_value());
  o = ParseSocketOwner("107:36", "--socket-owner");
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(*o->uid, 107u);
  EXPECT_EQ(*o->gid, 36u);
  o = ParseSocketOwner(":36", "--socket-owner");
  ASSERT_TRUE(o.ok());
  EXPECT_FALSE(o->uid.has_value());
  EXPECT_EQ(*o->gid, 36u);
  for (const char* bad : {"", "qemu", "107:", "107:kvm", "-1", "1:2:3", "4294967295"}) {
    auto b = ParseSocketOwner(bad, "--socket-owner");
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(b.status().message().find("--socket-owner"), std::string::npos) << b.status();
  }
  auto named = ParseSocketOwner("qemu", "--socket-owner");
  EXPECT_NE(named.status().message().find("numeric"), std::string::npos) << named.status();
}

TEST(SocketAccessTest, ParsesAndChecksMode) {
  EXPECT_EQ(*ParseSocketMode("0660", "--socket-mode"), 0660u);
  EXPECT_EQ(*ParseSocketMode("600", "--socket-mode"), 0600u);
  EXPECT_EQ(*ParseSocketMode("0666", "--socket-mode"), 0666u);
  for (const char* bad : {"", "0770", "0460", "04660", "rw", "0999", "660660"}) {
    auto m = ParseSocketMode(bad, "--socket-mode");
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_NE(ValidateSocketMode(0700, "spec.socket_mode").message().find("0660"), std::string::npos);
}

// Forks a child that drops to uid/gid (no supplementary groups unless
// `extra_gid` is set) and connects to `path`. Returns the child's errno
// (0 on success).
int ConnectAs(const std::string& path, uid_t uid, gid_t gid, gid_t extra_gid = (gid_t)-1) {
  pid_t pid = ::fork();
  if (pid == 0) {
    gid_t groups[1] = {extra_gid};
    if (::setgroups(extra_gid == (gid_t)-1 ? 0 : 1, groups) != 0) ::_exit(100);
    if (::setgid(gid) != 0 || ::setuid(uid) != 0) ::_exit(101);
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    ::_exit(rc == 0 ? 0 : errno);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(SocketAccessTest, OnlyOwnerAndGroupConnect) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to change owners";
  std::string dir = absl::StrCat(TempDir(), "/sa-", ::getpid());
  // The per-device directory: owner 107 (KubeVirt's qemu), group 3000.
  ASSERT_TRUE(PrepareOwnedDir(dir, 107, 3000, kSocketDirMode).ok());
  struct stat st;
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 107u);
  EXPECT_EQ(st.st_gid, 3000u);
  EXPECT_EQ(st.st_mode & 07777, 0750u);

  std::string path = dir + "/" + kDefaultSocketFile;
  auto fd = ListenUnix(path, {.uid = 107, .gid = 3000, .mode = 0660});
  ASSERT_TRUE(fd.ok()) << fd.status();
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_uid, 107u);
  EXPECT_EQ(st.st_gid, 3000u);
  EXPECT_EQ(st.st_mode & 07777, 0660u);

  EXPECT_EQ(ConnectAs(path, 107, 107), 0) << "the owner (qemu, uid 107)";
  EXPECT_EQ(ConnectAs(path, 2000, 2000, 3000), 0) << "a member of the group";
  EXPECT_EQ(ConnectAs(path, 2001, 2001), EACCES) << "any other unprivileged user";
  EXPECT_EQ(ConnectAs(path, 2001, 3000), 0) << "primary group";

  // Owner only: the group is locked out too.
  fd = ListenUnix(path, {.uid = 107, .gid = 3000, .mode = 0600});
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(ConnectAs(path, 107, 107), 0);
  EXPECT_EQ(ConnectAs(path, 2000, 2000, 3000), EACCES);

  // A symlink in place of the directory is refused, not followed.
  std::string link = dir + "-link";
  ASSERT_EQ(::symlink(dir.c_str(), link.c_str()), 0);
  absl::Status s = PrepareOwnedDir(link, 107, 107, kSocketDirMode);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  ::unlink(link.c_str());
  ::unlink(path.c_str());
  ::rmdir(dir.c_str());
}

TEST(SocketAccessTest, NonRootCannotGiveSocketsAway) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to drop to another user";
  std::string dir = absl::StrCat(TempDir(), "/sa-nonroot-", ::getpid());
  ASSERT_EQ(::mkdir(dir.c_str(), 0777), 0);
  ::chmod(dir.c_str(), 0777);
  pid_t pid = ::fork();
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(2002) != 0 || ::setuid(2002) != 0) ::_exit(100);
    absl::Status s = PrepareOwnedDir(dir + "/d", 107, 107, kSocketDirMode);
    if (s.code() != absl::StatusCode::kFailedPrecondition) ::_exit(1);
    if (s.message().find("CAP_CHOWN") == absl::string_view::npos) ::_exit(2);
    auto fd = ListenUnix(dir + "/s.sock", {.uid = 107, .mode = 0660});
    if (fd.ok() || fd.status().message().find("CAP_CHOWN") == absl::string_view::npos) ::_exit(3);
    // Its own ids are fine.
    fd = ListenUnix(dir + "/s.sock", {});
    ::_exit(fd.ok() ? 0 : 4);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  ::unlink((dir + "/s.sock").c_str());
  ::rmdir((dir + "/d").c_str());
  ::rmdir(dir.c_str());
}

}  // namespace
}  // namespace emud
