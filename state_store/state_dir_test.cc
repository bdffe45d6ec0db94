#include "state_store/state_dir.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace emud::state_store {
namespace {

namespace fs = std::filesystem;

class StateDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir().empty() ? "/tmp" : ::testing::TempDir(),
                        "/state-dir-", ::getpid());
    fs::remove_all(dir_);
    fs::create_directories(ShmDir(dir_));
  }
  void TearDown() override { fs::remove_all(dir_); }
  void Touch(const std::string& path, const std::string& text = "x") {
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream(path) << text;
  }
  std::string Read(const std::string& path) {
    std::ifstream f(path);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  std::string dir_;
};

TEST_F(StateDirTest, RemovingADeviceNeverTouchesAnotherWhoseNameItPrefixes) {
  for (const char* d : {"a", "a.b", "a.peer", "ab"}) {
    Touch(DeviceShmDir(dir_, d) + "/queues");
    Touch(DeviceShmDir(dir_, d) + "/journal");
    fs::create_directories(DeviceEnvDir(dir_, d));
  }
  Touch(DeviceShmDir(dir_, "a") + "/peer.x");
  Touch(DeviceShmDir(dir_, "a.peer") + "/peer.y");
  Touch(ShmDir(dir_) + "/a.queues");    // a legacy file of "a"
  Touch(ShmDir(dir_) + "/a.b.queues");  // a legacy file of "a.b"

  ASSERT_TRUE(RemoveDeviceState(dir_, "a").ok());
  EXPECT_FALSE(fs::exists(DeviceShmDir(dir_, "a")));
  EXPECT_FALSE(fs::exists(DeviceEnvDir(dir_, "a")));
  EXPECT_FALSE(fs::exists(ShmDir(dir_) + "/a.queues"));
  for (const char* d : {"a.b", "a.peer", "ab"}) {
    EXPECT_TRUE(fs::exists(DeviceShmDir(dir_, d) + "/queues")) << d;
    EXPECT_TRUE(fs::exists(DeviceEnvDir(dir_, d))) << d;
  }
  EXPECT_TRUE(fs::exists(DeviceShmDir(dir_, "a.peer") + "/peer.y"));
  EXPECT_TRUE(fs::exists(ShmDir(dir_) + "/a.b.queues"));
}

TEST_F(StateDirTest, LegacyFilesMoveInWithoutOverwriting) {
  Touch(ShmDir(dir_) + "/d.queues", "old queues");
  Touch(ShmDir(dir_) + "/d.journal", "old journal");
  Touch(DeviceShmDir(dir_, "d") + "/journal", "new journal");
  Touch(ShmDir(dir_) + "/d.b.queues", "another device");
  ASSERT_TRUE(MigrateLegacyShmFiles(dir_, "d").ok());
  EXPECT_EQ(Read(DeviceShmDir(dir_, "d") + "/queues"), "old queues");
  EXPECT_FALSE(fs::exists(ShmDir(dir_) + "/d.queues"));
  EXPECT_EQ(Read(DeviceShmDir(dir_, "d") + "/journal"), "new journal");
  EXPECT_EQ(Read(ShmDir(dir_) + "/d.b.queues"), "another device");
  // Nothing to move: fine, and the directory exists.
  ASSERT_TRUE(MigrateLegacyShmFiles(dir_, "e").ok());
  EXPECT_TRUE(fs::is_directory(DeviceShmDir(dir_, "e")));
  EXPECT_FALSE(MigrateLegacyShmFiles(dir_, "../x").ok());
}

}  // namespace
}  // namespace emud::state_store
