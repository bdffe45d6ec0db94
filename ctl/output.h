// Rendering of emud.v1 messages for emuctl: human tables, JSON through
// protobuf's own JSON printer (proto3 JSON mapping, lowerCamelCase names,
// zero values included), and YAML converted from that JSON.
#ifndef EMUD_CTL_OUTPUT_H_
#define EMUD_CTL_OUTPUT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "google/protobuf/message.h"
#include "proto/emud_v1.pb.h"

namespace emud::ctl {

enum class Format { kTable, kJson, kYaml };

// Parses "table", "json" or "yaml".
absl::StatusOr<Format> ParseFormat(const std::string& s);

// JSON of one message; `pretty` indents it, otherwise it is one line.
std::string ToJson(const google::protobuf::Message& m, bool pretty);
// YAML of one message (a block mapping, no document markers).
absl::StatusOr<std::string> ToYaml(const google::protobuf::Message& m);

// "PHASE_LINK_UP" -> "LINK_UP", "DEVICE_TYPE_AVF" -> "avf", ...
std::string PhaseName(emud::v1::Phase p);
std::string TypeName(emud::v1::DeviceType t);
std::string DoorbellName(emud::v1::DoorbellMode m);

// Tables (each ends with a newline).
std::string DeviceListTable(const std::vector<emud::v1::Device>& devices);
std::string DeviceTable(const emud::v1::Device& d);
std::string StatsTable(const emud::v1::DeviceStats& s);
// One line per watch event; `header` prints the column titles first.
std::string EventLine(const emud::v1::DeviceEvent& e, bool header);

}  // namespace emud::ctl

#endif  // EMUD_CTL_OUTPUT_H_
