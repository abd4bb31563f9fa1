#!/usr/bin/env bash
# After a failed ctest run: each failed test's own output again, at the end of the log,
# without Catch's wrapped title lines, at most 60 lines each, so that a CI log cut to its
# head and tail still says which assertion failed and why.
#   scripts/ctest-failures.sh BUILD_DIR
set -uo pipefail
log="${1:?build directory}/Testing/Temporary/LastTest.log"
[ -f "$log" ] || exit 0
awk '
  /^[0-9]+\/[0-9]+ Test: / { name = $0; sub(/^[0-9]+\/[0-9]+ Test: /, "", name); n = 0; inside = 0; next }
  /^Output:$/ { inside = 1; next }
  inside && /^-+$/ && n == 0 { next }
  /^<end of output>$/ { inside = 0; next }
  inside { if (length($0) - length(ltrim($0)) < 40 && n < 400) out[n++] = $0; next }
  /^Test Failed\.$/ {
    print "---- failed: " substr(name, 1, 160)
    first = n > 60 ? n - 60 : 0
    for (i = first; i < n; i++) print substr(out[i], 1, 300)
  }
  function ltrim(s) { sub(/^[ \t]+/, "", s); return s }
' "$log"
