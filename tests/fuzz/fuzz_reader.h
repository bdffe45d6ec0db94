// The byte reader every fuzz target decodes its input with, and the
// invariant check they abort on. Reads past the end of the input give zeros
// (an input that stops mid-operation still runs that operation), never
// beyond the buffer.
#ifndef EMUD_TESTS_FUZZ_FUZZ_READER_H_
#define EMUD_TESTS_FUZZ_FUZZ_READER_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/types/span.h"

namespace emud::fuzz {

class Reader {
 public:
  Reader(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  bool done() const { return i_ >= n_; }
  // Bytes not read yet.
  size_t remaining() const { return n_ - std::min(n_, i_); }
  uint8_t U8() { return i_ < n_ ? d_[i_++] : 0; }
  // Little-endian; one load when the whole value is there (the byte-wise
  // path, zeros past the end, gives the same value otherwise). The harnesses
  // inline these, so every branch here is traced in a fuzz build.
  uint16_t U16() { return Le<uint16_t>(); }
  uint32_t U32() { return Le<uint32_t>(); }
  uint64_t U64() { return Le<uint64_t>(); }
  // Up to n bytes (fewer at the end of the input), pointing into the input.
  absl::Span<const uint8_t> Bytes(size_t n) {
    n = std::min(n, remaining());
    absl::Span<const uint8_t> s(d_ + std::min(i_, n_), n);
    i_ += n;
    return s;
  }
  // The same, copied.
  std::string String(size_t n) {
    absl::Span<const uint8_t> s = Bytes(n);
    return std::string(reinterpret_cast<const char*>(s.data()), s.size());
  }
  // The rest of the input.
  absl::Span<const uint8_t> Rest() { return Bytes(remaining()); }

 private:
  template <typename T>
  T Le() {
    static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__);
    T v = 0;
    if (n_ - i_ >= sizeof(T)) {  // i_ <= n_ always
      std::memcpy(&v, d_ + i_, sizeof(T));
      i_ += sizeof(T);
      return v;
    }
    for (size_t b = 0; b < sizeof(T); ++b) v |= static_cast<T>(U8()) << (8 * b);
    return v;
  }

  const uint8_t* d_;
  size_t n_;
  size_t i_ = 0;
};

// A fuzz target's invariant: a violation prints what broke and aborts, which
// libFuzzer (and the corpus replay tests) report as a crash.
inline void Check(bool ok, const char* target, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "%s fuzz invariant broken: %s\n", target, what);
    std::abort();
  }
}

}  // namespace emud::fuzz

#endif  // EMUD_TESTS_FUZZ_FUZZ_READER_H_
