#include "base/sd_notify.h"

#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "base/unique_fd.h"
#include "gtest/gtest.h"

namespace emud {
namespace {

// A datagram socket like the one systemd binds for a Type=notify service.
UniqueFd BindDgram(const std::string& path, bool abstract) {
  EXPECT_LT(path.size(), sizeof(sockaddr_un::sun_path));
  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), path.size());
  socklen_t len = offsetof(sockaddr_un, sun_path) + path.size() + (abstract ? 0 : 1);
  if (abstract) a.sun_path[0] = '\0';
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), len), 0) << std::strerror(errno);
  return fd;
}

std::string Receive(int fd) {
  char buf[512];
  ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
  return n < 0 ? "" : std::string(buf, n);
}

TEST(SdNotifyTest, SendsTheStateToAPathSocketAndUnsetsTheEnvironment) {
  // Short: Bazel's TEST_TMPDIR can exceed a UNIX socket path's 108 bytes.
  std::string path = "/tmp/emud-notify-test." + std::to_string(::getpid());
  ::unlink(path.c_str());
  UniqueFd fd = BindDgram(path, false);
  ::setenv(kNotifySocketEnv, path.c_str(), 1);
  ASSERT_TRUE(SdNotify("READY=1\nSTATUS=serving", /*unset_environment=*/true).ok());
  EXPECT_EQ(Receive(fd.get()), "READY=1\nSTATUS=serving");
  EXPECT_EQ(::getenv(kNotifySocketEnv), nullptr);
  // Without NOTIFY_SOCKET nothing is sent and nothing fails.
  EXPECT_TRUE(SdNotify("STOPPING=1").ok());
  EXPECT_EQ(Receive(fd.get()), "");
  ::unlink(path.c_str());
}

TEST(SdNotifyTest, AbstractAddressesWork) {
  std::string name = "@emud-sd-notify-test-" + std::to_string(::getpid());
  UniqueFd fd = BindDgram(name, true);
  ASSERT_TRUE(SdNotifyTo(name, "READY=1").ok());
  EXPECT_EQ(Receive(fd.get()), "READY=1");
}

TEST(SdNotifyTest, BadAddressesSayWhatIsWrong) {
  absl::Status s = SdNotifyTo("relative/path", "READY=1");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("neither an absolute path nor @abstract"), absl::string_view::npos);
  s = SdNotifyTo("/nonexistent/dir/notify.sock", "READY=1");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace emud
