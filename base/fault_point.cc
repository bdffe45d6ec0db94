#include "base/fault_point.h"

namespace emud::fault {
Hook g_hook = nullptr;
}  // namespace emud::fault
