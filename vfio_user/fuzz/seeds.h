// Seed inputs for the session fuzzer (format: see session_fuzzer.cc), built
// from valid and near-valid request sequences.
#ifndef EMUD_VFIO_USER_FUZZ_SEEDS_H_
#define EMUD_VFIO_USER_FUZZ_SEEDS_H_

#include <string>
#include <vector>

#include "vfio_user/protocol.h"

namespace emud::vfio_user::fuzz {

class SeedBuilder {
 public:
  explicit SeedBuilder(uint8_t mode) { out_.push_back(static_cast<char>(mode)); }
  // Appends one message as a chunk.
  template <typename T>
  SeedBuilder& Msg(uint16_t cmd, const T& payload, uint8_t tag = 0x80, uint32_t flags = 0,
                   const std::vector<uint8_t>& extra = {}) {
    std::vector<uint8_t> p;
    AppendStruct(&p, payload);
    AppendBytes(&p, extra);
    return Raw(cmd, p, tag, flags);
  }
  SeedBuilder& Raw(uint16_t cmd, const std::vector<uint8_t>& payload, uint8_t tag = 0x80, uint32_t flags = 0) {
    Header h;
    h.msg_id = id_++;
    h.command = cmd;
    h.flags = flags;
    h.msg_size = static_cast<uint32_t>(kHeaderSize + payload.size());
    std::vector<uint8_t> m;
    AppendStruct(&m, h);
    AppendBytes(&m, payload);
    out_.push_back(static_cast<char>(tag));
    out_.push_back(static_cast<char>(m.size() & 0xff));
    out_.push_back(static_cast<char>(m.size() >> 8));
    out_.append(m.begin(), m.end());
    return *this;
  }
  std::string Build() const { return out_; }

 private:
  std::string out_;
  uint16_t id_ = 1;
};

inline std::vector<std::string> SeedInputs() {
  std::vector<std::string> seeds;
  auto rw = [](uint32_t region, uint64_t off, uint32_t count) { return RegionAccess{off, region, count}; };
  {
    SeedBuilder b(0);
    b.Raw(kCmdVersion, EncodeVersion({0, 0, std::string(R"({"capabilities":{"max_msg_fds":8,"write_multiple":true}})")}));
    b.Msg(kCmdDeviceGetInfo, DeviceInfo{});
    seeds.push_back(b.Build());
  }
  {
    SeedBuilder b(1);
    b.Msg(kCmdDeviceGetRegionInfo, RegionInfo{32, 0, 0, 0, 0, 0});
    b.Msg(kCmdDeviceGetRegionInfo, RegionInfo{256, 0, 0, 0, 0, 0});
    b.Msg(kCmdDeviceGetIrqInfo, IrqInfo{16, 0, 2, 0});
    b.Msg(kCmdDeviceGetRegionIoFds, RegionIoFds{});
    b.Msg(kCmdRegionRead, rw(7, 0, 64));
    b.Msg(kCmdRegionRead, rw(0, 0, 4));
    b.Msg(kCmdRegionWrite, rw(0, 4, 4), 0x80, 0, {1, 2, 3, 4});
    b.Msg(kCmdRegionWrite, rw(0, 0x28, 4), 0x80, kFlagNoReply, {5, 0, 0, 0});
    b.Msg(kCmdDeviceReset, uint8_t{0});
    seeds.push_back(b.Build());
  }
  {
    SeedBuilder b(1);
    DmaMap m;
    m.flags = kDmaFlagRead | kDmaFlagWrite;
    m.addr = 0x10000;
    m.size = 0x10000;
    b.Msg(kCmdDmaMap, m, 0x81);
    m.addr = 0x40000;
    b.Msg(kCmdDmaMap, m, 0x80);  // no fd: message DMA
    uint16_t cmd = 6;
    b.Msg(kCmdRegionWrite, rw(7, 4, 2), 0x80, 0, {static_cast<uint8_t>(cmd), 0});
    b.Msg(kCmdRegionWrite, rw(0, 0x10, 4), 0x80, 0, {0x00, 0x00, 0x01, 0x00});
    b.Msg(kCmdRegionWrite, rw(0, 0x18, 4), 0x80, 0, {0x00, 0x01, 0, 0});
    b.Msg(kCmdRegionWrite, rw(0, 0x1c, 4), 0x80, 0, {3, 0, 0, 0});
    b.Msg(kCmdRegionWrite, rw(0, 0x08, 4), 0x80, 0, {2, 0, 0, 0});
    DmaUnmap u;
    u.addr = 0x10000;
    u.size = 0x10000;
    b.Msg(kCmdDmaUnmap, u);
    u = DmaUnmap{};
    u.flags = kDmaUnmapFlagAll;
    b.Msg(kCmdDmaUnmap, u);
    seeds.push_back(b.Build());
  }
  {
    SeedBuilder b(1);
    IrqSet s;
    s.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
    s.index = 2;
    s.count = 1;
    b.Msg(kCmdDeviceSetIrqs, s, 0x82);
    s.flags = kIrqSetDataNone | kIrqSetActionMask;
    b.Msg(kCmdDeviceSetIrqs, s);
    b.Msg(kCmdRegionWrite, rw(0, 0x08, 4), 0x80, 0, {1, 0, 0, 0});
    s.flags = kIrqSetDataBool | kIrqSetActionUnmask;
    s.argsz = 21;
    b.Msg(kCmdDeviceSetIrqs, s, 0x80, 0, {1});
    s.flags = kIrqSetDataEventfd | kIrqSetActionTrigger;
    b.Msg(kCmdDeviceSetIrqs, s, 0x88);
    std::vector<uint8_t> multi;
    AppendStruct(&multi, uint64_t{2});
    WriteMultiEntry e;
    e.region = 0;
    e.offset = 0x28;
    e.count = 4;
    e.data[0] = 1;
    AppendStruct(&multi, e);
    AppendStruct(&multi, e);
    b.Raw(kCmdRegionWriteMulti, multi, 0x80, kFlagNoReply);
    b.Msg(kCmdRegionRead, rw(0, 0x1800, 8));
    seeds.push_back(b.Build());
  }
  {
    SeedBuilder b(3);  // bad framing at the end
    b.Msg(kCmdDeviceFeature, uint32_t{0});
    Header h;
    h.msg_size = 4;
    std::string raw(reinterpret_cast<const char*>(&h), sizeof(h));
    std::string s = b.Build();
    s.push_back(static_cast<char>(0x80));
    s.push_back(static_cast<char>(raw.size()));
    s.push_back(0);
    s += raw;
    seeds.push_back(s);
  }
  // Every seed again with persistence, and in crash-consistent mode dying at
  // each stage (first occurrence) and resuming.
  const size_t plain = seeds.size();
  for (size_t i = 0; i < plain; ++i) {
    std::string p = seeds[i];
    p[0] = static_cast<char>(p[0] | 4);
    seeds.push_back(p);
    for (char stage = 0; stage < 7; ++stage) {
      std::string c = seeds[i];
      c[0] = static_cast<char>(c[0] | 8);
      c.insert(c.begin() + 1, stage);
      seeds.push_back(c);
    }
  }
  return seeds;
}

}  // namespace emud::vfio_user::fuzz

#endif  // EMUD_VFIO_USER_FUZZ_SEEDS_H_
