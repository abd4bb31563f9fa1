// Shared bits of the benchmark programs: a steady clock, percentiles, and the one output
// format scripts/bench.sh aggregates: "RESULT <name> <value> <unit>" per figure.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace fm::bench {

inline double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// p in [0, 100]; REQUIRES: !values.empty(). Sorts `values`.
inline double Percentile(std::vector<double>& values, double p) {
  std::sort(values.begin(), values.end());
  size_t index = static_cast<size_t>(p / 100.0 * (values.size() - 1) + 0.5);
  return values[std::min(index, values.size() - 1)];
}

inline void Report(const std::string& name, double value, const char* unit) {
  std::printf("RESULT %s %.6g %s\n", name.c_str(), value, unit);
  std::fflush(stdout);
}

// --tiny: the CI smoke size (each program runs in well under a second of work).
inline bool Tiny(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--tiny") == 0) return true;
  }
  return false;
}

}  // namespace fm::bench
