// A persisted Session's records in its device's state_store environment, and
// the fd-store keys they name (worker_api/fd_keys.h: kConnFdKey, DmaFdKey,
// IrqFdKey). Table "vfio_user_session" (SessionTables()):
//
//   key                  record              fds it names (fd-store keys)
//   "session"            SessionRecord       "vfio/conn" while negotiated
//   "dma/<iova %016x>"   DmaWindowRecord     "dma/<iova %x>" if the window has an fd
//   "irqs"               IrqRecord           "irq/<index>/<vector>" per vector with an fd
//   "last"               LastRequestRecord   (crash-consistent mode)
//
// The writers run inside the session's commit transaction (with the device's
// Save); Restore and GetLastRequest are the successor's side (Session::Resume).
#ifndef EMUD_VFIO_USER_SESSION_STORE_H_
#define EMUD_VFIO_USER_SESSION_STORE_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "vfio_user/protocol.h"
#include "vfio_user/session_state.pb.h"

namespace emud::state_store {
class Env;
class WriteTxn;
}  // namespace emud::state_store

namespace emud::vfio_user {

class DmaTable;
class IrqState;
class PciDevice;

namespace session_store {

inline constexpr char kTable[] = "vfio_user_session";

// What VERSION negotiated, and the session's message numbering.
struct Negotiated {
  bool live = false;  // negotiated with a client still connected
  Capabilities client_caps;
  uint64_t seq = 0;  // requests applied (crash-consistent numbering)
  uint16_t next_server_msg_id = 0;
  DmaRwLayout dma_layout = DmaRwLayout::kSpec;
};

// Writers (inside the caller's transaction).
absl::Status PutNegotiated(state_store::WriteTxn& txn, const Negotiated& n);
// The window at `iova` as `dma` has it now, or its deletion if it is gone.
absl::Status PutDmaWindow(state_store::WriteTxn& txn, const DmaTable& dma, uint64_t iova);
absl::Status PutIrqs(state_store::WriteTxn& txn, const IrqState& irqs);
// The request applied as `seq` (its raw bytes and FNV-1a digest) and the
// reply a successor re-sends if the journal says it did not go out.
absl::Status PutLastRequest(state_store::WriteTxn& txn, uint64_t seq, absl::Span<const uint8_t> request,
                            uint64_t digest, bool wants_reply, const Header& reply_header,
                            absl::Span<const uint8_t> reply_payload);

// Reads a live session back: re-maps its DMA windows into `dma` and restores
// `irqs`, taking their fds from `fds` by key. NOT_FOUND if no live session is
// persisted, DATA_LOSS if an fd is missing or a window cannot be mapped.
using FdSource = absl::FunctionRef<absl::StatusOr<UniqueFd>(absl::string_view key)>;
absl::StatusOr<Negotiated> Restore(const state_store::Env& env, FdSource fds, DmaTable& dma, IrqState& irqs);
absl::StatusOr<std::optional<LastRequestRecord>> GetLastRequest(const state_store::Env& env);

// The device's records (PciDevice::Save) inside `txn`, in the table its
// RecordNamespace() names (the Env must list it).
absl::Status SaveDevice(state_store::WriteTxn& txn, PciDevice& device);
// PciDevice::Restore from a read transaction of `env`: NOT_FOUND if the
// device saved nothing (a fresh device), whatever else Restore returns.
absl::Status RestoreDevice(const state_store::Env& env, PciDevice& device);

}  // namespace session_store
}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_SESSION_STORE_H_
