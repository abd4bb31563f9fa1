#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for a bounded time on the corpus
# kept in tests/fuzz/corpus (new inputs go to a scratch copy, not the tree).
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFM_FUZZ=ON -DFM_BUILD_TESTS=OFF -DFM_BUILD_BENCH=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target fuzz_envelope fuzz_task_line fuzz_docker_logs fuzz_dispatch fuzz_printers \
  fuzz_write_batch
for target in envelope task_line docker_logs dispatch printers write_batch; do
  scratch=$(mktemp -d)
  # The worker's dispatch path starts from the envelope seeds (a Dispatch among them).
  corpus=tests/fuzz/corpus/$target
  [ "$target" = dispatch ] && corpus=tests/fuzz/corpus/envelope
  cp "$corpus"/* "$scratch/"
  echo "== fuzz_$target for ${seconds}s"
  build-fuzz/bin/fuzz_$target -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 "$scratch" 2>&1 |
    grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|ERROR|==[0-9]+==)" || true
  # A crash makes libFuzzer exit non-zero and leave crash-* files: fail on either.
  if ls crash-* leak-* timeout-* oom-* >/dev/null 2>&1; then echo "fuzz_$target found a failing input" >&2; exit 1; fi
  rm -rf "$scratch"
done
