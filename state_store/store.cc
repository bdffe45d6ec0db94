#include "state_store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <lmdb.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/backed_file.h"

namespace emud::state_store {
namespace {

constexpr char kMetaTable[] = "__meta";
constexpr char kSchemaKey[] = "schema_version";
constexpr int kMaxGrowAttempts = 40;

MDB_val Val(absl::string_view s) {
  return MDB_val{s.size(), const_cast<char*>(s.data())};
}
absl::string_view View(const MDB_val& v) {
  return absl::string_view(static_cast<const char*>(v.mv_data), v.mv_size);
}

// A declared table of an in-memory Env (InitInMemory created every one).
MemoryTables::Table& MemTable(MemoryTables* m, absl::string_view table) {
  return m->tables.find(table)->second;
}

}  // namespace

// An in-memory write transaction's changes: table -> key -> the new value,
// or nullopt for a deleted key.
struct MemoryDelta {
  using Table = std::map<std::string, std::optional<std::string>, std::less<>>;
  std::map<std::string, Table, std::less<>> tables;
  Table& Changes(absl::string_view table) {
    auto it = tables.find(table);
    return it != tables.end() ? it->second : tables[std::string(table)];
  }
  // The changes to `table`, or null while it has none.
  const Table* Find(absl::string_view table) const {
    auto it = tables.find(table);
    return it == tables.end() ? nullptr : &it->second;
  }
  // Applies the changes to `mem`.
  void ApplyTo(MemoryTables& mem) {
    for (auto& [name, changes] : tables) {
      MemoryTables::Table& t = MemTable(&mem, name);
      for (auto& [key, value] : changes) {
        if (value.has_value()) {
          t.insert_or_assign(key, std::move(*value));
        } else if (auto it = t.find(key); it != t.end()) {
          t.erase(it);
        }
      }
    }
  }
};

absl::Status LmdbError(int rc, absl::string_view what, absl::string_view where) {
  std::string msg = absl::StrCat(what, " in ", where, ": ", mdb_strerror(rc));
  switch (rc) {
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(
          absl::StrCat(msg, " (the filesystem holding the state directory is full; free space "
                            "on it or enlarge it, e.g. mount -o remount,size=... /dev/shm)"));
    case MDB_MAP_FULL:
      return absl::ResourceExhaustedError(msg);
    case EIO: {
      // LMDB reports a short pwrite of its pages as EIO: on tmpfs that is
      // the filesystem filling up mid-write.
      struct statvfs vfs;
      if (statvfs(std::string(where).c_str(), &vfs) == 0 &&
          static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize < (uint64_t{1} << 20)) {
        return absl::ResourceExhaustedError(absl::StrCat(
            msg, " (a short write: the filesystem holding the state directory is full, ",
            static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize,
            " bytes free; free space on it or enlarge it)"));
      }
      return absl::InternalError(msg);
    }
    case MDB_NOTFOUND:
      return absl::NotFoundError(msg);
    case MDB_VERSION_MISMATCH:
    case MDB_INVALID:
    case MDB_CORRUPTED:
      return absl::DataLossError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

// ---------------------------------------------------------------- ReadTxn

absl::StatusOr<std::optional<absl::string_view>> ReadTxn::Get(absl::string_view table,
                                                             absl::string_view key) const {
  auto dbi = env_->Dbi(table);
  if (!dbi.ok()) {
    if (env_->IsMissingTable(table)) return std::optional<absl::string_view>();
    return dbi.status();
  }
  if (mem_ != nullptr) {
    if (const MemoryDelta::Table* d = delta_ != nullptr ? delta_->Find(table) : nullptr) {
      if (auto it = d->find(key); it != d->end()) {
        if (!it->second.has_value()) return std::optional<absl::string_view>();
        return std::optional<absl::string_view>(*it->second);
      }
    }
    const MemoryTables::Table& t = MemTable(mem_, table);
    auto it = t.find(key);
    if (it == t.end()) return std::optional<absl::string_view>();
    return std::optional<absl::string_view>(it->second);
  }
  MDB_val k = Val(key), v;
  int rc = mdb_get(txn_, *dbi, &k, &v);
  if (rc == MDB_NOTFOUND) return std::optional<absl::string_view>();
  if (rc != 0) return LmdbError(rc, absl::StrCat("get ", table, "/", key), env_->dir());
  return std::optional<absl::string_view>(View(v));
}

absl::Status ReadTxn::ForEach(
    absl::string_view table, absl::string_view prefix,
    absl::FunctionRef<absl::Status(absl::string_view, absl::string_view)> fn) const {
  auto dbi = env_->Dbi(table);
  if (!dbi.ok()) return env_->IsMissingTable(table) ? absl::OkStatus() : dbi.status();
  if (mem_ != nullptr) {
    // The committed records merged, in key order, with the transaction's
    // changes (which win on equal keys; a deleted key is skipped).
    const MemoryTables::Table& t = MemTable(mem_, table);
    static const MemoryDelta::Table kNoChanges;
    const MemoryDelta::Table* d = delta_ != nullptr ? delta_->Find(table) : nullptr;
    if (d == nullptr) d = &kNoChanges;
    auto b = t.lower_bound(prefix);
    auto c = d->lower_bound(prefix);
    for (;;) {
      const bool in_b = b != t.end() && absl::StartsWith(b->first, prefix);
      const bool in_c = c != d->end() && absl::StartsWith(c->first, prefix);
      if (!in_b && !in_c) break;
      absl::Status s;
      if (in_c && (!in_b || c->first <= b->first)) {
        if (in_b && b->first == c->first) ++b;
        auto cur = c++;
        if (cur->second.has_value()) s = fn(cur->first, *cur->second);
      } else {
        auto cur = b++;
        s = fn(cur->first, cur->second);
      }
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  MDB_cursor* cur = nullptr;
  int rc = mdb_cursor_open(txn_, *dbi, &cur);
  if (rc != 0) return LmdbError(rc, "cursor open", env_->dir());
  MDB_val k = Val(prefix), v;
  absl::Status status;
  rc = prefix.empty() ? mdb_cursor_get(cur, &k, &v, MDB_FIRST)
                      : mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  while (rc == 0) {
    absl::string_view key = View(k);
    if (key.substr(0, prefix.size()) != prefix) break;
    status = fn(key, View(v));
    if (!status.ok()) break;
    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cur);
  if (!status.ok()) return status;
  if (rc != 0 && rc != MDB_NOTFOUND) return LmdbError(rc, "cursor scan", env_->dir());
  return absl::OkStatus();
}

// --------------------------------------------------------------- WriteTxn

absl::Status WriteTxn::Put(absl::string_view table, absl::string_view key, absl::string_view value) {
  auto dbi = env_->Dbi(table);
  if (!dbi.ok()) return dbi.status();
  if (key.empty() || key.size() > 511) {
    return absl::InvalidArgumentError(absl::StrCat("key length ", key.size(), " not in 1..511"));
  }
  if (mem_ != nullptr) {
    delta_->Changes(table).insert_or_assign(std::string(key), std::string(value));
    return absl::OkStatus();
  }
  MDB_val k = Val(key), v = Val(value);
  int rc = mdb_put(txn_, *dbi, &k, &v, 0);
  if (rc != 0) return LmdbError(rc, absl::StrCat("put ", table, "/", key), env_->dir());
  return absl::OkStatus();
}

absl::Status WriteTxn::Delete(absl::string_view table, absl::string_view key) {
  auto dbi = env_->Dbi(table);
  if (!dbi.ok()) return dbi.status();
  if (mem_ != nullptr) {
    delta_->Changes(table).insert_or_assign(std::string(key), std::nullopt);
    return absl::OkStatus();
  }
  MDB_val k = Val(key);
  int rc = mdb_del(txn_, *dbi, &k, nullptr);
  if (rc != 0 && rc != MDB_NOTFOUND) {
    return LmdbError(rc, absl::StrCat("delete ", table, "/", key), env_->dir());
  }
  return absl::OkStatus();
}

absl::Status WriteTxn::DeletePrefix(absl::string_view table, absl::string_view prefix) {
  std::vector<std::string> keys;
  absl::Status s = ForEach(table, prefix, [&](absl::string_view k, absl::string_view) {
    keys.emplace_back(k);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  for (const auto& k : keys) {
    s = Delete(table, k);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// -------------------------------------------------------------------- Env

absl::StatusOr<std::unique_ptr<Env>> Env::Open(const std::string& dir, EnvOptions options) {
  std::unique_ptr<Env> env(new Env(dir, std::move(options)));
  absl::Status s = env->Init();
  if (!s.ok()) return s;
  return env;
}

absl::StatusOr<std::unique_ptr<Env>> Env::OpenInMemory(std::shared_ptr<MemoryTables> tables,
                                                       EnvOptions options) {
  std::unique_ptr<Env> env(new Env("memory:", std::move(options)));
  env->mem_ = tables != nullptr ? std::move(tables) : std::make_shared<MemoryTables>();
  absl::Status s = env->InitInMemory();
  if (!s.ok()) return s;
  return env;
}

absl::Status Env::InitInMemory() {
  std::vector<std::string> names = options_.tables;
  names.push_back(kMetaTable);
  {
    absl::MutexLock lock(&mem_mu_);
    for (unsigned i = 0; i < names.size(); ++i) {
      dbis_.emplace_back(names[i], i);
      mem_->tables[names[i]];  // created if absent, as MDB_CREATE does
    }
  }
  return CheckSchema();
}

absl::StatusOr<std::unique_ptr<Env>> Env::OpenReadOnly(const std::string& dir,
                                                       std::vector<std::string> tables) {
  EnvOptions options;
  options.tables = std::move(tables);
  std::unique_ptr<Env> env(new Env(dir, std::move(options)));
  env->read_only_ = true;
  absl::Status s = env->InitReadOnly();
  if (!s.ok()) return s;
  return env;
}

absl::Status Env::InitReadOnly() {
  struct stat st;
  if (::stat((dir_ + "/data.mdb").c_str(), &st) != 0 || st.st_size == 0) {
    return absl::NotFoundError(absl::StrCat("no environment in ", dir_, " yet"));
  }
  int rc = mdb_env_create(&env_);
  if (rc != 0) return LmdbError(rc, "mdb_env_create", dir_);
  rc = mdb_env_set_maxdbs(env_, static_cast<MDB_dbi>(options_.tables.size() + 1));
  if (rc != 0) return LmdbError(rc, "mdb_env_set_maxdbs", dir_);
  rc = mdb_env_open(env_, dir_.c_str(), MDB_RDONLY | MDB_NOTLS, 0600);
  // The owner may not have written its first meta pages yet.
  if (rc == MDB_INVALID || rc == ENOENT) {
    return absl::NotFoundError(absl::StrCat("no committed environment in ", dir_, " yet"));
  }
  if (rc != 0) return LmdbError(rc, "mdb_env_open (read-only)", dir_);
  for (int attempt = 0;; ++attempt) {
    MDB_txn* txn = nullptr;
    rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn);
    if (rc == MDB_MAP_RESIZED && attempt < 3) {
      mdb_env_set_mapsize(env_, 0);  // adopt the size the owner grew to
      continue;
    }
    if (rc != 0) return LmdbError(rc, "begin read", dir_);
    dbis_.clear();
    missing_tables_.clear();
    for (const auto& name : options_.tables) {
      MDB_dbi dbi;
      rc = mdb_dbi_open(txn, name.c_str(), 0, &dbi);
      if (rc == MDB_NOTFOUND) {
        missing_tables_.push_back(name);
        continue;
      }
      if (rc != 0) {
        mdb_txn_abort(txn);
        return LmdbError(rc, absl::StrCat("open table ", name), dir_);
      }
      dbis_.emplace_back(name, dbi);
    }
    // Committing a read transaction keeps its dbi handles for the Env.
    rc = mdb_txn_commit(txn);
    if (rc != 0) return LmdbError(rc, "end read", dir_);
    return absl::OkStatus();
  }
}

Env::~Env() {
  if (env_ != nullptr) mdb_env_close(env_);
}

absl::Status Env::Init() {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create state directory ", dir_, ": ", ec.message()));
  }
  int rc = mdb_env_create(&env_);
  if (rc != 0) return LmdbError(rc, "mdb_env_create", dir_);
  rc = mdb_env_set_maxdbs(env_, static_cast<MDB_dbi>(options_.tables.size() + 1));
  if (rc != 0) return LmdbError(rc, "mdb_env_set_maxdbs", dir_);
  rc = mdb_env_set_mapsize(env_, options_.initial_map_size);
  if (rc != 0) return LmdbError(rc, "mdb_env_set_mapsize", dir_);
  // No MDB_WRITEMAP: pages are written with pwrite, so a full tmpfs yields
  // ENOSPC instead of SIGBUS on a store into a hole of a mapped file. The
  // lock file (reader table) IS mapped and stored into: allocate it first.
  absl::Status s = BackLockFile(/*before_open=*/true);
  if (!s.ok()) return s;
  rc = mdb_env_open(env_, dir_.c_str(), MDB_NOSYNC | MDB_NOTLS, 0600);
  if (rc != 0) return LmdbError(rc, "mdb_env_open", dir_);
  s = BackLockFile(/*before_open=*/false);  // an existing one may have holes
  if (!s.ok()) return s;
  int dead = 0;
  rc = mdb_reader_check(env_, &dead);
  if (rc != 0) return LmdbError(rc, "mdb_reader_check", dir_);
  stale_readers_cleared_ = dead;

  // Open every declared table (and the meta table) once; dbi handles stay
  // valid for the life of the environment.
  std::vector<std::string> names = options_.tables;
  names.push_back(kMetaTable);
  for (int attempt = 0;; ++attempt) {
    MDB_txn* txn = nullptr;
    rc = mdb_txn_begin(env_, nullptr, 0, &txn);
    if (rc == MDB_MAP_RESIZED && attempt < 3) {
      mdb_env_set_mapsize(env_, 0);
      continue;
    }
    if (rc != 0) return LmdbError(rc, "begin", dir_);
    dbis_.clear();
    for (const auto& name : names) {
      MDB_dbi dbi;
      rc = mdb_dbi_open(txn, name.c_str(), MDB_CREATE, &dbi);
      if (rc != 0) {
        mdb_txn_abort(txn);
        return LmdbError(rc, absl::StrCat("open table ", name), dir_);
      }
      dbis_.emplace_back(name, dbi);
    }
    rc = mdb_txn_commit(txn);
    if (rc == MDB_MAP_FULL && attempt < 3) {
      absl::Status g = Grow();
      if (!g.ok()) return g;
      continue;
    }
    if (rc != 0) return LmdbError(rc, "commit table creation", dir_);
    break;
  }
  return CheckSchema();
}

absl::Status Env::BackLockFile(bool before_open) {
  // LMDB maps lock.mdb MAP_SHARED and writes its header and reader slots
  // with plain stores; it sizes the file with ftruncate (holes). On a full
  // tmpfs such a store is a SIGBUS, so every hole is allocated here. Two
  // rules: the size of an existing file is never changed (every process
  // derives the reader table's length from it), and no descriptor of an
  // existing lock file is ever closed by us (closing any descriptor of a
  // file drops the process's fcntl locks on it, which LMDB uses to tell live
  // readers from dead ones).
  std::string path = dir_ + "/lock.mdb";
  if (before_open) {
    // Only a file that does not exist yet (nobody can hold locks on it): make
    // it LMDB's own size for its default 126 readers (mdb.c: 125 64-byte
    // reader slots + a 192-byte header), allocated.
    constexpr size_t kNewLockFileSize = 125 * 64 + 192;
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
      if (errno == EEXIST) return absl::OkStatus();
      return LmdbError(errno, "create lock file", dir_);
    }
    absl::Status s = BackFile(fd, kNewLockFileSize, path);
    ::close(fd);
    if (!s.ok()) ::unlink(path.c_str());
    return s;
  }
  // After mdb_env_open: allocate through LMDB's own descriptor.
  char real[PATH_MAX];
  if (::realpath(path.c_str(), real) == nullptr) return absl::OkStatus();
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    std::error_code lec;
    auto target = std::filesystem::read_symlink(e.path(), lec);
    if (lec || target != real) continue;
    int fd = std::atoi(e.path().filename().c_str());
    struct stat st {};
    if (::fstat(fd, &st) != 0 || st.st_size <= 0) continue;
    return BackFile(fd, static_cast<size_t>(st.st_size), path);
  }
  return absl::OkStatus();
}

absl::Status Env::CheckSchema() {
  uint32_t stored = 0;
  bool present = false;
  absl::Status s = View([&](const ReadTxn& txn) -> absl::Status {
    auto v = txn.Get(kMetaTable, kSchemaKey);
    if (!v.ok()) return v.status();
    if (!v->has_value()) return absl::OkStatus();
    if ((*v)->size() != sizeof(uint32_t)) {
      return absl::DataLossError(absl::StrCat("schema version record in ", dir_, " is ",
                                              (*v)->size(), " bytes, want 4"));
    }
    std::memcpy(&stored, (*v)->data(), sizeof(stored));
    present = true;
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  const uint32_t want = options_.schema_version;
  if (present && stored > want) {
    return absl::FailedPreconditionError(absl::StrCat(
        "state in ", dir_, " has schema version ", stored, ", newer than this binary's ", want,
        "; run a newer build or move the state directory aside"));
  }
  if (present && stored == want) return absl::OkStatus();
  return Update([&](WriteTxn& txn) -> absl::Status {
    if (present) {
      for (uint32_t v = stored; v < want; ++v) {
        const Migration* m = nullptr;
        for (const auto& cand : options_.migrations) {
          if (cand.from == v) m = &cand;
        }
        if (m == nullptr) {
          return absl::FailedPreconditionError(absl::StrCat(
              "state in ", dir_, " has schema version ", stored, " and no migration from ", v,
              " to ", v + 1, " exists in this binary"));
        }
        absl::Status ms = m->migrate(txn);
        if (!ms.ok()) {
          return absl::Status(ms.code(), absl::StrCat("migration from schema ", v, " in ", dir_,
                                                      " failed: ", ms.message()));
        }
      }
    }
    std::string buf(sizeof(want), '\0');
    std::memcpy(buf.data(), &want, sizeof(want));
    return txn.Put(kMetaTable, kSchemaKey, buf);
  });
}

absl::StatusOr<unsigned> Env::Dbi(absl::string_view table) const {
  for (const auto& [name, dbi] : dbis_) {
    if (name == table) return dbi;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("table '", table, "' was not declared when opening ", dir_));
}

size_t Env::map_size() const {
  if (mem_ != nullptr) return 0;
  MDB_envinfo info;
  mdb_env_info(env_, &info);
  return info.me_mapsize;
}

absl::Status Env::Grow() {
  absl::MutexLock lock(&resize_mu_);
  MDB_envinfo info;
  mdb_env_info(env_, &info);
  size_t cur = info.me_mapsize;
  if (cur >= options_.max_map_size) {
    return absl::ResourceExhaustedError(
        absl::StrCat("state in ", dir_, " reached its maximum map size of ", cur, " bytes"));
  }
  size_t next = std::min(options_.max_map_size, cur * 2);
  // The file only grows as pages are written, but refuse early with a clear
  // message when the filesystem could not hold the larger map's new pages.
  struct statvfs vfs;
  struct stat st;
  std::string data = dir_ + "/data.mdb";
  if (statvfs(dir_.c_str(), &vfs) == 0 && stat(data.c_str(), &st) == 0) {
    uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    uint64_t used = static_cast<uint64_t>(st.st_size);
    uint64_t need = next > used ? (next - used) / 2 : 0;  // at least half the new room
    if (free_bytes < need) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot grow state in ", dir_, " to ", next, " bytes: its filesystem is full (",
          free_bytes, " bytes free); free space or enlarge the tmpfs"));
    }
  }
  int rc = mdb_env_set_mapsize(env_, next);
  if (rc != 0) return LmdbError(rc, "mdb_env_set_mapsize", dir_);
  return absl::OkStatus();
}

absl::Status Env::ShrinkMapForTest(size_t bytes) {
  if (mem_ != nullptr) return absl::FailedPreconditionError("an in-memory Env has no map");
  absl::MutexLock lock(&resize_mu_);
  int rc = mdb_env_set_mapsize(env_, bytes);
  if (rc != 0) return LmdbError(rc, "mdb_env_set_mapsize", dir_);
  return absl::OkStatus();
}

absl::Status Env::UpdateOnce(absl::FunctionRef<absl::Status(WriteTxn&)> fn, bool* map_full,
                             bool* map_resized) {
  *map_full = false;
  *map_resized = false;
  absl::ReaderMutexLock resize_lock(&resize_mu_);
  MDB_txn* txn = nullptr;
  int rc = mdb_txn_begin(env_, nullptr, 0, &txn);
  if (rc == MDB_MAP_RESIZED) {
    *map_resized = true;
    return absl::OkStatus();
  }
  if (rc != 0) return LmdbError(rc, "begin write", dir_);
  absl::Time start = absl::Now();
  WriteTxn w(this, txn);
  absl::Status s = fn(w);
  if (!s.ok()) {
    mdb_txn_abort(txn);
    if (absl::IsResourceExhausted(s) && absl::StrContains(s.message(), "MDB_MAP_FULL")) {
      *map_full = true;
    }
    return s;
  }
  rc = mdb_txn_commit(txn);  // frees txn whatever the outcome
  if (rc == MDB_MAP_FULL) {
    *map_full = true;
    return absl::OkStatus();
  }
  if (rc != 0) return LmdbError(rc, "commit", dir_);
  if (options_.on_commit) options_.on_commit(absl::Now() - start);
  return absl::OkStatus();
}

absl::Status Env::Update(absl::FunctionRef<absl::Status(WriteTxn&)> fn) {
  if (read_only_) {
    return absl::FailedPreconditionError(absl::StrCat(dir_, " is opened read-only"));
  }
  absl::MutexLock write_lock(&write_mu_);
  if (mem_ != nullptr) {
    absl::Time start = absl::Now();
    // The committed tables change only here, under write_mu_, so the
    // transaction reads them without mem_mu_.
    MemoryDelta delta;
    WriteTxn w(this, mem_.get(), &delta);
    absl::Status s = fn(w);
    if (!s.ok()) return s;
    {
      absl::MutexLock lock(&mem_mu_);
      delta.ApplyTo(*mem_);
    }
    if (options_.on_commit) options_.on_commit(absl::Now() - start);
    return absl::OkStatus();
  }
  for (int attempt = 0; attempt < kMaxGrowAttempts; ++attempt) {
    bool map_full = false, map_resized = false;
    absl::Status s = UpdateOnce(fn, &map_full, &map_resized);
    if (map_resized) {
      // Another process grew the map: adopt its size (0 = take it from the
      // file's meta page) and run again.
      absl::MutexLock lock(&resize_mu_);
      int rc = mdb_env_set_mapsize(env_, 0);
      if (rc != 0) return LmdbError(rc, "adopting a resized map", dir_);
      continue;
    }
    if (!map_full) return s;
    absl::Status g = Grow();
    if (!g.ok()) return g;
  }
  return absl::ResourceExhaustedError(absl::StrCat("write to ", dir_, " kept hitting MDB_MAP_FULL"));
}

absl::StatusOr<int> Env::ClearStaleReaders() {
  if (mem_ != nullptr) return 0;
  int dead = 0;
  int rc = mdb_reader_check(env_, &dead);
  if (rc != 0) return LmdbError(rc, "mdb_reader_check", dir_);
  return dead;
}

absl::Status Env::View(absl::FunctionRef<absl::Status(const ReadTxn&)> fn) const {
  if (mem_ != nullptr) {
    absl::ReaderMutexLock lock(&mem_mu_);
    ReadTxn r(this, mem_.get());
    return fn(r);
  }
  for (int attempt = 0;; ++attempt) {
    absl::ReaderMutexLock resize_lock(&resize_mu_);
    MDB_txn* txn = nullptr;
    int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn);
    if (rc == MDB_MAP_RESIZED && attempt < 3) {
      resize_mu_.ReaderUnlock();
      {
        absl::MutexLock lock(&resize_mu_);
        mdb_env_set_mapsize(env_, 0);
      }
      resize_mu_.ReaderLock();
      continue;
    }
    if (rc != 0) return LmdbError(rc, "begin read", dir_);
    ReadTxn r(this, txn);
    absl::Status s = fn(r);
    mdb_txn_abort(txn);
    return s;
  }
}

}  // namespace emud::state_store
