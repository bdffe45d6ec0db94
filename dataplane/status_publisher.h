// StatusPublisher: the worker's side of the status record
// (worker_api/status_record.h): an internal.WorkerStatus with the worker's
// pid, phase, counters and last error, written to the device environment.
//
// Counters are cumulative over the device's life: a publisher starts from
// the record its predecessor published (reattaches + 1) and adds what this
// worker's session, device and data path counted, so emud's counters never
// go back across a worker's death. Phase changes are numbered (phase_seq)
// and the last eight kept, so emud also sees phases shorter than its read
// interval.
//
// Single-threaded: the worker's loop thread only.
#ifndef EMUD_DATAPLANE_STATUS_PUBLISHER_H_
#define EMUD_DATAPLANE_STATUS_PUBLISHER_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/time/time.h"
#include "avf/device.h"
#include "dataplane/datapath.h"
#include "proto/worker_status.pb.h"
#include "state_store/record.h"
#include "state_store/store.h"
#include "vfio_user/session.h"

namespace emud::dataplane {

class StatusPublisher {
 public:
  // Reads the predecessor's record from `env` (none, or an unreadable one:
  // start from zero) and stamps this process's pid. Publishes nothing yet.
  // Every pointer must outlive the publisher; `env` must have been opened
  // with worker_api::kStatusTable among its tables.
  StatusPublisher(state_store::Env* env, const avf::Device* device, const DataPath* datapath,
                  const vfio_user::Session* session);

  StatusPublisher(const StatusPublisher&) = delete;
  StatusPublisher& operator=(const StatusPublisher&) = delete;

  // Refreshes the record from the session, device and data path and commits
  // it. Unless `force`, a record whose phase did not change is written at
  // most once per second, and not at all if nothing but its timestamp would
  // change (an idle device costs no commit, and emud no re-read). A failed
  // commit is logged to stderr and returned (RESOURCE_EXHAUSTED on a full
  // tmpfs); the next change or forced call writes again.
  absl::Status Publish(bool force);

  // How long this worker took to resume its predecessor's session (kept in
  // the record; the next Publish writes it).
  void SetReattachTime(absl::Duration d);
  // The record's last_error (the next Publish writes it).
  void SetLastError(std::string error);

  // The record as last refreshed.
  const internal::WorkerStatus& status() const { return status_; }

 private:
  internal::WorkerStatus::Phase PhaseNow() const;

  state_store::Env* env_;
  const avf::Device* device_;
  const DataPath* datapath_;
  const vfio_user::Session* session_;
  state_store::RecordTable<internal::WorkerStatus> table_;
  internal::WorkerStatus status_;
  // What predecessors counted; this worker's session and device count from 0.
  std::map<std::string, uint64_t> base_messages_, base_errors_, base_vc_, base_quarantined_,
      base_avf_;
  uint64_t quarantined_seen_ = 0;
  absl::Time last_write_ = absl::InfinitePast();
  internal::WorkerStatus last_published_;
};

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_STATUS_PUBLISHER_H_
