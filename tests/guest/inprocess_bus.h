// InProcessBus: the test guest wired straight to an avf::Device in the same
// process - register accesses are direct calls, the guest RAM is handed to
// the device as its DmaMemory, MSI-X vectors are counters. Deterministic and
// fast (Sleep does not sleep); used by unit tests of the guest and device.
#ifndef EMUD_TESTS_GUEST_INPROCESS_BUS_H_
#define EMUD_TESTS_GUEST_INPROCESS_BUS_H_

#include <array>
#include <cstring>

#include "avf/device.h"
#include "tests/guest/bus.h"
#include "tests/guest/guest_memory.h"
#include "vfio_user/device.h"

namespace emud::guest {

class InProcessBus : public GuestBus, public vfio_user::DmaMemory, public vfio_user::InterruptSink {
 public:
  // Attaches `device` to this bus (its DMA and interrupts). Both must outlive the bus.
  InProcessBus(avf::Device* device, GuestMemory* memory) : dev_(device), mem_(memory) {
    dev_->Attach({this, this});
  }
  ~InProcessBus() override { dev_->Detach(); }

  // ---- GuestBus ----
  absl::StatusOr<uint32_t> Read32(uint32_t offset) override {
    uint8_t b[4];
    if (auto s = dev_->RegionRead(vfio_user::kBar0, offset, absl::MakeSpan(b)); !s.ok()) return s;
    uint32_t v;
    std::memcpy(&v, b, 4);
    return v;
  }
  absl::Status Write32(uint32_t offset, uint32_t value) override {
    return dev_->RegionWrite(vfio_user::kBar0, offset,
                             absl::MakeConstSpan(reinterpret_cast<uint8_t*>(&value), 4));
  }
  absl::Status ConfigRead(uint32_t offset, absl::Span<uint8_t> out) override {
    return dev_->RegionRead(vfio_user::kConfigRegion, offset, out);
  }
  absl::Status ConfigWrite(uint32_t offset, absl::Span<const uint8_t> data) override {
    return dev_->RegionWrite(vfio_user::kConfigRegion, offset, data);
  }
  absl::Status EnableMsix(uint32_t count) override {
    msix_count_ = count;
    return absl::OkStatus();
  }
  absl::Status DisableMsix() override {
    msix_count_ = 0;
    return absl::OkStatus();
  }
  absl::StatusOr<uint64_t> WaitVector(uint32_t v, absl::Duration) override {
    if (v >= fired_.size()) return 0;
    uint64_t n = fired_[v];
    fired_[v] = 0;
    return n;
  }
  absl::Status DeviceReset() override { return dev_->Reset(); }
  void Sleep(absl::Duration d) override { slept_ += d; }
  GuestMemory& memory() override { return *mem_; }

  // ---- vfio_user::DmaMemory (the guest RAM as the device sees it) ----
  absl::StatusOr<uint8_t*> Translate(uint64_t iova, uint64_t len, Access) override {
    uint8_t* p = len ? mem_->Host(iova, len) : nullptr;
    if (p == nullptr) return absl::OutOfRangeError("not mapped");
    return p;
  }
  absl::Status Read(uint64_t iova, absl::Span<uint8_t> dst) override {
    uint8_t* p = mem_->Host(iova, dst.size());
    if (p == nullptr) return absl::OutOfRangeError("not mapped");
    std::memcpy(dst.data(), p, dst.size());
    return absl::OkStatus();
  }
  absl::Status Write(uint64_t iova, absl::Span<const uint8_t> src) override {
    uint8_t* p = mem_->Host(iova, src.size());
    if (p == nullptr) return absl::OutOfRangeError("not mapped");
    std::memcpy(p, src.data(), src.size());
    return absl::OkStatus();
  }

  // ---- vfio_user::InterruptSink ----
  void TriggerMsix(uint32_t vector) override {
    if (vector < msix_count_ && vector < fired_.size()) {
      ++fired_[vector];
      ++total_[vector];
    }
  }
  bool MsixPending(uint32_t) const override { return false; }
  bool MsixEnabled() const override { return msix_count_ > 0; }

  uint64_t total_fired(uint32_t v) const { return v < total_.size() ? total_[v] : 0; }
  absl::Duration slept() const { return slept_; }

 private:
  avf::Device* dev_;
  GuestMemory* mem_;
  uint32_t msix_count_ = 0;
  std::array<uint64_t, avf::kMaxMsixVectors> fired_{};
  std::array<uint64_t, avf::kMaxMsixVectors> total_{};
  absl::Duration slept_;
};

}  // namespace emud::guest

#endif  // EMUD_TESTS_GUEST_INPROCESS_BUS_H_
