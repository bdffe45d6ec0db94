// state_store: LMDB environments on tmpfs holding every piece of state that a
// successor process needs to take over a device.
//
// One Env is one LMDB environment in its own directory. emud keeps one Env for
// its own records and one per device, so that one device's commits never wait
// on another device's writer lock.
//
// Crash model: LMDB is opened without MDB_WRITEMAP and with MDB_NOSYNC. Every
// page reaches the kernel's page cache through pwrite() before the meta page
// that makes it visible, so a process killed at any instruction leaves the
// last committed transaction intact. tmpfs has no disk behind it, so fsync
// buys nothing; a machine crash loses the whole tmpfs anyway.
//
// Thread safety: an Env may be used from several threads. Write transactions
// are serialised; read transactions run concurrently with each other.
#ifndef EMUD_STATE_STORE_STORE_H_
#define EMUD_STATE_STORE_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

struct MDB_env;
struct MDB_txn;

namespace emud::state_store {

class WriteTxn;

// In-memory storage for Env::OpenInMemory: the committed tables (name ->
// key -> value). Envs opened over the same MemoryTables share it, as Envs
// opened on the same directory share the LMDB files: opening a second one
// over a first one's tables is what a successor process does, schema check
// and migrations included.
struct MemoryTables {
  using Table = std::map<std::string, std::string, std::less<>>;
  std::map<std::string, Table, std::less<>> tables;
};

// What an in-memory write transaction changed, not committed yet (store.cc).
struct MemoryDelta;

// A schema migration moves every record of an Env from version `from` to
// `from + 1`. It runs inside the write transaction that also bumps the stored
// schema version, so a crash mid-migration leaves the old version intact.
struct Migration {
  uint32_t from = 0;
  std::function<absl::Status(WriteTxn&)> migrate;
};

struct EnvOptions {
  // Names of the tables (LMDB named databases) this Env holds. Opening a table
  // not listed here fails.
  std::vector<std::string> tables;
  // The schema version this binary writes. Opening an Env stored with a newer
  // version fails with FAILED_PRECONDITION; an older one is migrated.
  uint32_t schema_version = 1;
  std::vector<Migration> migrations;
  // Initial LMDB map size; it doubles on MDB_MAP_FULL up to max_map_size.
  size_t initial_map_size = 1u << 20;
  size_t max_map_size = size_t{1} << 32;
  // Called after every successful commit with its duration (for metrics).
  std::function<void(absl::Duration)> on_commit;
};

// Read-only view of one transaction. Values returned as string_view point into
// the LMDB map and stay valid until the transaction ends.
class ReadTxn {
 public:
  ReadTxn(const ReadTxn&) = delete;
  ReadTxn& operator=(const ReadTxn&) = delete;

  // The raw bytes stored under `key`, or nullopt if absent.
  absl::StatusOr<std::optional<absl::string_view>> Get(absl::string_view table,
                                                      absl::string_view key) const;
  // Calls `fn(key, value)` for every record in key order whose key starts
  // with `prefix`; stops early and returns the error if fn fails.
  absl::Status ForEach(
      absl::string_view table, absl::string_view prefix,
      absl::FunctionRef<absl::Status(absl::string_view, absl::string_view)> fn) const;

 protected:
  friend class Env;
  ReadTxn(const class Env* env, MDB_txn* txn) : env_(env), txn_(txn) {}
  ReadTxn(const class Env* env, MemoryTables* mem, MemoryDelta* delta = nullptr)
      : env_(env), txn_(nullptr), mem_(mem), delta_(delta) {}
  const class Env* env_;
  MDB_txn* txn_;
  MemoryTables* mem_ = nullptr;  // OpenInMemory: the committed tables
  MemoryDelta* delta_ = nullptr;  // OpenInMemory write transaction: its changes over mem_
};

class WriteTxn : public ReadTxn {
 public:
  absl::Status Put(absl::string_view table, absl::string_view key, absl::string_view value);
  // Deleting an absent key is not an error.
  absl::Status Delete(absl::string_view table, absl::string_view key);
  // Deletes every record whose key starts with `prefix`.
  absl::Status DeletePrefix(absl::string_view table, absl::string_view prefix);

 private:
  friend class Env;
  using ReadTxn::ReadTxn;
};

class Env {
 public:
  // Opens (creating if needed) the environment in directory `dir`: clears
  // reader slots left by dead processes (mdb_reader_check), checks the schema
  // version and runs migrations.
  static absl::StatusOr<std::unique_ptr<Env>> Open(const std::string& dir, EnvOptions options);

  // Opens, read-only, an environment another process owns (emud reading a
  // worker's status record): no directory or table creation, no schema check
  // or migration (the owner's business, so the two never disagree), nothing
  // allocated or written but LMDB's reader slot. Of `tables`, those that
  // exist are opened (has_table); a read of one that does not finds
  // nothing. NOT_FOUND while the directory holds no committed environment
  // yet (its owner may be creating it). Update fails FAILED_PRECONDITION.
  static absl::StatusOr<std::unique_ptr<Env>> OpenReadOnly(const std::string& dir,
                                                           std::vector<std::string> tables);
  // An Env without LMDB or directory over `tables` (created empty if
  // null): the same tables, schema check, migrations and transactions (a
  // write transaction collects its changes over the committed tables, which
  // it reads through them, and applies them when fn succeeds, so a failed fn
  // leaves no trace; a commit costs what it changed, not the tables' size). For fuzzers and tests of
  // what is stored, not of how: no map size, no stale readers, no crash
  // survival beyond the process. dir() is "memory:".
  static absl::StatusOr<std::unique_ptr<Env>> OpenInMemory(std::shared_ptr<MemoryTables> tables,
                                                           EnvOptions options);
  ~Env();

  // True if `table` is open in this Env (always, for a declared table of a
  // writable Env; for a read-only one, if it existed when it was opened).
  bool has_table(absl::string_view table) const { return Dbi(table).ok(); }

  Env(const Env&) = delete;
  Env& operator=(const Env&) = delete;

  // Runs `fn` in a write transaction and commits it if fn returns OK;
  // otherwise aborts and returns fn's error. On MDB_MAP_FULL the transaction
  // is aborted, the map grown and `fn` run again from scratch, so fn must
  // not have side effects outside the transaction. Fails with
  // RESOURCE_EXHAUSTED if the filesystem under the Env is full (never SIGBUS).
  absl::Status Update(absl::FunctionRef<absl::Status(WriteTxn&)> fn);

  // Runs `fn` in a read transaction that sees the last committed state.
  absl::Status View(absl::FunctionRef<absl::Status(const ReadTxn&)> fn) const;

  const std::string& dir() const { return dir_; }
  size_t map_size() const;
  uint32_t schema_version() const { return options_.schema_version; }
  // Number of stale reader slots cleared at open.
  int stale_readers_cleared() const { return stale_readers_cleared_; }

  // Clears reader slots of dead processes (a killed worker's open read
  // transaction pins old pages until cleared). Returns how many were cleared.
  absl::StatusOr<int> ClearStaleReaders();

  // Test-only: force the next writes to start from a tiny map, exercising the
  // MDB_MAP_FULL path.
  absl::Status ShrinkMapForTest(size_t bytes);

 private:
  friend class ReadTxn;
  friend class WriteTxn;
  Env(std::string dir, EnvOptions options) : dir_(std::move(dir)), options_(std::move(options)) {}
  absl::Status Init();
  absl::Status InitReadOnly();
  absl::Status CheckSchema();
  absl::Status BackLockFile(bool before_open);
  absl::StatusOr<unsigned> Dbi(absl::string_view table) const;
  // Read-only: a declared table that did not exist at open (reads find nothing).
  bool IsMissingTable(absl::string_view table) const {
    for (const auto& t : missing_tables_) {
      if (t == table) return true;
    }
    return false;
  }
  absl::Status Grow();
  absl::Status UpdateOnce(absl::FunctionRef<absl::Status(WriteTxn&)> fn, bool* map_full,
                          bool* map_resized);

  absl::Status InitInMemory();

  std::string dir_;
  EnvOptions options_;
  MDB_env* env_ = nullptr;
  std::shared_ptr<MemoryTables> mem_;  // OpenInMemory
  mutable absl::Mutex mem_mu_;         // mem_->tables: shared by View, exclusive by commit
  std::vector<std::pair<std::string, unsigned>> dbis_;
  int stale_readers_cleared_ = 0;
  bool read_only_ = false;
  std::vector<std::string> missing_tables_;  // read-only: declared, absent
  // Serialises writers in this process (LMDB does across processes).
  absl::Mutex write_mu_;
  // Held shared by every transaction, exclusively while the map is resized:
  // mdb_env_set_mapsize requires no live transaction in the process.
  mutable absl::Mutex resize_mu_;
};

// Maps an LMDB return code to a Status that says what happened and where.
absl::Status LmdbError(int rc, absl::string_view what, absl::string_view where);

}  // namespace emud::state_store

#endif  // EMUD_STATE_STORE_STORE_H_
