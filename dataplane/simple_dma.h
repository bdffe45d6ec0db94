// A DmaMemory over host memory windows owned elsewhere (tests, the
// standalone benchmark where guest memory is a memfd shared by two
// processes). The vfio-user session provides the real implementation.
#ifndef EMUD_DATAPLANE_SIMPLE_DMA_H_
#define EMUD_DATAPLANE_SIMPLE_DMA_H_

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "vfio_user/device.h"

namespace emud::dataplane {

class SimpleDmaMemory : public vfio_user::DmaMemory {
 public:
  void AddWindow(uint64_t iova, uint64_t size, uint8_t* host, bool writable = true) {
    windows_.push_back(W{iova, size, host, writable});
  }
  void RemoveWindow(uint64_t iova) {
    for (size_t i = 0; i < windows_.size(); ++i) {
      if (windows_[i].iova == iova) {
        windows_.erase(windows_.begin() + static_cast<long>(i));
        return;
      }
    }
  }

  absl::StatusOr<uint8_t*> Translate(uint64_t iova, uint64_t len, Access access) override {
    if (len == 0) return absl::InvalidArgumentError("zero length");
    for (const W& w : windows_) {
      if (iova >= w.iova && iova - w.iova < w.size && len <= w.size - (iova - w.iova)) {
        if ((access & kWrite) && !w.writable) return absl::PermissionDeniedError("read-only");
        return w.host + (iova - w.iova);
      }
    }
    return absl::OutOfRangeError(absl::StrCat("iova 0x", absl::Hex(iova), "+", len, " not mapped"));
  }
  bool FindWindow(uint64_t iova, Access access, Window* out) override {
    for (const W& w : windows_) {
      if (iova - w.iova < w.size) {
        uint32_t allowed = uint32_t{kRead} | (w.writable ? uint32_t{kWrite} : 0u);
        if ((access & ~allowed) != 0) return false;
        *out = {w.iova, w.size, w.host, allowed};
        return true;
      }
    }
    return false;
  }
  absl::Status Read(uint64_t iova, absl::Span<uint8_t> dst) override {
    auto p = Translate(iova, dst.size(), kRead);
    if (!p.ok()) return p.status();
    std::memcpy(dst.data(), *p, dst.size());
    return absl::OkStatus();
  }
  absl::Status Write(uint64_t iova, absl::Span<const uint8_t> src) override {
    auto p = Translate(iova, src.size(), kWrite);
    if (!p.ok()) return p.status();
    std::memcpy(*p, src.data(), src.size());
    return absl::OkStatus();
  }

 private:
  struct W {
    uint64_t iova, size;
    uint8_t* host;
    bool writable;
  };
  std::vector<W> windows_;
};

}  // namespace emud::dataplane

#endif  // EMUD_DATAPLANE_SIMPLE_DMA_H_
