// The version of every emud binary (emud --version, emuctl version, the
// emud_build_info metric). tools/image.sh tags the image with the same
// string (VERSION there; change both together).
#ifndef EMUD_BASE_VERSION_H_
#define EMUD_BASE_VERSION_H_

namespace emud {

inline constexpr char kVersion[] = "0.1.0";

}  // namespace emud

#endif  // EMUD_BASE_VERSION_H_
