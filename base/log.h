// One logger for emud's processes (emud, emud-worker, emud-keeper, ...):
// every line carries a UTC timestamp, a level, the program and, for a line
// about a device, the device's name.
//
//   text (default):
//     2026-12-06T10:11:12.345678Z INFO emud: vm1-nic0: created (loopback, 4 queues)
//   json (--log-format=json), one object per line:
//     {"time":"2026-12-06T10:11:12.345678Z","level":"info","program":"emud","pid":12,
//      "device":"vm1-nic0","msg":"created (loopback, 4 queues)"}
//
// Lines below the configured level (--log-level, -v = debug) are dropped.
// Each line is one write(2) to the sink (default: stderr), so lines of
// emud and of its workers (which inherit emud's stderr) never interleave
// within a line. Writing is async-signal-safe enough for a dying worker: no
// locks, no stdio.
//
// emud passes its configuration to the workers it spawns through the
// environment (EMUD_LOG_FORMAT, EMUD_LOG_LEVEL): InitFromEnvironment.
#ifndef EMUD_BASE_LOG_H_
#define EMUD_BASE_LOG_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace emud::log {

enum class Level { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };
enum class Format { kText, kJson };

inline constexpr char kFormatEnv[] = "EMUD_LOG_FORMAT";
inline constexpr char kLevelEnv[] = "EMUD_LOG_LEVEL";

struct Record {
  absl::Time time;
  Level level = Level::kInfo;
  absl::string_view program;
  int pid = 0;
  absl::string_view device;  // empty: not about one device
  absl::string_view message;
};

// Where formatted lines go. `line` ends with '\n'.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual void Write(const Record& record, absl::string_view line) = 0;
};

// "text" or "json"; "debug", "info", "warning" (or "warn") or "error".
absl::Status ParseFormat(absl::string_view s, Format* out);
absl::Status ParseLevel(absl::string_view s, Level* out);
absl::string_view LevelName(Level l);  // "info", ...

// Sets the program name, format and threshold (process-wide). Not
// thread-safe against concurrent logging: call it at start.
void Init(absl::string_view program, Format format, Level level);
// Init from EMUD_LOG_FORMAT / EMUD_LOG_LEVEL (unset or invalid: text, info).
void InitFromEnvironment(absl::string_view program);
// Exports the current configuration to the environment children inherit.
void ExportToEnvironment();
// The device every line of this process is about (a worker serves one):
// lines written without a device carry it. Empty: none.
void SetProcessDevice(absl::string_view device);
Format CurrentFormat();
Level CurrentLevel();
bool Enabled(Level l);

// Replaces the sink (nullptr: stderr). The sink must outlive its use.
void SetSink(Sink* sink);

// The line for `r` in `format`, ending with '\n'. JSON strings are escaped
// (control characters as \u00XX, invalid UTF-8 as U+FFFD).
std::string FormatRecord(const Record& r, Format format);

void Write(Level level, absl::string_view device, absl::string_view message);

inline void Debug(absl::string_view msg) { Write(Level::kDebug, {}, msg); }
inline void Info(absl::string_view msg) { Write(Level::kInfo, {}, msg); }
inline void Warning(absl::string_view msg) { Write(Level::kWarning, {}, msg); }
inline void Error(absl::string_view msg) { Write(Level::kError, {}, msg); }
// A line about one device.
inline void DeviceDebug(absl::string_view device, absl::string_view msg) {
  Write(Level::kDebug, device, msg);
}
inline void DeviceInfo(absl::string_view device, absl::string_view msg) {
  Write(Level::kInfo, device, msg);
}
inline void DeviceWarning(absl::string_view device, absl::string_view msg) {
  Write(Level::kWarning, device, msg);
}
inline void DeviceError(absl::string_view device, absl::string_view msg) {
  Write(Level::kError, device, msg);
}

}  // namespace emud::log

#endif  // EMUD_BASE_LOG_H_
