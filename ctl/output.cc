#include "ctl/output.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"

namespace emud::ctl {
namespace {

namespace v1 = emud::v1;
using google::protobuf::util::TimeUtil;

// Left-aligned columns separated by two spaces.
std::string Columns(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& r : rows) {
    if (width.size() < r.size()) width.resize(r.size(), 0);
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  std::string out;
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

std::string Time(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  return TimeUtil::ToString(t);
}

std::string Version(const v1::DeviceStatus& s) {
  if (!s.has_virtchnl_version()) return "-";
  return absl::StrCat(s.virtchnl_version().major(), ".", s.virtchnl_version().minor());
}

void EmitYaml(YAML::Emitter& out, const nlohmann::json& j) {
  if (j.is_object()) {
    out << YAML::BeginMap;
    for (auto it = j.begin(); it != j.end(); ++it) {
      out << YAML::Key << it.key() << YAML::Value;
      EmitYaml(out, it.value());
    }
    out << YAML::EndMap;
  } else if (j.is_array()) {
    out << YAML::BeginSeq;
    for (const auto& e : j) EmitYaml(out, e);
    out << YAML::EndSeq;
  } else if (j.is_string()) {
    out << YAML::DoubleQuoted << j.get<std::string>();
  } else if (j.is_boolean()) {
    out << j.get<bool>();
  } else if (j.is_number_integer()) {
    out << j.get<int64_t>();
  } else if (j.is_number_unsigned()) {
    out << j.get<uint64_t>();
  } else if (j.is_number_float()) {
    out << j.get<double>();
  } else {
    out << YAML::Null;
  }
}

}  // namespace

absl::StatusOr<Format> ParseFormat(const std::string& s, std::string* jsonpath) {
  if (s == "table") return Format::kTable;
  if (s == "wide") return Format::kWide;
  if (s == "json") return Format::kJson;
  if (s == "yaml") return Format::kYaml;
  if (s.rfind("jsonpath=", 0) == 0) {
    if (jsonpath != nullptr) *jsonpath = s.substr(9);
    return Format::kJsonPath;
  }
  if (s == "jsonpath") {
    return absl::InvalidArgumentError(
        "output format jsonpath needs a template: -o jsonpath='{.name}'");
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "output format '", s, "' is not one of table, wide, json, yaml, name, jsonpath=TEMPLATE"));
}

std::string ToJson(const google::protobuf::Message& m, bool pretty) {
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = pretty;
  o.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  if (pretty && (out.empty() || out.back() != '\n')) out += "\n";
  return out;
}

absl::StatusOr<std::string> ToYaml(const google::protobuf::Message& m) {
  return JsonToYaml(ToJson(m, false));
}

absl::StatusOr<std::string> JsonToYaml(const std::string& json) {
  nlohmann::json j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InternalError("protobuf printed invalid JSON");
  YAML::Emitter out;
  EmitYaml(out, j);
  if (!out.good()) return absl::InternalError(absl::StrCat("YAML: ", out.GetLastError()));
  return std::string(out.c_str()) + "\n";
}

std::string PhaseName(v1::Phase p) {
  std::string n = v1::Phase_Name(p);
  return n.rfind("PHASE_", 0) == 0 ? n.substr(6) : absl::StrCat(int(p));
}

std::string TypeName(v1::DeviceType t) {
  std::string n = v1::DeviceType_Name(t);
  return n.rfind("DEVICE_TYPE_", 0) == 0 ? absl::AsciiStrToLower(n.substr(12)) : absl::StrCat(int(t));
}

std::string DoorbellName(v1::DoorbellMode m) {
  std::string n = v1::DoorbellMode_Name(m);
  return n.rfind("DOORBELL_MODE_", 0) == 0 ? absl::AsciiStrToLower(n.substr(14))
                                           : absl::StrCat(int(m));
}

std::string DeviceListTable(const std::vector<v1::Device>& devices) {
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "TYPE", "PHASE", "PID", "RESTARTS", "MAC", "QUEUES", "BACKEND", "SOCKET"}};
  for (const auto& d : devices) {
    rows.push_back({d.name(), TypeName(d.type()), PhaseName(d.status().phase()),
                    d.status().worker_pid() ? absl::StrCat(d.status().worker_pid()) : "-",
                    absl::StrCat(d.status().restart_count()), d.spec().mac(),
                    absl::StrCat(d.spec().queue_pairs()), d.spec().backend(),
                    d.spec().socket_path()});
  }
  return Columns(rows);
}

std::string Age(absl::Duration d) {
  int64_t s = absl::ToInt64Seconds(d);
  if (s < 0) s = 0;
  if (s < 120) return absl::StrCat(s, "s");
  if (s < 3600) return s % 60 ? absl::StrCat(s / 60, "m", s % 60, "s") : absl::StrCat(s / 60, "m");
  if (s < 86400) {
    int64_t m = (s % 3600) / 60;
    return m ? absl::StrCat(s / 3600, "h", m, "m") : absl::StrCat(s / 3600, "h");
  }
  int64_t h = (s % 86400) / 3600;
  return h ? absl::StrCat(s / 86400, "d", h, "h") : absl::StrCat(s / 86400, "d");
}

std::string DeviceWideTable(const std::vector<v1::Device>& devices, absl::Time now) {
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "TYPE", "PHASE", "PID", "RESTARTS", "FAILURES", "MAC", "QUEUES", "BACKEND",
       "DOORBELL", "VIRTCHNL", "SOCKET", "SOCKET-ACCESS", "AGE", "LAST-ERROR"}};
  for (const auto& d : devices) {
    const auto& s = d.status();
    const auto& c = s.create_time();
    rows.push_back(
        {d.name(), TypeName(d.type()), PhaseName(s.phase()),
         s.worker_pid() ? absl::StrCat(s.worker_pid()) : "-", absl::StrCat(s.restart_count()),
         absl::StrCat(s.consecutive_failures()), d.spec().mac(),
         absl::StrCat(d.spec().queue_pairs()), d.spec().backend(),
         DoorbellName(d.spec().doorbell()), Version(s), d.spec().socket_path(),
         absl::StrFormat("%s:%s/%04o",
                         d.spec().has_socket_uid() ? absl::StrCat(d.spec().socket_uid()) : "emud",
                         d.spec().has_socket_gid() ? absl::StrCat(d.spec().socket_gid()) : "emud",
                         d.spec().socket_mode() ? d.spec().socket_mode() : 0660u),
         c.seconds() == 0 && c.nanos() == 0
             ? "-"
             : Age(now - absl::FromUnixSeconds(c.seconds()) - absl::Nanoseconds(c.nanos())),
         s.last_error().empty() ? "-" : s.last_error()});
  }
  return Columns(rows);
}

std::string VersionText(const std::string& client_version, const v1::ServerInfo* server) {
  if (server == nullptr) return absl::StrCat("Client Version: ", client_version, "\n");
  std::vector<std::vector<std::string>> rows = {
      {"Client Version:", client_version},
      {"Server Version:", server->version()},
      {"Server Build:", absl::StrCat(server->build_type(), " (gRPC ", server->grpc_version(),
                                     ", protobuf ", server->protobuf_version(), ")")},
      {"Server Started:", absl::StrCat(Time(server->start_time()), " (pid ", server->pid(), ")")},
      {"State Directory:", server->state_dir()},
      {"Socket Directory:", server->socket_dir()},
      {"Devices:", absl::StrCat(server->device_count())},
  };
  return Columns(rows);
}

std::string DeviceTable(const v1::Device& d) {
  const auto& s = d.status();
  std::vector<std::vector<std::string>> rows = {
      {"Name:", d.name()},
      {"Type:", TypeName(d.type())},
      {"Phase:", PhaseName(s.phase())},
      {"Worker pid:", s.worker_pid() ? absl::StrCat(s.worker_pid()) : "-"},
      {"Restarts:", absl::StrCat(s.restart_count())},
      {"Consecutive failures:", absl::StrCat(s.consecutive_failures())},
      {"virtchnl version:", Version(s)},
      {"Last error:", s.last_error().empty() ? "-" : s.last_error()},
      {"MAC:", d.spec().mac()},
      {"Queue pairs:", absl::StrCat(d.spec().queue_pairs())},
      {"Backend:", d.spec().backend()},
      {"Socket:", d.spec().socket_path()},
      {"Socket access:",
       absl::StrFormat("%s:%s %04o",
                       d.spec().has_socket_uid() ? absl::StrCat(d.spec().socket_uid()) : "emud",
                       d.spec().has_socket_gid() ? absl::StrCat(d.spec().socket_gid()) : "emud",
                       d.spec().socket_mode() ? d.spec().socket_mode() : 0660u)},
      {"Doorbell:", DoorbellName(d.spec().doorbell())},
      {"Created:", Time(s.create_time())},
      {"Phase since:", Time(s.phase_time())},
      {"Worker started:", Time(s.worker_start_time())},
  };
  return Columns(rows);
}

std::string StatsTable(const v1::DeviceStats& st) {
  std::string out = absl::StrCat("Device: ", st.name(), "  restarts: ", st.worker_restarts(),
                                 "  reattaches: ", st.reattaches(), "  updated: ",
                                 Time(st.update_time()), "\n\n");
  std::vector<std::vector<std::string>> rows = {
      {"QUEUE", "DIR", "PACKETS", "BYTES", "DROPS", "ERRORS"}};
  auto add = [&](const auto& list, const char* dir) {
    for (const auto& q : list) {
      rows.push_back({absl::StrCat(q.queue()), dir, absl::StrCat(q.packets()),
                      absl::StrCat(q.bytes()), absl::StrCat(q.drops()), absl::StrCat(q.errors())});
    }
  };
  add(st.rx(), "rx");
  add(st.tx(), "tx");
  out += Columns(rows);
  auto map_rows = [&](const char* title, const auto& m) {
    if (m.empty()) return;
    std::vector<std::pair<std::string, uint64_t>> sorted(m.begin(), m.end());
    std::sort(sorted.begin(), sorted.end());
    std::vector<std::vector<std::string>> r = {{title, "COUNT"}};
    for (const auto& [k, v] : sorted) r.push_back({k, absl::StrCat(v)});
    out += "\n" + Columns(r);
  };
  map_rows("VFIO-USER MESSAGE", st.vfio_user_messages());
  map_rows("VFIO-USER ERROR", st.vfio_user_errors());
  map_rows("VIRTCHNL OP/STATUS", st.virtchnl_ops());
  return out;
}

std::string EventLine(const v1::DeviceEvent& e, bool header) {
  std::string kind = v1::DeviceEvent::Kind_Name(e.kind());
  if (kind.rfind("KIND_", 0) == 0) kind = kind.substr(5);
  const auto& d = e.device();
  std::string line = absl::StrFormat(
      "%-30s  %-8s  %-20s  %-12s  %-8s  %-8s  %s", Time(e.time()), kind, d.name(),
      PhaseName(d.status().phase()),
      d.status().worker_pid() ? absl::StrCat(d.status().worker_pid()) : "-",
      absl::StrCat(d.status().restart_count()),
      d.status().last_error().empty() ? "-" : d.status().last_error());
  std::string out;
  if (header) {
    out = absl::StrFormat("%-30s  %-8s  %-20s  %-12s  %-8s  %-8s  %s\n", "TIME", "EVENT", "NAME",
                          "PHASE", "PID", "RESTARTS", "LAST_ERROR");
  }
  return out + line + "\n";
}

}  // namespace emud::ctl
