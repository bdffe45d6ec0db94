// The vfio-user server: Session (one client connection's protocol state and
// the device it serves) and Server (a listening socket feeding a Session one
// client at a time).
//
// Processing model: requests are handled strictly in arrival order, one at a
// time, each to completion (pipelined requests included); a later reply
// therefore implies every earlier posted (NO_REPLY) write was applied. A
// request that is well-framed but invalid gets an error reply with an errno;
// a header whose msg_size cannot be framed closes the connection (the device
// keeps its state and the next client is served).
//
// On client disconnect (EOF, framing error, send failure) the session unmaps
// every DMA window (PciDevice::OnDmaUnmap first), closes every interrupt
// eventfd, calls PciDevice::Detach, keeps device state, and is ready for
// AttachClient again.
//
// Embedding: the session registers its client fd with an EventLoop owned by
// the caller (the worker's loop, which also carries doorbells, TAP...). With
// a null loop, the caller watches client_fd() itself and calls ProcessReady().
//
// Persistence (options.store set): every state change a request makes
// (negotiated capabilities, DMA window table, interrupt configuration) plus
// PciDevice::Save is committed in one state_store transaction before the reply
// is sent, so Session::Resume in a successor process rebuilds the session from
// the records and the fds kept by emud's fd store (keys below). With
// options.crash_consistent, requests are additionally peeked, applied,
// committed with their reply, consumed and journalled as described in
// ARCHITECTURE.md ("Control path"), so a SIGKILL at any point neither loses nor
// repeats a request. Exception, in both modes: a posted REGION_WRITE or
// REGION_WRITE_MULTI made only of self-durable writes
// (PciDevice::WriteIsSelfDurable, e.g. AVF tail doorbells in a memfd) is
// applied and consumed without a commit (no Save, no "last request" record,
// no journal mark, seq unchanged): its effect is already durable, and a
// successor that finds it still at the socket head (killed before the
// consume) simply applies it again, which the contract makes harmless.
// Likewise a read that changes no state (PciDevice::ReadHasSideEffects, and
// the GET_*_INFO requests) is answered without a commit while nothing waits
// for one (IsPure); in crash-consistent mode its bytes are journalled first
// so that a successor answers it if it was consumed but not answered.
//
// fd keys (FdDepositor): worker_api::kConnFdKey, DmaFdKey(iova),
// IrqFdKey(index, vector) (worker_api/fd_keys.h; session_store.h lists the
// records that name them).
#ifndef EMUD_VFIO_USER_SESSION_H_
#define EMUD_VFIO_USER_SESSION_H_

#include <algorithm>
#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "base/event_loop.h"
#include "base/poison_guard.h"
#include "base/unique_fd.h"
#include "vfio_user/device.h"
#include "vfio_user/dma_table.h"
#include "vfio_user/irq_state.h"
#include "vfio_user/journal.h"
#include "vfio_user/protocol.h"
#include "vfio_user/transport.h"

namespace emud::state_store {
class Env;
class WriteTxn;
}  // namespace emud::state_store

namespace emud::vfio_user {

// Receives a duplicate-worthy fd under a stable key before the session acts
// on it (emud's fd store). Deposit's fd is borrowed: dup it to keep it. With
// persistence (options.store), Release comes only after the commit of the
// state that no longer names the fd (a successor may need it until then).
class FdDepositor {
 public:
  virtual ~FdDepositor() = default;
  virtual absl::Status Deposit(absl::string_view key, int fd) = 0;
  virtual void Release(absl::string_view key) = 0;
};

// Looks up an fd by key when resuming (from the inherited fd set). Returns an
// owned fd or NOT_FOUND.
using FdLookup = std::function<absl::StatusOr<UniqueFd>(absl::string_view key)>;

// Names of the state_store tables the session uses; a caller opening the
// device's Env must list them in EnvOptions::tables.
std::vector<std::string> SessionTables();

struct SessionOptions {
  // Advertised in the VERSION reply and enforced on requests.
  uint32_t max_msg_fds = 16;                   // fds per message (QEMU accepts <= 16)
  uint64_t max_data_xfer_size = 1 << 20;       // REGION_READ/WRITE count (4 KiB..64 MiB)
  uint32_t max_dma_maps = 1024;                // simultaneous DMA windows (<= 65535)
  // Framing limit: a header announcing more is a framing error (raised to
  // max_data_xfer_size + 4 KiB if below).
  size_t max_msg_size = (1 << 20) + 4096;
  // A reply that cannot be written within this time drops the client.
  absl::Duration send_timeout = absl::Seconds(5);
  // A client that has not completed VERSION this long after it was
  // attached is dropped (logged, SessionStats::handshake_timeouts), so a
  // connection that never speaks cannot hold the device's one client slot
  // (the next client waits in the listen backlog). QEMU sends VERSION as
  // soon as it connects. Needs an event loop; zero disables it.
  absl::Duration handshake_timeout = absl::Seconds(10);
  // Wait for the client's reply to a server DMA_READ / DMA_WRITE.
  absl::Duration dma_timeout = absl::Seconds(5);
  // Payload layout of server DMA_READ / DMA_WRITE (see protocol.h).
  DmaRwLayout dma_rw_layout = DmaRwLayout::kAuto;

  // Persistence; see the file comment. `store` must hold SessionTables().
  state_store::Env* store = nullptr;
  // Call PciDevice::Save(txn) in every commit (persistence only).
  bool save_device = true;
  // Peek/commit/consume/journal processing (requires `store` and
  // `journal_path`). Limits max_data_xfer_size to 64 KiB (a request must fit
  // the socket buffer to be peeked) and refuses message-based DMA (windows
  // without an fd): the device sees a DMA error there.
  bool crash_consistent = false;
  // A small file on tmpfs: the "replying N" mark and the self-durable run's
  // progress (RequestJournal, journal.h).
  std::string journal_path;
  // Gets every connection / DMA / eventfd fd before the session relies on it.
  FdDepositor* fd_depositor = nullptr;
  // Crash-consistent mode: a request's commit failed with RESOURCE_EXHAUSTED
  // (a full tmpfs). The request is still in the socket and the store holds
  // the state before it, so the right move is the process's exit: a
  // successor resumes from the last commit and applies the request again
  // once there is room, and the guest sees a slow reply instead of a reset.
  // Expected not to return; if it returns (or is unset) the client is
  // disconnected, as after any other failed commit.
  std::function<void(const absl::Status&)> on_store_full;
  // Test hook (crash_consistent mode): called at 1 = after the commit, 2 =
  // after consuming the request, 3 = after the journal mark, 4 = after the
  // reply was sent (self-durable posted writes - see IsSelfDurable - are
  // not committed: 1 = one applied, 3 = its progress recorded in the
  // journal's run-progress word, 2 = the run consumed; a group-committed
  // run of posted writes: 5 = one applied, not yet committed, then 1, 2, 3
  // as for a request; a request answered without a commit - see IsPure -
  // 6 = applied and recorded in the journal, then 2, 3, 4); returning true
  // makes the session Abandon() right there, as if the process died.
  std::function<bool(int stage)> crash_point;
  // Poison-request quarantine (crash_consistent mode; optional, not owned):
  // a request being applied is bracketed at PoisonGuard::kVfioRequest, keyed
  // by its digest; one that kQuarantineAfter workers died applying is
  // answered EIO (posted: dropped) without being applied, counted in
  // SessionStats::quarantined and logged. Self-durable doorbell writes are
  // plain stores into a memfd and are not bracketed.
  PoisonGuard* poison_guard = nullptr;
};

struct SessionStats {
  uint64_t clients = 0;
  uint64_t requests = 0;
  uint64_t error_replies = 0;
  uint64_t posted_errors = 0;   // failed requests that asked for no reply
  uint64_t framing_errors = 0;
  uint64_t stray_replies = 0;   // replies nobody waited for
  uint64_t dma_messages = 0;    // DMA_READ/WRITE sent to the client
  uint64_t commits = 0;
  uint64_t replayed_replies = 0;  // resume: stored replies re-sent
  uint64_t quarantined = 0;       // poison requests answered without applying
  uint64_t grouped_runs = 0;      // runs of posted writes committed together
  uint64_t grouped_writes = 0;    // the posted writes in them
  uint64_t uncommitted_replies = 0;  // requests answered without a commit (IsPure)
  uint64_t deferred_consumes = 0;    // self-durable runs consumed after more than one wake-up
  uint64_t handshake_timeouts = 0;   // clients dropped for not completing VERSION in time
  // Per command number (index 0 = unknown commands), for metrics labels
  // (CommandName()).
  std::array<uint64_t, kCmdMax> by_command{};
  std::array<uint64_t, kCmdMax> errors_by_command{};
  std::array<uint64_t, kCmdMax> quarantined_by_command{};
};

class Session {
 public:
  // A session with no client yet. The device's regions and IRQs are read once
  // here: INVALID_ARGUMENT if the device lacks the CONFIG region or lists more
  // than 100 regions / an unknown IRQ index.
  static absl::StatusOr<std::unique_ptr<Session>> Create(PciDevice* device, EventLoop* loop,
                                                         SessionOptions options);

  // Rebuilds a session persisted in options.store by an earlier process and
  // attaches `conn` (the still-connected client socket) without a handshake.
  // DMA windows and eventfds are re-opened through `fds` by key. The device
  // must already be Restore()d by the caller; Resume Attach()es it. With
  // crash_consistent, the pending request/reply is settled as in
  // ARCHITECTURE.md before anything else is read.
  static absl::StatusOr<std::unique_ptr<Session>> Resume(PciDevice* device, EventLoop* loop,
                                                         SessionOptions options, UniqueFd conn,
                                                         const FdLookup& fds);

  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Takes a freshly accepted connection. FAILED_PRECONDITION while another
  // client is attached. The socket is made non-blocking.
  absl::Status AttachClient(UniqueFd conn);
  // Drops the client (see the file comment). No-op without a client.
  void Disconnect(absl::string_view why);
  bool connected() const { return conn_.valid(); }
  // Forgets the client as a dying process would: nothing is committed,
  // released, unmapped from the device's point of view or closed at the
  // protocol level (the connection fd is closed here, but a copy held by the
  // fd store keeps the connection alive). For hand-over and crash tests.
  void Abandon();
  int client_fd() const { return conn_.get(); }
  // Called after every disconnect (the Server re-arms its listener).
  void set_on_disconnect(std::function<void()> cb) { on_disconnect_ = std::move(cb); }

  // Handles the requests that can be read without blocking, at most 64 per
  // call (fairness with the loop's other fds). Safe to call spuriously. With
  // an EventLoop the session re-schedules itself when requests remain
  // buffered; without one, call again while HasBufferedInput().
  void ProcessReady();
  bool HasBufferedInput() const { return !backlog_.empty() || reader_.HasBufferedMessage(); }

  DmaTable& dma() { return *dma_; }
  IrqState& irqs() { return *irqs_; }
  PciDevice* device() { return device_; }
  const SessionStats& stats() const { return stats_; }
  bool negotiated() const { return negotiated_; }
  const Capabilities& client_caps() const { return client_caps_; }
  std::string last_disconnect_reason() const { return last_disconnect_reason_; }

 private:
  class MessageDmaImpl;
  struct Reply {
    uint32_t err = 0;  // errno for an error reply
    std::vector<uint8_t> payload;
    std::vector<int> fds;  // borrowed
    std::vector<UniqueFd> owned_fds;
  };

  Session(PciDevice* device, EventLoop* loop, SessionOptions options);
  absl::Status Init();
  absl::Status Watch();

  // Plain and persisted (not crash-consistent) sessions: one request, to
  // completion. Returns false if the client was dropped.
  bool HandleMessage(Message msg);
  Reply Dispatch(Message& msg);
  void CountCommand(uint16_t cmd, bool error) {
    size_t i = cmd < kCmdMax ? cmd : 0;
    ++stats_.by_command[i];
    if (error) ++stats_.errors_by_command[i];
  }
  // `mark`: stored right before the sendmsg (SendPrepared), for the
  // crash-consistent journal's reply marks.
  bool SendReply(const Header& req, const Reply& reply, MarkBeforeSend mark = {});
  // The reply laid out for one sendmsg (crash-consistent path; see there).
  bool PrepareReply(const Header& req, const Reply& reply, PreparedMessage* out);
  // EINVAL reply to a command whose msg_size cannot be framed (the caller
  // disconnects right after).
  void RefuseUnframeable(const Header& h);

  // The crash-consistent request path (session_crash_consistent.cc): peek,
  // apply, commit, consume, journal, reply. Returns false when nothing more
  // can be handled now (would block, dropped or abandoned).
  bool HandleMessageCrashConsistent();
  // A posted REGION_WRITE / REGION_WRITE_MULTI whose every write the device
  // reports as self-durable (PciDevice::WriteIsSelfDurable): nothing to
  // commit for it. False for anything malformed or wanting a reply.
  bool IsSelfDurable(const Message& msg) const;
  // The same test on a header and payload, leaving the writes decoded.
  bool DecodeSelfDurable(const Header& h, absl::Span<const uint8_t> payload, RegionWrites* writes) const;
  // Crash-consistent mode: applies the self-durable messages at the head of
  // the peeked `run` (one peek for the run), recording progress in the journal's
  // run-progress word after each, then consumes them together. Returns how
  // many (0: none / nothing readable; -1: the session was abandoned or
  // disconnected).
  // With an event loop, a look-ahead made entirely of such writes is not
  // consumed at once: the socket's peek offset (SO_PEEK_OFF) is moved past
  // it and the run continues with the next wake-up's writes (recorded in the
  // same run-progress word), until kDeferMax bytes or anything else arrives
  // (ARCHITECTURE.md, "Doorbells: self-durable writes").
  int DrainSelfDurable(absl::Span<const uint8_t> run);
  // Takes the deferred run off the socket and peeks from its head again.
  // False (after Disconnect) if that fails.
  bool EndDeferredRun();
  // SO_PEEK_OFF on the connection: `off` (>= 0) or -1 (off). False (after
  // Disconnect) on failure.
  bool SetPeekOffset(int off);
  // Crash-consistent mode: applies the run of posted (non-self-durable)
  // writes at the head of the peeked `run` and commits them once, then
  // consumes them together. Returns how many (0: the head is no posted
  // write; -1: abandoned or disconnected).
  int CommitPostedRun(absl::Span<const uint8_t> run);
  // A request that changes no state and whose reply reveals only durable
  // state, so it needs no commit (ARCHITECTURE.md, "Reads without side
  // effects"): DEVICE_GET_INFO, GET_REGION_INFO, GET_REGION_IO_FDS,
  // GET_IRQ_INFO, and a REGION_READ the device reports without side effects
  // (PciDevice::ReadHasSideEffects), each wanting a reply and carrying no
  // fds, while nothing is pending a commit: no session change, no interrupt
  // state change, the device's StateGeneration unchanged since the last
  // commit.
  bool IsPure(const Message& msg, size_t raw_size) const;
  // Crash-consistent mode: applies the pure request (IsPure) peeked at the
  // socket head, records it in the journal, consumes it, marks its reply in
  // the journal and sends it. False as HandleMessageCrashConsistent.
  bool HandlePure(Message& msg, absl::Span<const uint8_t> raw, uint64_t digest);
  // A well-formed-looking posted REGION_WRITE / WRITE_MULTI header on a
  // negotiated session (the payload may still be refused).
  bool IsPostedWrite(const Header& h) const;
  // Dispatch bracketed by the poison guard (options_.poison_guard), keyed by
  // the request's digest: a request kQuarantineAfter workers died applying
  // is answered EIO without being applied.
  Reply ApplyGuarded(Message& msg, absl::Span<const uint8_t> raw, uint64_t digest);
  // Counts and logs a poison request answered without being applied.
  void Quarantine(const Header& h, uint64_t digest);
  // Takes the `n` peeked bytes off the socket; false (after Disconnect) if
  // that fails.
  bool ConsumePeeked(size_t n);
  // Resume, crash-consistent mode: settles the request the predecessor
  // applied last (consumes it if still at the socket head, re-sends its
  // stored reply unless the journal says it went out), then the run of
  // self-durable writes it recorded as applied (consumed unapplied if still
  // at the socket head).
  absl::Status SettleLastRequest();
  absl::Status SettleSelfDurableRun();
  // ... then the uncommitted request it recorded (HandlePure): answered
  // again (applied anew: it changes nothing) if it was consumed and its
  // reply not marked.
  absl::Status SettlePure();

  // SessionOptions::crash_point stages. Committed requests: applied and
  // committed, consumed, about to mark the journal and send the reply (one
  // event: SendPrepared with the mark; a posted request is marked, nothing
  // sent), replied. Self-durable writes: one
  // applied, the run consumed, its progress recorded.
  enum CrashStage : int {
    kCrashApplied = 1,
    kCrashConsumed = 2,
    kCrashMarked = 3,
    kCrashReplied = 4,
    kCrashRunApplied = 5,
    kCrashPureRecorded = 6,
  };
  // True, after Abandon(), when the crash_point test hook wants the process
  // to die at `stage`.
  bool CrashAt(CrashStage stage) {
    if (options_.crash_point && options_.crash_point(stage)) [[unlikely]] {
      Abandon();
      return true;
    }
    return false;
  }

  Reply HandleVersion(Message& m);
  Reply HandleDmaMap(Message& m);
  Reply HandleDmaUnmap(Message& m);
  Reply HandleGetInfo(Message& m);
  Reply HandleGetRegionInfo(Message& m);
  Reply HandleGetRegionIoFds(Message& m);
  Reply HandleGetIrqInfo(Message& m);
  Reply HandleSetIrqs(Message& m);
  Reply HandleRegionRead(Message& m);
  Reply HandleRegionWrites(Message& m);  // REGION_WRITE and REGION_WRITE_MULTI
  Reply HandleReset(Message& m);
  // REGION_WRITE_MULTI before VERSION offered write_multiple: ENOTSUP.
  bool WriteMultiRefused(uint16_t cmd) const { return cmd == kCmdRegionWriteMulti && !client_caps_.write_multiple; }
  // Checks every write against its region, then applies them in order: the
  // reply's errno (0 = all applied; a device error stops the rest, EINVAL).
  uint32_t ApplyRegionWrites(const RegionWrites& writes);

  // Largest count of one DMA_READ/DMA_WRITE to the client: within the
  // client's max_data_xfer_size and our own advertised one (QEMU refuses a
  // server request above the limit the server announced, and then loses
  // track of its stream: hw/vfio-user/proxy.c:vfio_user_recv_one,
  // hw/vfio-user/pci.c:vfio_user_dma_read).
  uint64_t DmaChunkMax() const {
    return std::max<uint64_t>(1, std::min({client_caps_.max_data_xfer_size, server_max_xfer_, uint64_t{1} << 20}));
  }
  const RegionDesc* Region(uint32_t index) const;
  absl::Status CheckRegionAccess(uint32_t region, uint64_t offset, uint64_t count, bool write) const;

  // Server -> client request (DMA_READ/DMA_WRITE) and its reply; client
  // requests arriving meanwhile are queued in backlog_.
  absl::StatusOr<Message> ServerRequest(uint16_t cmd, absl::Span<const uint8_t> payload);

  // Persistence (records: session_store.h).
  absl::Status Commit(const std::function<absl::Status(state_store::WriteTxn&)>& extra);
  absl::Status WriteAllState(state_store::WriteTxn& txn);
  absl::Status LoadState(const FdLookup& fds);
  void BeforeUnmap(uint64_t iova, uint64_t size);
  absl::Status DepositFd(absl::string_view key, int fd);
  void ReleaseFd(absl::string_view key);

  PciDevice* device_;
  EventLoop* loop_;
  SessionOptions options_;
  std::vector<RegionDesc> regions_;  // indexed by region index (size 0 = absent)
  std::vector<IrqDesc> irq_descs_;
  uint32_t num_regions_ = 0;
  std::unique_ptr<DmaTable> dma_;
  std::unique_ptr<IrqState> irqs_;
  std::unique_ptr<MessageDmaImpl> message_dma_;

  UniqueFd conn_;
  UniqueFd kick_fd_;  // eventfd: "input is buffered in user space, come back"
  // timerfd: options_.handshake_timeout after AttachClient, while the
  // client has not completed VERSION.
  UniqueFd handshake_timer_;
  void ArmHandshakeTimer();
  void DisarmHandshakeTimer();
  MessageReader reader_;
  std::deque<Message> backlog_;
  bool negotiated_ = false;
  bool attached_ = false;
  bool in_process_ = false;
  Capabilities client_caps_;
  uint64_t server_max_xfer_ = 1 << 20;  // what our VERSION reply announced
  DmaRwLayout dma_layout_ = DmaRwLayout::kSpec;  // resolved at VERSION
  uint16_t next_server_msg_id_ = 0;
  uint64_t seq_ = 0;  // applied requests (crash-consistent numbering)
  static constexpr size_t kPeekSize = 8192;  // DrainSelfDurable's look-ahead (>= the largest WRITE_MULTI)
  bool drained_all_ = false;                 // the last drain emptied the socket
  // A run of self-durable writes applied but left at the socket head, the
  // socket's peek offset just past it (DrainSelfDurable): its bytes and
  // their digest.
  static constexpr size_t kDeferMax = 2048;
  bool peek_offset_ = false;
  bool peek_offset_supported_ = true;  // false once the kernel refused SO_PEEK_OFF
  size_t deferred_ = 0;
  uint64_t deferred_digest_ = 0;
  std::optional<RequestJournal> journal_;    // crash-consistent mode
  bool state_dirty_ = false;
  // The device's StateGeneration at the last commit that saved it (IsPure).
  std::optional<uint64_t> committed_generation_;
  std::vector<uint64_t> dirty_windows_;  // iovas added/removed since the last commit
  std::vector<std::string> pending_releases_;  // fd-store keys released by the next commit
  SessionStats stats_;
  std::string last_disconnect_reason_;
  std::function<void()> on_disconnect_;
};

// A listening UNIX socket serving one Session: while a client is attached the
// listener is not polled (further clients wait in the backlog); after a
// disconnect the next pending client is accepted.
class Server {
 public:
  // Binds `socket_path` (replacing a stale socket file) and listens.
  static absl::StatusOr<std::unique_ptr<Server>> Listen(const std::string& socket_path,
                                                        PciDevice* device, EventLoop* loop,
                                                        SessionOptions options);
  // Uses an already listening socket (e.g. inherited from the fd store), and
  // optionally an existing session (resumed).
  static absl::StatusOr<std::unique_ptr<Server>> FromListener(UniqueFd listen_fd,
                                                              std::unique_ptr<Session> session,
                                                              EventLoop* loop);
  ~Server();

  Session& session() { return *session_; }
  int listen_fd() const { return listen_fd_.get(); }

 private:
  Server() = default;
  void Arm();
  void OnAcceptable();

  UniqueFd listen_fd_;
  std::unique_ptr<Session> session_;
  EventLoop* loop_ = nullptr;
  std::string path_;
};

}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_SESSION_H_
