// Test helpers: an ExampleDevice served by a Server on its own event-loop
// thread, over a real UNIX socket in the test's temporary directory.
#ifndef EMUD_VFIO_USER_TEST_HARNESS_H_
#define EMUD_VFIO_USER_TEST_HARNESS_H_

#include <dirent.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/event_loop.h"
#include "gtest/gtest.h"
#include "vfio_user/client.h"
#include "vfio_user/examples/example_device.h"
#include "vfio_user/session.h"

namespace emud::vfio_user::testing {

// Short enough for sun_path: EMUD_TEST_TMPDIR (/dev/shm in .bazelrc), else /tmp.
inline std::string TempDir() {
  const char* d = std::getenv("EMUD_TEST_TMPDIR");
  return d && *d ? d : "/tmp";
}

// Unique even across Bazel sandboxes (whose pid namespaces repeat pids).
inline std::string UniqueSocketPath(absl::string_view tag) {
  static std::atomic<int> n{0};
  static const unsigned salt = std::random_device{}();
  return absl::StrCat(TempDir(), "/vfu-", tag, "-", ::getpid(), "-", salt, "-", n++, ".sock");
}

inline int CountOpenFds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return -1;
  while (readdir(d)) ++n;
  ::closedir(d);
  return n;
}

inline UniqueFd MakeMemfd(size_t size) {
  UniqueFd fd(::memfd_create("vfu-test-guest", MFD_CLOEXEC));
  if (fd.valid() && ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) fd.reset();
  return fd;
}

inline UniqueFd MakeEventfd() { return UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)); }

// Reads (and resets) an eventfd counter; 0 if nothing was signalled.
inline uint64_t DrainEventfd(int fd) {
  uint64_t v = 0;
  if (::read(fd, &v, sizeof(v)) != sizeof(v)) return 0;
  return v;
}

class ServerHarness {
 public:
  explicit ServerHarness(SessionOptions options = {}, absl::string_view tag = "srv") {
    path_ = UniqueSocketPath(tag);
    auto loop = EventLoop::Create();
    EXPECT_TRUE(loop.ok());
    loop_ = std::move(*loop);
    auto dev = ExampleDevice::Create();
    EXPECT_TRUE(dev.ok());
    device_ = std::move(*dev);
    auto server = Server::Listen(path_, device_.get(), loop_.get(), std::move(options));
    EXPECT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    thread_ = std::thread([this] { (void)loop_->Run(); });
  }
  ~ServerHarness() { Stop(); }

  void Stop() {
    if (thread_.joinable()) {
      loop_->Stop();
      thread_.join();
    }
  }

  // A connected client that has done VERSION (unless `handshake` is false).
  std::unique_ptr<Client> Connect(bool handshake = true) {
    auto c = Client::Connect(path_);
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return nullptr;
    (*c)->set_timeout(absl::Seconds(10));
    if (handshake) {
      auto v = (*c)->Version();
      EXPECT_TRUE(v.ok()) << v.status();
    }
    return std::move(*c);
  }

  const std::string& path() const { return path_; }
  ExampleDevice& device() { return *device_; }
  // Only read these after a round trip (the loop thread is idle then) or
  // after Stop().
  Session& session() { return server_->session(); }

 private:
  std::string path_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<ExampleDevice> device_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

}  // namespace emud::vfio_user::testing

#endif  // EMUD_VFIO_USER_TEST_HARNESS_H_
