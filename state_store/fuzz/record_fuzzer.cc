// libFuzzer entry point for what a successor process reads back from the
// state store: record decoding (state_store/record_codec.h) of every record
// a device's state holds, the schema check and migrations of an Env opened
// over stored tables (state_store/store.h, in memory: Env::OpenInMemory),
// the vfio-user session's records (session_store::Restore, GetLastRequest)
// and the AVF model's (avf::Device::Restore).
//
// Input: byte 0 = flags (bit 0: a schema version record is stored, its 4
// bytes next; bit 1: the fd source has fds; bit 2: mapped doorbells), then
// records [u8 table][u8 key length][key][u16 value length][value], table
// % 3: 0 "vfio_user_session", 1 the AVF model's "avf", 2 the Env's meta
// table (raw).
//
// Invariants (a violation aborts): a stored state either restores or is
// refused with an error, never a crash; an AVF state that restores saves
// records that restore again to the very same records (Save/Restore round
// trip); a migration that fails leaves the stored tables untouched.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "google/protobuf/stubs/logging.h"
#include "avf/device.h"
#include "state_store/record.h"
#include "state_store/store.h"
#include "tests/fuzz/fuzz_reader.h"
#include "vfio_user/device_records.h"
#include "vfio_user/dma_table.h"
#include "vfio_user/irq_state.h"
#include "vfio_user/session_state.pb.h"
#include "vfio_user/session_store.h"

namespace {

using namespace emud;
using namespace emud::state_store;

void Check(bool ok, const char* what) { emud::fuzz::Check(ok, "state store", what); }

// The migration a schema bump would bring: every DMA window record of the
// session table decoded and written back (re-encoded).
absl::Status MigrateWindows(WriteTxn& txn) {
  RecordTable<vfio_user::DmaWindowRecord> t(vfio_user::session_store::kTable);
  std::vector<std::pair<std::string, vfio_user::DmaWindowRecord>> all;
  absl::Status s = t.ForEach(txn, "dma/", [&](absl::string_view k, const vfio_user::DmaWindowRecord& r) {
    all.emplace_back(std::string(k), r);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  for (const auto& [k, r] : all) {
    if (auto p = t.Put(txn, k, r); !p.ok()) return p;
  }
  return absl::OkStatus();
}

// Every record of the AVF model's namespace.
std::string Dump(const vfio_user::MapDeviceRecords& r) {
  std::string s;
  for (const auto& [k, v] : r.all()) s += k + '=' + v + ';';
  return s;
}

int MemFd() {
  static int fd = [] {
    int f = ::memfd_create("fuzz-dma", MFD_CLOEXEC);
    if (f < 0 || ::ftruncate(f, 1 << 16) != 0) std::abort();
    return f;
  }();
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Protobuf logs every string field with invalid UTF-8 it parses: quiet
  // (the parse result is what is checked).
  static const bool quiet = [] {
    google::protobuf::SetLogHandler(nullptr);
    return true;
  }();
  (void)quiet;
  if (size == 0) return 0;
  emud::fuzz::Reader in(data, size);
  const uint8_t flags = in.U8();
  auto tables = std::make_shared<MemoryTables>();
  const char* names[] = {vfio_user::session_store::kTable, avf::Device::kStateTable, "__meta"};
  if (flags & 1) tables->tables["__meta"]["schema_version"] = in.String(4);
  vfio_user::MapDeviceRecords avf_records;
  for (int n = 0; !in.done() && n < 64; ++n) {
    uint8_t t = in.U8() % 3;
    std::string key = in.String(in.U8());
    std::string value = in.String(in.U16() % 2048);
    if (key.empty()) continue;
    tables->tables[names[t]][key] = value;
    if (t == 1) (void)avf_records.Put(key, value);
  }

  // The schema check and the migration from 1.
  EnvOptions eo;
  eo.tables = {vfio_user::session_store::kTable, avf::Device::kStateTable};
  eo.schema_version = 2;
  eo.migrations.push_back({1, MigrateWindows});
  const MemoryTables before = *tables;
  auto env = Env::OpenInMemory(tables, eo);
  if (!env.ok()) {
    // Refused: no record changed (opening creates the declared tables,
    // empty, as LMDB commits their creation before the schema check).
    for (const auto& [name, t] : tables->tables) {
      auto it = before.tables.find(name);
      Check(it == before.tables.end() ? t.empty() : it->second == t, "a refused open changed stored records");
    }
  } else {
    vfio_user::DmaTable dma(8, /*keep_fds=*/true);
    vfio_user::IrqState irqs({1, 1, 0, 0, 5, 1});
    auto fds = [&](absl::string_view key) -> absl::StatusOr<UniqueFd> {
      if (!(flags & 2)) return absl::NotFoundError(key);
      int fd = absl::StartsWith(key, "dma/") ? ::dup(MemFd()) : ::eventfd(0, EFD_CLOEXEC);
      if (fd < 0) return absl::InternalError("fd");
      return UniqueFd(fd);
    };
    (void)vfio_user::session_store::Restore(**env, fds, dma, irqs);
    (void)vfio_user::session_store::GetLastRequest(**env);
  }

  // The AVF model's records: restore, and if they restore, Save/Restore
  // reproduces them exactly.
  if (avf_records.size() > 0) {
    avf::DeviceOptions o;
    o.mapped_doorbells = (flags & 4) != 0;
    auto dev = avf::Device::Create(o);
    Check(dev.ok(), "create");
    if ((*dev)->Restore(avf_records).ok()) {
      vfio_user::MapDeviceRecords saved;
      Check((*dev)->Save(saved).ok(), "save after restore");
      auto dev2 = avf::Device::Create(o);
      Check(dev2.ok(), "create");
      Check((*dev2)->Restore(saved).ok(), "a saved state does not restore");
      vfio_user::MapDeviceRecords saved2;
      Check((*dev2)->Save(saved2).ok(), "save after restore");
      Check(Dump(saved) == Dump(saved2), "Save/Restore round trip changed the records");
    }
  }
  return 0;
}
