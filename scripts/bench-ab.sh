#!/usr/bin/env bash
# A/B benchmark in one run on one machine: builds BASE (a commit) and the working tree in
# Release, then runs the benchmark programs of both alternately REPEATS times and prints
# the median of every figure side by side with the ratio new/base. Nothing is written
# into the tree; the base's tree and build live in build-ab/ (remove it with
# `git worktree remove --force build-ab/src; rm -rf build-ab`).
#   scripts/bench-ab.sh BASE [REPEATS] [PROGRAM ARGS...]
#   e.g. scripts/bench-ab.sh 152f559 3 fm-bench-cluster throughput
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: scripts/bench-ab.sh BASE [REPEATS] [PROGRAM ARGS...]}
repeats=${2:-3}
shift $(( $# >= 2 ? 2 : 1 ))
programs=("$@")
[ ${#programs[@]} -gt 0 ] || programs=(fm-bench-cluster)
scripts/install-deps.sh
mkdir -p build-ab
# The base's tree is kept between runs (build-ab/src, ignored like every build dir) so
# that its build is incremental; it is made anew only for another commit.
want=$(git rev-parse "$base^{commit}")
if [ "$(git -C build-ab/src rev-parse HEAD 2>/dev/null)" != "$want" ]; then
  git worktree remove --force build-ab/src >/dev/null 2>&1 || rm -rf build-ab/src
  git worktree prune
  git worktree add --detach build-ab/src "$want" >/dev/null
  rm -rf build-ab/build
fi
cmake -S build-ab/src -B build-ab/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DFM_BUILD_TESTS=OFF >/dev/null
cmake --build build-ab/build -j"$(nproc)" >/dev/null
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release -DFM_BUILD_TESTS=OFF >/dev/null
cmake --build build-release -j"$(nproc)" >/dev/null
raw=build-ab/raw.$(printf '%s_' "${programs[@]}" | tr -c 'A-Za-z0-9_.-' '_')
: >"$raw"
for r in $(seq 1 "$repeats"); do
  for side in base new; do
    bin=build-ab/build/bin
    [ "$side" = new ] && bin=build-release/bin
    echo "== run $r/$repeats: $side ${programs[*]}" >&2
    "$bin/${programs[0]}" "${programs[@]:1}" | grep '^RESULT ' | sed "s/^RESULT /$side /" >>"$raw"
  done
done
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), base $(git rev-parse --short "$base"), new $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes'), median of $repeats"
printf '%-58s %14s %14s %8s\n' figure base new new/base
awk '{print $1, $2, $3}' "$raw" | sort -k2,2 -k1,1 -k3,3g | awk '
  { key=$1 " " $2; v[key]=v[key] " " $3; n[key]++; names[$2]=1 }
  function median(k,   a, c) { c=split(substr(v[k],2), a, " "); return (c%2) ? a[(c+1)/2] : (a[c/2]+a[c/2+1])/2 }
  END { for (f in names) { b=(("base " f) in n) ? median("base " f) : ""; w=(("new " f) in n) ? median("new " f) : "";
        r=(b != "" && w != "" && b != 0) ? sprintf("%.3f", w/b) : "-";
        printf "%-58s %14s %14s %8s\n", f, b, w, r } }' | sort
