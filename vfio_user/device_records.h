// The records a device model persists (PciDevice::Save / Restore), under keys
// of its own. Storage-neutral, as Firecracker's persist knows no storage: the
// vfio-user session implements them over its state_store transaction (in the
// device's RecordNamespace()), tests and fuzzers over a map. A device never
// learns where its records live or how they are committed.
#ifndef EMUD_VFIO_USER_DEVICE_RECORDS_H_
#define EMUD_VFIO_USER_DEVICE_RECORDS_H_

#include <functional>
#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace emud::vfio_user {

class DeviceRecordReader {
 public:
  virtual ~DeviceRecordReader() = default;
  // The value stored under `key`, or nullopt if there is none; an error only
  // if the storage itself failed. The view stays valid until the next Put
  // on this object.
  virtual absl::StatusOr<std::optional<absl::string_view>> Get(absl::string_view key) const = 0;
};

class DeviceRecordWriter : public DeviceRecordReader {
 public:
  // Stores `value` under `key`, replacing what was there. Get sees it at
  // once; it becomes durable when the transport commits (Save runs inside
  // the commit of the request whose effect it records). An error aborts
  // that commit: Save must have no effect outside the records.
  virtual absl::Status Put(absl::string_view key, absl::string_view value) = 0;
};

// Records in memory: for tests, fuzzers and tools.
class MapDeviceRecords final : public DeviceRecordWriter {
 public:
  absl::StatusOr<std::optional<absl::string_view>> Get(absl::string_view key) const override {
    auto it = records_.find(key);
    if (it == records_.end()) return std::optional<absl::string_view>();
    return std::optional<absl::string_view>(it->second);
  }
  absl::Status Put(absl::string_view key, absl::string_view value) override {
    ++puts_;
    records_[std::string(key)] = std::string(value);
    return absl::OkStatus();
  }
  size_t size() const { return records_.size(); }
  // Puts since construction (a Save that found nothing changed adds none).
  size_t puts() const { return puts_; }
  const std::map<std::string, std::string, std::less<>>& all() const { return records_; }

 private:
  std::map<std::string, std::string, std::less<>> records_;
  size_t puts_ = 0;
};

}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_DEVICE_RECORDS_H_
