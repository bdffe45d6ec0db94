// emuctl: the operator CLI of emud (a gRPC client of emud.v1.DeviceService).
// Run `emuctl --help` for commands, address forms and exit codes.
#include <grpcpp/grpcpp.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>
#include <thread>
#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/socket_access.h"
#include "base/version.h"
#include "ctl/jsonpath.h"
#include "ctl/output.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "proto/emud_v1.grpc.pb.h"
#include "proto/grpc_health_v1.grpc.pb.h"

namespace {

namespace v1 = emud::v1;
using emud::ctl::Format;

constexpr char kDefaultServer[] = "unix:///dev/shm/emud/emud.sock";
constexpr const char* kClientVersion = emud::kVersion;

// Levenshtein distance, for "did you mean" on a mistyped command.
size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// Exit codes (also printed by --help).
enum Exit {
  kOk = 0,
  kUsage = 1,
  kUnreachable = 2,
  kNotFound = 3,
  kAlreadyExists = 4,
  kInvalid = 5,
  kRefused = 6,
  kTimeout = 7,
  kPermission = 8,
  kServerError = 9,
  kDeviceFailed = 10,
};

constexpr char kExitCodes[] =
    "Exit codes:\n"
    "  0   success\n"
    "  1   usage error (unknown command, bad or missing flag)\n"
    "  2   emud unreachable (not running, wrong --server/EMUCTL_SERVER, or shutting down)\n"
    "  3   no such device (NOT_FOUND)\n"
    "  4   name, MAC, socket or TAP interface already used (ALREADY_EXISTS)\n"
    "  5   request refused as invalid (INVALID_ARGUMENT)\n"
    "  6   refused in the device's current state, e.g. guest connected (FAILED_PRECONDITION,\n"
    "      ABORTED)\n"
    "  7   timed out (DEADLINE_EXCEEDED, or --wait ran out of --timeout)\n"
    "  8   permission denied\n"
    "  9   other server error\n"
    "  10  the device went FAILED while waiting (--wait)\n"
    "Server address: --server, else $EMUCTL_SERVER, else unix:///dev/shm/emud/emud.sock.\n"
    "Forms: unix:///abs/path, /abs/path, host:port.\n";

int ExitFor(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::OK: return kOk;
    case grpc::StatusCode::UNAVAILABLE: return kUnreachable;
    case grpc::StatusCode::NOT_FOUND: return kNotFound;
    case grpc::StatusCode::ALREADY_EXISTS: return kAlreadyExists;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE: return kInvalid;
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::ABORTED: return kRefused;
    case grpc::StatusCode::DEADLINE_EXCEEDED: return kTimeout;
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::UNAUTHENTICATED: return kPermission;
    default: return kServerError;
  }
}

// The emuctl flag that sets a request field, or "".
std::string FlagFor(const std::string& field) {
  static const std::map<std::string, std::string> kFlags = {
      {"name", "--name / NAME"},        {"type", "--type"},
      {"spec.mac", "--mac"},            {"spec.queue_pairs", "--queues"},
      {"spec.backend", "--backend"},    {"spec.socket_path", "--socket"},
      {"spec.socket_mode", "--socket-mode"}, {"spec.socket_uid", "--socket-owner"},
      {"spec.socket_gid", "--socket-owner"}, {"spec.doorbell", "--doorbell"},
      {"names", "NAME"},
  };
  auto it = kFlags.find(field);
  return it == kFlags.end() ? "" : it->second;
}

// The field violations of a google.rpc.BadRequest in the status details
// (grpc-status-details-bin), one line each: the field, the emuctl flag that
// sets it, and the description when it says more than the message.
std::string FieldViolations(const grpc::Status& s) {
  if (s.error_details().empty()) return "";
  google::rpc::Status details;
  if (!details.ParseFromString(s.error_details())) return "";
  std::string out;
  for (const auto& any : details.details()) {
    google::rpc::BadRequest bad;
    if (!any.Is<google::rpc::BadRequest>() || !any.UnpackTo(&bad)) continue;
    for (const auto& v : bad.field_violations()) {
      out += "  invalid field: " + v.field();
      if (std::string flag = FlagFor(v.field()); !flag.empty()) out += " (emuctl " + flag + ")";
      if (v.description() != s.error_message()) out += ": " + v.description();
      out += "\n";
    }
  }
  return out;
}

struct Globals {
  std::string server;
  std::string output = "table";
  double timeout = 10;
  Format format = Format::kTable;
  std::optional<emud::ctl::JsonPathTemplate> jsonpath;  // -o jsonpath=
};

std::string GrpcTarget(const std::string& addr) {
  if (absl::StartsWith(addr, "unix:")) return addr;
  if (absl::StartsWith(addr, "/")) return "unix://" + addr;
  return addr;
}

class Client {
 public:
  explicit Client(const Globals& g) : g_(g) {
    channel_ = grpc::CreateChannel(GrpcTarget(g.server), grpc::InsecureChannelCredentials());
    stub_ = v1::DeviceService::NewStub(channel_);
  }
  void Prepare(grpc::ClientContext* ctx) const {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(g_.timeout * 1000)));
  }
  // Prints the error on one line and returns the exit code.
  int Fail(const grpc::Status& s) const {
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE && SocketRefusesUs()) {
      std::cerr << "emuctl: permission denied on emud's socket " << SocketPath()
                << " (run as its owner or in its group, or as root)" << std::endl;
      return kPermission;
    }
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
      std::cerr << "emuctl: cannot reach emud at " << g_.server << ": " << s.error_message()
                << " (is emud running? set --server or EMUCTL_SERVER)" << std::endl;
    } else if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      std::cerr << "emuctl: emud at " << g_.server << " did not answer within " << g_.timeout
                << "s (raise --timeout)" << std::endl;
    } else {
      std::string msg = s.error_message();
      for (char& c : msg) if (c == '\n') c = ' ';
      std::cerr << "emuctl: " << msg << std::endl;
      std::cerr << FieldViolations(s);
    }
    return ExitFor(s.error_code());
  }
  v1::DeviceService::Stub* stub() { return stub_.get(); }
  // The UNIX socket path of --server, or "".
  std::string SocketPath() const {
    std::string t = GrpcTarget(g_.server);
    if (absl::StartsWith(t, "unix://")) return t.substr(7);
    if (absl::StartsWith(t, "unix:")) return t.substr(5);
    return "";
  }
  // gRPC reports a refused connect(2) as UNAVAILABLE whatever errno was:
  // try it to tell EACCES apart.
  bool SocketRefusesUs() const {
    const std::string path = SocketPath();
    if (path.empty() || path.size() >= sizeof(sockaddr_un::sun_path)) return false;
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.data(), path.size());
    const bool denied =
        ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 && errno == EACCES;
    ::close(fd);
    return denied;
  }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }

 private:
  const Globals& g_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DeviceService::Stub> stub_;
};

// Prints `json` (pretty JSON text) in the chosen format; `table` (and
// `wide`, if not empty) are the human forms.
int PrintJson(const Globals& g, const std::string& json, const std::string& table,
              const std::string& wide = "") {
  switch (g.format) {
    case Format::kTable:
      std::cout << table;
      break;
    case Format::kWide:
      std::cout << (wide.empty() ? table : wide);
      break;
    case Format::kJson:
      std::cout << json;
      break;
    case Format::kYaml: {
      auto y = emud::ctl::JsonToYaml(json);
      if (!y.ok()) {
        std::cerr << "emuctl: " << y.status().message() << std::endl;
        return kServerError;
      }
      std::cout << *y;
      break;
    }
    case Format::kJsonPath:
      std::cout << g.jsonpath->Execute(nlohmann::json::parse(json));
      break;
  }
  std::cout.flush();
  return kOk;
}

int Print(const Globals& g, const google::protobuf::Message& m, const std::string& table,
          const std::string& wide = "") {
  return PrintJson(g, emud::ctl::ToJson(m, true), table, wide);
}

// Waits until `name` leaves CREATED (LISTENING or later: ok; FAILED: 10).
int WaitListening(Client& c, const Globals& g, const std::string& name, v1::Device* out) {
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  v1::WatchDevicesRequest req;
  req.add_names(name);
  auto reader = c.stub()->WatchDevices(&ctx, req);
  v1::DeviceEvent ev;
  while (reader->Read(&ev)) {
    *out = ev.device();
    v1::Phase p = ev.device().status().phase();
    if (ev.kind() == v1::DeviceEvent::KIND_DELETED) {
      ctx.TryCancel();
      reader->Finish();
      std::cerr << "emuctl: device " << name << " was deleted while waiting" << std::endl;
      return kNotFound;
    }
    if (p == v1::PHASE_FAILED) {
      ctx.TryCancel();
      reader->Finish();
      std::cerr << "emuctl: device " << name << " FAILED: " << ev.device().status().last_error()
                << std::endl;
      return kDeviceFailed;
    }
    if (p != v1::PHASE_CREATED && p != v1::PHASE_UNSPECIFIED) {
      ctx.TryCancel();
      reader->Finish();
      return kOk;
    }
  }
  grpc::Status s = reader->Finish();
  if (s.ok() || s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    // Say why it is not serving yet, not only that the time ran out.
    std::cerr << "emuctl: device " << name << " is still "
              << v1::Phase_Name(out->status().phase()).substr(6) << " after " << g.timeout
              << "s (raise --timeout)";
    if (!out->status().last_error().empty()) {
      std::cerr << "; last error: " << out->status().last_error();
    }
    std::cerr << std::endl;
    return kTimeout;
  }
  return c.Fail(s);
}

// bash completion from the commands and flags defined above; zsh runs the
// same function through bashcompinit. Device names come from `emuctl list
// -o name` (so from the emud that --server / EMUCTL_SERVER name).
std::string CompletionScript(CLI::App& app, const std::string& shell) {
  std::string out;
  if (shell == "zsh") out += "autoload -U +X bashcompinit && bashcompinit\n";
  std::string cmds, cases;
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    cmds += sub->get_name() + " ";
    std::string flags;
    bool takes_name = false;
    for (const CLI::Option* o : sub->get_options()) {
      if (o->get_positional()) {
        takes_name = takes_name || o->get_name(true) == "NAME";
        continue;
      }
      for (const std::string& l : o->get_lnames()) flags += "--" + l + " ";
    }
    std::string words = "\"" + flags + "\"";
    if (takes_name) words = "\"" + flags + "$(_emuctl_devices)\"";
    if (sub->get_name() == "completion") words = "\"bash zsh\"";
    cases += "    " + sub->get_name() + ") words=" + words + " ;;\n";
  }
  out +=
      "# emuctl completion (emuctl completion " + shell + ")\n"
      "_emuctl_devices() {\n"
      "  emuctl list -o name 2>/dev/null | sed 's|^device/||'\n"
      "}\n"
      "_emuctl() {\n"
      "  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd= words= i\n"
      "  case $prev in\n"
      "    -o|--output) COMPREPLY=($(compgen -W \"table wide json yaml name jsonpath=\" -- \"$cur\")); return ;;\n"
      "    --server|--timeout) return ;;\n"
      "  esac\n"
      "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
      "    case ${COMP_WORDS[i]} in\n"
      "      --server|--timeout|-o|--output) ((i++)) ;;\n"
      "      -*) ;;\n"
      "      *) cmd=${COMP_WORDS[i]}; break ;;\n"
      "    esac\n"
      "  done\n"
      "  case $cmd in\n"
      "    '') words=\"" + cmds + "--server --output --timeout --help\" ;;\n" + cases +
      "  esac\n"
      "  COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n"
      "}\n"
      "complete -F _emuctl emuctl\n";
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  // kubectl's -o=FORMAT (CLI11 would take "=FORMAT" as the value).
  std::vector<std::string> split_args;
  std::vector<char*> args(argv, argv + argc);
  for (int i = 1; i < argc; ++i) {
    if (absl::StartsWith(argv[i], "-o=")) split_args.push_back(argv[i] + 3);
  }
  if (!split_args.empty()) {
    args.clear();
    size_t k = 0;
    for (int i = 0; i < argc; ++i) {
      if (i > 0 && absl::StartsWith(argv[i], "-o=")) {
        args.push_back(const_cast<char*>("-o"));
        args.push_back(split_args[k++].data());
      } else {
        args.push_back(argv[i]);
      }
    }
    argc = static_cast<int>(args.size());
    argv = args.data();
  }
  Globals g;
  if (const char* env = std::getenv("EMUCTL_SERVER"); env != nullptr && *env != '\0') {
    g.server = env;
  } else {
    g.server = kDefaultServer;
  }

  CLI::App app{"emuctl: create, inspect and remove emud's emulated devices."};
  app.footer(kExitCodes);
  app.require_subcommand(1);
  app.fallthrough();
  app.option_defaults()->always_capture_default();
  app.add_option("--server", g.server, "emud address: unix:///path, /path or host:port")
      ->envname("EMUCTL_SERVER");
  app.add_option("-o,--output", g.output,
                 "Output format: table, wide (more columns), json, yaml, name (device/NAME per "
                 "line, for scripts), or jsonpath=TEMPLATE (kubectl's JSONPath over the JSON "
                 "form, e.g. jsonpath='{range .devices[*]}{.name}{\"\\n\"}{end}')")
      ->check([](const std::string& v) -> std::string {
        if (v == "name") return "";
        auto f = emud::ctl::ParseFormat(v);
        return f.ok() ? "" : std::string(f.status().message());
      });
  app.add_option("--timeout", g.timeout, "Seconds to wait for emud's answer")
      ->check(CLI::Range(0.001, 86400.0));

  // create-device
  v1::CreateDeviceRequest create;
  std::string type, mac, backend, socket, doorbell;
  unsigned queues = 0;
  bool wait = false;
  auto* c_create = app.add_subcommand("create-device", "Create a device and start its worker");
  c_create->add_option("--type", type, "Device type: avf (the only one)")
      ->required()
      ->check(CLI::IsMember({"avf"}));
  c_create->add_option("--name", *create.mutable_name(),
                       "Device name: 1-63 of [A-Za-z0-9._-], not starting with . or -")
      ->required();
  c_create->add_option("--mac", mac, "Unicast MAC (default: derived from the name)");
  c_create->add_option("--queues", queues,
                       "Queue pairs, 1-64 (default 1; more than 16 for drivers with LARGE_NUM_QPAIRS)")
      ->default_str("");
  c_create->add_option("--backend", backend,
                       "loopback (default), tap:IFNAME or peer:DEVICE");
  c_create->add_option("--socket", socket,
                       "Absolute vfio-user socket path (default: "
                       "<emud --socket-dir>/NAME/vfio-user.sock)");
  std::string socket_owner, socket_mode;
  c_create->add_option("--socket-owner", socket_owner,
                       "Numeric UID[:GID] (or :GID) of the socket and its directory: the VMM's "
                       "user, e.g. 107 (default: emud's user, emud --socket-group)");
  c_create->add_option("--socket-mode", socket_mode,
                       "Octal socket mode, a subset of 0666 with 0600 (default 0660)");
  c_create->add_option("--doorbell", doorbell, "trap (default) or mmap")
      ->check(CLI::IsMember({"trap", "mmap"}));
  c_create->add_flag("--wait", wait,
                     "Return once the worker serves the socket (LISTENING); exit 10 if FAILED");

  std::string name;
  auto* c_list = app.add_subcommand("list", "List devices");
  auto* c_get = app.add_subcommand("get", "Show one device");
  c_get->add_option("NAME", name, "Device name")->required();
  bool force = false;
  auto* c_delete = app.add_subcommand(
      "delete", "Stop a device's worker and remove the device, its state and socket");
  c_delete->add_option("NAME", name, "Device name")->required();
  c_delete->add_flag("--force", force, "Delete even if a guest is connected");
  auto* c_reset = app.add_subcommand(
      "reset", "Clear a FAILED device (or restart a running one) with a fresh worker");
  c_reset->add_option("NAME", name, "Device name")->required();
  auto* c_stats = app.add_subcommand("stats", "Show a device's counters");
  c_stats->add_option("NAME", name, "Device name")->required();
  std::vector<std::string> watch_names;
  bool skip_initial = false;
  auto* c_watch = app.add_subcommand(
      "watch", "Stream device changes until interrupted (or --timeout, if given)");
  c_watch->add_option("NAME", watch_names, "Only these devices");
  c_watch->add_flag("--skip-initial", skip_initial, "Do not print the current devices first");
  std::string worker_binary;
  auto* c_upgrade = app.add_subcommand("upgrade-worker", "Replace a device's worker process");
  c_upgrade->add_option("NAME", name, "Device name")->required();
  c_upgrade->add_option("--worker-binary", worker_binary,
                        "Run this binary from now on (emud needs --allow-worker-override)");
  auto* c_health = app.add_subcommand("health", "Check emud's gRPC health (exit 0 if SERVING)");
  bool client_only = false;
  auto* c_version = app.add_subcommand(
      "version", "Print emuctl's version and the version of the emud it talks to");
  c_version->add_flag("--client", client_only, "Only emuctl's version (no server needed)");
  std::string shell;
  auto* c_completion = app.add_subcommand(
      "completion",
      "Print a shell completion script: source <(emuctl completion bash), or for zsh\n"
      "source <(emuctl completion zsh) (commands, flags, and device names from emud)");
  c_completion->add_option("SHELL", shell, "bash or zsh")
      ->required()
      ->check(CLI::IsMember({"bash", "zsh"}));

  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    sub->footer("Global flags (--server, -o, --timeout) go before or after the command.");
  }

  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("-", 0) == 0) {
      if (a.find('=') == std::string::npos &&
          (a == "--server" || a == "-o" || a == "--output" || a == "--timeout")) {
        ++i;  // skip the value
      }
      continue;
    }
    bool known = false;
    for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
      known = known || sub->get_name() == a;
    }
    if (!known) {
      std::string best;
      size_t best_d = 3;  // suggest only close matches (or a prefix)
      for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
        const std::string& n = sub->get_name();
        size_t d = absl::StartsWith(n, a) && a.size() >= 3 ? 1 : EditDistance(a, n);
        if (d < best_d) best_d = d, best = n;
      }
      std::cerr << "emuctl: unknown command '" << a << "'";
      if (!best.empty()) std::cerr << "; did you mean '" << best << "'?";
      std::cerr << " (see emuctl --help)" << std::endl;
      return kUsage;
    }
    break;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    std::cerr << "emuctl: " << msg << " (see emuctl --help)" << std::endl;
    return kUsage;
  }
  if (*c_completion) {
    std::cout << CompletionScript(app, shell);
    return kOk;
  }
  const bool names_only = g.output == "name";
  if (names_only) g.output = "table";
  std::string jsonpath;
  auto fmt = emud::ctl::ParseFormat(g.output, &jsonpath);
  if (!fmt.ok()) {
    std::cerr << "emuctl: " << fmt.status().message() << std::endl;
    return kUsage;
  }
  g.format = *fmt;
  if (g.format == Format::kJsonPath) {
    auto t = emud::ctl::JsonPathTemplate::Parse(jsonpath);
    if (!t.ok()) {
      std::cerr << "emuctl: -o " << t.status().message() << std::endl;
      return kUsage;
    }
    g.jsonpath = std::move(*t);
  }
  bool timeout_given = app.get_option("--timeout")->count() > 0;

  Client client(g);
  grpc::ClientContext ctx;
  if (*c_watch) {
    if (timeout_given) client.Prepare(&ctx);
  } else {
    client.Prepare(&ctx);
  }

  if (*c_version) {
    nlohmann::json j = {{"clientVersion", {{"version", kClientVersion}}}};
    if (client_only) return PrintJson(g, j.dump(2) + "\n", emud::ctl::VersionText(kClientVersion, nullptr));
    v1::ServerInfo info;
    grpc::Status s = client.stub()->GetServerInfo(&ctx, v1::GetServerInfoRequest(), &info);
    if (!s.ok()) {
      // The client's version still prints; the exit code says why the
      // server's is missing.
      if (g.format == Format::kTable || g.format == Format::kWide) {
        std::cout << emud::ctl::VersionText(kClientVersion, nullptr) << std::flush;
      } else {
        PrintJson(g, j.dump(2) + "\n", "");
      }
      int rc = client.Fail(s);
      std::cerr << "emuctl: the server version is unknown (emuctl version --client prints "
                   "only the client's)" << std::endl;
      return rc;
    }
    j["serverInfo"] = nlohmann::json::parse(emud::ctl::ToJson(info, false));
    return PrintJson(g, j.dump(2) + "\n", emud::ctl::VersionText(kClientVersion, &info));
  }
  if (*c_create) {
    create.set_type(v1::DEVICE_TYPE_AVF);
    create.mutable_spec()->set_mac(mac);
    create.mutable_spec()->set_queue_pairs(queues);
    create.mutable_spec()->set_backend(backend);
    create.mutable_spec()->set_socket_path(socket);
    if (doorbell == "trap") create.mutable_spec()->set_doorbell(v1::DOORBELL_MODE_TRAP);
    if (doorbell == "mmap") create.mutable_spec()->set_doorbell(v1::DOORBELL_MODE_MMAP);
    if (!socket_owner.empty()) {
      auto o = emud::ParseSocketOwner(socket_owner, "--socket-owner");
      if (!o.ok()) {
        std::cerr << "emuctl: " << o.status().message() << std::endl;
        return kUsage;
      }
      if (o->uid) create.mutable_spec()->set_socket_uid(*o->uid);
      if (o->gid) create.mutable_spec()->set_socket_gid(*o->gid);
    }
    if (!socket_mode.empty()) {
      auto m = emud::ParseSocketMode(socket_mode, "--socket-mode");
      if (!m.ok()) {
        std::cerr << "emuctl: " << m.status().message() << std::endl;
        return kUsage;
      }
      create.mutable_spec()->set_socket_mode(*m);
    }
    v1::Device d;
    grpc::Status s = client.stub()->CreateDevice(&ctx, create, &d);
    if (!s.ok()) return client.Fail(s);
    if (wait) {
      int rc = WaitListening(client, g, d.name(), &d);
      if (rc != kOk) return rc;
    }
    if (names_only) return (std::cout << "device/" << d.name() << std::endl, kOk);
    return Print(g, d, emud::ctl::DeviceTable(d));
  }
  if (*c_list) {
    v1::ListDevicesResponse resp;
    grpc::Status s = client.stub()->ListDevices(&ctx, v1::ListDevicesRequest(), &resp);
    if (!s.ok()) return client.Fail(s);
    std::vector<v1::Device> devs(resp.devices().begin(), resp.devices().end());
    if (names_only) {
      for (const auto& d : devs) std::cout << "device/" << d.name() << "\n";
      std::cout.flush();
      return kOk;
    }
    return Print(g, resp, emud::ctl::DeviceListTable(devs),
                 emud::ctl::DeviceWideTable(devs, absl::Now()));
  }
  if (*c_get) {
    v1::GetDeviceRequest req;
    req.set_name(name);
    v1::Device d;
    grpc::Status s = client.stub()->GetDevice(&ctx, req, &d);
    if (!s.ok()) return client.Fail(s);
    if (names_only) return (std::cout << "device/" << d.name() << std::endl, kOk);
    return Print(g, d, emud::ctl::DeviceTable(d), emud::ctl::DeviceWideTable({d}, absl::Now()));
  }
  if (*c_delete) {
    v1::DeleteDeviceRequest req;
    req.set_name(name);
    req.set_force(force);
    v1::DeleteDeviceResponse resp;
    grpc::Status s = client.stub()->DeleteDevice(&ctx, req, &resp);
    if (!s.ok()) return client.Fail(s);
    if (g.format == Format::kTable || g.format == Format::kWide) {
      std::cout << "deleted " << name << std::endl;
    }
    else return Print(g, resp, "");
    return kOk;
  }
  if (*c_reset) {
    v1::ResetDeviceRequest req;
    req.set_name(name);
    v1::Device d;
    grpc::Status s = client.stub()->ResetDevice(&ctx, req, &d);
    if (!s.ok()) return client.Fail(s);
    return Print(g, d, emud::ctl::DeviceTable(d));
  }
  if (*c_stats) {
    v1::GetDeviceStatsRequest req;
    req.set_name(name);
    v1::DeviceStats st;
    grpc::Status s = client.stub()->GetDeviceStats(&ctx, req, &st);
    if (!s.ok()) return client.Fail(s);
    return Print(g, st, emud::ctl::StatsTable(st));
  }
  if (*c_upgrade) {
    v1::UpgradeWorkerRequest req;
    req.set_name(name);
    req.set_worker_binary(worker_binary);
    v1::Device d;
    grpc::Status s = client.stub()->UpgradeWorker(&ctx, req, &d);
    if (!s.ok()) return client.Fail(s);
    return Print(g, d, emud::ctl::DeviceTable(d));
  }
  if (*c_health) {
    auto stub = grpc::health::v1::Health::NewStub(client.channel());
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    grpc::Status s = stub->Check(&ctx, req, &resp);
    if (!s.ok()) return client.Fail(s);
    std::string st = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status());
    if (g.format == Format::kTable || g.format == Format::kWide) std::cout << st << std::endl;
    else Print(g, resp, "");
    return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? kOk : kUnreachable;
  }
  if (*c_watch) {
    // A watch outlives emud restarts: once it has streamed, a lost emud is
    // retried every second, and the current devices are printed again on
    // reconnection (what changed meanwhile).
    const auto deadline = std::chrono::system_clock::now() +
                          std::chrono::milliseconds(static_cast<int64_t>(g.timeout * 1000));
    bool streamed = false, first = true;
    for (;;) {
    grpc::ClientContext wctx;
    if (timeout_given) wctx.set_deadline(deadline);
    v1::WatchDevicesRequest req;
    for (const auto& n : watch_names) req.add_names(n);
    req.set_skip_initial(skip_initial && !streamed);
    // A fresh channel per attempt: the old one may still hold the
    // connection of the emud that went away.
    Client attempt(g);
    auto reader = attempt.stub()->WatchDevices(&wctx, req);
    v1::DeviceEvent ev;
    while (reader->Read(&ev)) {
      streamed = true;
      switch (g.format) {
        case Format::kTable:
        case Format::kWide:
          std::cout << emud::ctl::EventLine(ev, first);
          break;
        case Format::kJsonPath:
          std::cout << g.jsonpath->Execute(nlohmann::json::parse(emud::ctl::ToJson(ev, false)));
          break;
        case Format::kJson:
          std::cout << emud::ctl::ToJson(ev, false) << "\n";
          break;
        case Format::kYaml: {
          auto y = emud::ctl::ToYaml(ev);
          std::cout << "---\n" << (y.ok() ? *y : "");
          break;
        }
      }
      std::cout.flush();
      first = false;
    }
    grpc::Status s = reader->Finish();
    if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && timeout_given) return kOk;
    // The watch was running (events came, or emud ended it by shutting down).
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE &&
        (streamed || s.error_message() == "emud is shutting down")) {
      streamed = true;
      std::cerr << "emuctl: lost emud at " << g.server << " (" << s.error_message()
                << "); reconnecting" << std::endl;
      std::this_thread::sleep_for(std::chrono::seconds(1));
      continue;
    }
    if (!s.ok()) return client.Fail(s);
    return kOk;
    }
  }
  return kUsage;
}
