#include "schemas/units.h"

#include <strings.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <utility>

namespace fm {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Splits "1.5GiB" into 1.5 and "GiB". False when there is no leading non-negative number.
bool SplitNumber(std::string_view text, double* number, std::string_view* unit) {
  size_t i = 0;
  bool digits = false, dot = false;
  while (i < text.size()) {
    char c = text[i];
    if (std::isdigit(static_cast<unsigned char>(c))) {
      digits = true;
    } else if (c == '.' && !dot) {
      dot = true;
    } else {
      break;
    }
    ++i;
  }
  if (!digits) return false;
  *number = std::strtod(std::string(text.substr(0, i)).c_str(), nullptr);
  *unit = Trim(text.substr(i));
  return std::isfinite(*number);
}

bool EqualsNoCase(std::string_view a, const char* b) {
  return a.size() == std::char_traits<char>::length(b) && strncasecmp(a.data(), b, a.size()) == 0;
}

}  // namespace

Result<uint64_t> ParseSize(std::string_view raw) {
  std::string_view text = Trim(raw);
  double number = 0;
  std::string_view unit;
  if (!SplitNumber(text, &number, &unit)) {
    return Status::Invalid("invalid size \"" + std::string(raw) +
                           "\": expected a non-negative number with an optional unit "
                           "(B, KiB, MiB, GiB, TiB or K, M, G, T)");
  }
  static constexpr struct {
    const char* name;
    int shift;
  } kUnits[] = {{"", 0},    {"b", 0},  {"k", 10},   {"kib", 10}, {"kb", 10}, {"m", 20},   {"mib", 20},
                {"mb", 20}, {"g", 30}, {"gib", 30}, {"gb", 30},  {"t", 40},  {"tib", 40}, {"tb", 40}};
  for (const auto& u : kUnits) {
    if (EqualsNoCase(unit, u.name)) {
      double bytes = std::ldexp(number, u.shift);
      if (bytes >= 18446744073709551615.0) {
        return Status::Invalid("size \"" + std::string(raw) + "\" is too large");
      }
      return static_cast<uint64_t>(std::llround(bytes));
    }
  }
  return Status::Invalid("invalid size \"" + std::string(raw) + "\": unknown unit \"" + std::string(unit) +
                         "\" (use B, KiB, MiB, GiB, TiB or K, M, G, T)");
}

std::string FormatSize(uint64_t bytes) {
  static const char* kNames[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int i = 0;
  double value = static_cast<double>(bytes);
  while (value >= 1024 && i < 5) {
    value /= 1024;
    ++i;
  }
  char buf[32];
  if (i == 0 || std::fabs(value - std::round(value)) < 0.05) {
    std::snprintf(buf, sizeof buf, "%.0f %s", value, kNames[i]);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s", value, kNames[i]);
  }
  return buf;
}

Result<uint64_t> ParseDurationMs(std::string_view raw) {
  std::string_view text = Trim(raw);
  double number = 0;
  std::string_view unit;
  if (!SplitNumber(text, &number, &unit)) {
    return Status::Invalid("invalid duration \"" + std::string(raw) +
                           "\": expected a non-negative number with a unit (ms, s, m, h, d)");
  }
  double ms;
  if (unit.empty() || EqualsNoCase(unit, "s")) {
    ms = number * 1000;
  } else if (EqualsNoCase(unit, "ms")) {
    ms = number;
  } else if (EqualsNoCase(unit, "m")) {
    ms = number * 60'000;
  } else if (EqualsNoCase(unit, "h")) {
    ms = number * 3'600'000;
  } else if (EqualsNoCase(unit, "d")) {
    ms = number * 86'400'000;
  } else {
    return Status::Invalid("invalid duration \"" + std::string(raw) + "\": unknown unit \"" + std::string(unit) +
                           "\" (use ms, s, m, h, d)");
  }
  return static_cast<uint64_t>(std::llround(ms));
}

std::string FormatDuration(uint64_t ms) {
  constexpr std::pair<uint64_t, const char*> kUnits[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}};
  for (const auto& [unit, name] : kUnits) {
    if (ms != 0 && ms % unit == 0) return std::to_string(ms / unit) + name;
  }
  return std::to_string(ms) + "ms";
}

Result<uint32_t> ParseCpus(std::string_view raw) {
  std::string_view text = Trim(raw);
  double number = 0;
  std::string_view unit;
  if (!SplitNumber(text, &number, &unit) || !unit.empty()) {
    return Status::Invalid("invalid cpu count \"" + std::string(raw) +
                           "\": expected a non-negative number such as 2 or 0.5");
  }
  if (number > 4'000'000) return Status::Invalid("cpu count \"" + std::string(raw) + "\" is too large");
  return static_cast<uint32_t>(std::llround(number * 1000));
}

std::string FormatCpus(uint32_t cpus_milli) {
  char buf[32];
  if (cpus_milli % 1000 == 0) {
    std::snprintf(buf, sizeof buf, "%u", cpus_milli / 1000);
  } else {
    std::snprintf(buf, sizeof buf, "%.3g", cpus_milli / 1000.0);
  }
  return buf;
}

std::string FormatTimeMs(uint64_t unix_ms) {
  time_t seconds = static_cast<time_t>(unix_ms / 1000);
  struct tm tm;
  gmtime_r(&seconds, &tm);
  char buf[64];  // room for any int year: no truncation warning
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<unsigned>(unix_ms % 1000));
  return buf;
}

}  // namespace fm
