// Fault injection for tests: a point in the code that handles untrusted
// input can crash the process when the input matches what a test asked for
// (tests of poison-input quarantine). Production binaries never install a
// hook: the point is one load and a never-taken branch. The only code that
// installs one is //base:fault_injection (testonly), linked into test
// binaries such as //dataplane:emud-worker-fault-injection.
#ifndef EMUD_BASE_FAULT_POINT_H_
#define EMUD_BASE_FAULT_POINT_H_

#include <cstddef>

namespace emud::fault {

// Called with the point's name and the input bytes; may crash the process.
using Hook = void (*)(const char* point, const void* data, size_t len);
extern Hook g_hook;

inline void Point(const char* point, const void* data, size_t len) {
  if (g_hook != nullptr) [[unlikely]] g_hook(point, data, len);
}

}  // namespace emud::fault

#endif  // EMUD_BASE_FAULT_POINT_H_
