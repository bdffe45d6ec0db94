#include "server/worker_status_reader.h"

#include "state_store/record.h"
#include "worker_api/status_record.h"

namespace emud::server {

absl::StatusOr<std::optional<emud::internal::WorkerStatus>> WorkerStatusReader::Read() {
  using Result = std::optional<emud::internal::WorkerStatus>;
  if (env_ == nullptr) {
    auto env = state_store::Env::OpenReadOnly(dir_, {worker_api::kStatusTable});
    if (absl::IsNotFound(env.status())) return Result();  // the worker is creating it
    if (!env.ok()) return env.status();
    env_ = *std::move(env);
  }
  if (!env_->has_table(worker_api::kStatusTable)) {
    Close();  // not created yet when we opened: look again next time
    return Result();
  }
  const state_store::RecordTable<emud::internal::WorkerStatus> table(worker_api::kStatusTable);
  Result out;
  absl::Status s = env_->View([&](const state_store::ReadTxn& txn) -> absl::Status {
    auto rec = table.Get(txn, worker_api::kStatusKey);
    if (!rec.ok()) return rec.status();
    out = *std::move(rec);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

}  // namespace emud::server
