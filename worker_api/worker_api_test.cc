#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "worker_api/fd_keys.h"
#include "worker_api/worker_args.h"

namespace emud::worker_api {
namespace {

WorkerArgs Typical() {
  WorkerArgs a;
  a.device = "dev0";
  a.state_dir = "/dev/shm/emud";
  a.socket_path = "/run/emud/dev0/vfio-user.sock";
  a.mac = "02:00:00:00:00:07";
  a.queues = 2;
  a.backend = "tap:emud0";
  a.doorbell = DoorbellMode::kMmap;
  return a;
}

// The argv emud has always passed: an older worker binary must keep reading
// it, and tests/chaos finds workers by " --device NAME ".
TEST(WorkerArgs, ToArgvIsTheHistoricalCommandLine) {
  EXPECT_EQ(Typical().ToArgv("/bin/emud-worker"),
            (std::vector<std::string>{"/bin/emud-worker", "--device", "dev0", "--state-dir",
                                      "/dev/shm/emud", "--socket", "/run/emud/dev0/vfio-user.sock",
                                      "--mac", "02:00:00:00:00:07", "--queues", "2", "--backend",
                                      "tap:emud0", "--doorbell", "mmap"}));
}

TEST(WorkerArgs, OptionalFlagsOnlyWhenSet) {
  WorkerArgs a = Typical();
  a.mac = "";
  a.doorbell = DoorbellMode::kTrap;
  a.socket_mode = 0660;  // the default: not passed
  std::vector<std::string> argv = a.ToArgv("w");
  EXPECT_EQ(argv.size(), 15u);
  EXPECT_EQ(argv[8], "");
  EXPECT_EQ(argv[14], "trap");

  a.socket_uid = 107;
  a.socket_gid = 0;
  a.socket_mode = 0600;
  a.persist_session = false;
  argv = a.ToArgv("w");
  EXPECT_EQ(std::vector<std::string>(argv.begin() + 15, argv.end()),
            (std::vector<std::string>{"--socket-uid", "107", "--socket-gid", "0", "--socket-mode",
                                      "0600", "--persist-session=false"}));
}

TEST(WorkerArgs, Validate) {
  EXPECT_TRUE(Typical().Validate().ok());
  WorkerArgs a = Typical();
  a.queues = 64;  // LARGE_NUM_QPAIRS range
  EXPECT_TRUE(a.Validate().ok());
  a.queues = 65;
  EXPECT_EQ(a.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.Validate().message(), "--queues: must be 1..64");
  a = Typical();
  a.queues = 0;
  EXPECT_FALSE(a.Validate().ok());
  a = Typical();
  a.socket_path.clear();
  EXPECT_FALSE(a.Validate().ok());
  a = Typical();
  a.mac = "02:00:00:00:00";
  EXPECT_FALSE(a.Validate().ok());
  a = Typical();
  a.socket_mode = 0666 | 01000;
  EXPECT_FALSE(a.Validate().ok());
}

TEST(WorkerArgs, ParseMacAndDoorbell) {
  auto mac = ParseMac("02:aB:00:00:00:ff");
  ASSERT_TRUE(mac.ok());
  EXPECT_EQ(*mac, (MacAddress{0x02, 0xab, 0, 0, 0, 0xff}));
  EXPECT_FALSE(ParseMac("2:ab:00:00:00:ff").ok());
  EXPECT_FALSE(ParseMac("02:ab:00:00:00:fg").ok());
  EXPECT_FALSE(ParseMac("").ok());
  EXPECT_EQ(*ParseDoorbellMode("trap"), DoorbellMode::kTrap);
  EXPECT_EQ(*ParseDoorbellMode("mmap"), DoorbellMode::kMmap);
  EXPECT_FALSE(ParseDoorbellMode("MMAP").ok());
  EXPECT_EQ(DoorbellModeName(DoorbellMode::kMmap), "mmap");
}

// Persisted across workers (fd store) and live upgrades: spelled as ever.
TEST(FdKeys, Spelling) {
  EXPECT_EQ(DmaFdKey(0x10000000), "dma/10000000");
  EXPECT_EQ(DmaFdKey(0), "dma/0");
  EXPECT_EQ(IrqFdKey(2, 15), "irq/2/15");
  EXPECT_EQ(std::string(kConnFdKey), "vfio/conn");
  EXPECT_EQ(std::string(kListenFdKey), "vfio/listen");
  EXPECT_EQ(std::string(kDoorbellFdKey), "doorbell");
  EXPECT_EQ(std::string(kTapFdKey), "backend/tap");
  EXPECT_EQ(std::string(kChannelFdKey), "fdstore/channel");
  EXPECT_TRUE(IsSessionFdKey("dma/1000"));
  EXPECT_TRUE(IsSessionFdKey("irq/2/0"));
  EXPECT_FALSE(IsSessionFdKey("vfio/conn"));
  EXPECT_FALSE(IsSessionFdKey("doorbell"));
}

}  // namespace
}  // namespace emud::worker_api
