#include "dataplane/status_publisher.h"

#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "base/log.h"
#include "absl/time/clock.h"
#include "avf/virtchnl.h"
#include "google/protobuf/util/message_differencer.h"
#include "vfio_user/protocol.h"
#include "worker_api/status_record.h"

namespace emud::dataplane {

StatusPublisher::StatusPublisher(state_store::Env* env, const avf::Device* device,
                                 const DataPath* datapath, const vfio_user::Session* session)
    : env_(env), device_(device), datapath_(datapath), session_(session),
      table_(worker_api::kStatusTable) {
  absl::Status s = env_->View([&](const state_store::ReadTxn& txn) -> absl::Status {
    auto old = table_.Get(txn, worker_api::kStatusKey);
    if (old.ok() && old->has_value()) {
      status_ = **old;
      status_.set_reattaches(status_.reattaches() + 1);
    }
    return absl::OkStatus();
  });
  (void)s;
  status_.set_pid(getpid());
  base_messages_.insert(status_.vfio_user_messages().begin(), status_.vfio_user_messages().end());
  base_errors_.insert(status_.vfio_user_errors().begin(), status_.vfio_user_errors().end());
  base_vc_.insert(status_.virtchnl_ops().begin(), status_.virtchnl_ops().end());
  base_quarantined_.insert(status_.quarantined().begin(), status_.quarantined().end());
  // The AVF model's counters start at zero in each worker; the data path's
  // live in the queue-state file and are cumulative already.
#define EMUD_BASE_AVF_COUNTER(name, help)                          \
  if (auto it = status_.device_counters().find(#name); it != status_.device_counters().end()) { \
    base_avf_[#name] = it->second;                                 \
  }
  EMUD_AVF_COUNTERS(EMUD_BASE_AVF_COUNTER)
  EMUD_ADMIN_QUEUE_COUNTERS(EMUD_BASE_AVF_COUNTER)
#undef EMUD_BASE_AVF_COUNTER
}

void StatusPublisher::SetReattachTime(absl::Duration d) {
  status_.set_last_reattach_seconds(absl::ToDoubleSeconds(d));
}

void StatusPublisher::SetLastError(std::string error) { status_.set_last_error(std::move(error)); }

internal::WorkerStatus::Phase StatusPublisher::PhaseNow() const {
  if (!session_->connected()) return internal::WorkerStatus::LISTENING;
  bool running = false;
  for (uint32_t q = 0; q < device_->num_queue_pairs(); ++q) {
    running |= device_->rx_queue(q).enabled || device_->tx_queue(q).enabled;
  }
  if (running) return internal::WorkerStatus::LINK_UP;
  if (device_->granted_caps() != 0) return internal::WorkerStatus::DRIVER_READY;
  return internal::WorkerStatus::CONNECTED;
}

absl::Status StatusPublisher::Publish(bool force) {
  absl::Time now = absl::Now();
  auto phase = PhaseNow();
  if (!force && phase == status_.phase() && now - last_write_ < absl::Seconds(1)) return absl::OkStatus();
  if (phase != status_.phase() || status_.phase_seq() == 0) {
    status_.set_phase_seq(status_.phase_seq() + 1);
    auto* change = status_.add_recent_phases();
    change->set_seq(status_.phase_seq());
    change->set_phase(phase);
    constexpr int kKeepPhases = 8;
    if (status_.recent_phases_size() > kKeepPhases) {
      status_.mutable_recent_phases()->DeleteSubrange(0, status_.recent_phases_size() - kKeepPhases);
    }
  }
  status_.set_phase(phase);
  status_.set_updated_unix_nanos(absl::ToUnixNanos(now));
  datapath_->FillCounters(&status_);
  const auto& st = session_->stats();
  // Cumulative over the device's life: a successor starts from the counts
  // its predecessor published (base_*), so they never go back.
  for (size_t c = 0; c < st.by_command.size(); ++c) {
    if (st.by_command[c] == 0 && st.errors_by_command[c] == 0) continue;
    std::string cmd = vfio_user::CommandName(static_cast<uint16_t>(c));
    (*status_.mutable_vfio_user_messages())[cmd] = base_messages_[cmd] + st.by_command[c];
    if (st.errors_by_command[c] != 0 || base_errors_.count(cmd)) {
      (*status_.mutable_vfio_user_errors())[cmd] = base_errors_[cmd] + st.errors_by_command[c];
    }
  }
  uint64_t quarantined_now = 0;
  auto quarantined = [&](const std::string& key, uint64_t n) {
    if (n == 0) return;
    (*status_.mutable_quarantined())[key] = base_quarantined_[key] + n;
    quarantined_now += n;
  };
  for (size_t c = 0; c < st.quarantined_by_command.size(); ++c) {
    quarantined(absl::StrCat("vfio-user/", vfio_user::CommandName(static_cast<uint16_t>(c))),
                st.quarantined_by_command[c]);
  }
  quarantined("virtchnl", device_->counters().vc_quarantined);
  quarantined("tx", datapath_->tx_quarantines());
  if (quarantined_now != quarantined_seen_) {
    quarantined_seen_ = quarantined_now;
    std::string what;
    for (const auto& [key, n] : status_.quarantined()) absl::StrAppend(&what, " ", key, "=", n);
    status_.set_last_error(absl::StrCat(
        "quarantined poison input that kept killing workers (answered with an error, not "
        "applied; see the worker log):", what));
  }
  auto& dc = *status_.mutable_device_counters();
  const avf::DeviceCounters& ac = device_->counters();
#define EMUD_PUBLISH_AVF_COUNTER(name, help) \
  if (ac.name != 0 || base_avf_.count(#name) != 0) dc[#name] = base_avf_[#name] + ac.name;
  EMUD_AVF_COUNTERS(EMUD_PUBLISH_AVF_COUNTER)
#undef EMUD_PUBLISH_AVF_COUNTER
  const avf::AdminQueueCounters& qc = device_->aq_counters();
#define EMUD_PUBLISH_AQ_COUNTER(name, help) \
  if (qc.name != 0 || base_avf_.count(#name) != 0) dc[#name] = base_avf_[#name] + qc.name;
  EMUD_ADMIN_QUEUE_COUNTERS(EMUD_PUBLISH_AQ_COUNTER)
#undef EMUD_PUBLISH_AQ_COUNTER
  const DataPathCounters& pc = datapath_->counters();
#define EMUD_PUBLISH_DATAPATH_COUNTER(name, help) \
  if (uint64_t v = pc.name.load(std::memory_order_relaxed); v != 0) dc[#name] = v;
  EMUD_DATAPATH_COUNTERS(EMUD_PUBLISH_DATAPATH_COUNTER)
#undef EMUD_PUBLISH_DATAPATH_COUNTER
  for (const auto& [key, n] : device_->counters().vc_replies) {
    std::string name = absl::StrCat(avf::vc::OpName(key.first), "/", avf::vc::StatusName(key.second));
    (*status_.mutable_virtchnl_ops())[name] = base_vc_[name] + n;
  }
  // An idle device's record does not change: skip the commit (and emud's
  // re-read it would trigger). Only the timestamp would differ.
  if (!force && last_write_ != absl::InfinitePast()) {
    internal::WorkerStatus a = status_, b = last_published_;
    a.clear_updated_unix_nanos();
    b.clear_updated_unix_nanos();
    if (google::protobuf::util::MessageDifferencer::Equals(a, b)) {
      last_write_ = now;
      return absl::OkStatus();
    }
  }
  absl::Status s = env_->Update([&](state_store::WriteTxn& txn) {
    return table_.Put(txn, worker_api::kStatusKey, status_);
  });
  if (!s.ok()) {
    log::Error(absl::StrCat("status: ", s.ToString()));
    return s;
  }
  last_published_ = status_;
  last_write_ = now;
  return absl::OkStatus();
}

}  // namespace emud::dataplane
