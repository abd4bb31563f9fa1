#!/usr/bin/env bash
# Builds everything with AddressSanitizer and UndefinedBehaviorSanitizer into
# build-sanitize/ and runs the unit and integration suites against those binaries:
# a use after free or undefined behaviour in any daemon fails the run.
#   scripts/sanitize.sh [CTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=Debug -DFM_SANITIZE=address,undefined \
  -DFM_BUILD_BENCH=OFF >/dev/null
cmake --build build-sanitize -j"$(nproc)"
# Daemons killed by the crash tests never reach exit, so leak reports would only be
# noise from the ones that do; memory errors and undefined behaviour abort at once.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build-sanitize --output-on-failure -j2 -E "bench smoke|package" "$@" ||
  { scripts/ctest-failures.sh build-sanitize; exit 1; }
