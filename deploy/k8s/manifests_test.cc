// Checks the Kubernetes manifests against the binaries they run: every flag
// the DaemonSet passes to emud exists, every $(VAR) it uses comes from the
// ConfigMap, the probes run `emuctl ... health`, and the state and socket
// directories are host paths.
#include <yaml-cpp/yaml.h>

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <string>

#include "gtest/gtest.h"

namespace {

std::string Runfile(const std::string& rel) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return std::string(srcdir != nullptr ? srcdir : ".") + "/emud/" + rel;
}

std::string Output(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

YAML::Node Load(const std::string& file) { return YAML::LoadFile(Runfile("deploy/k8s/" + file)); }

TEST(ManifestsTest, KustomizationListsEveryManifest) {
  YAML::Node k = Load("kustomization.yaml");
  std::set<std::string> listed;
  for (const auto& r : k["resources"]) listed.insert(r.as<std::string>());
  for (const char* f : {"namespace.yaml", "priorityclass.yaml", "serviceaccount.yaml",
                        "configmap.yaml", "daemonset.yaml", "deviceplugin-daemonset.yaml",
                        "keeper.yaml"}) {
    EXPECT_TRUE(listed.count(f)) << f;
    EXPECT_NO_THROW(Load(f)) << f;
  }
}

TEST(ManifestsTest, DaemonSetMatchesEmudAndConfigMap) {
  YAML::Node ds = Load("daemonset.yaml");
  YAML::Node cm = Load("configmap.yaml");
  ASSERT_EQ(ds["kind"].as<std::string>(), "DaemonSet");
  YAML::Node pod = ds["spec"]["template"]["spec"];
  YAML::Node c = pod["containers"][0];
  ASSERT_TRUE(c);
  EXPECT_TRUE(c["securityContext"]["privileged"].as<bool>());
  EXPECT_TRUE(pod["hostNetwork"].as<bool>());

  // emud runs under emud-init (PID 1), which restarts it without ending the
  // container (and its workers).
  YAML::Node command = c["command"];
  ASSERT_EQ(command.size(), 3u);
  EXPECT_EQ(command[0].as<std::string>(), "/usr/bin/emud-init");
  EXPECT_EQ(command[1].as<std::string>(), "--");
  EXPECT_EQ(command[2].as<std::string>(), "/usr/bin/emud");

  // Every flag exists in emud (flags are spelled with dashes; absl lists
  // them dashed, as the manifests write them).
  std::string help = Output(Runfile("server/emud") + " --helpfull 2>&1");
  ASSERT_NE(help.find("--state-dir"), std::string::npos) << help;
  std::regex var(R"(\$\(([A-Z_]+)\))");
  for (const auto& a : c["args"]) {
    std::string arg = a.as<std::string>();
    ASSERT_EQ(arg.rfind("--", 0), 0u) << arg;
    std::string name = arg.substr(2, arg.find('=') - 2);
    for (char& ch : name) if (ch == '_') ch = '-';
    EXPECT_NE(help.find("--" + name + " "), std::string::npos) << "emud has no flag " << arg;
    for (std::sregex_iterator it(arg.begin(), arg.end(), var), end; it != end; ++it) {
      EXPECT_TRUE(cm["data"][(*it)[1].str()]) << "ConfigMap lacks " << (*it)[1].str();
    }
  }
  EXPECT_EQ(c["envFrom"][0]["configMapRef"]["name"].as<std::string>(),
            cm["metadata"]["name"].as<std::string>());

  // Probes: grpc.health.v1 through emuctl over the UNIX socket.
  for (const char* probe : {"livenessProbe", "readinessProbe", "startupProbe"}) {
    YAML::Node cmd = c[probe]["exec"]["command"];
    ASSERT_TRUE(cmd) << probe;
    EXPECT_EQ(cmd[cmd.size() - 1].as<std::string>(), "health") << probe;
  }
  std::string emuctl_help = Output(Runfile("ctl/emuctl") + " health --help 2>&1");
  EXPECT_NE(emuctl_help.find("health"), std::string::npos);

  // State and sockets on host paths, mounted where the ConfigMap says.
  std::map<std::string, std::string> host_paths, mounts;
  for (const auto& v : pod["volumes"]) {
    if (v["hostPath"]) host_paths[v["name"].as<std::string>()] = v["hostPath"]["path"].as<std::string>();
  }
  for (const auto& m : c["volumeMounts"]) {
    mounts[m["name"].as<std::string>()] = m["mountPath"].as<std::string>();
  }
  std::string state = cm["data"]["EMUD_STATE_DIR"].as<std::string>();
  std::string sockets = cm["data"]["EMUD_SOCKET_DIR"].as<std::string>();
  std::string grpc = cm["data"]["EMUD_GRPC_LISTEN"].as<std::string>();
  bool state_mounted = false, sockets_mounted = false, grpc_mounted = false;
  for (const auto& [name, path] : mounts) {
    if (!host_paths.count(name)) continue;
    state_mounted = state_mounted || state.rfind(path, 0) == 0;
    sockets_mounted = sockets_mounted || sockets.rfind(path, 0) == 0;
    grpc_mounted = grpc_mounted || grpc.rfind("unix://" + path, 0) == 0;
  }
  EXPECT_TRUE(state_mounted);
  EXPECT_TRUE(sockets_mounted);
  EXPECT_TRUE(grpc_mounted);
  EXPECT_EQ(cm["data"]["EMUCTL_SERVER"].as<std::string>(), grpc);
}

// A real validator: every manifest against the Kubernetes API's own types
// (Debian's python3-kubernetes models, generated from the OpenAPI spec):
// unknown fields, wrong types, missing required fields, bad quantities and
// names. It must also reject a broken manifest, or it proves nothing.
TEST(ManifestsTest, ValidateAgainstKubernetesSchema) {
  // Every manifest in the folder and its examples, whoever added it.
  std::string files;
  int count = 0;
  for (const char* sub : {"deploy/k8s", "deploy/k8s/examples"}) {
    for (const auto& e : std::filesystem::directory_iterator(Runfile(sub))) {
      if (e.path().extension() != ".yaml") continue;
      files += " " + e.path().string();
      ++count;
    }
  }
  EXPECT_GE(count, 8) << files;
  const std::string validator = "/usr/bin/python3 " + Runfile("deploy/k8s/validate_manifests.py");
  std::string out = Output(validator + files + " 2>&1; echo rc=$?");
  EXPECT_NE(out.find("rc=0"), std::string::npos) << out;

  const char* tmp = std::getenv("TEST_TMPDIR");
  std::string bad = std::string(tmp != nullptr ? tmp : "/tmp") + "/bad.yaml";
  FILE* f = std::fopen(bad.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs(
      "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n"
      "  selector: {matchLabels: {a: b}}\n  template:\n    spec:\n      containers:\n"
      "        - name: c\n          image: i\n          imagePullPolicyy: Always\n"
      "          ports: [{containerPort: \"80\"}]\n"
      "          resources: {requests: {memory: 1 GB}}\n"
      "  priorityClassName: p\n",
      f);
  std::fclose(f);
  out = Output(validator + " " + bad + " 2>&1; echo rc=$?");
  EXPECT_NE(out.find("rc=1"), std::string::npos) << out;
  EXPECT_NE(out.find("imagePullPolicyy: unknown field"), std::string::npos) << out;
  EXPECT_NE(out.find("containerPort: must be an integer"), std::string::npos) << out;
  EXPECT_NE(out.find("is not a resource quantity"), std::string::npos) << out;
  EXPECT_NE(out.find("spec.priorityClassName: unknown field in V1DaemonSetSpec"), std::string::npos)
      << out;
  // A missing required field is reported too.
  f = std::fopen(bad.c_str(), "w");
  std::fputs("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{image: i}]}\n", f);
  std::fclose(f);
  out = Output(validator + " " + bad + " 2>&1; echo rc=$?");
  EXPECT_NE(out.find("required field 'name' of V1Container is missing"), std::string::npos) << out;
}

// Pod Security: the namespace says which level it enforces (privileged:
// namespace.yaml explains why) and audits/warns at a stricter one.
TEST(ManifestsTest, NamespaceHasPodSecurityLabels) {
  YAML::Node ns = Load("namespace.yaml");
  YAML::Node labels = ns["metadata"]["labels"];
  ASSERT_TRUE(labels);
  EXPECT_EQ(labels["pod-security.kubernetes.io/enforce"].as<std::string>(), "privileged");
  const std::set<std::string> levels = {"privileged", "baseline", "restricted"};
  for (const char* mode : {"audit", "warn"}) {
    std::string key = std::string("pod-security.kubernetes.io/") + mode;
    ASSERT_TRUE(labels[key]) << key;
    EXPECT_TRUE(levels.count(labels[key].as<std::string>())) << key;
    EXPECT_NE(labels[key].as<std::string>(), "privileged") << key << " should be stricter";
  }
  // Both DaemonSets live in it; the emud pod really needs "privileged".
  for (const char* f : {"daemonset.yaml", "deviceplugin-daemonset.yaml"}) {
    EXPECT_EQ(Load(f)["metadata"]["namespace"].as<std::string>(),
              ns["metadata"]["name"].as<std::string>())
        << f;
  }
}

TEST(ManifestsTest, PriorityClassUsedByBothDaemonSets) {
  YAML::Node pc = Load("priorityclass.yaml");
  ASSERT_EQ(pc["kind"].as<std::string>(), "PriorityClass");
  // The highest value a user-defined class may have.
  EXPECT_EQ(pc["value"].as<int64_t>(), 1000000000);
  EXPECT_FALSE(pc["globalDefault"].as<bool>());
  for (const char* f : {"daemonset.yaml", "deviceplugin-daemonset.yaml"}) {
    EXPECT_EQ(Load(f)["spec"]["template"]["spec"]["priorityClassName"].as<std::string>(),
              pc["metadata"]["name"].as<std::string>())
        << f;
  }
}

// Kubernetes quantity -> bytes (binary and decimal suffixes) or millicores.
double Quantity(const std::string& q) {
  static const std::map<std::string, double> suffix = {
      {"", 1},           {"m", 1e-3},      {"k", 1e3},       {"M", 1e6},
      {"G", 1e9},        {"Ki", 1024.0},   {"Mi", 1048576.0}, {"Gi", 1073741824.0},
      {"Ti", 1099511627776.0}};
  size_t i = 0;
  while (i < q.size() && (std::isdigit(static_cast<unsigned char>(q[i])) || q[i] == '.')) ++i;
  auto it = suffix.find(q.substr(i));
  if (i == 0 || it == suffix.end()) return -1;
  return std::stod(q.substr(0, i)) * it->second;
}

// emud's container holds emud and one worker per device: its requests must
// hold 64 devices. Figures measured with 64 idle 4-queue loopback devices on
// the 2-core CI VM (README, Kubernetes): each worker 6.5 MiB RSS (counted
// whole, though its static binary's pages are shared), emud 23 MiB plus
// 6 MiB of tmpfs state (charged to the pod's cgroup), 0.1% of a core in all.
TEST(ManifestsTest, ResourcesFit64Devices) {
  constexpr double kMiB = 1048576.0;
  constexpr double kWorkerMiB = 7;
  constexpr double kEmudMiB = 23 + 6;
  constexpr double kWorkerIdleMilliCpu = 1;  // 10x the measured idle cost
  YAML::Node c = Load("daemonset.yaml")["spec"]["template"]["spec"]["containers"][0];
  YAML::Node req = c["resources"]["requests"], lim = c["resources"]["limits"];
  ASSERT_TRUE(req && lim);
  double mem = Quantity(req["memory"].as<std::string>());
  double mem_limit = Quantity(lim["memory"].as<std::string>());
  double cpu = Quantity(req["cpu"].as<std::string>());
  EXPECT_GE(mem, 64 * kWorkerMiB * kMiB + kEmudMiB * kMiB) << "memory request for 64 devices";
  EXPECT_GE(mem_limit, 2 * mem) << "limit leaves room for traffic, mmap doorbells, TAP stages";
  EXPECT_GE(cpu, 64 * kWorkerIdleMilliCpu * 1e-3 + 0.1) << "cpu request for 64 idle devices";
  // The plugin is small, and bounded.
  YAML::Node p = Load("deviceplugin-daemonset.yaml")["spec"]["template"]["spec"]["containers"][0];
  EXPECT_TRUE(p["resources"]["requests"]["memory"]);
  EXPECT_TRUE(p["resources"]["limits"]["memory"]);
}

// Both DaemonSets run the image tools/image.sh builds, under that name.
TEST(ManifestsTest, ImageIsTheOneImageShBuilds) {
  std::string name = Output("bash " + Runfile("tools/image.sh") + " --print-name 2>&1");
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  ASSERT_NE(name.find("emud"), std::string::npos) << name;
  EXPECT_EQ(name.rfind("localhost/", 0), 0u) << "never a Docker Hub short name: " << name;
  int daemonsets = 0;
  for (const auto& e : std::filesystem::directory_iterator(Runfile("deploy/k8s"))) {
    if (e.path().extension() != ".yaml") continue;
    for (const YAML::Node& doc : YAML::LoadAllFromFile(e.path().string())) {
      if (!doc["kind"] || doc["kind"].as<std::string>() != "DaemonSet") continue;
      ++daemonsets;
      for (const auto& c : doc["spec"]["template"]["spec"]["containers"]) {
        EXPECT_EQ(c["image"].as<std::string>(), name) << e.path();
      }
    }
  }
  EXPECT_GE(daemonsets, 2);
}

TEST(ManifestsTest, DevicePluginMatchesItsFlagsAndKubelet) {
  YAML::Node ds = Load("deviceplugin-daemonset.yaml");
  YAML::Node cm = Load("configmap.yaml");
  YAML::Node pod = ds["spec"]["template"]["spec"];
  YAML::Node c = pod["containers"][0];
  EXPECT_EQ(c["command"][0].as<std::string>(), "/usr/bin/emud-device-plugin");
  std::string help = Output(Runfile("deviceplugin/emud-device-plugin") + " --helpfull 2>&1");
  ASSERT_NE(help.find("--pool-size"), std::string::npos) << help;
  std::regex var(R"(\$\(([A-Z_]+)\))");
  std::map<std::string, std::string> flags;
  for (const auto& a : c["args"]) {
    std::string arg = a.as<std::string>();
    ASSERT_EQ(arg.rfind("--", 0), 0u) << arg;
    std::string name = arg.substr(2, arg.find('=') - 2);
    flags[name] = arg.substr(arg.find('=') + 1);
    for (char& ch : name) if (ch == '_') ch = '-';
    EXPECT_NE(help.find("--" + name + " "), std::string::npos) << "no flag " << arg;
    for (std::sregex_iterator it(arg.begin(), arg.end(), var), end; it != end; ++it) {
      EXPECT_TRUE(cm["data"][(*it)[1].str()]) << "ConfigMap lacks " << (*it)[1].str();
    }
  }
  EXPECT_EQ(c["envFrom"][0]["configMapRef"]["name"].as<std::string>(),
            cm["metadata"]["name"].as<std::string>());
  // kubelet's directory is a host path mounted where --kubelet-dir points.
  std::string kdir = flags["kubelet-dir"];
  EXPECT_EQ(kdir, "/var/lib/kubelet/device-plugins");
  bool mounted = false;
  for (const auto& m : c["volumeMounts"]) {
    if (m["mountPath"].as<std::string>() != kdir) continue;
    for (const auto& v : pod["volumes"]) {
      if (v["name"].as<std::string>() == m["name"].as<std::string>() && v["hostPath"]) {
        mounted = v["hostPath"]["path"].as<std::string>() == kdir;
      }
    }
  }
  EXPECT_TRUE(mounted) << "kubelet's device-plugins directory is not mounted from the host";
  // It reaches emud where emud listens, and needs no capabilities.
  EXPECT_EQ(flags["emud"], "$(EMUCTL_SERVER)");
  EXPECT_FALSE(c["securityContext"]["allowPrivilegeEscalation"].as<bool>());
  EXPECT_EQ(c["securityContext"]["capabilities"]["drop"][0].as<std::string>(), "ALL");
  EXPECT_FALSE(c["securityContext"]["privileged"]);

  // The ConfigMap's template values parse with the plugin's own rules.
  std::string cmd = Runfile("deviceplugin/emud-device-plugin");
  for (const char* key : {"EMUD_DP_RESOURCE", "EMUD_DP_POOL_SIZE", "EMUD_DP_QUEUES",
                          "EMUD_DP_BACKEND", "EMUD_DP_DOORBELL", "EMUD_DP_SOCKET_OWNER",
                          "EMUD_DP_SOCKET_MODE"}) {
    ASSERT_TRUE(cm["data"][key]) << key;
  }
  // --pool-size=0 is refused (exits 1 with a message), so a run that gets
  // past validation to connecting shows the values are accepted: give it a
  // kubelet dir that does not exist and an unreachable emud, and a deadline.
  std::string probe = "timeout 2 " + cmd + " --kubelet-dir=/nonexistent-emud-test/dp" +
                      " --emud=unix:///nonexistent-emud-test/emud.sock" +
                      " --resource=" + cm["data"]["EMUD_DP_RESOURCE"].as<std::string>() +
                      " --pool-size=" + cm["data"]["EMUD_DP_POOL_SIZE"].as<std::string>() +
                      " --queues=" + cm["data"]["EMUD_DP_QUEUES"].as<std::string>() +
                      " --backend=" + cm["data"]["EMUD_DP_BACKEND"].as<std::string>() +
                      " --doorbell=" + cm["data"]["EMUD_DP_DOORBELL"].as<std::string>() +
                      " --socket-owner=" + cm["data"]["EMUD_DP_SOCKET_OWNER"].as<std::string>() +
                      " --socket-mode=" + cm["data"]["EMUD_DP_SOCKET_MODE"].as<std::string>() +
                      " 2>&1; echo rc=$?";
  std::string out = Output(probe);
  EXPECT_NE(out.find("rc=124"), std::string::npos) << "the plugin refused the ConfigMap: " << out;
  out = Output(cmd + " --pool-size=0 2>&1; echo rc=$?");
  EXPECT_NE(out.find("--pool-size 0 is out of range"), std::string::npos) << out;
  out = Output(cmd + " --socket-owner=qemu 2>&1; echo rc=$?");
  EXPECT_NE(out.find("numeric"), std::string::npos) << out;
}

// The example VMM pod asks for the plugin's resource, runs QEMU's
// vfio-user-pci on the socket the plugin names, as the user that owns it,
// and would pass Pod Security "restricted".
TEST(ManifestsTest, ExampleVmmPodUsesThePlugin) {
  YAML::Node pod = Load("examples/vmm-pod.yaml");
  YAML::Node cm = Load("configmap.yaml");
  ASSERT_EQ(pod["kind"].as<std::string>(), "Pod");
  const std::string resource = cm["data"]["EMUD_DP_RESOURCE"].as<std::string>();
  YAML::Node c = pod["spec"]["containers"][0];
  EXPECT_EQ(c["resources"]["limits"][resource].as<std::string>(), "1");
  std::string args;
  for (const auto& a : c["args"]) args += a.as<std::string>();
  EXPECT_NE(args.find("vfio-user-pci"), std::string::npos);
  EXPECT_NE(args.find("${EMUD_SOCKETS_EMUD_IO_AVF}"), std::string::npos)
      << "the env the plugin sets for " << resource;
  EXPECT_NE(args.find("share=on"), std::string::npos) << "guest RAM must be shareable";
  // QEMU runs as the socket's owner, without root.
  std::string owner = cm["data"]["EMUD_DP_SOCKET_OWNER"].as<std::string>();
  YAML::Node sc = pod["spec"]["securityContext"];
  EXPECT_EQ(sc["runAsUser"].as<std::string>(), owner.substr(0, owner.find(':')));
  EXPECT_EQ(sc["runAsGroup"].as<std::string>(), owner.substr(owner.find(':') + 1));
  EXPECT_TRUE(sc["runAsNonRoot"].as<bool>());
  EXPECT_EQ(sc["seccompProfile"]["type"].as<std::string>(), "RuntimeDefault");
  EXPECT_FALSE(c["securityContext"]["allowPrivilegeEscalation"].as<bool>());
  EXPECT_EQ(c["securityContext"]["capabilities"]["drop"][0].as<std::string>(), "ALL");
  for (const auto& v : pod["spec"]["volumes"]) EXPECT_FALSE(v["hostPath"]) << "no hostPath";
}

}  // namespace

namespace {

// Issue 12: the fds live in emud-keeper's own DaemonSet, and emud's rollout
// is a surge whose new pod takes the devices over; nothing on the rollout
// path stops workers.
TEST(ManifestsTest, KeeperAndSurgeRolloutFitTogether) {
  YAML::Node keeper = Load("keeper.yaml");
  ASSERT_EQ(keeper["kind"].as<std::string>(), "DaemonSet");
  YAML::Node kc = keeper["spec"]["template"]["spec"]["containers"][0];
  EXPECT_EQ(kc["command"][0].as<std::string>(), "/usr/bin/emud-keeper");
  std::string keeper_socket, after;
  for (const auto& a : kc["args"]) {
    std::string arg = a.as<std::string>();
    if (arg.rfind("--socket=", 0) == 0) keeper_socket = arg.substr(9);
    if (arg.rfind("--after-handoff=", 0) == 0) after = arg.substr(16);
  }
  EXPECT_EQ(after, "wait") << "an exited keeper container would be restarted and take back";
  ASSERT_FALSE(keeper_socket.empty());
  auto ku = keeper["spec"]["updateStrategy"]["rollingUpdate"];
  EXPECT_EQ(ku["maxSurge"].as<int>(), 1);
  EXPECT_EQ(ku["maxUnavailable"].as<int>(), 0);
  std::string keeper_help = Output(Runfile("fdstore/emud-keeper") + " --helpfull 2>&1");
  EXPECT_NE(keeper_help.find("--after-handoff"), std::string::npos) << keeper_help;

  YAML::Node ds = Load("daemonset.yaml");
  auto u = ds["spec"]["updateStrategy"]["rollingUpdate"];
  EXPECT_EQ(u["maxSurge"].as<int>(), 1);
  EXPECT_EQ(u["maxUnavailable"].as<int>(), 0);
  YAML::Node pod = ds["spec"]["template"]["spec"];
  EXPECT_TRUE(pod["hostPID"].as<bool>()) << "two emuds share LMDB during a surge";
  bool takeover = false, stop_workers = false;
  std::string fd_keeper;
  for (const auto& a : pod["containers"][0]["args"]) {
    std::string arg = a.as<std::string>();
    takeover |= arg == "--takeover";
    stop_workers |= arg == "--stop-workers-on-exit";
    if (arg.rfind("--fd-keeper=", 0) == 0) fd_keeper = arg.substr(12);
  }
  EXPECT_TRUE(takeover);
  EXPECT_FALSE(stop_workers) << "it would reset guests on a rollout";
  EXPECT_EQ(fd_keeper, keeper_socket);
  // Both mount the host path holding the keeper's socket.
  auto mounts_path = [](const YAML::Node& podspec, const std::string& path) {
    for (const auto& v : podspec["volumes"]) {
      if (v["hostPath"] && path.rfind(v["hostPath"]["path"].as<std::string>(), 0) == 0) return true;
    }
    return false;
  };
  EXPECT_TRUE(mounts_path(pod, keeper_socket));
  EXPECT_TRUE(mounts_path(keeper["spec"]["template"]["spec"], keeper_socket));
}

}  // namespace
