// Where a worker publishes its status: one emud.internal.WorkerStatus record
// (proto/worker_status.proto) in the device's own LMDB environment,
// state_store::DeviceEnvDir(state_dir, device), table kStatusTable, key
// kStatusKey, stored as a state_store/record.h record.
//
// The worker owns the environment: it creates the table and writes the
// record (dataplane/worker.h: StatusPublisher); emud only reads it,
// read-only, without creating anything (server/worker_status_reader.h).
#ifndef EMUD_WORKER_API_STATUS_RECORD_H_
#define EMUD_WORKER_API_STATUS_RECORD_H_

namespace emud::worker_api {

inline constexpr char kStatusTable[] = "status";
inline constexpr char kStatusKey[] = "worker";

}  // namespace emud::worker_api

#endif  // EMUD_WORKER_API_STATUS_RECORD_H_
