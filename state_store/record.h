// Typed, versioned records over an Env table.
//
// A record is one format byte followed by a serialized protobuf message.
// Protobuf carries field-level evolution (new fields read as defaults); the
// format byte lets a future encoding change be detected instead of misparsed.
#ifndef EMUD_STATE_STORE_RECORD_H_
#define EMUD_STATE_STORE_RECORD_H_

#include <optional>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "state_store/record_codec.h"
#include "state_store/store.h"

namespace emud::state_store {

// A table whose values are records of message type Msg.
template <typename Msg>
class RecordTable {
 public:
  explicit RecordTable(std::string table) : table_(std::move(table)) {}
  const std::string& name() const { return table_; }

  absl::StatusOr<std::optional<Msg>> Get(const ReadTxn& txn, absl::string_view key) const {
    auto raw = txn.Get(table_, key);
    if (!raw.ok()) return raw.status();
    if (!raw->has_value()) return std::optional<Msg>();
    auto msg = DecodeRecord<Msg>(**raw, absl::StrCat(table_, "/", key));
    if (!msg.ok()) return msg.status();
    return std::optional<Msg>(std::move(*msg));
  }
  absl::Status Put(WriteTxn& txn, absl::string_view key, const Msg& msg) const {
    return txn.Put(table_, key, EncodeRecord(msg));
  }
  absl::Status Delete(WriteTxn& txn, absl::string_view key) const { return txn.Delete(table_, key); }
  absl::Status ForEach(const ReadTxn& txn, absl::string_view prefix,
                       absl::FunctionRef<absl::Status(absl::string_view, const Msg&)> fn) const {
    return txn.ForEach(table_, prefix, [&](absl::string_view k, absl::string_view v) -> absl::Status {
      auto msg = DecodeRecord<Msg>(v, absl::StrCat(table_, "/", k));
      if (!msg.ok()) return msg.status();
      return fn(k, *msg);
    });
  }

 private:
  std::string table_;
};

}  // namespace emud::state_store

#endif  // EMUD_STATE_STORE_RECORD_H_
