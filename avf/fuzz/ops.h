// The byte encoding the AVF device fuzzer interprets (device_fuzzer.cc), and
// an encoder for writing seeds. Byte 0: flags (bit 0: set the admin queues
// up as Linux does first; bit 1: mapped doorbells; bit 2: check at the end that
// the persistence memo matches a fresh serialization). Then operations, each an
// opcode byte (taken modulo kNumOps) and its operands:
//   kWrite  u16 dword-index, u32 value         BAR0 register write
//   kRead   u16 dword-index                    BAR0 register read
//   kMsg    u8 v_op [0xFF: u32 v_op], u16 len, len bytes
//                                              virtchnl message (any opcode) through the ATQ
//   kPoke   u32 offset, u8 len, len bytes      bytes into guest RAM
//   kDrain                                     driver consumes the ARQ
//   kMisc   u8 what, u32 arg                   reset / PF reset / interrupt / link / config / BAR3 / reattach
//   kRawAtq 32 bytes, u16 tail                 a raw ATQ descriptor and an arbitrary ATQT
//   kValid  u8 template, u32 arg               a well-formed message (reaches deep states)
#ifndef EMUD_AVF_FUZZ_OPS_H_
#define EMUD_AVF_FUZZ_OPS_H_

#include <cstdint>
#include <string>

namespace emud::avf::fuzz {

enum Op : uint8_t { kWrite, kRead, kMsg, kPoke, kDrain, kMisc, kRawAtq, kValid, kNumOps };

enum Template : uint8_t {
  kTVersion,
  kTGetResources,
  kTIrqMap,
  kTVsiQueues,
  kTEnable,
  kTDisable,
  kTAddMac,
  kTRssKey,
  kTStats,
  kTResetVf,
  kNumTemplates
};

class Encoder {
 public:
  explicit Encoder(uint8_t flags) { s_.push_back(static_cast<char>(flags)); }
  Encoder& Write(uint32_t offset, uint32_t value) {
    U8(kWrite);
    U16(static_cast<uint16_t>(offset / 4));
    return U32(value);
  }
  Encoder& Read(uint32_t offset) {
    U8(kRead);
    return U16(static_cast<uint16_t>(offset / 4));
  }
  Encoder& Msg(uint32_t v_op, const std::string& body) {
    U8(kMsg);
    if (v_op < 0xFF) {
      U8(static_cast<uint8_t>(v_op));
    } else {
      U8(0xFF).U32(v_op);
    }
    U16(static_cast<uint16_t>(body.size()));
    s_ += body;
    return *this;
  }
  Encoder& Drain() { return U8(kDrain); }
  Encoder& Misc(uint8_t what, uint32_t arg) {
    U8(kMisc);
    U8(what);
    return U32(arg);
  }
  Encoder& Valid(Template t, uint32_t arg) {
    U8(kValid);
    U8(t);
    return U32(arg);
  }
  const std::string& str() const { return s_; }

 private:
  Encoder& U8(uint8_t v) {
    s_.push_back(static_cast<char>(v));
    return *this;
  }
  Encoder& U16(uint16_t v) { return U8(v & 0xff).U8(v >> 8); }
  Encoder& U32(uint32_t v) { return U16(v & 0xffff).U16(v >> 16); }
  std::string s_;
};

}  // namespace emud::avf::fuzz

#endif  // EMUD_AVF_FUZZ_OPS_H_
