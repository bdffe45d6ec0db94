// Rendering of emud.v1 messages for emuctl: human tables, JSON through
// protobuf's own JSON printer (proto3 JSON mapping, lowerCamelCase names,
// zero values included), and YAML converted from that JSON.
#ifndef EMUD_CTL_OUTPUT_H_
#define EMUD_CTL_OUTPUT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "google/protobuf/message.h"
#include "proto/emud_v1.pb.h"

namespace emud::ctl {

enum class Format { kTable, kWide, kJson, kYaml, kJsonPath };

// Parses "table", "wide", "json", "yaml" or "jsonpath=TEMPLATE" (the
// template is then in *jsonpath; its syntax is checked by
// JsonPathTemplate::Parse).
absl::StatusOr<Format> ParseFormat(const std::string& s, std::string* jsonpath = nullptr);

// JSON of one message; `pretty` indents it, otherwise it is one line.
std::string ToJson(const google::protobuf::Message& m, bool pretty);
// YAML of one message (a block mapping, no document markers).
absl::StatusOr<std::string> ToYaml(const google::protobuf::Message& m);
// YAML of a JSON text.
absl::StatusOr<std::string> JsonToYaml(const std::string& json);

// "PHASE_LINK_UP" -> "LINK_UP", "DEVICE_TYPE_AVF" -> "avf", ...
std::string PhaseName(emud::v1::Phase p);
std::string TypeName(emud::v1::DeviceType t);
std::string DoorbellName(emud::v1::DoorbellMode m);

// Tables (each ends with a newline).
std::string DeviceListTable(const std::vector<emud::v1::Device>& devices);
std::string DeviceTable(const emud::v1::Device& d);
// -o wide: the list's columns and DOORBELL, VIRTCHNL, FAILURES, SOCKET-ACCESS,
// AGE (at `now`) and LAST-ERROR.
std::string DeviceWideTable(const std::vector<emud::v1::Device>& devices, absl::Time now);
// "45s", "3m12s", "5h3m", "2d4h" (kubectl's AGE).
std::string Age(absl::Duration d);
// emuctl version: "Client Version: ..." and, if `server` is given, the
// server's version and the rest of its ServerInfo.
std::string VersionText(const std::string& client_version, const emud::v1::ServerInfo* server);
std::string StatsTable(const emud::v1::DeviceStats& s);
// One line per watch event; `header` prints the column titles first.
std::string EventLine(const emud::v1::DeviceEvent& e, bool header);

}  // namespace emud::ctl

#endif  // EMUD_CTL_OUTPUT_H_
