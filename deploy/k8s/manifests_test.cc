// Checks the Kubernetes manifests against the binaries they run: every flag
// the DaemonSet passes to emud exists, every $(VAR) it uses comes from the
// ConfigMap, the probes run `emuctl ... health`, and the state and socket
// directories are host paths.
#include <yaml-cpp/yaml.h>

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
  for (const char* f : {"namespace.yaml", "serviceaccount.yaml", "configmap.yaml", "daemonset.yaml"}) {
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
  // them with underscores).
  std::string help = Output(Runfile("server/emud") + " --helpfull 2>&1");
  ASSERT_NE(help.find("--state_dir"), std::string::npos) << help;
  std::regex var(R"(\$\(([A-Z_]+)\))");
  for (const auto& a : c["args"]) {
    std::string arg = a.as<std::string>();
    ASSERT_EQ(arg.rfind("--", 0), 0u) << arg;
    std::string name = arg.substr(2, arg.find('=') - 2);
    for (char& ch : name) if (ch == '-') ch = '_';
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

}  // namespace
