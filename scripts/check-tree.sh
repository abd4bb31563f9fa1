#!/usr/bin/env bash
# Fails on what should never be committed: a tracked empty file (an accident like the `oom`
# and `perf.data` once committed) or a file or folder at the root that is not one of the
# project's own. scripts/test.sh runs it first. Add a new root entry to the list below.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "check-tree: not a git checkout; nothing to check" >&2
  exit 0
fi
allowed=(.ci .clang-format .gitignore CMakeLists.txt README.md bench broker cmake docs examples packaging runtime scheduler
  schemas scripts store tests tools worker)
status=0
while IFS= read -r -d '' path; do
  [ -e "$path" ] || continue  # deleted in the work tree, not yet committed
  if [ ! -s "$path" ] && [ ! -L "$path" ]; then
    echo "check-tree: tracked file $path is empty (an accident? git rm it)" >&2
    status=1
  fi
done < <(git ls-files -z)
while IFS= read -r top; do
  known=0
  for entry in "${allowed[@]}"; do [ "$top" = "$entry" ] && known=1; done
  if [ "$known" = 0 ]; then
    echo "check-tree: $top at the root is not one of the project's entries (scripts/check-tree.sh lists them)" >&2
    status=1
  fi
done < <(git ls-files | cut -d/ -f1 | sort -u)
[ "$status" = 0 ] && echo "check-tree: no tracked empty file, nothing unexpected at the root"
exit "$status"
