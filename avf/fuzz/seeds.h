// Seed inputs for the AVF device fuzzer (see ops.h).
#ifndef EMUD_AVF_FUZZ_SEEDS_H_
#define EMUD_AVF_FUZZ_SEEDS_H_

#include <string>
#include <vector>

#include "avf/fuzz/ops.h"
#include "avf/regs.h"

namespace emud::avf::fuzz {

inline std::vector<std::string> SeedInputs() {
  std::vector<std::string> seeds;
  // Linux-like bring-up, traffic doorbells, interrupts, reset and again.
  for (uint8_t flags : {1, 3, 5, 7}) {
    Encoder e(flags);
    e.Write(kVfintDynCtl01, kDynCtlIntena | kDynCtlItrIndxMask).Write(kVfintIcr0Ena1, kIcr0AdminQ);
    e.Valid(kTVersion, 0).Valid(kTGetResources, 0).Valid(kTIrqMap, 4).Valid(kTRssKey, 0);
    e.Valid(kTAddMac, 0).Write(QrxTail(0), 63).Valid(kTVsiQueues, 4).Valid(kTEnable, 0xF).Drain();
    e.Write(VfintDynCtln1(0), kDynCtlIntena | kDynCtlItrIndxMask).Write(QtxTail(0), 5).Misc(2, 0);
    e.Read(kVfintIcr01).Valid(kTStats, 0).Drain().Valid(kTDisable, 0x3).Valid(kTResetVf, 0);
    e.Read(kVfArqlen1).Read(kVfgenRstat).Read(kVfgenRstat).Read(kVfgenRstat);
    seeds.push_back(e.str());
  }
  // VLAN: VLAN_V2 caps, filters (8 + 32 n bytes), stripping/insertion
  // settings, then the legacy ops, around traffic doorbells.
  {
    Encoder e(1);
    e.Write(kVfintDynCtl01, kDynCtlIntena | kDynCtlItrIndxMask).Write(kVfintIcr0Ena1, kIcr0AdminQ);
    e.Valid(kTVersion, 0).Valid(kTGetResources, 0).Valid(kTVsiQueues, 2).Valid(kTEnable, 0x3);
    std::string filters(8 + 64, '\0');
    filters[0] = 1;      // vport
    filters[2] = 2;      // elements
    filters[8] = 100;    // inner.tci
    filters[13] = '\x81';  // inner.tpid 0x8100
    filters[40] = 7;
    filters[45] = '\x81';
    std::string setting(16, '\0');
    setting[4] = 1;   // inner 0x8100
    setting[8] = 1;   // vport
    e.Msg(51, "").Msg(52, filters).Msg(55, setting).Msg(54, setting).Msg(57, setting);
    e.Msg(56, setting).Write(QtxTail(0), 3).Msg(53, filters).Msg(58, setting).Drain();
    e.Msg(12, std::string("\x01\x00\x02\x00\x64\x00\x00\x10", 8)).Msg(28, "").Msg(27, "");
    e.Msg(13, std::string("\x01\x00\x01\x00\x64\x00", 6)).Drain();
    seeds.push_back(e.str());
  }
  // Raw messages with odd lengths, and register noise.
  {
    Encoder e(1);
    e.Msg(6, std::string(71, '\x01')).Msg(7, std::string(13, '\xff')).Msg(10, std::string(3, 0));
    e.Msg(200, "x").Msg(17, std::string(16, 0)).Drain();
    e.Write(kVfAtqt1, 1000).Write(kVfAtqlen1, 0x3FF | kAqLenEnable).Write(kVfAtqt1, 5);
    e.Misc(4, 0x8000).Misc(5, 0x1234).Misc(0, 0).Misc(1, 0).Misc(3, 0).Misc(6, 0);
    seeds.push_back(e.str());
  }
  return seeds;
}

}  // namespace emud::avf::fuzz

#endif  // EMUD_AVF_FUZZ_SEEDS_H_
