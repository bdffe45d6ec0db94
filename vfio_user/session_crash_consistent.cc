// Session's crash-consistent request path (SessionOptions::crash_consistent),
// as ARCHITECTURE.md describes it ("Control path", "Doorbells: self-durable
// writes"): requests are peeked, applied, committed with their reply,
// consumed, journalled and answered; runs of self-durable posted writes are
// applied with their progress in the journal and consumed together; and a
// successor settles what its predecessor left (Resume).
#include <errno.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/log.h"
#include "base/fault_point.h"
#include "vfio_user/session.h"
#include "vfio_user/session_store.h"

namespace emud::vfio_user {

bool Session::DecodeSelfDurable(const Header& h, absl::Span<const uint8_t> payload,
                                RegionWrites* writes) const {
  // Only what Dispatch would accept (anything else takes the regular path).
  if (h.flags != (kFlagTypeCommand | kFlagNoReply) || h.error != 0 || !negotiated_) return false;
  if (!RegionWrites::Decode(h.command, payload, writes)) return false;
  for (size_t i = 0; i < writes->size(); ++i) {
    const RegionWrite w = (*writes)[i];
    if (!device_->WriteIsSelfDurable(w.region, w.offset, w.data.size())) return false;
  }
  return true;
}

bool Session::IsSelfDurable(const Message& msg) const {
  if (!msg.fds.empty() || msg.fds_truncated) return false;
  RegionWrites writes;
  return DecodeSelfDurable(msg.hdr, msg.payload, &writes);
}

int Session::DrainSelfDurable(absl::Span<const uint8_t> run) {
  // One peek covers a run of small messages; the self-durable ones at its
  // front are applied one by one and consumed together. After each apply the
  // run-progress word records how many bytes of the run are applied (with
  // their digest), so a successor consumes exactly those without applying
  // them again (SettleSelfDurableRun) and re-applies at most the one message
  // being applied when the process died (re-applying a longer run could step
  // a register back through older values).
  drained_all_ = false;
  size_t off = 0;
  int handled = 0;
  // A deferred run (peek_offset_) goes on: `run` starts right after it.
  const size_t base = peek_offset_ ? deferred_ : 0;
  uint64_t digest = peek_offset_ ? deferred_digest_ : Fnv1a({});  // of the run's first base + `off` bytes
  // The whole look-ahead (<= ~200 small writes): each costs little (a store
  // and maybe a doorbell hook), one peek and one read serve them all.
  while (off + kHeaderSize <= run.size()) {
    Header h;
    std::memcpy(&h, run.data() + off, kHeaderSize);
    if (h.msg_size < kHeaderSize || h.msg_size > run.size() - off) break;
    const absl::Span<const uint8_t> msg = run.subspan(off, h.msg_size);
    RegionWrites writes;
    if (!DecodeSelfDurable(h, msg.subspan(kHeaderSize), &writes)) break;
    const uint32_t err = WriteMultiRefused(h.command) ? ENOTSUP : ApplyRegionWrites(writes);
    ++stats_.requests;
    CountCommand(h.command, err != 0);
    if (err) ++stats_.posted_errors;
    if (CrashAt(kCrashApplied)) return -1;
    digest = Fnv1a(msg, digest);
    off += msg.size();
    ++handled;
    journal_->RecordRun(digest, base + off);
    if (CrashAt(kCrashMarked)) return -1;
  }
  if (handled == 0) return 0;
  // Everything readable was this run: no need to look again before the
  // loop reports more (saves two failing reads per round).
  drained_all_ = off == run.size() && run.size() < kPeekSize;
  const size_t total = base + off;
  // Defer the consume: the next wake-up peeks past these bytes (the peek
  // offset) and its writes extend the run, so a wake-up costs one peek, not a
  // peek and a recv. Bounded (each queued message holds socket buffer the
  // client's sends wait for); only with a loop, which watches the socket
  // edge-triggered (Watch), since the deferred bytes keep it readable.
  if (drained_all_ && loop_ != nullptr && total < kDeferMax && peek_offset_supported_) {
    if (peek_offset_ || SetPeekOffset(static_cast<int>(total))) {
      peek_offset_ = true;
      deferred_ = total;
      deferred_digest_ = digest;
      return handled;
    }
    if (!conn_.valid()) return -1;
  }
  if (!ConsumePeeked(total)) return -1;
  if (base != 0) ++stats_.deferred_consumes;
  if (CrashAt(kCrashConsumed)) return -1;
  journal_->ClearRun();
  if (peek_offset_) {
    deferred_ = 0;
    deferred_digest_ = Fnv1a({});
    // Consuming moved the offset back by as much: 0 if every peeked byte
    // was this run (the kDeferMax case), and the next run starts deferred
    // at the head; else leftover bytes lie behind it and the regular path
    // peeks from the head.
    if (!drained_all_ || loop_ == nullptr) {
      peek_offset_ = false;
      if (!SetPeekOffset(-1)) return -1;
    }
  }
  return handled;
}

bool Session::SetPeekOffset(int off) {
  if (::setsockopt(conn_.get(), SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off)) == 0) return true;
  if (off >= 0 && (errno == EOPNOTSUPP || errno == ENOPROTOOPT)) {
    peek_offset_supported_ = false;  // consume each run at once, as before
    return false;
  }
  Disconnect(absl::StrCat("SO_PEEK_OFF: ", std::strerror(errno)));
  return false;
}

bool Session::EndDeferredRun() {
  if (!peek_offset_) return true;
  if (deferred_ != 0) {
    if (!ConsumePeeked(deferred_)) return false;
    ++stats_.deferred_consumes;
    if (CrashAt(kCrashConsumed)) return false;
  }
  journal_->ClearRun();
  peek_offset_ = false;
  deferred_ = 0;
  return SetPeekOffset(-1);
}

Session::Reply Session::ApplyGuarded(Message& msg, absl::Span<const uint8_t> raw, uint64_t digest) {
  Reply reply;
  PoisonGuard* guard = options_.poison_guard;
  if (guard != nullptr && guard->Enter(PoisonGuard::kVfioRequest, digest) >=
                              PoisonGuard::kQuarantineAfter) [[unlikely]] {
    reply.err = EIO;
    Quarantine(msg.hdr, digest);
  } else {
    fault::Point("vfio", raw.data(), raw.size());
    reply = Dispatch(msg);
  }
  if (guard != nullptr) guard->Leave(PoisonGuard::kVfioRequest);
  return reply;
}

void Session::Quarantine(const Header& h, uint64_t digest) {
  ++stats_.quarantined;
  if (h.command < kCmdMax) ++stats_.quarantined_by_command[h.command];
  // The worker serves one device: log::SetProcessDevice names it on the line.
  emud::log::Error(absl::StrFormat(
      "vfio-user: quarantined poison request %s (msg_id %u, %u bytes, digest %016x): "
      "%u workers died applying it; %s without applying it",
      CommandName(h.command), h.msg_id, h.msg_size, digest, PoisonGuard::kQuarantineAfter,
      (h.flags & kFlagNoReply) ? "dropped (posted)" : "answered EIO"));
}

bool Session::IsPure(const Message& msg, size_t raw_size) const {
  const Header& h = msg.hdr;
  if (h.flags != kFlagTypeCommand || h.error != 0 || !negotiated_ || !attached_) return false;
  if (!msg.fds.empty() || msg.fds_truncated || raw_size > RequestJournal::kPureMax) return false;
  switch (h.command) {
    case kCmdDeviceGetInfo:
    case kCmdDeviceGetRegionInfo:
    case kCmdDeviceGetRegionIoFds:
    case kCmdDeviceGetIrqInfo:
      break;  // answered from the session's fixed description
    case kCmdRegionRead: {
      RegionAccess req;
      // A malformed or refused read is answered with an error and reads
      // nothing; a valid one asks the device.
      if (!LoadStruct(msg.payload, 0, &req) || msg.payload.size() != sizeof(RegionAccess)) break;
      if (!CheckRegionAccess(req.region, req.offset, req.count, false).ok()) break;
      if (device_->ReadHasSideEffects(req.region, req.offset, req.count)) return false;
      break;
    }
    default:
      return false;
  }
  // The reply may reveal only durable state: nothing may wait for a commit
  // (a group-committed run is committed before its handler returns; the
  // data path's changes to saved state move the generation).
  return !state_dirty_ && dirty_windows_.empty() && pending_releases_.empty() && !irqs_->dirty() &&
         options_.save_device && committed_generation_.has_value() &&
         *committed_generation_ == device_->StateGeneration();
}

bool Session::HandlePure(Message& msg, absl::Span<const uint8_t> raw, uint64_t digest) {
  // Apply (changes nothing), record the request in the journal, consume it,
  // mark its reply, reply: a kill before the consume leaves it at the socket
  // head (the successor answers it as any request); after it, the successor
  // finds the record and no longer the request at the head, and answers it
  // again unless the mark says the reply went out (SettlePure).
  const Header h = msg.hdr;
  ++stats_.requests;
  ++stats_.uncommitted_replies;
  Reply reply = ApplyGuarded(msg, raw, digest);
  CountCommand(h.command, reply.err != 0);
  journal_->RecordPure(raw);
  if (CrashAt(kCrashPureRecorded)) return false;
  if (!ConsumePeeked(raw.size())) return false;
  if (CrashAt(kCrashConsumed)) return false;
  // The mark and the send are one event (SendPrepared with the mark):
  // kCrashMarked is the instant before both.
  if (CrashAt(kCrashMarked)) return false;
  if (!SendReply(h, reply, journal_->PureReplyingMark())) return false;
  return !CrashAt(kCrashReplied);
}

bool Session::IsPostedWrite(const Header& h) const {
  return h.flags == (kFlagTypeCommand | kFlagNoReply) && h.error == 0 && negotiated_ &&
         (h.command == kCmdRegionWrite || h.command == kCmdRegionWriteMulti);
}

int Session::CommitPostedRun(absl::Span<const uint8_t> run) {
  // A run of posted writes is applied in order and committed once
  // (ARCHITECTURE.md, "Group commit of posted writes"): a posted write has
  // no reply, so nothing the guest can observe depends on its durability
  // before the next reply, which is sent only after this commit. A kill
  // before the commit leaves the whole run at the socket head and the store
  // before it: the successor applies it again from that state. The run
  // stops before a self-durable write (re-applying a run must never step a
  // self-durable register back through older values) and after a write the
  // device does not call deferrable (it writes guest memory at once).
  drained_all_ = false;
  size_t off = 0;
  int handled = 0;
  uint64_t digest = Fnv1a({});
  Header first;
  while (off + kHeaderSize <= run.size()) {
    Header h;
    std::memcpy(&h, run.data() + off, kHeaderSize);
    if (h.msg_size < kHeaderSize || h.msg_size > run.size() - off || !IsPostedWrite(h)) break;
    const absl::Span<const uint8_t> raw = run.subspan(off, h.msg_size);
    RegionWrites writes;
    if (!RegionWrites::Decode(h.command, raw.subspan(kHeaderSize), &writes)) break;  // the regular path answers it
    bool self_durable = true, deferrable = true;
    for (size_t i = 0; i < writes.size(); ++i) {
      const RegionWrite w = writes[i];
      self_durable = self_durable && device_->WriteIsSelfDurable(w.region, w.offset, w.data.size());
      deferrable = deferrable && device_->WriteIsDeferrable(w.region, w.offset, w.data.size());
    }
    if (self_durable) break;  // DrainSelfDurable's, next round
    Message msg;
    msg.hdr = h;
    msg.payload.assign(raw.begin() + kHeaderSize, raw.end());
    ++stats_.requests;
    const Reply reply = ApplyGuarded(msg, raw, Fnv1a(raw));
    CountCommand(h.command, reply.err != 0);
    if (reply.err) ++stats_.posted_errors;
    if (handled == 0) first = h;
    digest = Fnv1a(raw, digest);
    off += raw.size();
    ++handled;
    if (CrashAt(kCrashRunApplied)) return -1;
    if (!deferrable) break;
  }
  if (handled == 0) return 0;
  ++stats_.grouped_runs;
  stats_.grouped_writes += handled;
  drained_all_ = off == run.size() && run.size() < kPeekSize;
  ++seq_;
  state_dirty_ = true;
  // The run is the "last request": a successor finding it still at the
  // socket head (same length, digest and first header) consumes it
  // unapplied; no reply is owed.
  Header rh;
  rh.msg_id = first.msg_id;
  rh.command = first.command;
  rh.flags = kFlagTypeReply;
  rh.msg_size = kHeaderSize;
  const absl::Span<const uint8_t> applied = run.first(off);
  auto s = Commit([&](state_store::WriteTxn& txn) -> absl::Status {
    return session_store::PutLastRequest(txn, seq_, applied, digest, /*wants_reply=*/false, rh, {});
  });
  if (!s.ok()) {
    if (s.code() == absl::StatusCode::kResourceExhausted && options_.on_store_full) {
      options_.on_store_full(s);
    }
    Disconnect(absl::StrCat("commit failed: ", s.message()));
    return -1;
  }
  if (CrashAt(kCrashApplied)) return -1;
  if (!ConsumePeeked(off)) return -1;
  if (CrashAt(kCrashConsumed)) return -1;
  journal_->MarkReplying(seq_);
  if (CrashAt(kCrashMarked)) return -1;
  return handled;
}

bool Session::HandleMessageCrashConsistent() {
  // 0. One look-ahead for the runs at the head: self-durable posted writes
  // (the doorbell and interrupt re-arm path: no commit) or other posted
  // writes (one commit for the run). EOF, errors and EAGAIN: the regular
  // path decides. Fds anywhere in the look-ahead send every message through
  // the regular path (which refuses a write carrying fds).
  bool fds = false, would_block = false;
  absl::Span<const uint8_t> run = reader_.PeekAhead(conn_.get(), kPeekSize, &fds, &would_block);
  if (peek_offset_) {
    // A deferred run: `run` is what arrived after it. Nothing new (a wake-up
    // for bytes an earlier round already took): keep it. More self-durable
    // writes extend it; anything else (another request, fds, a partial
    // message, EOF, an error) ends it: consumed, and the look-ahead made
    // again from the socket head.
    if (run.empty() && would_block) return false;
    if (!run.empty() && !fds) {
      const int d = DrainSelfDurable(run);
      if (d != 0) return d > 0 && !(drained_all_ && loop_ != nullptr);
    }
    if (!EndDeferredRun()) return false;
    run = reader_.PeekAhead(conn_.get(), kPeekSize, &fds);
  }
  if (!run.empty() && !fds) {
    int d = DrainSelfDurable(run);
    if (d == 0) d = CommitPostedRun(run);
    if (d != 0) return d > 0 && !(drained_all_ && loop_ != nullptr);
  }
  // 1. The whole message at the head: taken from the look-ahead when that
  // holds all of it and no fds rode on it (a peek reports the fds of every
  // skb whose bytes it returns), else peeked on its own with its fds.
  Message msg;
  absl::Span<const uint8_t> raw;  // valid until the consume
  std::string err;
  Header head;
  if (!fds && run.size() >= kHeaderSize) std::memcpy(&head, run.data(), kHeaderSize);
  if (!fds && run.size() >= kHeaderSize && head.msg_size >= kHeaderSize && head.msg_size <= run.size() &&
      head.msg_size <= options_.max_msg_size) {
    msg.hdr = head;
    msg.payload.assign(run.begin() + kHeaderSize, run.begin() + head.msg_size);
    raw = run.first(head.msg_size);
  } else switch (reader_.Peek(conn_.get(), &msg, &raw, &err)) {
    case MessageReader::Result::kMessage:
      break;
    case MessageReader::Result::kWouldBlock:
      return false;
    case MessageReader::Result::kFramingError:
      ++stats_.framing_errors;
      RefuseUnframeable(msg.hdr);
      Disconnect(err);
      return false;
    case MessageReader::Result::kClosed:
      Disconnect(err);
      return false;
  }
  const Header h = msg.hdr;
  const uint64_t digest = Fnv1a(raw);

  // 2. A self-durable posted write needs no commit, journal or reply: apply
  // and consume (a kill before the consume makes the successor apply it
  // again, harmlessly; the "last" record still names the last committed
  // request, whose bytes differ since it was not self-durable).
  if (IsSelfDurable(msg)) {
    ++stats_.requests;
    Reply reply = Dispatch(msg);
    CountCommand(h.command, reply.err != 0);
    if (reply.err) ++stats_.posted_errors;
    if (CrashAt(kCrashApplied)) return false;
    if (!ConsumePeeked(raw.size())) return false;
    return !CrashAt(kCrashConsumed);
  }
  // 3. A request that changes no state, while everything its reply may
  // reveal is durable: no commit.
  if (IsPure(msg, raw.size())) return HandlePure(msg, raw, digest);
  // 4. Apply.
  const bool is_reply = (h.flags & kFlagTypeMask) == kFlagTypeReply;
  Reply reply;
  if (is_reply) {
    ++stats_.stray_replies;
  } else {
    ++stats_.requests;
    reply = ApplyGuarded(msg, raw, digest);
    CountCommand(h.command, reply.err != 0);
  }
  const bool wants_reply = !is_reply && !(h.flags & kFlagNoReply);
  Header rh;
  rh.msg_id = h.msg_id;
  rh.command = h.command;
  rh.flags = kFlagTypeReply | (reply.err ? kFlagError : 0);
  rh.error = reply.err;
  rh.msg_size = static_cast<uint32_t>(kHeaderSize + (reply.err ? 0 : reply.payload.size()));
  ++seq_;
  state_dirty_ = true;
  // 5. Commit state + device + the applied request and its reply.
  auto s = Commit([&](state_store::WriteTxn& txn) -> absl::Status {
    return session_store::PutLastRequest(txn, seq_, raw, digest, wants_reply, rh,
                                         reply.err ? absl::Span<const uint8_t>() : absl::MakeConstSpan(reply.payload));
  });
  if (!s.ok()) {
    if (s.code() == absl::StatusCode::kResourceExhausted && options_.on_store_full) {
      options_.on_store_full(s);
    }
    Disconnect(absl::StrCat("commit failed: ", s.message()));
    return false;
  }
  if (CrashAt(kCrashApplied)) return false;
  // 6. Consume (no control buffer: the in-flight fd references are dropped).
  if (!ConsumePeeked(raw.size())) return false;
  if (CrashAt(kCrashConsumed)) return false;
  // 7. Journal, then reply. A kill between the mark and the sendmsg would
  // lose the reply (the successor takes the mark as "sent"), so the two are
  // one event: SendPrepared stores the mark with the instruction before the
  // syscall (base/scm_rights.h, SendMsgMarked), the reply laid out first.
  // kCrashMarked is the instant before both. Nothing to send: mark only.
  if (!wants_reply) {
    journal_->MarkReplying(seq_);
    if (CrashAt(kCrashMarked)) return false;
    if (reply.err && !is_reply) ++stats_.posted_errors;
    return true;
  }
  if (CrashAt(kCrashMarked)) return false;
  if (!SendReply(h, reply, journal_->ReplyingMark(seq_))) return false;
  return !CrashAt(kCrashReplied);
}

bool Session::ConsumePeeked(size_t n) {
  if (absl::Status s = reader_.Consume(conn_.get(), n); !s.ok()) {
    Disconnect(absl::StrCat("consume failed: ", s.message()));
    return false;
  }
  return true;
}

absl::Status Session::SettleLastRequest() {
  auto last = session_store::GetLastRequest(*options_.store);
  if (!last.ok()) return last.status();
  if (!last->has_value() || (*last)->seq() != seq_) return absl::OkStatus();
  const LastRequestRecord& rec = **last;
  // Is the head of the socket the request we applied but did not consume?
  bool fds;
  const absl::Span<const uint8_t> head = reader_.PeekAhead(conn_.get(), rec.msg_size(), &fds);
  const bool head_is_last =
      head.size() == rec.msg_size() && Fnv1a(head) == rec.digest() &&
      std::memcmp(head.data(), rec.header().data(), std::min<size_t>(kHeaderSize, rec.header().size())) == 0;
  if (head_is_last && !reader_.Consume(conn_.get(), head.size()).ok()) {
    return absl::UnavailableError("consuming the applied request failed");
  }
  if (rec.wants_reply() && (head_is_last || journal_->replying() != rec.seq())) {
    Header rh;
    std::memcpy(&rh, rec.reply_header().data(), std::min<size_t>(sizeof(rh), rec.reply_header().size()));
    Reply reply;
    reply.err = (rh.flags & kFlagError) ? rh.error : 0;
    reply.payload.assign(rec.reply_payload().begin(), rec.reply_payload().end());
    // A region-info reply carries the region fd, which the record cannot
    // hold: recompute it from the stored request.
    if (rh.command == kCmdDeviceGetRegionInfo && !rec.request().empty()) {
      Message m;
      std::memcpy(&m.hdr, rec.request().data(), kHeaderSize);
      m.payload.assign(rec.request().begin() + kHeaderSize, rec.request().end());
      reply = HandleGetRegionInfo(m);
    }
    Header req;
    req.msg_id = rh.msg_id;
    req.command = rh.command;
    ++stats_.replayed_replies;
    if (!SendReply(req, reply, journal_->ReplyingMark(rec.seq()))) {
      return absl::UnavailableError("sending the stored reply failed");
    }
  } else if (head_is_last) {
    journal_->MarkReplying(rec.seq());
  }
  return absl::OkStatus();
}

absl::Status Session::SettleSelfDurableRun() {
  const uint64_t progress = journal_->run();
  if (progress == 0) return absl::OkStatus();
  // A run of self-durable writes was applied up to here but maybe not
  // consumed: if the socket head is still that prefix, consume it unapplied.
  const size_t bytes = std::min<uint32_t>(RequestJournal::RunBytes(progress), 1u << 16);
  bool fds;
  const absl::Span<const uint8_t> head = reader_.PeekAhead(conn_.get(), bytes, &fds);
  const bool applied_at_head =
      bytes != 0 && head.size() == bytes && RequestJournal::RunProgress(Fnv1a(head), bytes) == progress;
  if (applied_at_head && !reader_.Consume(conn_.get(), bytes).ok()) {
    return absl::UnavailableError("consuming the applied writes failed");
  }
  journal_->ClearRun();
  return absl::OkStatus();
}

absl::Status Session::SettlePure() {
  bool replying = false;
  const absl::Span<const uint8_t> rec = journal_->pure(&replying);
  if (rec.empty() || replying) {
    journal_->ClearPure();
    return absl::OkStatus();
  }
  // Recorded, reply not sent. Still at the socket head: not consumed, the
  // loop answers it like any request. Otherwise it was consumed: answer it
  // now, applied anew (it changes no state, and the state its reply
  // reveals is what this process restored: durable).
  bool fds;
  const absl::Span<const uint8_t> head = reader_.PeekAhead(conn_.get(), rec.size(), &fds);
  const bool at_head = head.size() == rec.size() && std::memcmp(head.data(), rec.data(), rec.size()) == 0;
  if (!at_head) {
    Message m;
    std::memcpy(&m.hdr, rec.data(), kHeaderSize);
    m.payload.assign(rec.begin() + kHeaderSize, rec.end());
    ++stats_.requests;
    Reply reply = ApplyGuarded(m, rec, Fnv1a(rec));
    CountCommand(m.hdr.command, reply.err != 0);
    ++stats_.replayed_replies;
    if (!SendReply(m.hdr, reply, journal_->PureReplyingMark())) {
      return absl::UnavailableError("answering the recorded request failed");
    }
  }
  journal_->ClearPure();
  return absl::OkStatus();
}

}  // namespace emud::vfio_user
