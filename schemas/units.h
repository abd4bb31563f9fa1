// Sizes, durations and cpu counts as people write them and as fm prints them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "schemas/status.h"

namespace fm {

// Parses "8GiB", "512M", "1.5G", "1024", "0B". Units B, KiB, MiB, GiB, TiB and
// K, M, G, T (all binary), case-insensitive. An empty, negative or unparsable size
// is an error naming the text, never zero.
Result<uint64_t> ParseSize(std::string_view text);

// "8 GiB", "512 MiB", "1.5 GiB", "100 B": the largest unit that keeps one decimal.
std::string FormatSize(uint64_t bytes);

// Parses "30s", "500ms", "2m", "1h", "1.5s"; a bare number is seconds.
Result<uint64_t> ParseDurationMs(std::string_view text);

// "30s", "5m", "7d", "1500ms": the largest unit that divides it exactly (ParseDurationMs
// reads it back).
std::string FormatDuration(uint64_t ms);

// cpus as thousandths: "2" -> 2000, "0.5" -> 500. Negative or unparsable: an error.
Result<uint32_t> ParseCpus(std::string_view text);
// 2000 -> "2", 1500 -> "1.5".
std::string FormatCpus(uint32_t cpus_milli);

// RFC 3339 UTC with milliseconds: "2026-11-27T10:01:02.345Z".
std::string FormatTimeMs(uint64_t unix_ms);

}  // namespace fm
