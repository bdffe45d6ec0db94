// Faults an operator meets, on emud's default flags with the real worker:
// a full state tmpfs at create, at commit (a guest attaching) and at delete
// (a small tmpfs mounted by the test: root), the cause of a worker's failed
// start in last_error, and socket paths outside the allowed directories.
#include <fcntl.h>
#include <signal.h>
#include <netinet/in.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <set>
#include <fstream>
#include <iterator>
#include <future>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "proto/reflection_v1.grpc.pb.h"
#include "base/unique_fd.h"
#include "tests/integration/emud_harness.h"

namespace emud::testing {
namespace {

namespace v1 = emud::v1;

// A tmpfs of `size` mounted on `dir`, unmounted (lazily, so a straggler
// cannot keep it) on every path out of the test.
class SmallTmpfs {
 public:
  SmallTmpfs(const std::string& dir, const std::string& size) : dir_(dir) {
    std::filesystem::create_directories(dir);
    mounted_ = ::mount("tmpfs", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV,
                       absl::StrCat("size=", size, ",mode=0755").c_str()) == 0;
    err_ = errno;
  }
  ~SmallTmpfs() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  int error() const { return err_; }
  uint64_t FreeBytes() const {
    struct statvfs v {};
    ::statvfs(dir_.c_str(), &v);
    return uint64_t{v.f_bavail} * v.f_frsize;
  }
  // Fills the filesystem until not one more page can be allocated.
  void Fill() {
    for (int i = 0;; ++i) {
      uint64_t free_bytes = FreeBytes();
      if (free_bytes == 0) break;
      int fd = ::open(absl::StrCat(dir_, "/filler", i).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      ASSERT_GE(fd, 0);
      int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(free_bytes));
      if (rc != 0) (void)::posix_fallocate(fd, 0, 4096);
      ::close(fd);
      if (i > 64) break;
    }
    EXPECT_LT(FreeBytes(), 4096u);
  }
  void Free() {
    for (int i = 0; i <= 65; ++i) ::unlink(absl::StrCat(dir_, "/filler", i).c_str());
  }

 private:
  std::string dir_;
  bool mounted_ = false;
  int err_ = 0;
};

std::unique_ptr<EmudProcess> StartEmud(const std::string& state_dir) {
  EmudProcess::Options o;
  o.state_dir = state_dir;
  o.worker_binary = Runfile("dataplane/emud-worker");
  o.extra_flags = {"--stop-workers-on-exit"};  // no worker outlives the test
  auto e = EmudProcess::Start(o);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? std::move(*e) : nullptr;
}

void ExpectNoSigbus(EmudProcess& e) {
  std::string log = e.Log();
  EXPECT_FALSE(absl::StrContains(log, "signal 7")) << log;
  EXPECT_FALSE(absl::StrContains(log, "Bus error")) << log;
}

class FullTmpfsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root (CI runs as root)";
    fs_ = std::make_unique<SmallTmpfs>(dir_.path() + "/fs", "8m");
    ASSERT_TRUE(fs_->mounted()) << "mount tmpfs: " << std::strerror(fs_->error());
    state_ = dir_.path() + "/fs/state";
    emud_ = StartEmud(state_);
    ASSERT_NE(emud_, nullptr);
  }
  void TearDown() override {
    if (emud_ != nullptr) {
      ExpectNoSigbus(*emud_);
      emud_->Stop(SIGTERM);
      emud_.reset();
    }
    fs_.reset();  // unmounts
  }
  int Guest(const std::string& socket) {
    CommandResult g = RunCommand({Runfile("tests/guest/emu-guest"), "--socket", socket,
                                  "--queues", "2", "--json"});
    guest_out_ = g.out + g.err;
    return g.exit_code;
  }

  TempStateDir dir_{"full"};
  std::unique_ptr<SmallTmpfs> fs_;
  std::string state_;
  std::unique_ptr<EmudProcess> emud_;
  std::string guest_out_;
};

TEST_F(FullTmpfsTest, CreateIsRefusedClearlyAndLeavesNothingBehind) {
  CommandResult c = emud_->Emuctl({"create-device", "--type", "avf", "--name", "a", "--wait"});
  ASSERT_EQ(c.exit_code, 0) << c.err << emud_->Log();
  fs_->Fill();
  c = emud_->Emuctl({"create-device", "--type", "avf", "--name", "b", "--queues", "16", "--wait"});
  EXPECT_EQ(c.exit_code, 9) << c.out << c.err;  // RESOURCE_EXHAUSTED: other server error
  EXPECT_TRUE(absl::StrContains(c.err, "is full")) << c.err;
  EXPECT_TRUE(absl::StrContains(c.err, "free space")) << c.err;
  EXPECT_EQ(GetDevice(emud_->stub(), "b").status().code(), absl::StatusCode::kNotFound);
  for (const char* sub : {"/sockets/b", "/devices/b", "/shm/b"}) {
    EXPECT_FALSE(std::filesystem::exists(state_ + sub)) << sub;
  }
  // The running device is untouched, and once there is room b can be made.
  EXPECT_EQ(GetDevice(emud_->stub(), "a")->status().phase(), v1::PHASE_LISTENING);
  fs_->Free();
  c = emud_->Emuctl({"create-device", "--type", "avf", "--name", "b", "--queues", "16", "--wait"});
  EXPECT_EQ(c.exit_code, 0) << c.err;
}

// A worker that cannot allocate its mapped files (the queue state here)
// exits with the reason, is retried at a pace without ever going FAILED, and
// serves as soon as there is room.
TEST_F(FullTmpfsTest, WorkerStartOnAFullTmpfsWaitsForRoomWithoutSigbusOrFailed) {
  CommandResult c = emud_->Emuctl({"create-device", "--type", "avf", "--name", "a", "--queues",
                                   "16", "--wait"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  auto dev = GetDevice(emud_->stub(), "a");
  ASSERT_TRUE(dev.ok());
  // The idle device's successor must create its queue state anew (as after
  // a first start): remove it, fill the tmpfs, kill the worker.
  ASSERT_EQ(::unlink((state_ + "/shm/a/queues").c_str()), 0);
  fs_->Fill();
  ASSERT_EQ(::kill(dev->status().worker_pid(), SIGKILL), 0);
  ASSERT_TRUE(WaitFor(
      [&] {
        auto d = GetDevice(emud_->stub(), "a");
        return d.ok() && d->status().restart_count() >= 7;  // > --crash-loop-restarts (5)
      },
      absl::Seconds(30)));
  dev = GetDevice(emud_->stub(), "a");
  EXPECT_NE(dev->status().phase(), v1::PHASE_FAILED);
  EXPECT_TRUE(absl::StrContains(dev->status().last_error(), "queue state")) << dev->status().last_error();
  EXPECT_TRUE(absl::StrContains(dev->status().last_error(), "No space left on device"))
      << dev->status().last_error();
  EXPECT_TRUE(absl::StrContains(dev->status().last_error(), "until there is room"))
      << dev->status().last_error();
  fs_->Free();
  ASSERT_TRUE(WaitPhase(emud_->stub(), "a", v1::PHASE_LISTENING, absl::Seconds(10)));
  EXPECT_EQ(Guest(dev->spec().socket_path()), 0) << guest_out_;
  EXPECT_TRUE(absl::StrContains(guest_out_, "\"link_up\": true")) << guest_out_;
}

// A guest attaching while the tmpfs is full: its requests' commits fail, the
// worker leaves each request in the socket and exits (never SIGBUS, never a
// disconnect); once there is room the guest's bring-up completes.
TEST_F(FullTmpfsTest, CommitOnAFullTmpfsWaitsForRoomAndTheGuestGoesOn) {
  CommandResult c = emud_->Emuctl({"create-device", "--type", "avf", "--name", "a", "--queues",
                                   "2", "--wait"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  auto dev = GetDevice(emud_->stub(), "a");
  ASSERT_TRUE(dev.ok());
  fs_->Fill();
  auto guest = std::async(std::launch::async, [&] { return Guest(dev->spec().socket_path()); });
  bool saw_full = WaitFor(
      [&] {
        auto d = GetDevice(emud_->stub(), "a");
        return d.ok() && absl::StrContains(d->status().last_error(), "RESOURCE_EXHAUSTED");
      },
      absl::Seconds(30));
  fs_->Free();
  EXPECT_EQ(guest.get(), 0) << guest_out_ << emud_->Log();
  EXPECT_TRUE(absl::StrContains(guest_out_, "\"link_up\": true")) << guest_out_;
  dev = GetDevice(emud_->stub(), "a");
  EXPECT_NE(dev->status().phase(), v1::PHASE_FAILED);
  // A first connection grows the device's LMDB file (session records, DMA
  // windows): the commit path was exercised, not bypassed by free pages.
  EXPECT_TRUE(saw_full) << emud_->Log();
  EXPECT_TRUE(absl::StrContains(dev->status().last_error(), "full")) << dev->status().last_error();
  EXPECT_TRUE(absl::StrContains(emud_->Log(), ": commit: RESOURCE_EXHAUSTED")) << emud_->Log();
}

TEST_F(FullTmpfsTest, DeleteOnAFullTmpfsSucceedsAndFreesTheState) {
  for (const char* n : {"a", "b"}) {
    CommandResult c = emud_->Emuctl({"create-device", "--type", "avf", "--name", n, "--wait"});
    ASSERT_EQ(c.exit_code, 0) << c.err;
  }
  fs_->Fill();
  CommandResult c = emud_->Emuctl({"delete", "a", "--force"});
  EXPECT_EQ(c.exit_code, 0) << c.err << emud_->Log();
  EXPECT_EQ(GetDevice(emud_->stub(), "a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(std::filesystem::exists(state_ + "/devices/a"));
  EXPECT_FALSE(std::filesystem::exists(state_ + "/shm/a"));
  // The other device still serves; deleting it works too.
  auto b = GetDevice(emud_->stub(), "b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->status().phase(), v1::PHASE_LISTENING);
  EXPECT_GT(b->status().worker_pid(), 0);
  c = emud_->Emuctl({"delete", "b"});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  fs_->Free();
}

// The reason a worker could not start is the device's last_error and travels
// in its events (emuctl --wait prints the FAILED event's last_error).
TEST(StartFailureTest, CauseOfAFailedStartIsInLastError) {
  if (::access("/dev/net/tun", R_OK | W_OK) != 0 || ::geteuid() != 0) {
    GTEST_SKIP() << "needs /dev/net/tun and root (CI runs as root)";
  }
  TempStateDir dir("startfail");
  auto e = StartEmud(dir.path() + "/state");
  ASSERT_NE(e, nullptr);
  CommandResult c = e->Emuctl({"create-device", "--type", "avf", "--name", "t", "--backend",
                               "tap:lo", "--wait", "--timeout", "30"});
  EXPECT_EQ(c.exit_code, 10) << c.out << c.err;
  EXPECT_TRUE(absl::StrContains(c.err, "TUNSETIFF")) << c.err;
  auto d = GetDevice(e->stub(), "t");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->status().phase(), v1::PHASE_FAILED);
  EXPECT_TRUE(absl::StrContains(d->status().last_error(), "TUNSETIFF lo")) << d->status().last_error();
  EXPECT_TRUE(absl::StrContains(d->status().last_error(), "emuctl reset t")) << d->status().last_error();
  ExpectNoSigbus(*e);
  e->Stop(SIGTERM);
}

// A second emud on the same state directory refuses to start and names the
// running one; once that one is gone, the directory is free again at once
// (the lock is the process's own: its spawned workers never hold it).
TEST(StateDirLockTest, SecondEmudIsRefusedAndNamesTheFirst) {
  TempStateDir dir("lock");
  EmudProcess::Options o;
  o.state_dir = dir.path() + "/state";
  o.worker_binary = Runfile("dataplane/emud-worker");
  o.metrics = false;
  auto first = EmudProcess::Start(o);
  ASSERT_TRUE(first.ok()) << first.status();
  CommandResult c = (*first)->Emuctl({"create-device", "--type", "avf", "--name", "l", "--wait"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  CommandResult second = RunCommand({Runfile("server/emud"), "--state-dir=" + o.state_dir});
  EXPECT_EQ(second.exit_code, 2) << second.out << second.err;
  EXPECT_TRUE(absl::StrContains(second.err, absl::StrCat("another emud (pid ", (*first)->pid(), ")")))
      << second.err;
  EXPECT_TRUE(absl::StrContains(second.err, "--takeover")) << second.err;
  // Killed outright, its worker still running: the next emud starts and
  // adopts the device.
  (*first)->Stop(SIGKILL);
  auto next = EmudProcess::Start(o);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_TRUE(WaitPhase((*next)->stub(), "l", v1::PHASE_LISTENING, absl::Seconds(20))) << (*next)->Log();
  c = (*next)->Emuctl({"delete", "l"});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  (*next)->Stop(SIGTERM);
}

// A listening UNIX socket at `path`, bound and listening in this process.
emud::UniqueFd ListenAt(const std::string& path) {
  emud::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (!fd.valid() || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(fd.get(), 4) != 0) {
    return emud::UniqueFd();
  }
  return fd;
}

// emud's gRPC socket: one that a live process listens on is refused before
// any worker is touched, with that process named. One whose listener is gone
// but which still accepts connections - an emud killed while it spawned a
// worker leaves its socket open in the child until the child's exec - is
// replaced: the next emud starts (the chaos suite's emud kills met this).
TEST(GrpcSocketTest, ALiveListenerIsRefusedAndAnOrphanedOneIsReplaced) {
  TempStateDir dir("grpcsock");
  const std::string state = dir.path() + "/state";
  std::filesystem::create_directories(state);
  const std::string sock = state + "/emud.sock";
  {
    emud::UniqueFd live = ListenAt(sock);
    ASSERT_TRUE(live.valid()) << std::strerror(errno);
    CommandResult c = RunCommand({Runfile("server/emud"), "--state-dir=" + state,
                                  "--worker-binary=" + Runfile("dataplane/emud-worker"),
                                  "--metrics-listen="});
    EXPECT_EQ(c.exit_code, 2) << c.out << c.err;
    EXPECT_TRUE(absl::StrContains(c.err, absl::StrCat("another server is listening on ", sock,
                                                      " (pid ", ::getpid(), ")")))
        << c.err;
    EXPECT_TRUE(std::filesystem::exists(sock)) << "a live server's socket was removed";
  }
  std::filesystem::remove(sock);
  // The orphan: a process listens, forks a child that keeps the socket (as
  // a spawn before its exec would), and dies; the child lives on.
  int ready[2];
  ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
  pid_t listener = ::fork();
  ASSERT_GE(listener, 0);
  if (listener == 0) {
    emud::UniqueFd l = ListenAt(sock);
    if (!l.valid()) ::_exit(1);
    pid_t holder = ::fork();
    if (holder < 0) ::_exit(1);
    if (holder == 0) {
      ::close(ready[0]);
      const pid_t me = ::getpid();
      if (::write(ready[1], &me, sizeof(me)) != sizeof(me)) ::_exit(1);
      for (;;) ::pause();  // holds `l` until killed
    }
    ::_exit(0);
  }
  ::close(ready[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(listener, &status, 0), listener);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  pid_t holder = 0;
  ASSERT_EQ(::read(ready[0], &holder, sizeof(holder)), ssize_t(sizeof(holder)))
      << "the socket's holder did not start";
  ::close(ready[0]);
  absl::Cleanup kill_holder = [holder] { ::kill(holder, SIGKILL); };
  {
    // The path still accepts connections: nothing but the holder listens.
    emud::UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, sock.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  EmudProcess::Options o;
  o.state_dir = state;
  o.worker_binary = Runfile("dataplane/emud-worker");
  o.metrics = false;
  auto e = EmudProcess::Start(o);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE(absl::StrContains((*e)->Log(), absl::StrCat("(pid ", listener, ") is gone")))
      << (*e)->Log();
  CommandResult c = (*e)->Emuctl({"create-device", "--type", "avf", "--name", "g", "--wait"});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  c = (*e)->Emuctl({"delete", "g"});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  (*e)->Stop(SIGTERM);
}

TEST(SocketRootsTest, SocketPathOutsideTheAllowedRootsIsRefused) {
  TempStateDir dir("roots");
  auto e = StartEmud(dir.path() + "/state");
  ASSERT_NE(e, nullptr);
  std::string outside = dir.path() + "/elsewhere/deep/a/b/x.sock";
  CommandResult c = e->Emuctl({"create-device", "--type", "avf", "--name", "x", "--socket", outside});
  EXPECT_EQ(c.exit_code, 5) << c.out << c.err;
  EXPECT_TRUE(absl::StrContains(c.err, "outside the directories")) << c.err;
  EXPECT_TRUE(absl::StrContains(c.err, "--socket-roots")) << c.err;
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/elsewhere"));  // nothing created
  EXPECT_EQ(GetDevice(e->stub(), "x").status().code(), absl::StatusCode::kNotFound);
  e->Stop(SIGTERM);

  // Allowed with --socket-roots, and the device serves there.
  EmudProcess::Options o;
  o.state_dir = dir.path() + "/state";
  o.worker_binary = Runfile("dataplane/emud-worker");
  o.extra_flags = {"--stop-workers-on-exit", "--socket-roots=" + dir.path() + "/elsewhere"};
  auto e2 = EmudProcess::Start(o);
  ASSERT_TRUE(e2.ok()) << e2.status();
  c = (*e2)->Emuctl({"create-device", "--type", "avf", "--name", "x", "--socket", outside, "--wait"});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  struct stat st {};
  EXPECT_EQ(::stat(outside.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  (*e2)->Stop(SIGTERM);
}

// The scrape an operator's Prometheus takes after guest traffic and a worker
// kill passes Prometheus's own linter (Debian's prometheus package, installed
// by tools/setup.sh).
TEST(MetricsTest, ScrapeAfterTrafficAndAWorkerKillPassesPromtool) {
  const char* promtool = "/usr/bin/promtool";
  ASSERT_EQ(::access(promtool, X_OK), 0) << "promtool missing: run tools/setup.sh (package prometheus)";
  TempStateDir dir("promtool");
  auto e = StartEmud(dir.path() + "/state");
  ASSERT_NE(e, nullptr);
  CommandResult c = e->Emuctl({"create-device", "--type", "avf", "--name", "nic0", "--queues",
                               "2", "--wait"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  auto dev = GetDevice(e->stub(), "nic0");
  ASSERT_TRUE(dev.ok());
  CommandResult g = RunCommand({Runfile("tests/guest/emu-guest"), "--socket",
                                dev->spec().socket_path(), "--queues", "2", "--json"});
  ASSERT_EQ(g.exit_code, 0) << g.out << g.err;
  ASSERT_EQ(::kill(dev->status().worker_pid(), SIGKILL), 0);
  ASSERT_TRUE(WaitFor(
      [&] {
        auto d = GetDevice(e->stub(), "nic0");
        return d.ok() && d->status().restart_count() == 1 &&
               d->status().phase() == v1::PHASE_LISTENING;
      },
      absl::Seconds(10)));
  auto body = HttpGet(e->metrics_url());
  ASSERT_TRUE(body.ok()) << body.status();
  // Traffic and the kill are in the scrape.
  EXPECT_TRUE(absl::StrContains(*body, "emud_worker_restarts_total{device=\"nic0\"} 1")) << *body;
  EXPECT_TRUE(absl::StrContains(*body, "emud_vfio_user_messages_total{")) << *body;
  // A device counter from worker_api/counters.h, through the status record:
  // the guest's bring-up sent virtchnl requests.
  EXPECT_TRUE(absl::StrContains(*body, "emud_device_vc_messages_total{device=\"nic0\"} ")) << *body;
  EXPECT_FALSE(absl::StrContains(*body, "emud_device_vc_messages_total{device=\"nic0\"} 0\n")) << *body;
  std::string file = dir.path() + "/scrape.txt";
  {
    FILE* f = std::fopen(file.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fwrite(body->data(), 1, body->size(), f);
    std::fclose(f);
  }
  CommandResult p = RunCommand({"/bin/sh", "-c", absl::StrCat(promtool, " check metrics < ", file)});
  EXPECT_EQ(p.exit_code, 0) << p.out << p.err;
  EXPECT_EQ(p.out + p.err, "") << "promtool findings:\n" << p.out << p.err;
  e->Stop(SIGTERM);
}

TEST(EmuctlTest, VersionSuggestionsAndNameOutput) {
  const std::string emuctl = Runfile("ctl/emuctl");
  CommandResult v = RunCommand({emuctl, "version", "--client"});
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_EQ(v.out, "Client Version: 0.1.0\n");
  CommandResult typo = RunCommand({emuctl, "create-devcie", "--name", "x"});
  EXPECT_EQ(typo.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(typo.err, "did you mean 'create-device'?")) << typo.err;
  typo = RunCommand({emuctl, "lst"});
  EXPECT_EQ(typo.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(typo.err, "did you mean 'list'?")) << typo.err;
  typo = RunCommand({emuctl, "frobnicate"});
  EXPECT_EQ(typo.exit_code, 1);
  EXPECT_FALSE(absl::StrContains(typo.err, "did you mean")) << typo.err;

  TempStateDir dir("emuctl");
  auto e = StartEmud(dir.path() + "/state");
  ASSERT_NE(e, nullptr);
  for (const char* n : {"b", "a"}) {
    ASSERT_EQ(e->Emuctl({"create-device", "--type", "avf", "--name", n}).exit_code, 0);
  }
  CommandResult names = e->Emuctl({"list", "-o", "name"});
  EXPECT_EQ(names.exit_code, 0) << names.err;
  EXPECT_EQ(names.out, "device/a\ndevice/b\n");
  names = e->Emuctl({"get", "a", "-o", "name"});
  EXPECT_EQ(names.exit_code, 0) << names.err;
  EXPECT_EQ(names.out, "device/a\n");
  EXPECT_EQ(e->Emuctl({"get", "nope", "-o", "name"}).exit_code, 3);
  e->Stop(SIGTERM);
}

TEST(FlagsTest, HelpVersionFlagfileAndABusyMetricsPort) {
  const std::string emud = Runfile("server/emud");
  CommandResult h = RunCommand({emud, "--help"});
  EXPECT_EQ(h.exit_code, 0) << h.err;
  for (const char* f : {"--state-dir", "--grpc-listen", "--metrics-listen", "--socket-roots",
                        "--fd-keeper", "--takeover", "--log-format", "--log-level", "-v",
                        "--flagfile=FILE", "--version"}) {
    EXPECT_TRUE(absl::StrContains(h.out, absl::StrCat("\n  ", f))) << f << "\n" << h.out;
  }
  EXPECT_FALSE(absl::StrContains(h.out, "No flags matched"));
  CommandResult v = RunCommand({emud, "--version"});
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_EQ(v.out, "emud 0.1.0\n");
  CommandResult ih = RunCommand({Runfile("server/emud-init"), "--help"});
  EXPECT_EQ(ih.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(ih.out, "usage: emud-init")) << ih.out;

  // A port another process listens on: emud names it and the flag to pass.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin_port);
  TempStateDir dir("flags");
  // Flags from a file, dashed as the docs write them.
  const std::string flagfile = dir.path() + "/emud.flags";
  {
    std::ofstream(flagfile) << "# emud\n--state-dir=" << dir.path() << "/state\n"
                            << "--metrics-listen=127.0.0.1:" << port << "\n"
                            << "--worker-binary=" << Runfile("dataplane/emud-worker") << "\n";
  }
  CommandResult busy = RunCommand({emud, "--flagfile=" + flagfile});
  ::close(fd);
  EXPECT_EQ(busy.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(busy.err, absl::StrCat("metrics port ", port,
                                                       " on 127.0.0.1 is in use")))
      << busy.err;
  EXPECT_TRUE(absl::StrContains(busy.err, "pass --metrics-listen HOST:PORT")) << busy.err;
  EXPECT_FALSE(absl::StrContains(busy.err, "CivetServer")) << busy.err;
}

// systemd's side of Type=notify: a datagram socket named by NOTIFY_SOCKET.
TEST(SystemdTest, ReadyAndStoppingAreNotifiedAndJsonLogLinesParse) {
  TempStateDir dir("notify");
  const std::string sock = dir.path() + "/notify.sock";
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, sock.c_str(), sizeof(a.sun_path) - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  EmudProcess::Options o;
  o.state_dir = dir.path() + "/state";
  o.worker_binary = Runfile("dataplane/emud-worker");
  o.extra_flags = {"--stop-workers-on-exit", "--log-format=json", "-v"};
  o.extra_env = {"NOTIFY_SOCKET=" + sock};
  auto e = EmudProcess::Start(o);
  ASSERT_TRUE(e.ok()) << e.status();
  char buf[512];
  ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);  // sent before "ready" was logged
  ASSERT_GT(n, 0) << "no sd_notify datagram";
  EXPECT_TRUE(absl::StartsWith(std::string(buf, n), "READY=1\n")) << std::string(buf, n);
  ASSERT_EQ((*e)->Emuctl({"create-device", "--type", "avf", "--name", "j1", "--wait"}).exit_code,
            0);
  // The worker does not inherit NOTIFY_SOCKET.
  CommandResult pid = (*e)->Emuctl({"get", "j1", "-o", "json"});
  std::string env;
  size_t at = pid.out.find("\"workerPid\": ");
  ASSERT_NE(at, std::string::npos) << pid.out;
  const int wpid = std::atoi(pid.out.c_str() + at + 13);
  {
    std::ifstream in(absl::StrCat("/proc/", wpid, "/environ"));
    env.assign(std::istreambuf_iterator<char>(in), {});
  }
  EXPECT_FALSE(env.empty());
  EXPECT_FALSE(absl::StrContains(env, "NOTIFY_SOCKET=")) << "worker inherited NOTIFY_SOCKET";
  EXPECT_TRUE(absl::StrContains(env, "EMUD_LOG_FORMAT=json"));
  (*e)->Stop(SIGTERM);
  n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
  EXPECT_EQ(n > 0 ? std::string(buf, n) : "", "STOPPING=1");
  ::close(fd);

  // Every line is a JSON object with time and level; the worker's carry
  // their device.
  bool worker_line = false, device_line = false;
  for (absl::string_view line : absl::StrSplit((*e)->Log(), '\n', absl::SkipEmpty())) {
    google::protobuf::Struct st;
    auto s = google::protobuf::util::JsonStringToMessage(std::string(line), &st);
    ASSERT_TRUE(s.ok()) << s.ToString() << ": " << line;
    EXPECT_EQ(st.fields().count("time"), 1u) << line;
    EXPECT_EQ(st.fields().count("level"), 1u) << line;
    if (st.fields().at("program").string_value() == "emud-worker") {
      worker_line = true;
      EXPECT_EQ(st.fields().at("device").string_value(), "j1") << line;
    }
    if (st.fields().count("device") && st.fields().at("program").string_value() == "emud") {
      device_line = true;
    }
  }
  EXPECT_TRUE(worker_line) << (*e)->Log();
  EXPECT_TRUE(device_line) << (*e)->Log();
}

TEST(EmuctlTest, CompletionWatchNotFoundPermissionAndReconnect) {
  const std::string emuctl = Runfile("ctl/emuctl");
  CommandResult c = RunCommand({emuctl, "completion", "bash"});
  EXPECT_EQ(c.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(c.out, "complete -F _emuctl emuctl")) << c.out;
  EXPECT_TRUE(absl::StrContains(c.out, "create-device)")) << c.out;
  EXPECT_TRUE(absl::StrContains(c.out, "--backend")) << c.out;
  CommandResult z = RunCommand({emuctl, "completion", "zsh"});
  EXPECT_EQ(z.exit_code, 0);
  EXPECT_TRUE(absl::StartsWith(z.out, "autoload -U +X bashcompinit && bashcompinit\n"));
  EXPECT_EQ(RunCommand({"/bin/bash", "-n", "-c", c.out}).exit_code, 0);
  EXPECT_EQ(RunCommand({emuctl, "completion", "fish"}).exit_code, 1);
  CommandResult help = RunCommand({emuctl, "create-device", "--help"});
  EXPECT_FALSE(absl::StrContains(help.out, "UINT=0")) << help.out;

  TempStateDir dir("watch");
  EmudProcess::Options o;
  o.state_dir = dir.path() + "/state";
  o.extra_flags = {"--stop-workers-on-exit"};
  o.metrics = false;
  auto e = EmudProcess::Start(o);
  ASSERT_TRUE(e.ok()) << e.status();
  CommandResult w = (*e)->Emuctl({"watch", "nope", "--timeout", "5"});
  EXPECT_EQ(w.exit_code, 3) << w.err;
  EXPECT_TRUE(absl::StrContains(w.err, "device nope not found")) << w.err;

  // Not the socket's owner nor in its group (0660 root:root): exit 8.
  if (::geteuid() == 0 && ::access("/usr/bin/setpriv", X_OK) == 0) {
    ::chmod(dir.path().c_str(), 0755);
    ::chmod(o.state_dir.c_str(), 0755);
    CommandResult denied =
        RunCommand({"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                    emuctl, "--server", (*e)->grpc_address(), "list"});
    EXPECT_EQ(denied.exit_code, 8) << denied.err;
    EXPECT_TRUE(absl::StrContains(denied.err, "permission denied")) << denied.err;
  }

  // watch survives an emud restart: it reconnects and shows what is there.
  ASSERT_EQ((*e)->Emuctl({"create-device", "--type", "avf", "--name", "before"}).exit_code, 0);
  const std::string out = dir.path() + "/watch.out";
  auto watched = [&](const std::string& what) {
    std::string text;
    for (absl::Time until = absl::Now() + absl::Seconds(30);
         !absl::StrContains(text, what) && absl::Now() < until;) {
      ::usleep(20 * 1000);
      std::ifstream in(out);
      text.assign(std::istreambuf_iterator<char>(in), {});
    }
    return text;
  };
  pid_t watcher = ::fork();
  if (watcher == 0) {
    int f = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(f, 1);
    ::dup2(f, 2);
    ::execl(emuctl.c_str(), emuctl.c_str(), "--server", (*e)->grpc_address().c_str(), "watch",
            "--timeout", "120", "-o", "json", nullptr);
    ::_exit(127);
  }
  // Streaming (its initial event printed) before emud goes: a watch that
  // never reached emud fails instead of reconnecting, so a fixed sleep here
  // failed when a loaded machine started emuctl late.
  if (const std::string first = watched("\"before\""); !absl::StrContains(first, "\"before\"")) {
    ::kill(watcher, SIGTERM);
    ::waitpid(watcher, nullptr, 0);
    FAIL() << "the watch printed no initial event: " << first;
  }
  (*e)->Stop(SIGTERM);
  auto e2 = EmudProcess::Start(o);
  ASSERT_TRUE(e2.ok()) << e2.status();
  ASSERT_EQ((*e2)->Emuctl({"create-device", "--type", "avf", "--name", "after"}).exit_code, 0);
  const std::string text = watched("\"after\"");
  ::kill(watcher, SIGTERM);
  ::waitpid(watcher, nullptr, 0);
  EXPECT_TRUE(absl::StrContains(text, "reconnecting")) << text;
  EXPECT_TRUE(absl::StrContains(text, "\"after\"")) << text;
  (*e2)->Stop(SIGTERM);
}

TEST(EmuctlTest, VersionShowsTheServersAndSaysWhenItIsUnreachable) {
  const std::string emuctl = Runfile("ctl/emuctl");
  // No emud: the client's version, a note, and exit 2 (emud unreachable).
  CommandResult v = RunCommand({emuctl, "--server", "unix:///nonexistent/emud.sock", "version"});
  EXPECT_EQ(v.exit_code, 2) << v.err;
  EXPECT_EQ(v.out, "Client Version: 0.1.0\n");
  EXPECT_TRUE(absl::StrContains(v.err, "cannot reach emud at unix:///nonexistent/emud.sock"))
      << v.err;
  EXPECT_TRUE(absl::StrContains(v.err, "the server version is unknown")) << v.err;

  TempStateDir dir("version");
  auto e = StartEmud(dir.path() + "/state");
  ASSERT_NE(e, nullptr);
  ASSERT_EQ(e->Emuctl({"create-device", "--type", "avf", "--name", "a"}).exit_code, 0);

  // The RPC.
  grpc::ClientContext ctx;
  v1::ServerInfo info;
  grpc::Status s = e->stub()->GetServerInfo(&ctx, v1::GetServerInfoRequest(), &info);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(info.version(), "0.1.0");
  EXPECT_TRUE(info.build_type() == "release" || info.build_type() == "debug") << info.build_type();
  EXPECT_FALSE(info.grpc_version().empty());
  EXPECT_FALSE(info.protobuf_version().empty());
  EXPECT_EQ(info.state_dir(), dir.path() + "/state");
  EXPECT_FALSE(info.socket_dir().empty());
  EXPECT_EQ(info.device_count(), 1u);
  EXPECT_EQ(info.pid(), e->pid());
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  EXPECT_GT(info.start_time().seconds(), now - 120);
  EXPECT_LE(info.start_time().seconds(), now);

  v = e->Emuctl({"version"});
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_TRUE(absl::StartsWith(v.out, "Client Version:    0.1.0\nServer Version:    0.1.0\n"))
      << v.out;
  EXPECT_TRUE(absl::StrContains(v.out, "State Directory:   " + dir.path() + "/state\n")) << v.out;
  EXPECT_TRUE(absl::StrContains(v.out, "Devices:           1\n")) << v.out;
  v = e->Emuctl({"version", "-o", "jsonpath={.clientVersion.version} {.serverInfo.deviceCount}"});
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_EQ(v.out, "0.1.0 1");
  e->Stop(SIGTERM);
}

TEST(EmuctlTest, WideAndJsonPathOutput) {
  TempStateDir dir("wide");
  auto e = StartEmud(dir.path() + "/state");
  ASSERT_NE(e, nullptr);
  ASSERT_EQ(e->Emuctl({"create-device", "--type", "avf", "--name", "b", "--doorbell", "mmap",
                       "--queues", "2"})
                .exit_code,
            0);
  ASSERT_EQ(e->Emuctl({"create-device", "--type", "avf", "--name", "a"}).exit_code, 0);

  CommandResult w = e->Emuctl({"list", "-o", "wide"});
  EXPECT_EQ(w.exit_code, 0) << w.err;
  std::vector<std::string> lines = absl::StrSplit(w.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << w.out;
  EXPECT_TRUE(absl::StartsWith(lines[0], "NAME  TYPE  PHASE")) << lines[0];
  for (const char* col : {"RESTARTS", "FAILURES", "BACKEND", "DOORBELL", "VIRTCHNL", "SOCKET",
                          "SOCKET-ACCESS", "AGE", "LAST-ERROR"}) {
    EXPECT_TRUE(absl::StrContains(lines[0], col)) << col << " in " << lines[0];
  }
  EXPECT_TRUE(absl::StrContains(lines[2], " mmap ")) << lines[2];
  EXPECT_TRUE(absl::StrContains(lines[1], " trap ")) << lines[1];
  w = e->Emuctl({"get", "b", "-o", "wide"});
  EXPECT_EQ(w.exit_code, 0) << w.err;
  lines = absl::StrSplit(w.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << w.out;
  EXPECT_TRUE(absl::StartsWith(lines[0], "NAME  TYPE  PHASE")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[0], "DOORBELL")) << lines[0];
  EXPECT_TRUE(absl::StartsWith(lines[1], "b ")) << lines[1];

  CommandResult j =
      e->Emuctl({"list", "-o", "jsonpath={range .devices[*]}{.name}\\t{.spec.queuePairs}\\n{end}"});
  EXPECT_EQ(j.exit_code, 0) << j.err;
  EXPECT_EQ(j.out, "a\t1\nb\t2\n");
  j = e->Emuctl({"list", "-o=jsonpath={.devices[*].spec.doorbell}"});
  EXPECT_EQ(j.exit_code, 0) << j.err;
  EXPECT_EQ(j.out, "DOORBELL_MODE_TRAP DOORBELL_MODE_MMAP");
  j = e->Emuctl({"get", "b", "-o", "jsonpath={.name} {.status.phase}{\"\\n\"}"});
  EXPECT_EQ(j.exit_code, 0) << j.err;
  EXPECT_TRUE(j.out == "b PHASE_CREATED\n" || j.out == "b PHASE_LISTENING\n") << j.out;

  // Bad templates are usage errors (exit 1) that say what is wrong, before
  // any call to emud.
  j = e->Emuctl({"list", "-o", "jsonpath={range .devices[*]}{.name}"});
  EXPECT_EQ(j.exit_code, 1);
  EXPECT_EQ(j.err,
            "emuctl: -o jsonpath template, offset 0: {range ...} without a closing {end}\n");
  j = e->Emuctl({"list", "-o", "jsonpath={name}"});
  EXPECT_EQ(j.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(j.err, "'name' is not a path: start it with '.'")) << j.err;
  j = e->Emuctl({"list", "-o", "jsonpath"});
  EXPECT_EQ(j.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(j.err, "needs a template")) << j.err;
  j = e->Emuctl({"list", "-o", "xml"});
  EXPECT_EQ(j.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(j.err, "is not one of table, wide, json, yaml, name")) << j.err;
  e->Stop(SIGTERM);
}

// The google.rpc.Status in a failed call's grpc-status-details-bin.
google::rpc::Status Details(const grpc::Status& s) {
  google::rpc::Status d;
  EXPECT_FALSE(s.error_details().empty()) << s.error_message();
  EXPECT_TRUE(d.ParseFromString(s.error_details()));
  return d;
}

TEST(RichErrorsTest, AWrongFieldCarriesBadRequestAndErrorInfo) {
  TempStateDir dir("details");
  auto e = StartEmud(dir.path() + "/state");
  ASSERT_NE(e, nullptr);
  v1::CreateDeviceRequest req;
  req.set_name("x");
  req.set_type(v1::DEVICE_TYPE_AVF);
  req.mutable_spec()->set_mac("zz:00:00:00:00:01");
  v1::Device d;
  grpc::ClientContext ctx;
  grpc::Status s = e->stub()->CreateDevice(&ctx, req, &d);
  ASSERT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  google::rpc::Status st = Details(s);
  EXPECT_EQ(st.code(), int(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_EQ(st.message(), s.error_message());
  ASSERT_EQ(st.details_size(), 2);
  google::rpc::BadRequest bad;
  ASSERT_TRUE(st.details(0).UnpackTo(&bad)) << st.details(0).type_url();
  EXPECT_EQ(st.details(0).type_url(), "type.googleapis.com/google.rpc.BadRequest");
  ASSERT_EQ(bad.field_violations_size(), 1);
  EXPECT_EQ(bad.field_violations(0).field(), "spec.mac");
  EXPECT_EQ(bad.field_violations(0).description(), s.error_message());
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(st.details(1).UnpackTo(&info)) << st.details(1).type_url();
  EXPECT_EQ(info.reason(), "INVALID_FIELD");
  EXPECT_EQ(info.domain(), "emud.dev");
  EXPECT_EQ(info.metadata().at("field"), "spec.mac");

  // A bad name on a lookup, and a queue count out of range.
  grpc::ClientContext ctx2;
  v1::GetDeviceRequest get;
  get.set_name("-bad");
  s = e->stub()->GetDevice(&ctx2, get, &d);
  ASSERT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  st = Details(s);
  ASSERT_TRUE(st.details(0).UnpackTo(&bad));
  EXPECT_EQ(bad.field_violations(0).field(), "name");
  req.mutable_spec()->clear_mac();
  req.mutable_spec()->set_queue_pairs(65);
  grpc::ClientContext ctx3;
  s = e->stub()->CreateDevice(&ctx3, req, &d);
  st = Details(s);
  ASSERT_TRUE(st.details(0).UnpackTo(&bad));
  EXPECT_EQ(bad.field_violations(0).field(), "spec.queue_pairs");

  // A name in use: ALREADY_EXISTS with an ErrorInfo, no BadRequest.
  ASSERT_EQ(e->Emuctl({"create-device", "--type", "avf", "--name", "x"}).exit_code, 0);
  req.mutable_spec()->set_queue_pairs(1);
  grpc::ClientContext ctx4;
  s = e->stub()->CreateDevice(&ctx4, req, &d);
  ASSERT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  st = Details(s);
  ASSERT_EQ(st.details_size(), 1);
  ASSERT_TRUE(st.details(0).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "FIELD_VALUE_IN_USE");
  EXPECT_EQ(info.metadata().at("field"), "name");

  // An error that is about no field carries no details.
  grpc::ClientContext ctx5;
  get.set_name("nope");
  s = e->stub()->GetDevice(&ctx5, get, &d);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(s.error_details().empty());

  // emuctl prints the field violation with the flag that sets the field.
  CommandResult c = e->Emuctl({"create-device", "--type", "avf", "--name", "y", "--mac", "zz"});
  EXPECT_EQ(c.exit_code, 5);
  EXPECT_EQ(c.err,
            "emuctl: spec.mac 'zz' has the wrong length; expected 6 hex octets like "
            "02:00:00:00:00:01\n"
            "  invalid field: spec.mac (emuctl --mac)\n");
  c = e->Emuctl({"create-device", "--type", "avf", "--name", "y", "--queues", "65"});
  EXPECT_EQ(c.exit_code, 5);
  EXPECT_TRUE(absl::StrContains(c.err, "  invalid field: spec.queue_pairs (emuctl --queues)\n"))
      << c.err;
  EXPECT_TRUE(absl::StrContains(c.err, "spec.queue_pairs 65 is out of range; use 1 to 64")) << c.err;
  e->Stop(SIGTERM);
}

namespace rv1 = grpc::reflection::v1;

// One request/response exchange on a v1 reflection stream.
rv1::ServerReflectionResponse Ask(
    grpc::ClientReaderWriter<rv1::ServerReflectionRequest, rv1::ServerReflectionResponse>* rw,
    const rv1::ServerReflectionRequest& req) {
  rv1::ServerReflectionResponse resp;
  EXPECT_TRUE(rw->Write(req));
  EXPECT_TRUE(rw->Read(&resp));
  return resp;
}

TEST(ReflectionTest, V1AnswersLikeV1Alpha) {
  TempStateDir dir("refl");
  auto e = StartEmud(dir.path() + "/state");
  ASSERT_NE(e, nullptr);
  auto stub = rv1::ServerReflection::NewStub(e->channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto rw = stub->ServerReflectionInfo(&ctx);

  rv1::ServerReflectionRequest req;
  req.set_host("emud");
  req.set_list_services("");
  rv1::ServerReflectionResponse resp = Ask(rw.get(), req);
  ASSERT_TRUE(resp.has_list_services_response()) << resp.DebugString();
  std::set<std::string> services;
  for (const auto& sv : resp.list_services_response().service()) services.insert(sv.name());
  for (const char* want : {"emud.v1.DeviceService", "grpc.health.v1.Health",
                           "grpc.reflection.v1.ServerReflection",
                           "grpc.reflection.v1alpha.ServerReflection"}) {
    EXPECT_EQ(services.count(want), 1u) << want << " in " << resp.DebugString();
  }
  EXPECT_TRUE(resp.original_request().has_list_services());

  // The file of a service, with the method this change added.
  req.set_file_containing_symbol("emud.v1.DeviceService");
  resp = Ask(rw.get(), req);
  ASSERT_TRUE(resp.has_file_descriptor_response()) << resp.DebugString();
  bool found = false;
  for (const std::string& bytes : resp.file_descriptor_response().file_descriptor_proto()) {
    google::protobuf::FileDescriptorProto f;
    ASSERT_TRUE(f.ParseFromString(bytes));
    if (f.package() != "emud.v1") continue;
    found = true;
    ASSERT_EQ(f.service_size(), 1);
    bool has_info = false;
    for (const auto& m : f.service(0).method()) has_info |= m.name() == "GetServerInfo";
    EXPECT_TRUE(has_info);
    // ... and the same file by its name.
    rv1::ServerReflectionRequest by_name;
    by_name.set_file_by_filename(f.name());
    rv1::ServerReflectionResponse r2 = Ask(rw.get(), by_name);
    ASSERT_TRUE(r2.has_file_descriptor_response()) << r2.DebugString();
    google::protobuf::FileDescriptorProto f2;
    ASSERT_TRUE(f2.ParseFromString(r2.file_descriptor_response().file_descriptor_proto(0)));
    EXPECT_EQ(f2.name(), f.name());
  }
  EXPECT_TRUE(found);

  // v1 describes itself.
  req.set_file_containing_symbol("grpc.reflection.v1.ServerReflection");
  resp = Ask(rw.get(), req);
  ASSERT_TRUE(resp.has_file_descriptor_response()) << resp.DebugString();

  // Extensions: emud's messages have none.
  req.set_all_extension_numbers_of_type("emud.v1.Device");
  resp = Ask(rw.get(), req);
  ASSERT_TRUE(resp.has_all_extension_numbers_response()) << resp.DebugString();
  EXPECT_EQ(resp.all_extension_numbers_response().base_type_name(), "emud.v1.Device");
  EXPECT_EQ(resp.all_extension_numbers_response().extension_number_size(), 0);
  req.mutable_file_containing_extension()->set_containing_type("emud.v1.Device");
  req.mutable_file_containing_extension()->set_extension_number(100);
  resp = Ask(rw.get(), req);
  ASSERT_TRUE(resp.has_error_response()) << resp.DebugString();
  EXPECT_EQ(resp.error_response().error_code(), int(grpc::StatusCode::NOT_FOUND));

  // Errors.
  req.set_file_containing_symbol("no.such.Symbol");
  resp = Ask(rw.get(), req);
  ASSERT_TRUE(resp.has_error_response()) << resp.DebugString();
  EXPECT_EQ(resp.error_response().error_code(), int(grpc::StatusCode::NOT_FOUND));
  req.set_file_by_filename("no/such.proto");
  resp = Ask(rw.get(), req);
  ASSERT_TRUE(resp.has_error_response()) << resp.DebugString();
  EXPECT_EQ(resp.error_response().error_code(), int(grpc::StatusCode::NOT_FOUND));

  EXPECT_TRUE(rw->WritesDone());
  grpc::Status s = rw->Finish();
  EXPECT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
  e->Stop(SIGTERM);
}

}  // namespace
}  // namespace emud::testing
