// vfio-user client library: every client-to-server command, fd passing, and
// serving the server's DMA_READ / DMA_WRITE requests. Used by tests, the AVF
// test guest and benchmarks.
//
// Blocking, one outstanding request at a time (posted writes aside); not
// thread-safe. Error replies come back as a Status carrying the errno
// (StatusToErrno(status) recovers it).
#ifndef EMUD_VFIO_USER_CLIENT_H_
#define EMUD_VFIO_USER_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "vfio_user/device.h"
#include "vfio_user/protocol.h"
#include "vfio_user/transport.h"

namespace emud::vfio_user {

// Serves server-to-client DMA for windows mapped without an fd.
class ClientDmaHandler {
 public:
  virtual ~ClientDmaHandler() = default;
  // Return 0 or an errno.
  virtual int Read(uint64_t iova, absl::Span<uint8_t> out) = 0;
  virtual int Write(uint64_t iova, absl::Span<const uint8_t> data) = 0;
};

struct RegionInfoResult {
  RegionInfo info;
  std::vector<MmapArea> sparse_areas;  // from the sparse-mmap capability
  UniqueFd fd;                          // the region fd when MMAP is set
};

struct VersionResult {
  uint16_t major = 0;
  uint16_t minor = 0;
  Capabilities server_caps;
  bool had_json = false;
};

struct MultiWrite {
  uint32_t region = 0;
  uint64_t offset = 0;
  std::vector<uint8_t> data;  // 1..8 bytes
};

class Client {
 public:
  // Connects to a listening vfio-user socket.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& socket_path);
  // Wraps an already connected socket.
  static absl::StatusOr<std::unique_ptr<Client>> FromFd(UniqueFd sock);

  // VERSION: proposes 0.0 with `caps` (QEMU-like defaults: 16 fds, 1 MiB,
  // write_multiple) and returns the server's answer. Fails if the server's
  // major differs or its minor is above ours.
  absl::StatusOr<VersionResult> Version();
  absl::StatusOr<VersionResult> Version(const Capabilities& caps, uint16_t minor = 0);

  // DMA_MAP of [iova, iova + size) backed by `fd` at `offset` (fd < 0: no fd,
  // the server will use DMA_READ/DMA_WRITE). flags: kDmaFlagRead|kDmaFlagWrite.
  absl::Status DmaMap(int fd, uint64_t offset, uint64_t iova, uint64_t size,
                      uint32_t flags = kDmaFlagRead | kDmaFlagWrite);
  absl::Status DmaUnmap(uint64_t iova, uint64_t size, uint32_t flags = 0);
  absl::Status DmaUnmapAll() { return DmaUnmap(0, 0, kDmaUnmapFlagAll); }

  absl::StatusOr<DeviceInfo> GetInfo();
  // Retries with a larger argsz when the server asks for one.
  absl::StatusOr<RegionInfoResult> GetRegionInfo(uint32_t index);
  absl::StatusOr<IrqInfo> GetIrqInfo(uint32_t index);
  // DEVICE_SET_IRQS in any form. `fds` (DATA_EVENTFD) and `bools` (DATA_BOOL)
  // as the flags say.
  absl::Status SetIrqs(uint32_t index, uint32_t flags, uint32_t start, uint32_t count,
                       absl::Span<const int> fds = {}, absl::Span<const uint8_t> bools = {});
  // Assigns eventfds to vectors start.. of `index` (ACTION_TRIGGER|DATA_EVENTFD),
  // in chunks of the server's max_msg_fds.
  absl::Status SetIrqEventfds(uint32_t index, uint32_t start, absl::Span<const int> fds);
  absl::Status MaskIrq(uint32_t index, uint32_t start, uint32_t count, bool mask);

  absl::Status RegionRead(uint32_t region, uint64_t offset, absl::Span<uint8_t> out);
  // posted: NO_REPLY, returns once sent.
  absl::Status RegionWrite(uint32_t region, uint64_t offset, absl::Span<const uint8_t> data,
                           bool posted = false);
  absl::StatusOr<uint32_t> Read32(uint32_t region, uint64_t offset);
  absl::Status Write32(uint32_t region, uint64_t offset, uint32_t value, bool posted = false);
  // REGION_WRITE_MULTI (needs write_multiple negotiated).
  absl::Status WriteMulti(absl::Span<const MultiWrite> writes, bool posted = true);
  absl::Status Reset();

  // Raw access for tests: sends one message and waits for the reply
  // (serving DMA requests meanwhile) unless `flags` has NO_REPLY. Like QEMU,
  // a reply larger than the receive buffer is an error (DATA_LOSS): the
  // buffer is `max_reply` bytes, or the request's own size when 0.
  absl::StatusOr<Message> Request(uint16_t command, absl::Span<const uint8_t> payload,
                                  absl::Span<const int> fds = {}, uint32_t flags = 0,
                                  size_t max_reply = 0);
  absl::Status SendRaw(absl::Span<const uint8_t> bytes, absl::Span<const int> fds = {});
  absl::StatusOr<Message> ReceiveReply(uint16_t msg_id, uint16_t command);

  // Serves DMA_READ/DMA_WRITE requests. Without a handler they are refused
  // with EFAULT.
  void set_dma_handler(ClientDmaHandler* h) { dma_handler_ = h; }
  // Handles server requests already readable, without blocking.
  absl::Status ServePending();

  // Layout this client uses for DMA_READ/DMA_WRITE (kSpec by default;
  // kQemu emulates QEMU's client, including the migration.max_bitmap_size
  // capability that makes a kAuto server pick the same layout).
  void set_dma_layout(DmaRwLayout l) { dma_layout_ = l; }
  void set_timeout(absl::Duration d) { timeout_ = d; }
  // Spin (non-blocking recv in a loop) instead of sleeping in poll while
  // waiting for a reply: lower latency, one core busy (benchmarks).
  void set_busy_wait(bool b) { busy_wait_ = b; }
  const Capabilities& server_caps() const { return server_caps_; }
  int fd() const { return sock_.get(); }
  uint64_t dma_requests_served() const { return dma_served_; }
  // The longest any request (Request(), i.e. every command above) waited
  // from its send to its reply, or to its failure (e.g. the timeout), and
  // that request's command; 0 / 0 before any request expecting a reply.
  absl::Duration max_reply_wait() const { return max_reply_wait_; }
  uint16_t max_reply_wait_command() const { return max_reply_wait_command_; }

 private:
  explicit Client(UniqueFd sock) : sock_(std::move(sock)) {}
  uint16_t NextId() { return next_id_++; }
  absl::StatusOr<Message> Receive();
  absl::Status HandleServerRequest(Message& m);
  static absl::Status ReplyStatus(const Message& m);

  UniqueFd sock_;
  uint16_t next_id_ = 1;
  Capabilities server_caps_;
  ClientDmaHandler* dma_handler_ = nullptr;
  absl::Duration timeout_ = absl::Seconds(10);
  bool busy_wait_ = false;
  DmaRwLayout dma_layout_ = DmaRwLayout::kSpec;
  uint64_t dma_served_ = 0;
  absl::Duration max_reply_wait_ = absl::ZeroDuration();
  uint16_t max_reply_wait_command_ = 0;
  MessageReader reader_{(64u << 20) + 4096, kMaxRecvFds};
};

}  // namespace emud::vfio_user

#endif  // EMUD_VFIO_USER_CLIENT_H_
