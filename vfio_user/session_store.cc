#include "vfio_user/session_store.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "state_store/record.h"
#include "state_store/store.h"
#include "vfio_user/device.h"
#include "vfio_user/dma_table.h"
#include "vfio_user/irq_state.h"
#include "worker_api/fd_keys.h"

namespace emud::vfio_user::session_store {
namespace {

using worker_api::DmaFdKey;
using worker_api::IrqFdKey;

constexpr char kSessionKey[] = "session";
constexpr char kIrqsKey[] = "irqs";
constexpr char kLastKey[] = "last";
constexpr char kDmaPrefix[] = "dma/";
constexpr size_t kStoredRequestMax = 256;  // LastRequestRecord.request

// The record key of a window. Not its fd's fd-store key (worker_api::DmaFdKey,
// "dma/%x"): both are persisted, each stays as it is.
std::string DmaKey(uint64_t iova) { return absl::StrFormat("dma/%016x", iova); }

template <typename Msg>
state_store::RecordTable<Msg> Table() {
  return state_store::RecordTable<Msg>(kTable);
}

}  // namespace


absl::Status PutNegotiated(state_store::WriteTxn& txn, const Negotiated& n) {
  SessionRecord rec;
  rec.set_negotiated(n.live);
  rec.set_major(kMajorVersion);
  rec.set_minor(kMinorVersion);
  rec.set_client_max_msg_fds(n.client_caps.max_msg_fds);
  rec.set_client_max_data_xfer_size(n.client_caps.max_data_xfer_size);
  rec.set_client_pgsizes(n.client_caps.pgsizes);
  rec.set_client_max_dma_maps(n.client_caps.max_dma_maps);
  rec.set_write_multiple(n.client_caps.write_multiple);
  rec.set_seq(n.seq);
  rec.set_next_server_msg_id(n.next_server_msg_id);
  rec.set_qemu_dma_layout(n.dma_layout == DmaRwLayout::kQemu);
  return Table<SessionRecord>().Put(txn, kSessionKey, rec);
}

absl::Status PutDmaWindow(state_store::WriteTxn& txn, const DmaTable& dma, uint64_t iova) {
  auto it = dma.windows().find(iova);
  if (it == dma.windows().end()) return Table<DmaWindowRecord>().Delete(txn, DmaKey(iova));
  const DmaWindow& w = it->second;
  DmaWindowRecord rec;
  rec.set_iova(w.iova);
  rec.set_size(w.size);
  rec.set_prot(w.prot);
  rec.set_fd_offset(w.fd_offset);
  rec.set_has_fd(w.has_fd);
  if (w.has_fd) rec.set_fd_key(DmaFdKey(w.iova));
  return Table<DmaWindowRecord>().Put(txn, DmaKey(iova), rec);
}

absl::Status PutIrqs(state_store::WriteTxn& txn, const IrqState& irqs) {
  IrqRecord rec;
  rec.set_msix_enabled(irqs.msix_enabled());
  rec.set_function_masked(irqs.function_masked());
  for (uint32_t i = 0; i < kNumPciIrqs; ++i) {
    if (irqs.count(i) == 0) continue;
    auto* idx = rec.add_indexes();
    idx->set_index(i);
    for (const auto& v : irqs.Snapshot(i)) {
      auto* vr = idx->add_vectors();
      vr->set_has_fd(v.has_fd);
      vr->set_masked(v.masked);
      vr->set_guest_masked(v.guest_masked);
      vr->set_pending(v.pending);
    }
  }
  return Table<IrqRecord>().Put(txn, kIrqsKey, rec);
}

absl::Status PutLastRequest(state_store::WriteTxn& txn, uint64_t seq, absl::Span<const uint8_t> request,
                            uint64_t digest, bool wants_reply, const Header& reply_header,
                            absl::Span<const uint8_t> reply_payload) {
  LastRequestRecord last;
  last.set_seq(seq);
  last.set_msg_size(static_cast<uint32_t>(request.size()));
  last.set_header(request.data(), kHeaderSize);
  last.set_digest(digest);
  if (request.size() <= kStoredRequestMax) last.set_request(request.data(), request.size());
  last.set_wants_reply(wants_reply);
  last.set_reply_header(&reply_header, sizeof(reply_header));
  last.set_reply_payload(reply_payload.data(), reply_payload.size());
  return Table<LastRequestRecord>().Put(txn, kLastKey, last);
}

absl::StatusOr<Negotiated> Restore(const state_store::Env& env, FdSource fds, DmaTable& dma, IrqState& irqs) {
  std::optional<SessionRecord> srec;
  std::vector<DmaWindowRecord> wrecs;
  std::optional<IrqRecord> irec;
  auto st = env.View([&](const state_store::ReadTxn& txn) -> absl::Status {
    auto s = Table<SessionRecord>().Get(txn, kSessionKey);
    if (!s.ok()) return s.status();
    srec = *s;
    auto i = Table<IrqRecord>().Get(txn, kIrqsKey);
    if (!i.ok()) return i.status();
    irec = *i;
    return Table<DmaWindowRecord>().ForEach(txn, kDmaPrefix, [&](absl::string_view, const DmaWindowRecord& w) {
      wrecs.push_back(w);
      return absl::OkStatus();
    });
  });
  if (!st.ok()) return st;
  if (!srec || !srec->negotiated()) return absl::NotFoundError("no live session persisted");
  Negotiated n;
  n.live = true;
  n.client_caps.max_msg_fds = srec->client_max_msg_fds();
  n.client_caps.max_data_xfer_size = srec->client_max_data_xfer_size();
  n.client_caps.pgsizes = srec->client_pgsizes();
  n.client_caps.max_dma_maps = srec->client_max_dma_maps();
  n.client_caps.write_multiple = srec->write_multiple();
  n.seq = srec->seq();
  n.next_server_msg_id = static_cast<uint16_t>(srec->next_server_msg_id());
  n.dma_layout = srec->qemu_dma_layout() ? DmaRwLayout::kQemu : DmaRwLayout::kSpec;
  for (const auto& w : wrecs) {
    UniqueFd fd;
    if (w.has_fd()) {
      auto f = fds(w.fd_key());
      if (!f.ok()) return absl::DataLossError(absl::StrCat("DMA window fd ", w.fd_key(), ": ", f.status().message()));
      fd = std::move(*f);
    }
    if (auto s = dma.Map(w.iova(), w.size(), w.prot(), std::move(fd), w.fd_offset()); !s.ok()) {
      return absl::DataLossError(absl::StrCat("re-mapping DMA window: ", s.message()));
    }
  }
  if (irec) {
    irqs.set_control(irec->msix_enabled(), irec->function_masked());
    for (const auto& idx : irec->indexes()) {
      if (idx.index() >= kNumPciIrqs) continue;
      for (int v = 0; v < idx.vectors_size() && static_cast<uint32_t>(v) < irqs.count(idx.index()); ++v) {
        const auto& vr = idx.vectors(v);
        UniqueFd efd;
        if (vr.has_fd()) {
          auto f = fds(IrqFdKey(idx.index(), v));
          if (!f.ok()) return absl::DataLossError(absl::StrCat("eventfd ", IrqFdKey(idx.index(), v), " missing"));
          efd = std::move(*f);
        }
        irqs.RestoreVector(idx.index(), v, {vr.has_fd(), vr.masked(), vr.guest_masked(), vr.pending()},
                           std::move(efd));
      }
    }
  }
  return n;
}

absl::StatusOr<std::optional<LastRequestRecord>> GetLastRequest(const state_store::Env& env) {
  std::optional<LastRequestRecord> last;
  auto st = env.View([&](const state_store::ReadTxn& txn) -> absl::Status {
    auto l = Table<LastRequestRecord>().Get(txn, kLastKey);
    if (!l.ok()) return l.status();
    last = *l;
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return last;
}

namespace {

// PciDevice records over a state_store transaction, in one table.
class ReadTxnRecords final : public DeviceRecordReader {
 public:
  ReadTxnRecords(const state_store::ReadTxn& txn, absl::string_view table) : txn_(txn), table_(table) {}
  absl::StatusOr<std::optional<absl::string_view>> Get(absl::string_view key) const override {
    return txn_.Get(table_, key);
  }

 private:
  const state_store::ReadTxn& txn_;
  absl::string_view table_;
};

class WriteTxnRecords final : public DeviceRecordWriter {
 public:
  WriteTxnRecords(state_store::WriteTxn& txn, absl::string_view table) : txn_(txn), table_(table) {}
  absl::StatusOr<std::optional<absl::string_view>> Get(absl::string_view key) const override {
    return txn_.Get(table_, key);
  }
  absl::Status Put(absl::string_view key, absl::string_view value) override {
    return txn_.Put(table_, key, value);
  }

 private:
  state_store::WriteTxn& txn_;
  absl::string_view table_;
};

}  // namespace

absl::Status SaveDevice(state_store::WriteTxn& txn, PciDevice& device) {
  WriteTxnRecords records(txn, device.RecordNamespace());
  return device.Save(records);
}

absl::Status RestoreDevice(const state_store::Env& env, PciDevice& device) {
  return env.View([&](const state_store::ReadTxn& txn) {
    ReadTxnRecords records(txn, device.RecordNamespace());
    return device.Restore(records);
  });
}

}  // namespace emud::vfio_user::session_store
