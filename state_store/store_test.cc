#include "state_store/store.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "state_store/record.h"
#include "state_store/state_dir.h"
#include "state_store/test_record.pb.h"
#include "state_store/test_util.h"

namespace emud::state_store {
namespace {

using test::Counter;

EnvOptions Opts(uint32_t schema = 1) {
  EnvOptions o;
  o.tables = {"a", "b"};
  o.schema_version = schema;
  return o;
}

TEST(EnvTest, PutGetDeleteAndScanByPrefix) {
  ScratchDir dir;
  auto env = Env::Open(dir.path(), Opts());
  ASSERT_TRUE(env.ok()) << env.status();
  ASSERT_TRUE((*env)->Update([](WriteTxn& t) -> absl::Status {
    for (const char* k : {"q/1", "q/2", "r/1", "q/3"}) {
      absl::Status s = t.Put("a", k, absl::StrCat("v", k));
      if (!s.ok()) return s;
    }
    return t.Put("b", "q/1", "other-table");
  }).ok());
  std::string seen;
  ASSERT_TRUE((*env)->View([&](const ReadTxn& t) {
    return t.ForEach("a", "q/", [&](absl::string_view k, absl::string_view v) {
      absl::StrAppend(&seen, k, "=", v, ";");
      return absl::OkStatus();
    });
  }).ok());
  EXPECT_EQ(seen, "q/1=vq/1;q/2=vq/2;q/3=vq/3;");

  ASSERT_TRUE((*env)->Update([](WriteTxn& t) { return t.DeletePrefix("a", "q/"); }).ok());
  ASSERT_TRUE((*env)->View([&](const ReadTxn& t) -> absl::Status {
    auto gone = t.Get("a", "q/2");
    EXPECT_TRUE(gone.ok());
    EXPECT_FALSE(gone->has_value());
    auto kept = t.Get("a", "r/1");
    EXPECT_TRUE(kept.ok() && kept->has_value());
    EXPECT_EQ(**kept, "vr/1");
    auto other = t.Get("b", "q/1");
    EXPECT_TRUE(other.ok() && other->has_value());
    return absl::OkStatus();
  }).ok());
}

// emud reads a worker's environment read-only: nothing before the owner
// committed one, tables that appear later are seen after a reopen, the
// owner's growth of the map is adopted, and nothing can be written.
TEST(EnvTest, ReadOnlyOpenSeesTheOwnersCommitsAndWritesNothing) {
  ScratchDir dir;
  EXPECT_EQ(Env::OpenReadOnly(dir.path(), {"t"}).status().code(), absl::StatusCode::kNotFound);
  EnvOptions first;
  first.tables = {"t"};
  auto owner = Env::Open(dir.path(), first);
  ASSERT_TRUE(owner.ok()) << owner.status();
  ASSERT_TRUE((*owner)->Update([](WriteTxn& t) { return t.Put("t", "k", "v1"); }).ok());

  auto reader = Env::OpenReadOnly(dir.path(), {"t", "later"});
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_TRUE((*reader)->has_table("t"));
  EXPECT_FALSE((*reader)->has_table("later"));
  auto get = [&](Env& e, const char* table) {
    std::string out = "<none>";
    EXPECT_TRUE(e.View([&](const ReadTxn& t) -> absl::Status {
                   auto v = t.Get(table, "k");
                   if (!v.ok()) return v.status();
                   if (v->has_value()) out = std::string(**v);
                   return absl::OkStatus();
                 }).ok());
    return out;
  };
  EXPECT_EQ(get(**reader, "t"), "v1");
  EXPECT_EQ(get(**reader, "later"), "<none>") << "a table that does not exist yet holds nothing";
  EXPECT_EQ((*reader)->Update([](WriteTxn& t) { return t.Put("t", "k", "x"); }).code(),
            absl::StatusCode::kFailedPrecondition);

  // The owner commits more (past a small map: it grows) and adds a table.
  ASSERT_TRUE((*owner)->ShrinkMapForTest(64 * 1024).ok());
  const std::string big(16 * 1024, 'b');
  for (int i = 0; i < 16; ++i) {
    ASSERT_TRUE((*owner)->Update([&](WriteTxn& t) { return t.Put("t", absl::StrCat("big", i), big); }).ok());
  }
  ASSERT_TRUE((*owner)->Update([](WriteTxn& t) { return t.Put("t", "k", "v2"); }).ok());
  EXPECT_EQ(get(**reader, "t"), "v2");
  owner->reset();
  EnvOptions second;
  second.tables = {"t", "later"};
  auto owner2 = Env::Open(dir.path(), second);
  ASSERT_TRUE(owner2.ok()) << owner2.status();
  ASSERT_TRUE((*owner2)->Update([](WriteTxn& t) { return t.Put("later", "k", "l"); }).ok());
  reader->reset();
  auto reader2 = Env::OpenReadOnly(dir.path(), {"t", "later"});
  ASSERT_TRUE(reader2.ok());
  EXPECT_EQ(get(**reader2, "later"), "l");
}

TEST(EnvTest, UndeclaredTableIsAnError) {
  ScratchDir dir;
  auto env = Env::Open(dir.path(), Opts());
  ASSERT_TRUE(env.ok());
  absl::Status s = (*env)->Update([](WriteTxn& t) { return t.Put("nope", "k", "v"); });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "nope")) << s;
}

TEST(EnvTest, FailedUpdateLeavesNothingBehind) {
  ScratchDir dir;
  auto env = Env::Open(dir.path(), Opts());
  ASSERT_TRUE(env.ok());
  absl::Status s = (*env)->Update([](WriteTxn& t) -> absl::Status {
    EXPECT_TRUE(t.Put("a", "k1", "v").ok());
    return absl::AbortedError("caller changed its mind");
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  ASSERT_TRUE((*env)->View([](const ReadTxn& t) -> absl::Status {
    auto v = t.Get("a", "k1");
    EXPECT_TRUE(v.ok());
    EXPECT_FALSE(v->has_value());
    return absl::OkStatus();
  }).ok());
}

TEST(RecordTest, RoundTripAndCorruptionDetected) {
  ScratchDir dir;
  auto env = Env::Open(dir.path(), Opts());
  ASSERT_TRUE(env.ok());
  RecordTable<Counter> table("a");
  Counter c;
  c.set_value(42);
  c.set_note("hello");
  ASSERT_TRUE((*env)->Update([&](WriteTxn& t) { return table.Put(t, "c", c); }).ok());
  ASSERT_TRUE((*env)->Update([&](WriteTxn& t) { return t.Put("a", "bad", "\x07garbage"); }).ok());
  ASSERT_TRUE((*env)->View([&](const ReadTxn& t) -> absl::Status {
    auto got = table.Get(t, "c");
    EXPECT_TRUE(got.ok() && got->has_value());
    EXPECT_EQ((*got)->value(), 42u);
    EXPECT_EQ((*got)->note(), "hello");
    auto bad = table.Get(t, "bad");
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
    auto absent = table.Get(t, "zzz");
    EXPECT_TRUE(absent.ok() && !absent->has_value());
    return absl::OkStatus();
  }).ok());
}

TEST(EnvTest, MapFullGrowsAndKeepsTheWrite) {
  ScratchDir dir;
  EnvOptions o = Opts();
  o.initial_map_size = 64 * 1024;
  std::string blob(8 << 20, 'x');
  for (size_t i = 0; i < blob.size(); i += 4096) blob[i] = static_cast<char>('a' + (i / 4096) % 26);
  {
    auto env = Env::Open(dir.path(), o);
    ASSERT_TRUE(env.ok()) << env.status();
    size_t before = (*env)->map_size();
    int attempts = 0;
    absl::Status s = (*env)->Update([&](WriteTxn& t) {
      ++attempts;
      return t.Put("a", "big", blob);
    });
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_GT(attempts, 1) << "the first attempt should have hit MDB_MAP_FULL";
    EXPECT_GT((*env)->map_size(), before);
    EXPECT_GE((*env)->map_size(), blob.size());
  }
  auto env = Env::Open(dir.path(), o);
  ASSERT_TRUE(env.ok()) << env.status();
  ASSERT_TRUE((*env)->View([&](const ReadTxn& t) -> absl::Status {
    auto v = t.Get("a", "big");
    EXPECT_TRUE(v.ok() && v->has_value());
    EXPECT_TRUE(**v == blob);
    return absl::OkStatus();
  }).ok());
}

TEST(EnvTest, MapFullOnCommitOfManySmallRecords) {
  ScratchDir dir;
  auto env = Env::Open(dir.path(), Opts());
  ASSERT_TRUE(env.ok());
  ASSERT_TRUE((*env)->ShrinkMapForTest(32 * 1024).ok());
  absl::Status s = (*env)->Update([&](WriteTxn& t) -> absl::Status {
    for (int i = 0; i < 5000; ++i) {
      absl::Status p = t.Put("a", absl::StrCat("k", i), std::string(100, 'v'));
      if (!p.ok()) return p;
    }
    return absl::OkStatus();
  });
  ASSERT_TRUE(s.ok()) << s;
  int n = 0;
  ASSERT_TRUE((*env)->View([&](const ReadTxn& t) {
    return t.ForEach("a", "k", [&](absl::string_view, absl::string_view v) {
      EXPECT_EQ(v.size(), 100u);
      ++n;
      return absl::OkStatus();
    });
  }).ok());
  EXPECT_EQ(n, 5000);
}

TEST(SchemaTest, NewerSchemaRefusesToOpen) {
  ScratchDir dir;
  ASSERT_TRUE(Env::Open(dir.path(), Opts(3)).ok());
  auto old_binary = Env::Open(dir.path(), Opts(2));
  ASSERT_FALSE(old_binary.ok());
  EXPECT_EQ(old_binary.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(old_binary.status().message(), "schema version 3"))
      << old_binary.status();
  EXPECT_TRUE(absl::StrContains(old_binary.status().message(), "newer"));
}

TEST(SchemaTest, OlderSchemaIsMigratedInOrder) {
  ScratchDir dir;
  {
    auto v1 = Env::Open(dir.path(), Opts(1));
    ASSERT_TRUE(v1.ok());
    ASSERT_TRUE((*v1)->Update([](WriteTxn& t) { return t.Put("a", "name", "old"); }).ok());
  }
  EnvOptions o = Opts(3);
  std::string order;
  o.migrations.push_back({2, [&](WriteTxn& t) {
                            order += "2";
                            return t.Put("a", "name", "v3");
                          }});
  o.migrations.push_back({1, [&](WriteTxn& t) {
                            order += "1";
                            return t.Put("b", "added_in_v2", "yes");
                          }});
  auto v3 = Env::Open(dir.path(), o);
  ASSERT_TRUE(v3.ok()) << v3.status();
  EXPECT_EQ(order, "12");
  ASSERT_TRUE((*v3)->View([](const ReadTxn& t) -> absl::Status {
    EXPECT_EQ(**t.Get("a", "name"), "v3");
    EXPECT_EQ(**t.Get("b", "added_in_v2"), "yes");
    return absl::OkStatus();
  }).ok());
  // Re-opening at the same version runs nothing again.
  order.clear();
  v3->reset();
  auto again = Env::Open(dir.path(), o);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(order, "");
}

TEST(SchemaTest, MissingMigrationIsAClearError) {
  ScratchDir dir;
  ASSERT_TRUE(Env::Open(dir.path(), Opts(1)).ok());
  auto v2 = Env::Open(dir.path(), Opts(2));
  ASSERT_FALSE(v2.ok());
  EXPECT_TRUE(absl::StrContains(v2.status().message(), "no migration from 1 to 2")) << v2.status();
}

TEST(SchemaTest, FailedMigrationKeepsTheOldVersion) {
  ScratchDir dir;
  {
    auto v1 = Env::Open(dir.path(), Opts(1));
    ASSERT_TRUE(v1.ok());
    ASSERT_TRUE((*v1)->Update([](WriteTxn& t) { return t.Put("a", "k", "v1"); }).ok());
  }
  EnvOptions o = Opts(2);
  o.migrations.push_back({1, [](WriteTxn& t) -> absl::Status {
                            EXPECT_TRUE(t.Put("a", "k", "half-migrated").ok());
                            return absl::InternalError("disk on fire");
                          }});
  ASSERT_FALSE(Env::Open(dir.path(), o).ok());
  auto v1 = Env::Open(dir.path(), Opts(1));
  ASSERT_TRUE(v1.ok()) << v1.status();
  ASSERT_TRUE((*v1)->View([](const ReadTxn& t) -> absl::Status {
    EXPECT_EQ(**t.Get("a", "k"), "v1");
    return absl::OkStatus();
  }).ok());
}

// A reader in another process sees only whole transactions while a writer
// commits: keys "x" and "y" are always written together with equal values.
TEST(MultiProcessTest, ReaderSeesOnlyCommittedTransactions) {
  ScratchDir dir;
  {
    auto env = Env::Open(dir.path(), Opts());
    ASSERT_TRUE(env.ok());
    ASSERT_TRUE((*env)->Update([](WriteTxn& t) {
      EXPECT_TRUE(t.Put("a", "x", "0").ok());
      return t.Put("a", "y", "0");
    }).ok());
  }
  pid_t reader = fork();
  ASSERT_GE(reader, 0);
  if (reader == 0) {
    auto env = Env::Open(dir.path(), Opts());
    if (!env.ok()) _exit(10);
    long last = 0;
    for (int i = 0; i < 20000; ++i) {
      long x = -1, y = -2;
      absl::Status s = (*env)->View([&](const ReadTxn& t) -> absl::Status {
        x = std::stol(std::string(**t.Get("a", "x")));
        y = std::stol(std::string(**t.Get("a", "y")));
        return absl::OkStatus();
      });
      if (!s.ok()) _exit(11);
      if (x != y) _exit(12);     // torn transaction
      if (x < last) _exit(13);   // went back in time
      last = x;
      if (x == 3000) _exit(0);
    }
    _exit(last > 0 ? 0 : 14);
  }
  auto env = Env::Open(dir.path(), Opts());
  ASSERT_TRUE(env.ok());
  for (int i = 1; i <= 3000; ++i) {
    absl::Status s = (*env)->Update([&](WriteTxn& t) {
      absl::Status p = t.Put("a", "x", std::to_string(i));
      return p.ok() ? t.Put("a", "y", std::to_string(i)) : p;
    });
    ASSERT_TRUE(s.ok()) << s;
  }
  int status = 0;
  ASSERT_EQ(waitpid(reader, &status, 0), reader);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "reader saw an inconsistent state (code "
                                    << WEXITSTATUS(status) << ")";
}

// Readers killed while holding a read transaction leave reader-table slots
// behind (while another process keeps the environment open, as emud does);
// the next open - or an explicit check - clears them.
TEST(MultiProcessTest, StaleReaderSlotsAreCleared) {
  ScratchDir dir;
  auto keeper = Env::Open(dir.path(), Opts());  // keeps the lock region alive
  ASSERT_TRUE(keeper.ok());
  auto kill_readers = [&](int n) {
    std::vector<pid_t> pids;
    for (int i = 0; i < n; ++i) {
      int fds[2];
      ASSERT_EQ(pipe(fds), 0);
      pid_t pid = fork();
      ASSERT_GE(pid, 0);
      if (pid == 0) {
        close(fds[0]);
        auto env = Env::Open(dir.path(), Opts());
        if (!env.ok()) _exit(1);
        (void)(*env)->View([&](const ReadTxn&) {
          char c = 'r';
          (void)!write(fds[1], &c, 1);
          for (;;) pause();
          return absl::OkStatus();
        });
        _exit(2);
      }
      close(fds[1]);
      char c;
      ASSERT_EQ(read(fds[0], &c, 1), 1) << "reader " << i << " never began its transaction";
      close(fds[0]);
      pids.push_back(pid);
    }
    for (pid_t pid : pids) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  };

  // 1. Cleared by the next process that opens the environment.
  kill_readers(4);
  pid_t opener = fork();
  ASSERT_GE(opener, 0);
  if (opener == 0) {
    auto env = Env::Open(dir.path(), Opts());
    _exit(env.ok() ? (*env)->stale_readers_cleared() : 100);
  }
  int status = 0;
  ASSERT_EQ(waitpid(opener, &status, 0), opener);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 4);

  // 2. Cleared on demand by a process that already has it open.
  kill_readers(3);
  auto cleared = (*keeper)->ClearStaleReaders();
  ASSERT_TRUE(cleared.ok());
  EXPECT_EQ(*cleared, 3);
  // Nothing is left, and the writer works.
  EXPECT_EQ(*(*keeper)->ClearStaleReaders(), 0);
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(
        (*keeper)->Update([&](WriteTxn& t) { return t.Put("a", "k", std::string(4000, 'z')); }).ok());
  }
}

// A tmpfs that fills up gives RESOURCE_EXHAUSTED with a message that says
// so, never SIGBUS, and keeps what was committed. Runs in a child with its
// own mount namespace (needs CAP_SYS_ADMIN, which CI has as root).
TEST(TmpfsFullTest, FullFilesystemIsAClearErrorNotSigbus) {
  ScratchDir dir;
  std::string mnt = dir.path() + "/small";
  std::filesystem::create_directories(mnt);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    auto report = [&](const std::string& s) { (void)!write(fds[1], s.data(), s.size()); };
    if (unshare(CLONE_NEWNS) != 0) _exit(77);
    if (mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) _exit(77);
    if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=1m") != 0) _exit(77);
    EnvOptions o = Opts();
    o.initial_map_size = 256 * 1024;
    o.max_map_size = 64 << 20;
    auto env = Env::Open(mnt + "/env", o);
    if (!env.ok()) {
      report(std::string(env.status().message()));
      _exit(3);
    }
    absl::Status s;
    int committed = 0;
    for (int i = 0; i < 1000 && s.ok(); ++i) {
      s = (*env)->Update([&](WriteTxn& t) {
        return t.Put("a", absl::StrCat("k", i), std::string(16 * 1024, 'f'));
      });
      if (s.ok()) committed = i + 1;
    }
    if (s.ok()) {
      report("1 MiB tmpfs never filled up");
      _exit(4);
    }
    if (s.code() != absl::StatusCode::kResourceExhausted ||
        !absl::StrContains(s.message(), "full")) {
      report(std::string(s.ToString()));
      _exit(5);
    }
    // Everything committed before the error is still there.
    int present = 0;
    (void)(*env)->View([&](const ReadTxn& t) {
      return t.ForEach("a", "k", [&](absl::string_view, absl::string_view) {
        ++present;
        return absl::OkStatus();
      });
    });
    if (present != committed || committed == 0) {
      report(absl::StrCat("committed ", committed, " but found ", present));
      _exit(6);
    }
    report(std::string(s.message()));
    _exit(0);
  }
  close(fds[1]);
  std::string msg;
  char buf[512];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) msg.append(buf, n);
  close(fds[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_FALSE(WIFSIGNALED(status)) << "child died of signal " << WTERMSIG(status);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) {
    GTEST_SKIP() << "needs CAP_SYS_ADMIN to mount a small tmpfs";
  }
  EXPECT_EQ(WEXITSTATUS(status), 0) << msg;
  EXPECT_TRUE(absl::StrContains(msg, "full")) << msg;
}

TEST(StateDirTest, DeviceNamesAreValidated) {
  EXPECT_TRUE(ValidateDeviceName("avf0").ok());
  EXPECT_TRUE(ValidateDeviceName("vm-12.nic_0").ok());
  EXPECT_FALSE(ValidateDeviceName("").ok());
  EXPECT_FALSE(ValidateDeviceName("../etc").ok());
  EXPECT_FALSE(ValidateDeviceName("a/b").ok());
  EXPECT_FALSE(ValidateDeviceName("-x").ok());
  EXPECT_FALSE(ValidateDeviceName(std::string(64, 'a')).ok());
  EXPECT_EQ(DeviceEnvDir("/s", "d0"), "/s/devices/d0");
}

}  // namespace
}  // namespace emud::state_store
