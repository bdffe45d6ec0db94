#include "fdstore/standby.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <map>

#include "fdstore/fd_store.h"
#include "gtest/gtest.h"
#include "worker_api/fd_keys.h"

namespace emud::fdstore {
namespace {

TEST(StandbyTest, APromotionLooksLikeASpawn) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd emud(sv[0]), standby(sv[1]);
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  UniqueFd r(p[0]), w(p[1]);
  ASSERT_TRUE(StandbyReady(standby.get()).ok());
  char b = 0;
  ASSERT_EQ(::recv(emud.get(), &b, 1, MSG_DONTWAIT), 1);
  EXPECT_EQ(b, kStandbyReady);
  ASSERT_TRUE(SendPromotion(emud.get(),
                            {{"vfio/conn", r.get(), ""}, {"x", w.get(), "STANDBY_TEST_FD"}},
                            {"STANDBY_TEST_ENV=a=b"})
                  .ok());
  ::unsetenv(worker_api::kInheritedFdsEnv);
  ASSERT_TRUE(AwaitPromotion(standby.get()).ok());
  EXPECT_STREQ(std::getenv("STANDBY_TEST_ENV"), "a=b");
  const int wfd = std::atoi(std::getenv("STANDBY_TEST_FD"));
  UniqueFd w2(wfd);
  auto fds = TakeInheritedFds();
  ASSERT_TRUE(fds.ok()) << fds.status();
  ASSERT_EQ(fds->size(), 1u);
  ASSERT_EQ(fds->count("vfio/conn"), 1u);
  // The same pipe, through the received fds.
  ASSERT_EQ(::write(wfd, "z", 1), 1);
  char c = 0;
  ASSERT_EQ(::read(fds->at("vfio/conn").get(), &c, 1), 1);
  EXPECT_EQ(c, 'z');
}

TEST(StandbyTest, ClosingTheChannelCancels) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd standby(sv[1]);
  ::close(sv[0]);
  EXPECT_TRUE(absl::IsCancelled(AwaitPromotion(standby.get())));
  // emud's side: the standby is gone.
  int sv2[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv2), 0);
  UniqueFd emud(sv2[0]);
  ::close(sv2[1]);
  EXPECT_FALSE(SendPromotion(emud.get(), {}, {"A=1"}).ok());
}

}  // namespace
}  // namespace emud::fdstore
