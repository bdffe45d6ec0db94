#include "server/worker_status_reader.h"

#include <lmdb.h>
#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "state_store/record.h"
#include "state_store/store.h"
#include "worker_api/status_record.h"

namespace emud::server {

WorkerStatusReader::~WorkerStatusReader() { Close(); }

void WorkerStatusReader::Close() {
  if (env_ != nullptr) mdb_env_close(env_);
  env_ = nullptr;
}

absl::StatusOr<std::optional<emud::internal::WorkerStatus>> WorkerStatusReader::Read() {
  using Result = std::optional<emud::internal::WorkerStatus>;
  if (env_ == nullptr) {
    struct stat st;
    std::string data = dir_ + "/data.mdb";
    if (::stat(data.c_str(), &st) != 0 || st.st_size == 0) return Result();
    MDB_env* env = nullptr;
    int rc = mdb_env_create(&env);
    if (rc != 0) return state_store::LmdbError(rc, "mdb_env_create", dir_);
    mdb_env_set_maxdbs(env, 64);
    rc = mdb_env_open(env, dir_.c_str(), MDB_RDONLY | MDB_NOTLS, 0600);
    if (rc != 0) {
      mdb_env_close(env);
      // A worker that is creating the environment may not have written its
      // first meta pages yet; try again on the next change.
      if (rc == MDB_INVALID || rc == ENOENT) return Result();
      return state_store::LmdbError(rc, "mdb_env_open (read-only)", dir_);
    }
    env_ = env;
  }
  for (int attempt = 0; attempt < 3; ++attempt) {
    MDB_txn* txn = nullptr;
    int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn);
    if (rc == MDB_MAP_RESIZED) {
      mdb_env_set_mapsize(env_, 0);  // adopt the size the worker grew to
      continue;
    }
    if (rc != 0) return state_store::LmdbError(rc, "begin read", dir_);
    MDB_dbi dbi;
    rc = mdb_dbi_open(txn, worker_api::kStatusTable, 0, &dbi);
    if (rc == MDB_NOTFOUND) {
      mdb_txn_abort(txn);
      return Result();
    }
    if (rc != 0) {
      mdb_txn_abort(txn);
      return state_store::LmdbError(rc, "open table status", dir_);
    }
    MDB_val k{sizeof(worker_api::kStatusKey) - 1, const_cast<char*>(worker_api::kStatusKey)}, v;
    rc = mdb_get(txn, dbi, &k, &v);
    if (rc == MDB_NOTFOUND) {
      mdb_txn_abort(txn);
      return Result();
    }
    if (rc != 0) {
      mdb_txn_abort(txn);
      return state_store::LmdbError(rc, "get status/worker", dir_);
    }
    auto msg = state_store::DecodeRecord<emud::internal::WorkerStatus>(
        absl::string_view(static_cast<const char*>(v.mv_data), v.mv_size), "status/worker");
    mdb_txn_abort(txn);
    if (!msg.ok()) return msg.status();
    return Result(std::move(*msg));
  }
  return absl::UnavailableError(absl::StrCat("map of ", dir_, " keeps being resized"));
}

}  // namespace emud::server
