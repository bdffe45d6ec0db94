// Record values: one format byte followed by a serialized protobuf message.
// Protobuf carries field-level evolution (new fields read as defaults); the
// format byte lets a future encoding change be detected instead of
// misparsed. No storage here (record.h puts records in Env tables), so a
// device model encodes its records without linking LMDB.
#ifndef EMUD_STATE_STORE_RECORD_CODEC_H_
#define EMUD_STATE_STORE_RECORD_CODEC_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace emud::state_store {

inline constexpr char kRecordFormatV1 = 1;

// Serialises `msg` as a record value.
template <typename Msg>
std::string EncodeRecord(const Msg& msg) {
  std::string out(1, kRecordFormatV1);
  msg.AppendToString(&out);
  return out;
}

template <typename Msg>
absl::StatusOr<Msg> DecodeRecord(absl::string_view bytes, absl::string_view what) {
  if (bytes.empty() || bytes[0] != kRecordFormatV1) {
    return absl::DataLossError(absl::StrCat("record ", what, " has unknown format byte ",
                                            bytes.empty() ? -1 : int(bytes[0])));
  }
  Msg msg;
  if (!msg.ParseFromArray(bytes.data() + 1, static_cast<int>(bytes.size() - 1))) {
    return absl::DataLossError(absl::StrCat("record ", what, " does not parse as ",
                                            Msg::descriptor()->full_name()));
  }
  return msg;
}

}  // namespace emud::state_store

#endif  // EMUD_STATE_STORE_RECORD_CODEC_H_
