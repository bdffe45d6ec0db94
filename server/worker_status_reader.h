// WorkerStatusReader: reads the WorkerStatus record a worker publishes in its
// device environment (worker_api/status_record.h).
//
// The device environment belongs to the worker: its tables and schema version
// are the worker's business. emud therefore opens it read-only
// (state_store::Env::OpenReadOnly: no table creation, no schema check or
// migration), so the two never disagree about the schema.
#ifndef EMUD_SERVER_WORKER_STATUS_READER_H_
#define EMUD_SERVER_WORKER_STATUS_READER_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "proto/worker_status.pb.h"
#include "state_store/store.h"

namespace emud::server {

class WorkerStatusReader {
 public:
  explicit WorkerStatusReader(std::string env_dir) : dir_(std::move(env_dir)) {}
  WorkerStatusReader(const WorkerStatusReader&) = delete;
  WorkerStatusReader& operator=(const WorkerStatusReader&) = delete;

  // The last committed record; nullopt while the environment, the table or
  // the record does not exist yet. DATA_LOSS if the record does not parse.
  absl::StatusOr<std::optional<emud::internal::WorkerStatus>> Read();

  // Closes the environment (before its directory is removed). Read() reopens.
  void Close() { env_.reset(); }

 private:
  std::string dir_;
  std::unique_ptr<state_store::Env> env_;
};

}  // namespace emud::server

#endif  // EMUD_SERVER_WORKER_STATUS_READER_H_
