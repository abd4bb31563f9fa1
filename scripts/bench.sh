#!/usr/bin/env bash
# Builds fm in Release, runs every benchmark in bench/ REPEATS times (default 3), and
# writes bench/RESULTS.md (machine, date, commit, median with min-max per figure, ratios
# to the ceilings measured in the same run) and PNG plots of the scaling curves. The raw
# figures are kept in build-release/bench.raw; --report rewrites RESULTS.md from them
# (after editing bench/ANALYSIS.md) without running anything again.
# A fault soak of FM_SOAK_MINUTES (default 6) runs last; its result goes in the report.
#   scripts/bench.sh [REPEATS]
#   scripts/bench.sh --report
set -euo pipefail
cd "$(dirname "$0")/.."
raw=build-release/bench.raw
if [ "${1:-}" = "--report" ]; then
  [ -s "$raw" ] || { echo "no $raw: run scripts/bench.sh first" >&2; exit 2; }
  repeats=$(cat "$raw.repeats")
  command -v gnuplot >/dev/null || { apt-get install -y -qq gnuplot-nox >/dev/null; }
else
  repeats=${1:-3}
  scripts/install-deps.sh
  command -v gnuplot >/dev/null || { apt-get install -y -qq gnuplot-nox >/dev/null; }
  cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release -DFM_BUILD_TESTS=OFF >/dev/null
  cmake --build build-release -j"$(nproc)"
  bin=build-release/bin
  : >"$raw"
  echo "$repeats" >"$raw.repeats"
  git rev-parse --short HEAD >"$raw.commit"
  git diff --quiet || echo "$(cat "$raw.commit") (with uncommitted changes)" >"$raw.commit"
  date -u +%Y-%m-%dT%H:%M:%SZ >"$raw.date"
  for r in $(seq 1 "$repeats"); do
    for program in fm-bench-ceilings fm-bench-placement fm-bench-cluster fm-bench-fanin; do
      echo "== run $r/$repeats: $program" >&2
      "$bin/$program" | grep '^RESULT ' >>"$raw"
    done
  done
  # A long fault soak: its invariants and figures go in the report as they are.
  minutes=${FM_SOAK_MINUTES:-6}
  echo "== fault soak, $minutes minutes" >&2
  FM_BIN=$(pwd)/$bin scripts/soak.sh "$minutes" >"$raw.soak" 2>&1 || true
fi

# name -> sorted values; median, min, max.
summary=$(mktemp)
awk '{print $2, $3, $4}' "$raw" | sort -k1,1 -k2,2g | awk '
  { name=$1; v[name]=v[name] " " $2; unit[name]=$3; n[name]++ }
  END { for (k in v) { split(substr(v[k],2), a, " "); c=n[k];
        med = (c % 2) ? a[(c+1)/2] : (a[c/2] + a[c/2+1]) / 2;
        printf "%s %g %g %g %s\n", k, med, a[1], a[c], unit[k] } }' | sort >"$summary"
get() { awk -v k="$1" '$1==k {print $2}' "$summary"; }
ratio() { awk -v a="$(get "$1")" -v b="$(get "$2")" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.3g", a / b }'; }

out=bench/RESULTS.md
commit="$(cat "$raw.commit")"
{
  echo "# fm benchmark results"
  echo
  echo "Written by \`scripts/bench.sh $repeats\` — do not edit by hand."
  echo
  echo "- date: $(cat "$raw.date")"
  echo "- commit: $commit"
  echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB memory, $(uname -sr)"
  echo "- each figure: median of $repeats runs, with min–max; the machine is shared and noisy"
  echo
  echo "| figure | median | min–max | unit |"
  echo "|---|---|---|---|"
  awk '{printf "| %s | %s | %s–%s | %s |\n", $1, $2, $3, $4, $5}' "$summary"
  echo
  echo "## Ratios to the ceilings measured in the same run"
  echo
  echo "| figure | ceiling | ratio |"
  echo "|---|---|---|"
  for w in 1 4 16; do
    echo "| dispatch_tasks_per_s_${w}_workers | zmq_push_pull_msgs_per_s | $(ratio dispatch_tasks_per_s_${w}_workers zmq_push_pull_msgs_per_s) |"
    echo "| dispatch_tasks_per_s_${w}_workers | rocksdb_synced_puts_per_s_batch_1000 | $(ratio dispatch_tasks_per_s_${w}_workers rocksdb_synced_puts_per_s_batch_1000) |"
  done
  echo "| backlog_dispatch_tasks_per_s (1M tasks, one class of a mixed fleet) | dispatch_tasks_per_s_1_workers (no backlog) | $(ratio backlog_dispatch_tasks_per_s dispatch_tasks_per_s_1_workers) |"
  echo "| million_intake_tasks_per_s (1M tasks through one fm-submit, durable) | rocksdb_synced_puts_per_s_batch_1000 | $(ratio million_intake_tasks_per_s rocksdb_synced_puts_per_s_batch_1000) |"
  echo "| million_intake_tasks_per_s | zmq_push_pull_msgs_per_s | $(ratio million_intake_tasks_per_s zmq_push_pull_msgs_per_s) |"
  echo "| submit_wait_tasks_per_s_4_workers (fm-submit --wait, end to end) | rocksdb_synced_puts_per_s_batch_1000 | $(ratio submit_wait_tasks_per_s_4_workers rocksdb_synced_puts_per_s_batch_1000) |"
  echo "| submit_wait_tasks_per_s_4_workers | zmq_push_pull_msgs_per_s | $(ratio submit_wait_tasks_per_s_4_workers zmq_push_pull_msgs_per_s) |"
  echo "| fail_fast_p50_ms (as us) | zmq_dealer_router_rtt_p50_us | $(awk -v a="$(get fail_fast_p50_ms)" -v b="$(get zmq_dealer_router_rtt_p50_us)" 'BEGIN{printf "%.3g", a*1000/b}') |"
  echo "| latency_1000_per_s_submit_to_terminal_p50_ms (as us) | zmq_dealer_router_rtt_p50_us | $(awk -v a="$(get latency_1000_per_s_submit_to_terminal_p50_ms)" -v b="$(get zmq_dealer_router_rtt_p50_us)" 'BEGIN{printf "%.3g", a*1000/b}') |"
  echo "| latency_1000_per_s_submit_to_terminal_p50_ms | 1 / rocksdb_synced_batches_per_s_batch_1 (ms) | $(awk -v a="$(get latency_1000_per_s_submit_to_terminal_p50_ms)" -v b="$(get rocksdb_synced_batches_per_s_batch_1)" 'BEGIN{printf "%.3g", a/(1000/b)}') |"
  echo
  echo "![dispatch throughput](dispatch.png) ![placement cost](placement.png)"
  if [ -s "$raw.soak" ]; then
    echo
    echo "## Fault soak (\`scripts/soak.sh\`)"
    echo
    echo "Kills and restarts or 1-4 s pauses of every daemon every 2-8 s while keyed tasks stream in; then the invariants:"
    echo
    echo '```'
    cat "$raw.soak"
    echo '```'
  fi
  if [ -f bench/ANALYSIS.md ]; then echo; cat bench/ANALYSIS.md; fi
} >"$out"

# Plots.
data=$(mktemp -d)
for w in 1 4 16; do echo "$w $(get dispatch_tasks_per_s_${w}_workers)"; done >"$data/dispatch.dat"
for n in 1000 10000 100000; do
  echo "$n $(get admit_us_per_task_common_${n}_workers) $(get place_us_per_task_common_${n}_workers) $(get choose_us_per_task_${n}_workers)"
done >"$data/placement.dat"
gnuplot <<GP
set terminal png size 640,400
set output "bench/dispatch.png"
set title "dispatch throughput, durable, noop executor"
set xlabel "workers"; set ylabel "tasks/s"; set logscale x 2; set yrange [0:*]; set grid
plot "$data/dispatch.dat" using 1:2 with linespoints title "submit -> terminal"
set output "bench/placement.png"
set title "per-task cost against fleet size (scheduler library)"
set xlabel "registered workers"; set ylabel "microseconds per task"; set logscale x 10; set logscale y 10
plot "$data/placement.dat" using 1:2 with linespoints title "admission (eligibility)", \
     "$data/placement.dat" using 1:3 with linespoints title "placement turn (choose, queue, dispatch, events)", \
     "$data/placement.dat" using 1:4 with linespoints title "choice alone (Fleet::Place)"
GP
rm -rf "$summary" "$data"
echo "wrote $out, bench/dispatch.png, bench/placement.png" >&2
