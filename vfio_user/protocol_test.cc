#include "vfio_user/protocol.h"

#include <errno.h>

#include <vector>

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

// ---- REGION_WRITE / REGION_WRITE_MULTI decoder ----

std::vector<uint8_t> RegionWritePayload(uint64_t offset, uint32_t region, uint32_t count, size_t data_bytes) {
  std::vector<uint8_t> p;
  AppendStruct(&p, RegionAccess{offset, region, count});
  for (size_t i = 0; i < data_bytes; ++i) p.push_back(static_cast<uint8_t>(0xa0 + i));
  return p;
}

std::vector<uint8_t> WriteMultiPayload(const std::vector<WriteMultiEntry>& entries, uint64_t cnt) {
  std::vector<uint8_t> p;
  AppendStruct(&p, cnt);
  for (const auto& e : entries) AppendStruct(&p, e);
  return p;
}

TEST(RegionWritesTest, RegionWriteIsOneWriteWithItsHeaderAsTheReply) {
  const std::vector<uint8_t> p = RegionWritePayload(0x2000, 3, 4, 4);
  RegionWrites w;
  ASSERT_TRUE(RegionWrites::Decode(kCmdRegionWrite, p, &w));
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].region, 3u);
  EXPECT_EQ(w[0].offset, 0x2000u);
  ASSERT_EQ(w[0].data.size(), 4u);
  EXPECT_EQ(w[0].data.data(), p.data() + sizeof(RegionAccess)) << "a view, not a copy";
  EXPECT_EQ(w[0].data[3], 0xa3);
  EXPECT_EQ(std::vector<uint8_t>(w.reply().begin(), w.reply().end()),
            std::vector<uint8_t>(p.begin(), p.begin() + sizeof(RegionAccess)));
  // count 0 is well-formed (the region check refuses it).
  const std::vector<uint8_t> empty = RegionWritePayload(0, 0, 0, 0);
  ASSERT_TRUE(RegionWrites::Decode(kCmdRegionWrite, empty, &w));
  EXPECT_TRUE(w[0].data.empty());
}

TEST(RegionWritesTest, MalformedRegionWrites) {
  RegionWrites w;
  EXPECT_FALSE(RegionWrites::Decode(kCmdRegionWrite, RegionWritePayload(0, 0, 4, 3), &w));
  EXPECT_FALSE(RegionWrites::Decode(kCmdRegionWrite, RegionWritePayload(0, 0, 4, 5), &w));
  std::vector<uint8_t> short_payload = RegionWritePayload(0, 0, 0, 0);
  short_payload.pop_back();
  EXPECT_FALSE(RegionWrites::Decode(kCmdRegionWrite, short_payload, &w));
  EXPECT_FALSE(RegionWrites::Decode(kCmdRegionWrite, {}, &w));
  // Only the two write commands decode.
  EXPECT_FALSE(RegionWrites::Decode(kCmdRegionRead, RegionWritePayload(0, 0, 4, 4), &w));
}

TEST(RegionWritesTest, WriteMultiEntriesInOrderWithTheCountAsTheReply) {
  std::vector<WriteMultiEntry> e(3);
  e[0] = {0x10, 0, 4, {1, 2, 3, 4}};
  e[1] = {0x18, 1, 8, {1, 2, 3, 4, 5, 6, 7, 8}};
  e[2] = {0x20, 2, 1, {9}};
  const std::vector<uint8_t> p = WriteMultiPayload(e, 3);
  RegionWrites w;
  ASSERT_TRUE(RegionWrites::Decode(kCmdRegionWriteMulti, p, &w));
  ASSERT_EQ(w.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(w[i].region, e[i].region);
    EXPECT_EQ(w[i].offset, e[i].offset);
    EXPECT_EQ(std::vector<uint8_t>(w[i].data.begin(), w[i].data.end()),
              std::vector<uint8_t>(e[i].data, e[i].data + e[i].count));
  }
  EXPECT_EQ(std::vector<uint8_t>(w.reply().begin(), w.reply().end()),
            std::vector<uint8_t>(p.begin(), p.begin() + 8));
  // The largest batch.
  std::vector<WriteMultiEntry> most(kWriteMultiMax, WriteMultiEntry{0, 0, 4, {}});
  most.back().offset = 0x77;
  const std::vector<uint8_t> largest = WriteMultiPayload(most, kWriteMultiMax);
  ASSERT_TRUE(RegionWrites::Decode(kCmdRegionWriteMulti, largest, &w));
  EXPECT_EQ(w.size(), kWriteMultiMax);
  EXPECT_EQ(w[kWriteMultiMax - 1].offset, 0x77u);
}

TEST(RegionWritesTest, MalformedWriteMulti) {
  RegionWrites w;
  std::vector<WriteMultiEntry> two(2, WriteMultiEntry{0, 0, 4, {}});
  EXPECT_FALSE(RegionWrites::Decode(kCmdRegionWriteMulti, WriteMultiPayload({}, 0), &w));      // none
  EXPECT_FALSE(RegionWrites::Decode(kCmdRegionWriteMulti, WriteMultiPayload(two, 3), &w));     // short
  EXPECT_FALSE(RegionWrites::Decode(kCmdRegionWriteMulti, WriteMultiPayload(two, 1), &w));     // long
  EXPECT_FALSE(RegionWrites::Decode(kCmdRegionWriteMulti, WriteMultiPayload(two, uint64_t{1} << 61), &w));
  std::vector<WriteMultiEntry> many(kWriteMultiMax + 1, WriteMultiEntry{0, 0, 4, {}});
  EXPECT_FALSE(RegionWrites::Decode(kCmdRegionWriteMulti, WriteMultiPayload(many, many.size()), &w));
  two[1].count = kWriteMultiData + 1;  // more than an entry holds
  EXPECT_FALSE(RegionWrites::Decode(kCmdRegionWriteMulti, WriteMultiPayload(two, 2), &w));
  std::vector<uint8_t> p = WriteMultiPayload(two, 2);
  p.resize(4);
  EXPECT_FALSE(RegionWrites::Decode(kCmdRegionWriteMulti, p, &w));
}

}  // namespace
}  // namespace emud::vfio_user
