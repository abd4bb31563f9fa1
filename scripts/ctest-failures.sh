#!/usr/bin/env bash
# After a failed ctest run: each failed test's own output again, at the end of the log,
# without Catch's wrapped title lines — its first 20 lines (which test, which section)
# and its last 40 (the failed assertion, the summary) — so that a CI log cut to its head
# and tail still says which assertion failed and why.
#   scripts/ctest-failures.sh BUILD_DIR
set -uo pipefail
log="${1:?build directory}/Testing/Temporary/LastTest.log"
[ -f "$log" ] || exit 0
awk '
  function ltrim(s) { sub(/^[ \t]+/, "", s); return s }
  /^[0-9]+\/[0-9]+ Test: / { name = $0; sub(/^[0-9]+\/[0-9]+ Test: /, "", name); n = 0; inside = 0; next }
  /^Output:$/ { inside = 1; next }
  inside && /^-+$/ && n == 0 { next }
  /^<end of output>$/ { inside = 0; next }
  inside {
    if (length($0) - length(ltrim($0)) >= 40) next  # a wrapped title
    if (n < 20) head[n] = $0; else tail[n % 40] = $0
    n++
    next
  }
  /^Test Failed\.$/ {
    print "---- failed: " substr(name, 1, 160)
    for (i = 0; i < n && i < 20; i++) print substr(head[i], 1, 300)
    first = n - 40 > 20 ? n - 40 : 20
    if (first > 20) print "[... " (first - 20) " lines ...]"
    for (i = first; i < n; i++) print substr(tail[i % 40], 1, 300)
  }
' "$log"
