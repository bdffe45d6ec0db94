#include "vfio_user/msix_table.h"

#include <algorithm>
#include <cstring>

namespace emud::vfio_user {
namespace {

void PutLe(uint8_t* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t GetLe(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

}  // namespace

MsixTable::MsixTable(uint32_t num_vectors)
    : entries_(std::clamp<uint32_t>(num_vectors, 1, kMaxVectors)),
      guest_written_(entries_.size(), false) {}

void MsixTable::Attach(InterruptSink* sink) {
  sink_ = sink;
  if (!sink_) return;
  sink_->SetMsixControl(enabled_, function_masked_);
  for (uint32_t v = 0; v < entries_.size(); ++v) {
    if (guest_written_[v]) sink_->SetMsixGuestMask(v, entries_[v].control & 1);
  }
}

void MsixTable::TableRead(uint64_t offset, absl::Span<uint8_t> out) const {
  for (size_t i = 0; i < out.size(); ++i) {
    uint64_t off = offset + i;
    if (off < offset || off >= table_bytes()) {
      out[i] = 0;
      continue;
    }
    const Entry& e = entries_[off / kEntrySize];
    uint8_t raw[kEntrySize];
    PutLe(raw, e.address, 8);
    PutLe(raw + 8, e.data, 4);
    PutLe(raw + 12, e.control, 4);
    out[i] = raw[off % kEntrySize];
  }
}

void MsixTable::TableWrite(uint64_t offset, absl::Span<const uint8_t> data) {
  size_t i = 0;
  while (i < data.size()) {
    uint64_t off = offset + i;
    if (off < offset || off >= table_bytes()) break;
    uint32_t v = static_cast<uint32_t>(off / kEntrySize);
    Entry& e = entries_[v];
    uint8_t raw[kEntrySize];
    PutLe(raw, e.address, 8);
    PutLe(raw + 8, e.data, 4);
    PutLe(raw + 12, e.control, 4);
    bool touched_control = false;
    for (; i < data.size(); ++i) {
      uint64_t o = offset + i;
      if (o < offset || o >= table_bytes() || o / kEntrySize != v) break;
      raw[o % kEntrySize] = data[i];
      if (o % kEntrySize >= 12) touched_control = true;
    }
    bool was_masked = e.control & 1;
    e.address = GetLe(raw, 8);
    e.data = static_cast<uint32_t>(GetLe(raw + 8, 4));
    e.control = static_cast<uint32_t>(GetLe(raw + 12, 4)) & 1;  // only the mask bit is RW
    bool masked = e.control & 1;
    if (touched_control && (!guest_written_[v] || masked != was_masked)) {
      guest_written_[v] = true;
      if (sink_) sink_->SetMsixGuestMask(v, masked);
    }
  }
}

void MsixTable::PbaRead(uint64_t offset, absl::Span<uint8_t> out) const {
  for (size_t i = 0; i < out.size(); ++i) {
    uint64_t off = offset + i;
    uint8_t b = 0;
    if (off >= offset && off < pba_bytes() && sink_) {
      for (int bit = 0; bit < 8; ++bit) {
        uint64_t v = off * 8 + bit;
        if (v < entries_.size() && sink_->MsixPending(static_cast<uint32_t>(v))) b |= 1 << bit;
      }
    }
    out[i] = b;
  }
}

void MsixTable::SetControl(bool enabled, bool function_masked) {
  bool changed = enabled != enabled_ || function_masked != function_masked_;
  enabled_ = enabled;
  function_masked_ = function_masked;
  if (changed && sink_) sink_->SetMsixControl(enabled_, function_masked_);
}

void MsixTable::Reset() {
  for (uint32_t v = 0; v < entries_.size(); ++v) {
    entries_[v] = Entry{};
    if (guest_written_[v] && sink_) sink_->SetMsixGuestMask(v, false);
    guest_written_[v] = false;
  }
  SetControl(false, false);
}

std::string MsixTable::SaveState() const {
  std::string out;
  out.resize(8 + entries_.size() * (kEntrySize + 1));
  uint8_t* p = reinterpret_cast<uint8_t*>(out.data());
  PutLe(p, entries_.size(), 4);
  p[4] = enabled_;
  p[5] = function_masked_;
  p += 8;
  for (uint32_t v = 0; v < entries_.size(); ++v) {
    PutLe(p, entries_[v].address, 8);
    PutLe(p + 8, entries_[v].data, 4);
    PutLe(p + 12, entries_[v].control, 4);
    p[16] = guest_written_[v];
    p += kEntrySize + 1;
  }
  return out;
}

absl::Status MsixTable::RestoreState(absl::string_view bytes) {
  if (bytes.size() != 8 + entries_.size() * (kEntrySize + 1)) {
    return absl::InvalidArgumentError("MSI-X table state has the wrong size");
  }
  const uint8_t* p = reinterpret_cast<const uint8_t*>(bytes.data());
  if (GetLe(p, 4) != entries_.size()) return absl::InvalidArgumentError("MSI-X vector count differs");
  enabled_ = p[4];
  function_masked_ = p[5];
  p += 8;
  for (uint32_t v = 0; v < entries_.size(); ++v) {
    entries_[v].address = GetLe(p, 8);
    entries_[v].data = static_cast<uint32_t>(GetLe(p + 8, 4));
    entries_[v].control = static_cast<uint32_t>(GetLe(p + 12, 4)) & 1;
    guest_written_[v] = p[16];
    p += kEntrySize + 1;
  }
  return absl::OkStatus();
}

}  // namespace emud::vfio_user
