#include "vfio_user/protocol.h"

#include <errno.h>

#include "gtest/gtest.h"

namespace emud::vfio_user {
namespace {

TEST(CapabilitiesTest, DefaultsWhenAbsent) {
  for (const char* js : {"{}", R"({"capabilities":{}})", R"({"other":1})"}) {
    auto c = ParseCapabilities(js);
    ASSERT_TRUE(c.ok()) << js;
    EXPECT_EQ(c->max_msg_fds, 1u);
    EXPECT_EQ(c->max_data_xfer_size, 1u << 20);
    EXPECT_EQ(c->pgsizes, 4096u);
    EXPECT_EQ(c->max_dma_maps, 65535u);
    EXPECT_FALSE(c->write_multiple);
    EXPECT_FALSE(c->twin_socket_supported);
    EXPECT_FALSE(c->migration_pgsize.has_value());
  }
}

TEST(CapabilitiesTest, QemuCapsIncludingLegacyMigration) {
  auto c = ParseCapabilities(
      R"({"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,)"
      R"("max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true,"future_key":[1]}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->max_msg_fds, 16u);
  EXPECT_TRUE(c->write_multiple);
  EXPECT_EQ(*c->migration_pgsize, 4096u);
  EXPECT_EQ(*c->migration_max_bitmap_size, 268435456u);
}

TEST(CapabilitiesTest, TwinSocket) {
  auto c = ParseCapabilities(R"({"capabilities":{"twin_socket":{"supported":true,"fd_index":0}}})");
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->twin_socket_supported);
  EXPECT_EQ(*c->twin_socket_fd_index, 0u);
}

TEST(CapabilitiesTest, Invalid) {
  for (const char* js : {"", "{", "[]", "null", "\"x\"", R"({"capabilities":[]})",
                         R"({"capabilities":{"max_msg_fds":1.5}})", R"({"capabilities":{"max_msg_fds":4294967296}})",
                         R"({"capabilities":{"max_data_xfer_size":0}})", R"({"capabilities":{"pgsizes":-4096}})",
                         R"({"capabilities":{"write_multiple":"true"}})", R"({"capabilities":{"twin_socket":true}})",
                         R"({"capabilities":{"twin_socket":{"supported":1}}})",
                         R"({"capabilities":{"migration":{"pgsize":"4k"}}})"}) {
    EXPECT_FALSE(ParseCapabilities(js).ok()) << js;
  }
}

TEST(CapabilitiesTest, EncodeRoundTripAndMinimal) {
  Capabilities c;
  c.max_msg_fds = 16;
  c.max_dma_maps = 1024;
  c.write_multiple = true;
  c.migration_pgsize = 4096;
  auto full = EncodeCapabilities(c, false);
  auto back = ParseCapabilities(full);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->max_msg_fds, 16u);
  EXPECT_EQ(back->max_dma_maps, 1024u);
  EXPECT_TRUE(back->write_multiple);
  EXPECT_EQ(*back->migration_pgsize, 4096u);
  auto minimal = EncodeCapabilities(c, true);
  EXPECT_LT(minimal.size(), full.size());
  EXPECT_EQ(minimal.find("pgsizes"), std::string::npos);
  auto m = ParseCapabilities(minimal);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->max_msg_fds, 16u);
  EXPECT_EQ(m->pgsizes, 4096u);  // default
}

TEST(VersionCodecTest, RoundTripAndValidation) {
  auto bytes = EncodeVersion({0, 3, std::string("{}")});
  ASSERT_EQ(bytes.size(), 7u);
  EXPECT_EQ(bytes.back(), 0);
  auto v = DecodeVersion(bytes);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->minor, 3);
  EXPECT_EQ(*v->json, "{}");
  EXPECT_FALSE(DecodeVersion(absl::MakeConstSpan(bytes.data(), 3)).ok());
  bytes.back() = '}';
  EXPECT_FALSE(DecodeVersion(bytes).ok());  // not NUL-terminated
  std::vector<uint8_t> embedded = {0, 0, 0, 0, '{', 0, '}', 0};
  EXPECT_FALSE(DecodeVersion(embedded).ok());
  auto nojson = DecodeVersion(EncodeVersion({0, 0, std::nullopt}));
  ASSERT_TRUE(nojson.ok());
  EXPECT_FALSE(nojson->json.has_value());
}

TEST(ErrnoTest, CarriedAndMapped) {
  EXPECT_EQ(StatusToErrno(absl::OkStatus()), 0);
  EXPECT_EQ(StatusToErrno(ErrnoStatus(EEXIST, "x")), EEXIST);
  EXPECT_EQ(StatusToErrno(ErrnoStatus(E2BIG, "x")), E2BIG);
  EXPECT_EQ(ErrnoStatus(ENOENT, "x").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(StatusToErrno(absl::InvalidArgumentError("x")), EINVAL);
  EXPECT_EQ(StatusToErrno(absl::UnimplementedError("x")), ENOTSUP);
  EXPECT_EQ(StatusToErrno(absl::DataLossError("x")), EIO);
}

TEST(LoadStructTest, Bounds) {
  std::vector<uint8_t> b(20, 1);
  DmaMap m;
  EXPECT_FALSE(LoadStruct(b, 0, &m));
  RegionAccess a;
  EXPECT_TRUE(LoadStruct(b, 4, &a));
  EXPECT_FALSE(LoadStruct(b, 5, &a));
  EXPECT_FALSE(LoadStruct(b, ~size_t{0}, &a));
}

}  // namespace
}  // namespace emud::vfio_user
