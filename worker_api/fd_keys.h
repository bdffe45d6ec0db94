// What a worker inherits besides its argv (worker_args.h): descriptors under
// fd-store keys and three environment variables.
//
// A worker deposits each descriptor it relies on in the fd store under one of
// these keys (fdstore/fd_store.h) and releases the key when the object goes
// away; emud (or emud-keeper) starts its successor with the whole set
// inherited and described by kInheritedFdsEnv ("key=3,key=4,..."). An old
// worker and a new one meet across a live upgrade, so a key's spelling never
// changes.
//
//   key                      object                                depositor
//   kChannelFdKey            the worker's end of its fd-store      emud / emud-keeper
//                            channel (never deposited)
//   kListenFdKey             the vfio-user listening socket        worker
//   kConnFdKey               the connected vfio-user client        vfio_user::Session
//   DmaFdKey(iova)           one DMA window's guest-memory fd      vfio_user::Session
//   IrqFdKey(index, vector)  an interrupt eventfd from SET_IRQS    vfio_user::Session
//   kDoorbellFdKey           the memfd behind the doorbell page    worker
//   TapFdKey(k)              TAP queue k (kTapFdKey for queue 0)   worker
//
// emud reads two of them: kListenFdKey (a successor inherits the listener
// rather than binding a new socket) and kConnFdKey (a guest is connected, so
// a restart must not wait long).
#ifndef EMUD_WORKER_API_FD_KEYS_H_
#define EMUD_WORKER_API_FD_KEYS_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace emud::worker_api {

inline constexpr char kChannelFdKey[] = "fdstore/channel";
inline constexpr char kListenFdKey[] = "vfio/listen";
inline constexpr char kConnFdKey[] = "vfio/conn";
inline constexpr char kDoorbellFdKey[] = "doorbell";
inline constexpr char kTapFdKey[] = "backend/tap";  // TAP queue 0 (a single-queue TAP)

inline constexpr char kDmaFdKeyPrefix[] = "dma/";
inline constexpr char kIrqFdKeyPrefix[] = "irq/";

// "dma/<iova in lower-case hex, no padding>", e.g. DmaFdKey(0x10000) ==
// "dma/10000". Not the session's LMDB record key for the same window
// ("dma/%016x", vfio_user/session_store.cc): the two formats are both
// persisted and must each stay as they are.
std::string DmaFdKey(uint64_t iova);
// "irq/<index>/<vector>" in decimal, e.g. IrqFdKey(2, 0) == "irq/2/0".
std::string IrqFdKey(uint32_t index, uint32_t vector);
// TAP queue k of a multi-queue TAP: kTapFdKey for k == 0 (what a worker
// before multi-queue deposited), "backend/tap/<k>" in decimal otherwise.
std::string TapFdKey(uint32_t queue);
// True for keys made by DmaFdKey or IrqFdKey: the descriptors the session's
// persisted records name, which a resumed session claims and a successor
// releases if the records no longer name them.
bool IsSessionFdKey(absl::string_view key);

// Environment of a worker started by emud.
// The inherited descriptors: "key=fd,key=fd,..." (fdstore::TakeInheritedFds).
inline constexpr char kInheritedFdsEnv[] = "EMUD_FDS";
// The fd store's listening socket, to reconnect to after the store restarts.
inline constexpr char kFdStoreSocketEnv[] = "EMUD_FDSTORE_SOCKET";
// Set when the store is emud-keeper: the token the worker's HELLO presents
// after a reconnect (pids mean nothing across pid namespaces).
inline constexpr char kFdStoreTokenEnv[] = "EMUD_FDSTORE_TOKEN";

}  // namespace emud::worker_api

#endif  // EMUD_WORKER_API_FD_KEYS_H_
