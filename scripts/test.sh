#!/usr/bin/env bash
# The whole test suite: installs what is missing, prepares podman (the Docker Engine API
# the docker tests talk to), builds, runs ctest. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/check-tree.sh
scripts/install-deps.sh
scripts/podman-setup.sh
scripts/build.sh
ctest --test-dir build --output-on-failure -j2 "$@" ||
  { scripts/ctest-failures.sh build; exit 1; }
# Faults for a minute (kills and pauses of every daemon while keyed tasks stream in),
# then the invariants: one end per accepted task, no seq gap, nothing stuck, no failure.
scripts/soak.sh 1
# The same with a standby scheduler on etcd: leader kills and pauses, takeovers under load.
FM_SOAK_HA=1 scripts/soak.sh 1
# The same suites built with AddressSanitizer and UndefinedBehaviorSanitizer: a memory
# error or undefined behaviour in any daemon fails the run.
scripts/sanitize.sh
# Hostile input: each libFuzzer target for a short bounded time on the kept corpus.
scripts/fuzz.sh 15
# Nothing left behind: no container, no process of ours, no podman service of a test.
scripts/check-leftovers.sh
