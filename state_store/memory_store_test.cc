// Env::OpenInMemory: the same contract as an LMDB Env (tables, transactions,
// schema check, migrations), over MemoryTables.
#include <memory>

#include "gtest/gtest.h"
#include "state_store/store.h"

namespace emud::state_store {
namespace {

EnvOptions Options(uint32_t version = 1) {
  EnvOptions o;
  o.tables = {"a", "b"};
  o.schema_version = version;
  return o;
}

std::string GetOr(Env& env, absl::string_view table, absl::string_view key) {
  std::string out = "<absent>";
  EXPECT_TRUE(env.View([&](const ReadTxn& txn) -> absl::Status {
                   auto v = txn.Get(table, key);
                   if (!v.ok()) return v.status();
                   if (v->has_value()) out = std::string(**v);
                   return absl::OkStatus();
                 }).ok());
  return out;
}

TEST(MemoryStoreTest, PutGetDeleteAndScanInKeyOrder) {
  auto env = Env::OpenInMemory(nullptr, Options());
  ASSERT_TRUE(env.ok()) << env.status();
  ASSERT_TRUE((*env)->Update([](WriteTxn& txn) -> absl::Status {
                   for (const char* k : {"p/2", "p/1", "q/1", "p/3"}) {
                     if (auto s = txn.Put("a", k, std::string("v") + k); !s.ok()) return s;
                   }
                   return txn.Put("b", "p/1", "other table");
                 }).ok());
  EXPECT_EQ(GetOr(**env, "a", "p/1"), "vp/1");
  EXPECT_EQ(GetOr(**env, "b", "p/1"), "other table");
  EXPECT_EQ(GetOr(**env, "a", "zz"), "<absent>");
  std::string scanned;
  ASSERT_TRUE((*env)->View([&](const ReadTxn& txn) {
                   return txn.ForEach("a", "p/", [&](absl::string_view k, absl::string_view) {
                     scanned += std::string(k) + ",";
                     return absl::OkStatus();
                   });
                 }).ok());
  EXPECT_EQ(scanned, "p/1,p/2,p/3,");
  ASSERT_TRUE((*env)->Update([](WriteTxn& txn) -> absl::Status {
                   if (auto s = txn.Delete("a", "q/1"); !s.ok()) return s;
                   if (auto s = txn.Delete("a", "absent"); !s.ok()) return s;
                   return txn.DeletePrefix("a", "p/");
                 }).ok());
  EXPECT_EQ(GetOr(**env, "a", "q/1"), "<absent>");
  EXPECT_EQ(GetOr(**env, "a", "p/2"), "<absent>");
  EXPECT_EQ(GetOr(**env, "b", "p/1"), "other table");
}

// A write transaction reads its own changes over the committed records
// (puts, overwrites and deletes merged in key order), while a reader outside
// it still sees only what was committed.
TEST(MemoryStoreTest, WriteTransactionReadsItsOwnChanges) {
  auto env = Env::OpenInMemory(nullptr, Options());
  ASSERT_TRUE(env.ok());
  ASSERT_TRUE((*env)->Update([](WriteTxn& txn) -> absl::Status {
                   for (const char* k : {"p/1", "p/3", "p/5", "q/1"}) {
                     if (auto s = txn.Put("a", k, "old"); !s.ok()) return s;
                   }
                   return absl::OkStatus();
                 }).ok());
  std::string inside, get3, get4, outside;
  ASSERT_TRUE((*env)->Update([&](WriteTxn& txn) -> absl::Status {
                   if (auto s = txn.Put("a", "p/4", "new"); !s.ok()) return s;
                   if (auto s = txn.Put("a", "p/1", "new"); !s.ok()) return s;
                   if (auto s = txn.Delete("a", "p/3"); !s.ok()) return s;
                   if (auto s = txn.Put("a", "p/0", "new"); !s.ok()) return s;
                   if (auto s = txn.Put("a", "p/6", "new"); !s.ok()) return s;
                   if (auto s = txn.Delete("a", "p/6"); !s.ok()) return s;
                   if (auto s = txn.ForEach("a", "p/", [&](absl::string_view k, absl::string_view v) {
                         inside += std::string(k) + "=" + std::string(v) + ",";
                         return absl::OkStatus();
                       });
                       !s.ok()) {
                     return s;
                   }
                   auto g3 = txn.Get("a", "p/3");
                   auto g4 = txn.Get("a", "p/4");
                   if (!g3.ok() || !g4.ok()) return absl::InternalError("get");
                   get3 = g3->has_value() ? std::string(**g3) : "<absent>";
                   get4 = g4->has_value() ? std::string(**g4) : "<absent>";
                   outside = GetOr(**env, "a", "p/4");
                   return absl::OkStatus();
                 }).ok());
  EXPECT_EQ(inside, "p/0=new,p/1=new,p/4=new,p/5=old,");
  EXPECT_EQ(get3, "<absent>");
  EXPECT_EQ(get4, "new");
  EXPECT_EQ(outside, "<absent>");
  EXPECT_EQ(GetOr(**env, "a", "p/4"), "new");
  EXPECT_EQ(GetOr(**env, "a", "p/3"), "<absent>");
  EXPECT_EQ(GetOr(**env, "a", "p/6"), "<absent>");
  EXPECT_EQ(GetOr(**env, "a", "q/1"), "old");
}

TEST(MemoryStoreTest, FailedTransactionLeavesNoTrace) {
  auto env = Env::OpenInMemory(nullptr, Options());
  ASSERT_TRUE(env.ok());
  ASSERT_TRUE((*env)->Update([](WriteTxn& txn) { return txn.Put("a", "k", "old"); }).ok());
  absl::Status s = (*env)->Update([](WriteTxn& txn) -> absl::Status {
    if (auto p = txn.Put("a", "k", "new"); !p.ok()) return p;
    if (auto p = txn.Put("a", "k2", "new"); !p.ok()) return p;
    return absl::AbortedError("changed my mind");
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(GetOr(**env, "a", "k"), "old");
  EXPECT_EQ(GetOr(**env, "a", "k2"), "<absent>");
}

TEST(MemoryStoreTest, UndeclaredTableAndBadKeysAreRefused) {
  auto env = Env::OpenInMemory(nullptr, Options());
  ASSERT_TRUE(env.ok());
  EXPECT_EQ((*env)->Update([](WriteTxn& txn) { return txn.Put("nope", "k", "v"); }).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*env)->Update([](WriteTxn& txn) { return txn.Put("a", "", "v"); }).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*env)->Update([](WriteTxn& txn) { return txn.Put("a", std::string(512, 'k'), "v"); }).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MemoryStoreTest, ReopenSeesCommittedStateAndMigrates) {
  auto tables = std::make_shared<MemoryTables>();
  {
    auto env = Env::OpenInMemory(tables, Options(1));
    ASSERT_TRUE(env.ok());
    ASSERT_TRUE((*env)->Update([](WriteTxn& txn) { return txn.Put("a", "x", "1"); }).ok());
  }
  // A successor with schema 2 migrates from 1 inside one transaction.
  EnvOptions o = Options(2);
  int migrated = 0;
  o.migrations.push_back({1, [&](WriteTxn& txn) -> absl::Status {
                            ++migrated;
                            return txn.Put("a", "x", "2");
                          }});
  auto env2 = Env::OpenInMemory(tables, o);
  ASSERT_TRUE(env2.ok()) << env2.status();
  EXPECT_EQ(migrated, 1);
  EXPECT_EQ(GetOr(**env2, "a", "x"), "2");
  // Reopening at the same version migrates nothing again.
  auto env3 = Env::OpenInMemory(tables, o);
  ASSERT_TRUE(env3.ok());
  EXPECT_EQ(migrated, 1);
  // An older binary refuses the newer state.
  EXPECT_EQ(Env::OpenInMemory(tables, Options(1)).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(MemoryStoreTest, FailedMigrationCommitsNothing) {
  auto tables = std::make_shared<MemoryTables>();
  ASSERT_TRUE(Env::OpenInMemory(tables, Options(1)).ok());
  tables->tables["a"]["x"] = "1";
  const MemoryTables before = *tables;
  EnvOptions o = Options(3);
  o.migrations.push_back({1, [](WriteTxn& txn) { return txn.Put("a", "x", "half"); }});
  o.migrations.push_back({2, [](WriteTxn&) { return absl::DataLossError("cannot"); }});
  auto env = Env::OpenInMemory(tables, o);
  EXPECT_EQ(env.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(tables->tables, before.tables);
  // No migration from 0 to 1: a schema record of 0 is refused.
  auto t0 = std::make_shared<MemoryTables>();
  t0->tables["__meta"]["schema_version"] = std::string(4, '\0');
  EXPECT_EQ(Env::OpenInMemory(t0, Options(1)).status().code(), absl::StatusCode::kFailedPrecondition);
  // A schema record of the wrong size is data loss.
  auto bad = std::make_shared<MemoryTables>();
  bad->tables["__meta"]["schema_version"] = "xy";
  EXPECT_EQ(Env::OpenInMemory(bad, Options(1)).status().code(), absl::StatusCode::kDataLoss);
}

TEST(MemoryStoreTest, NoMapAndNoReaders) {
  auto env = Env::OpenInMemory(nullptr, Options());
  ASSERT_TRUE(env.ok());
  EXPECT_EQ((*env)->map_size(), 0u);
  EXPECT_EQ(*(*env)->ClearStaleReaders(), 0);
  EXPECT_EQ((*env)->ShrinkMapForTest(4096).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*env)->dir(), "memory:");
}

}  // namespace
}  // namespace emud::state_store
