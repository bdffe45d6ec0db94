#include "base/log.h"

#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace emud::log {
namespace {

struct Config {
  char program[64] = "emud";
  char device[128] = "";
  std::atomic<int> format{static_cast<int>(Format::kText)};
  std::atomic<int> level{static_cast<int>(Level::kInfo)};
  std::atomic<Sink*> sink{nullptr};
};

Config& Cfg() {
  static Config* c = new Config;  // never destroyed: logging works during exit
  return *c;
}

void AppendJsonString(std::string* out, absl::string_view s) {
  out->push_back('"');
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(static_cast<char>(c));
      ++i;
    } else if (c == '\n') {
      out->append("\\n");
      ++i;
    } else if (c == '\t') {
      out->append("\\t");
      ++i;
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out->append(buf);
      ++i;
    } else if (c < 0x80) {
      out->push_back(static_cast<char>(c));
      ++i;
    } else {
      // A well-formed UTF-8 sequence is copied; anything else is U+FFFD.
      size_t n = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
      bool ok = n != 0 && i + n <= s.size();
      for (size_t k = 1; ok && k < n; ++k) {
        ok = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
      }
      if (ok && n == 2 && c < 0xc2) ok = false;  // overlong
      if (ok) {
        out->append(s.data() + i, n);
        i += n;
      } else {
        out->append("\xef\xbf\xbd");
        ++i;
      }
    }
  }
  out->push_back('"');
}

absl::string_view UpperLevel(Level l) {
  switch (l) {
    case Level::kDebug: return "DEBUG";
    case Level::kInfo: return "INFO";
    case Level::kWarning: return "WARN";
    case Level::kError: return "ERROR";
  }
  return "INFO";
}

}  // namespace

absl::Status ParseFormat(absl::string_view s, Format* out) {
  if (s == "text") {
    *out = Format::kText;
  } else if (s == "json") {
    *out = Format::kJson;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--log-format: '", s, "' is not a log format; use text or json"));
  }
  return absl::OkStatus();
}

absl::Status ParseLevel(absl::string_view s, Level* out) {
  std::string l = absl::AsciiStrToLower(s);
  if (l == "debug") {
    *out = Level::kDebug;
  } else if (l == "info") {
    *out = Level::kInfo;
  } else if (l == "warning" || l == "warn") {
    *out = Level::kWarning;
  } else if (l == "error") {
    *out = Level::kError;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--log-level: '", s, "' is not a level; use debug, info, warning or error"));
  }
  return absl::OkStatus();
}

absl::string_view LevelName(Level l) {
  switch (l) {
    case Level::kDebug: return "debug";
    case Level::kInfo: return "info";
    case Level::kWarning: return "warning";
    case Level::kError: return "error";
  }
  return "info";
}

void Init(absl::string_view program, Format format, Level level) {
  Config& c = Cfg();
  size_t n = std::min(program.size(), sizeof(c.program) - 1);
  program.copy(c.program, n);
  c.program[n] = '\0';
  c.format.store(static_cast<int>(format));
  c.level.store(static_cast<int>(level));
}

void InitFromEnvironment(absl::string_view program) {
  Format f = Format::kText;
  Level l = Level::kInfo;
  if (const char* e = ::getenv(kFormatEnv); e != nullptr) {
    if (!ParseFormat(e, &f).ok()) f = Format::kText;
  }
  if (const char* e = ::getenv(kLevelEnv); e != nullptr) {
    if (!ParseLevel(e, &l).ok()) l = Level::kInfo;
  }
  Init(program, f, l);
}

void ExportToEnvironment() {
  ::setenv(kFormatEnv, CurrentFormat() == Format::kJson ? "json" : "text", 1);
  ::setenv(kLevelEnv, std::string(LevelName(CurrentLevel())).c_str(), 1);
}

void SetProcessDevice(absl::string_view device) {
  Config& c = Cfg();
  size_t n = std::min(device.size(), sizeof(c.device) - 1);
  device.copy(c.device, n);
  c.device[n] = '\0';
}

Format CurrentFormat() { return static_cast<Format>(Cfg().format.load()); }
Level CurrentLevel() { return static_cast<Level>(Cfg().level.load()); }
bool Enabled(Level l) { return static_cast<int>(l) >= Cfg().level.load(); }

void SetSink(Sink* sink) { Cfg().sink.store(sink); }

std::string FormatRecord(const Record& r, Format format) {
  const std::string time =
      absl::FormatTime("%Y-%m-%d%ET%H:%M:%E6SZ", r.time, absl::UTCTimeZone());
  std::string out;
  out.reserve(r.message.size() + r.device.size() + 96);
  if (format == Format::kJson) {
    absl::StrAppend(&out, "{\"time\":\"", time, "\",\"level\":\"", LevelName(r.level),
                    "\",\"program\":");
    AppendJsonString(&out, r.program);
    absl::StrAppend(&out, ",\"pid\":", r.pid);
    if (!r.device.empty()) {
      out.append(",\"device\":");
      AppendJsonString(&out, r.device);
    }
    out.append(",\"msg\":");
    AppendJsonString(&out, r.message);
    out.append("}\n");
    return out;
  }
  absl::StrAppend(&out, time, " ", UpperLevel(r.level), " ", r.program, ": ");
  if (!r.device.empty()) absl::StrAppend(&out, r.device, ": ");
  // One record, one line: embedded newlines would split it.
  for (char ch : r.message) out.push_back(ch == '\n' ? ' ' : ch);
  out.push_back('\n');
  return out;
}

void Write(Level level, absl::string_view device, absl::string_view message) {
  if (!Enabled(level)) return;
  const int saved_errno = errno;
  Config& c = Cfg();
  Record r;
  r.time = absl::Now();
  r.level = level;
  r.program = c.program;
  r.pid = static_cast<int>(::getpid());
  r.device = device.empty() ? absl::string_view(c.device) : device;
  r.message = message;
  const std::string line = FormatRecord(r, CurrentFormat());
  if (Sink* s = c.sink.load(); s != nullptr) {
    s->Write(r, line);
  } else {
    size_t off = 0;
    while (off < line.size()) {
      ssize_t n = ::write(2, line.data() + off, line.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
  }
  errno = saved_errno;
}

}  // namespace emud::log
