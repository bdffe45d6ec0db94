// The device-facing interface of the vfio-user server.
//
// A device model (avf/, the example device) implements PciDevice and is handed
// a DeviceContext by whatever transport carries it. It never sees a socket, a
// message or a file descriptor: it sees region accesses, guest memory (DMA)
// and interrupt vectors. This is the seam that lets a device be unit-tested
// with fakes and carried by the vfio-user server, the worker, or a test rig.
#ifndef EMUD_VFIO_USER_DEVICE_H_
#define EMUD_VFIO_USER_DEVICE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "vfio_user/device_records.h"

namespace emud::vfio_user {

// linux/vfio.h region and IRQ indexes reused by vfio-user.
enum RegionIndex : uint32_t {
  kBar0 = 0,
  kBar1 = 1,
  kBar2 = 2,
  kBar3 = 3,
  kBar4 = 4,
  kBar5 = 5,
  kRomRegion = 6,
  kConfigRegion = 7,
  kVgaRegion = 8,
  kNumPciRegions = 9,
};

enum IrqIndex : uint32_t {
  kIntxIrq = 0,
  kMsiIrq = 1,
  kMsixIrq = 2,
  kErrIrq = 3,
  kReqIrq = 4,
  kNumPciIrqs = 5,
};

// A window of a region that the client may mmap instead of trapping accesses.
struct MmapArea {
  uint64_t offset = 0;  // from the start of the region
  uint64_t size = 0;
};

struct RegionDesc {
  uint32_t index = 0;
  uint64_t size = 0;  // 0 = region not implemented
  bool readable = false;
  bool writable = false;
  // Non-empty: these areas are backed by `mmap_fd` at `fd_offset + area.offset`
  // and advertised with the sparse-mmap capability. The fd stays owned by the
  // device; the transport passes a duplicate to the client.
  std::vector<MmapArea> mmap_areas;
  int mmap_fd = -1;
  uint64_t fd_offset = 0;
};

struct IrqDesc {
  uint32_t index = 0;
  uint32_t count = 0;  // 0 = not supported
  bool maskable = false;
};

// Guest memory as DMA-mapped by the client. All addresses are IOVAs (guest
// physical addresses for a VM without vIOMMU). Every method validates the
// whole range: nothing outside a mapped window is ever touched.
class DmaMemory {
 public:
  enum Access : uint32_t { kRead = 1, kWrite = 2 };
  virtual ~DmaMemory() = default;

  // Host pointer to [iova, iova + len) when it lies inside one window that is
  // mmapped in this process and allows `access`. OUT_OF_RANGE if not mapped,
  // PERMISSION_DENIED if the window forbids the access, UNAVAILABLE if the
  // window has no fd (only Read/Write can reach it). `len` must be > 0.
  // The pointer is valid until the window is unmapped; a device learns of that
  // through PciDevice::OnDmaUnmap, before the unmap completes.
  virtual absl::StatusOr<uint8_t*> Translate(uint64_t iova, uint64_t len, Access access) = 0;

  // A whole window, for callers that translate many addresses (the data
  // path: every descriptor's buffer) and check bounds themselves.
  struct Window {
    uint64_t iova = 0;
    uint64_t size = 0;  // > 0
    uint8_t* host = nullptr;
    uint32_t access = 0;  // Access bits the window allows
  };
  // The window containing `iova` when it is mmapped in this process and
  // allows `access`. The caller must check every address and length against
  // it (iova - w.iova < w.size && len <= w.size - (iova - w.iova)) and drop
  // it when PciDevice::OnDmaUnmap reports an unmap: the same lifetime as a
  // Translate pointer. false: no such window, or an implementation without
  // windows (callers fall back to Translate).
  virtual bool FindWindow(uint64_t /*iova*/, Access /*access*/, Window* /*out*/) { return false; }

  // Copy helpers that also work for windows without an fd (falling back to
  // DMA_READ / DMA_WRITE messages to the client). A range may span adjacent
  // windows.
  virtual absl::Status Read(uint64_t iova, absl::Span<uint8_t> dst) = 0;
  virtual absl::Status Write(uint64_t iova, absl::Span<const uint8_t> src) = 0;
};

// MSI-X vectors of the device as configured by the client (SET_IRQS).
class InterruptSink {
 public:
  virtual ~InterruptSink() = default;
  // Signals MSI-X vector `vector`. If the vector is masked (per-vector mask
  // from SET_IRQS or the MSI-X table, or the function mask) or has no eventfd,
  // its pending bit is set instead and it fires when unmasked. Out-of-range
  // vectors are ignored and counted.
  virtual void TriggerMsix(uint32_t vector) = 0;
  // The pending bit array as the device's PBA region must report it.
  virtual bool MsixPending(uint32_t vector) const = 0;
  // Whether the guest enabled MSI-X (config space enable bit set and function
  // not masked) - devices use it only for diagnostics.
  virtual bool MsixEnabled() const = 0;

  // Guest-side MSI-X state, reported by the device's MSI-X table / config
  // space helpers (vfio_user/msix_table.h) when the guest writes them through
  // the transport. A VMM that emulates the table itself (QEMU) never does;
  // then only the transport's own masks apply. Defaults: ignored.
  virtual void SetMsixGuestMask(uint32_t /*vector*/, bool /*masked*/) {}
  virtual void SetMsixControl(bool /*enabled*/, bool /*function_masked*/) {}
};

// What the transport gives a device. Pointers stay valid until Detach().
struct DeviceContext {
  DmaMemory* dma = nullptr;
  InterruptSink* irqs = nullptr;
};

// A PCI device model. Called from one thread (the session's event loop).
class PciDevice {
 public:
  virtual ~PciDevice() = default;

  // Static description: vendor/device ids live in config space; these list the
  // regions (indexes 0..8 at least; CONFIG = 7 is mandatory) and IRQ types.
  virtual std::vector<RegionDesc> Regions() const = 0;
  virtual std::vector<IrqDesc> Irqs() const = 0;

  // Region access. The transport has already checked that region exists and
  // offset + data.size() <= region size (no overflow), and that data.size()
  // is 1..max transfer. A device returns an error only for accesses it
  // refuses (the client then gets EINVAL); unknown registers read 0 and
  // ignore writes.
  virtual absl::Status RegionRead(uint32_t region, uint64_t offset, absl::Span<uint8_t> out) = 0;
  virtual absl::Status RegionWrite(uint32_t region, uint64_t offset,
                                   absl::Span<const uint8_t> data) = 0;

  // The client attached (after VERSION): `ctx` is valid until Detach().
  virtual void Attach(const DeviceContext& ctx) = 0;
  // The client went away. Device state is kept (the spec's disconnect rule);
  // DMA pointers obtained from the context must not be used any more.
  virtual void Detach() = 0;

  // DEVICE_RESET (and FLR through config space): back to power-on state.
  virtual absl::Status Reset() = 0;

  // A DMA window is about to be unmapped: drop every pointer into
  // [iova, iova + size) before returning.
  virtual void OnDmaUnmap(uint64_t iova, uint64_t size) = 0;

  // Persistence (Firecracker's persist/restore contract). Save writes the
  // records changed since the last Save (all of them the first time) so that
  // Restore can rebuild the model exactly; the transport calls it inside the
  // transaction that commits a request's effect, before the reply leaves. Restore rebuilds
  // the model from the records alone (no guest access yet); NOT_FOUND means
  // nothing was saved (a fresh device).
  // The records are storage-neutral (device_records.h); RecordNamespace()
  // names this device kind's namespace in whatever storage the transport
  // uses (the session's state_store table, which its Env must list). It
  // never changes: a successor of another build reads the same namespace.
  virtual absl::string_view RecordNamespace() const = 0;
  virtual absl::Status Save(DeviceRecordWriter& records) = 0;
  virtual absl::Status Restore(const DeviceRecordReader& records) = 0;

  // Self-durable writes (a persistence fast path; default: none). True only
  // if every write of `size` bytes at `offset` of `region`, whatever its data
  // and whatever the device state, (a) is idempotent: applying it twice in a
  // row equals applying it once, and (b) has its whole persistent state
  // effect already durable when RegionWrite returns, outside any state_store
  // transaction (e.g. a store into tmpfs-backed shared memory that a
  // successor adopts); side effects it triggers (a data path reacting to a
  // doorbell) must keep their own crash-safe state. The answer must depend
  // only on the arguments, the device's construction options and its state
  // as it is right before this write is applied (the session asks just
  // before applying). A crash-consistent session neither calls Save nor commits
  // for a request made only of such writes, and may apply one again after a
  // kill (a successor re-reads it from the socket). Records the write makes
  // stale (generation counters) are written by the next Save as usual.
  virtual bool WriteIsSelfDurable(uint32_t /*region*/, uint64_t /*offset*/,
                                  uint64_t /*size*/) const {
    return false;
  }
  // True if a POSTED write of `size` bytes at `offset` of `region` has no
  // effect the guest can observe before the session's next reply other than
  // interrupts (which may then fire once more after a crash): no write into
  // guest memory, nothing a data path makes visible. A posted write has no
  // completion, so such a write may become durable later, with the posted
  // writes that follow it: a crash-consistent session applies a run of them
  // and commits the run once (ARCHITECTURE.md, "Group commit of posted
  // writes"), and a successor killed before that commit re-applies the whole
  // run from the state before it. A run may end with one write that is not
  // deferrable (its effect is then as exposed as a single request's today).
  // Same rules as WriteIsSelfDurable for what the answer may depend on.
  virtual bool WriteIsDeferrable(uint32_t /*region*/, uint64_t /*offset*/,
                                 uint64_t /*size*/) const {
    return false;
  }
  // False only if every read of `size` bytes at `offset` of `region`
  // (already checked against the region), whatever the device state, changes
  // no device state at all: no read-to-clear, no state machine stepped by the
  // read, nothing Save would write differently afterwards. Default: every
  // read has side effects. A crash-consistent session answers a read without
  // side effects with no commit (ARCHITECTURE.md, "Reads without side
  // effects"), but only while StateGeneration() equals its value at the last
  // commit, so the reply reveals only durable state; a device that returns
  // false here must therefore implement StateGeneration. Same rules as
  // WriteIsSelfDurable for what the answer may depend on.
  virtual bool ReadHasSideEffects(uint32_t /*region*/, uint64_t /*offset*/,
                                  uint64_t /*size*/) const {
    return true;
  }
  // A counter that moves whenever state Save writes may have changed (every
  // path that would make Save write other bytes moves it first). State kept
  // durable outside the store (self-durable memfd words) need not move it.
  // Only consulted for reads without side effects (see above).
  virtual uint64_t StateGeneration() const { return 0; }
};

}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_DEVICE_H_
