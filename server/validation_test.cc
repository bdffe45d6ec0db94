#include "server/validation.h"

#include <unistd.h>

#include <string>

#include "gtest/gtest.h"

namespace emud::server {
namespace {

using emud::internal::DeviceRecord;
using emud::v1::CreateDeviceRequest;

CreateDeviceRequest Req(const std::string& name) {
  CreateDeviceRequest r;
  r.set_name(name);
  r.set_type(emud::v1::DEVICE_TYPE_AVF);
  return r;
}

TEST(MacTest, ParsesAndFormats) {
  auto m = ParseUnicastMac("02:AB:cd:00:11:ff");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(FormatMac(*m), "02:ab:cd:00:11:ff");
  auto dash = ParseUnicastMac("02-00-00-00-00-01");
  ASSERT_TRUE(dash.ok());
  EXPECT_EQ(FormatMac(*dash), "02:00:00:00:00:01");
}

TEST(MacTest, RefusesBadAddresses) {
  for (const char* bad : {"", "02:00:00:00:00", "02:00:00:00:00:0g", "01:00:5e:00:00:01",
                          "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "02:00-00:00:00:01",
                          "02:00:00:00:00:001", "0200.0000.0001xx"}) {
    auto m = ParseUnicastMac(bad);
    EXPECT_FALSE(m.ok()) << bad;
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(m.status().message().find("spec.mac"), std::string::npos);
  }
}

TEST(MacTest, DefaultMacIsStableLocalUnicast) {
  Mac a = DefaultMac("dev0"), b = DefaultMac("dev0"), c = DefaultMac("dev1");
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(a[0], 0x02);
  EXPECT_TRUE(ParseUnicastMac(FormatMac(a)).ok());
  EXPECT_NE(DefaultMac("dev0", 1), a);
}

TEST(BackendTest, ParsesForms) {
  auto l = ParseBackend("loopback", "a");
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->kind, Backend::Kind::kLoopback);
  EXPECT_EQ(ParseBackend("", "a")->kind, Backend::Kind::kLoopback);
  auto t = ParseBackend("tap:emud0", "a");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->kind, Backend::Kind::kTap);
  EXPECT_EQ(t->arg, "emud0");
  auto p = ParseBackend("peer:b", "a");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->kind, Backend::Kind::kPeer);
  EXPECT_EQ(p->arg, "b");
}

TEST(BackendTest, RefusesBadForms) {
  for (const char* bad : {"tap:", "tap:0123456789abcdef", "tap:a/b", "tap:a b", "tap:..",
                          "tap:a:b", "peer:", "peer:a", "peer:-x", "peer:a/b", "vhost:x",
                          "LOOPBACK", "tap:\x01"}) {
    auto b = ParseBackend(bad, "a");
    EXPECT_FALSE(b.ok()) << bad;
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(SocketPathTest, AcceptsCreatableAndRefusesBad) {
  EXPECT_TRUE(ValidateSocketPath("/tmp/x.sock").ok());
  EXPECT_TRUE(ValidateSocketPath("/tmp/does/not/exist/yet/x.sock").ok());
  EXPECT_EQ(ValidateSocketPath("rel/x.sock").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSocketPath("").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSocketPath("/tmp/../x.sock").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSocketPath("/tmp//x.sock").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSocketPath("/tmp/").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSocketPath(std::string("/tmp/a\0b", 8)).code(),
            absl::StatusCode::kInvalidArgument);
  std::string long_path = "/tmp/" + std::string(103, 'x');
  EXPECT_EQ(long_path.size(), 108u);
  EXPECT_EQ(ValidateSocketPath(long_path).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateSocketPath(long_path.substr(0, 107)).ok());
  // A regular file on the way makes the parent uncreatable.
  std::string file = "/tmp/emud_validation_test_" + std::to_string(getpid());
  FILE* f = fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fclose(f);
  EXPECT_EQ(ValidateSocketPath(file + "/x.sock").code(), absl::StatusCode::kFailedPrecondition);
  unlink(file.c_str());
}

TEST(NormalizeTest, FillsDefaults) {
  auto rec = NormalizeCreateRequest(Req("dev0"), "/run/emud/sockets");
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->spec().queue_pairs(), 1u);
  EXPECT_EQ(rec->spec().backend(), "loopback");
  EXPECT_EQ(rec->spec().socket_path(), "/run/emud/sockets/dev0/vfio-user.sock");
  EXPECT_EQ(rec->spec().socket_mode(), 0660u);
  EXPECT_FALSE(rec->spec().has_socket_uid());
  EXPECT_FALSE(rec->spec().has_socket_gid());
  EXPECT_EQ(rec->spec().doorbell(), emud::v1::DOORBELL_MODE_TRAP);
  EXPECT_TRUE(rec->spec().mac().empty());  // assigned by CheckConflictsAndAssignMac
}

TEST(NormalizeTest, RefusesBadFields) {
  struct Case {
    const char* what;
    std::function<void(CreateDeviceRequest&)> mutate;
    const char* needle;
    const char* field;  // the field the error names (WithField)
  };
  std::vector<Case> cases = {
      {"name", [](auto& r) { r.set_name("bad/name"); }, "name", "name"},
      {"empty name", [](auto& r) { r.set_name(""); }, "name", "name"},
      {"type", [](auto& r) { r.set_type(emud::v1::DEVICE_TYPE_UNSPECIFIED); }, "DEVICE_TYPE_AVF", "type"},
      {"type unknown", [](auto& r) { r.set_type(static_cast<emud::v1::DeviceType>(77)); }, "77", "type"},
      {"queues", [](auto& r) { r.mutable_spec()->set_queue_pairs(65); }, "use 1 to 64 (more than 16 only", "spec.queue_pairs"},
      {"mac", [](auto& r) { r.mutable_spec()->set_mac("01:00:00:00:00:00"); }, "spec.mac", "spec.mac"},
      {"backend", [](auto& r) { r.mutable_spec()->set_backend("x"); }, "spec.backend", "spec.backend"},
      {"self peer", [](auto& r) { r.mutable_spec()->set_backend("peer:dev0"); }, "own peer", "spec.backend"},
      {"socket", [](auto& r) { r.mutable_spec()->set_socket_path("x.sock"); }, "spec.socket_path", "spec.socket_path"},
      {"doorbell", [](auto& r) { r.mutable_spec()->set_doorbell(static_cast<emud::v1::DoorbellMode>(9)); },
       "spec.doorbell", "spec.doorbell"},
      {"socket mode x", [](auto& r) { r.mutable_spec()->set_socket_mode(0770); }, "spec.socket_mode", "spec.socket_mode"},
      {"socket mode no owner", [](auto& r) { r.mutable_spec()->set_socket_mode(0060); },
       "including 0600", "spec.socket_mode"},
      {"socket uid -1", [](auto& r) { r.mutable_spec()->set_socket_uid(UINT32_MAX); },
       "leave the field unset", "spec.socket_uid"},
  };
  for (auto& c : cases) {
    CreateDeviceRequest r = Req("dev0");
    c.mutate(r);
    auto rec = NormalizeCreateRequest(r, "/tmp");
    ASSERT_FALSE(rec.ok()) << c.what;
    EXPECT_EQ(rec.status().code(), absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_NE(rec.status().message().find(c.needle), std::string::npos)
        << c.what << ": " << rec.status();
    EXPECT_EQ(FieldOf(rec.status()), c.field) << c.what;
  }
  EXPECT_EQ(FieldOf(absl::InvalidArgumentError("x")), "");
  EXPECT_EQ(FieldOf(WithField(absl::OkStatus(), "name")), "");
}

TEST(NormalizeTest, SocketAccess) {
  // emud --socket-group applies where the request names no group.
  auto rec = NormalizeCreateRequest(Req("dev0"), "/run/emud/sockets", 36u);
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_FALSE(rec->spec().has_socket_uid());
  EXPECT_EQ(rec->spec().socket_gid(), 36u);
  CreateDeviceRequest r = Req("dev0");
  r.mutable_spec()->set_socket_uid(107);
  r.mutable_spec()->set_socket_gid(107);
  r.mutable_spec()->set_socket_mode(0600);
  rec = NormalizeCreateRequest(r, "/run/emud/sockets", 36u);
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->spec().socket_uid(), 107u);
  EXPECT_EQ(rec->spec().socket_gid(), 107u);
  EXPECT_EQ(rec->spec().socket_mode(), 0600u);
}

TEST(NormalizeTest, DefaultSocketPathTooLongSaysWhatToDo) {
  std::string dir = "/tmp/" + std::string(90, 'd');
  auto rec = NormalizeCreateRequest(Req(std::string(40, 'n')), dir);
  ASSERT_FALSE(rec.ok());
  EXPECT_NE(rec.status().message().find("pass spec.socket_path"), std::string::npos);
}

DeviceRecord Rec(const std::string& name, const std::string& backend, const std::string& mac = "") {
  CreateDeviceRequest r = Req(name);
  r.mutable_spec()->set_backend(backend);
  r.mutable_spec()->set_mac(mac);
  auto rec = NormalizeCreateRequest(r, "/tmp/s");
  EXPECT_TRUE(rec.ok()) << rec.status();
  return *rec;
}

TEST(ConflictTest, DuplicatesAreRefused) {
  DeviceRecord a = Rec("a", "tap:t0", "02:00:00:00:00:01");
  std::vector<const DeviceRecord*> existing = {&a};

  DeviceRecord same_name = Rec("a", "loopback");
  EXPECT_EQ(CheckConflictsAndAssignMac(same_name, existing).code(), absl::StatusCode::kAlreadyExists);

  DeviceRecord same_mac = Rec("b", "loopback", "02:00:00:00:00:01");
  EXPECT_EQ(CheckConflictsAndAssignMac(same_mac, existing).code(), absl::StatusCode::kAlreadyExists);

  DeviceRecord same_tap = Rec("b", "tap:t0");
  EXPECT_EQ(CheckConflictsAndAssignMac(same_tap, existing).code(), absl::StatusCode::kAlreadyExists);

  DeviceRecord same_sock = Rec("b", "loopback");
  same_sock.mutable_spec()->set_socket_path(a.spec().socket_path());
  EXPECT_EQ(CheckConflictsAndAssignMac(same_sock, existing).code(), absl::StatusCode::kAlreadyExists);

  DeviceRecord ok = Rec("b", "tap:t1");
  EXPECT_TRUE(CheckConflictsAndAssignMac(ok, existing).ok());
  EXPECT_FALSE(ok.spec().mac().empty());
  EXPECT_NE(ok.spec().mac(), a.spec().mac());
}

TEST(ConflictTest, DefaultMacAvoidsCollisions) {
  DeviceRecord a = Rec("a", "loopback");
  a.mutable_spec()->set_mac(FormatMac(DefaultMac("b")));
  std::vector<const DeviceRecord*> existing = {&a};
  DeviceRecord b = Rec("b", "loopback");
  ASSERT_TRUE(CheckConflictsAndAssignMac(b, existing).ok());
  EXPECT_NE(b.spec().mac(), a.spec().mac());
  EXPECT_EQ(b.spec().mac(), FormatMac(DefaultMac("b", 1)));
}

TEST(ConflictTest, PeersMustPairUp) {
  DeviceRecord a = Rec("a", "peer:b");
  std::vector<const DeviceRecord*> existing = {&a};
  DeviceRecord b_loop = Rec("b", "loopback");
  EXPECT_EQ(CheckConflictsAndAssignMac(b_loop, existing).code(),
            absl::StatusCode::kFailedPrecondition);
  DeviceRecord c = Rec("c", "peer:a");  // a is paired with b
  EXPECT_EQ(CheckConflictsAndAssignMac(c, existing).code(), absl::StatusCode::kFailedPrecondition);
  DeviceRecord b = Rec("b", "peer:a");
  EXPECT_TRUE(CheckConflictsAndAssignMac(b, existing).ok());
}

}  // namespace
}  // namespace emud::server

namespace emud::server {
namespace {

TEST(SocketRootsTest, ExplicitPathsMustLieUnderTheSocketDirOrAnAllowedRoot) {
  auto with_path = [](const std::string& p) {
    emud::v1::CreateDeviceRequest r;
    r.set_name("dev0");
    r.set_type(emud::v1::DEVICE_TYPE_AVF);
    r.mutable_spec()->set_socket_path(p);
    return r;
  };
  // Inside --socket-dir: fine.
  EXPECT_TRUE(NormalizeCreateRequest(with_path("/run/emud/sockets/x/v.sock"), "/run/emud/sockets").ok());
  // Anywhere else: refused, naming the allowed directories and the flag.
  auto bad = NormalizeCreateRequest(with_path("/tmp/x/deep/a/b/x.sock"), "/run/emud/sockets");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("/run/emud/sockets"), std::string::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("--socket-roots"), std::string::npos) << bad.status();
  // A sibling whose name merely starts like the root is outside.
  EXPECT_FALSE(NormalizeCreateRequest(with_path("/run/emud/sockets2/v.sock"), "/run/emud/sockets").ok());
  // An allowed root (emud --socket-roots).
  EXPECT_TRUE(NormalizeCreateRequest(with_path("/var/lib/vms/a.sock"), "/run/emud/sockets",
                                     std::nullopt, {"/var/lib/vms/"})
                  .ok());
  // '..' cannot climb out (normalisation is required first).
  EXPECT_FALSE(NormalizeCreateRequest(with_path("/run/emud/sockets/../x.sock"), "/run/emud/sockets").ok());
}

}  // namespace
}  // namespace emud::server
