#!/usr/bin/env bash
# A bounded fault-injection soak on loopback. A root broker, a node broker, a scheduler
# (--liveness 2s) and four workers (two on each broker) run while keyed tasks stream in;
# every 2-8 s one process is SIGKILLed and restarted, or SIGSTOPped for 1-4 s. After
# MINUTES the faults stop, the cluster settles, and these invariants are checked:
#   - every accepted task ended exactly once, and succeeded (no blip failed a task);
#   - the stored event stream has no seq gap and no seq twice;
#   - nothing is left pending, queued or running;
#   - no daemon exited of its own accord (only the ones the soak killed);
#   - every key, submitted again, answers its task's first (final) status.
# Prints the figures and "N passed, N failed" for the invariants; exits non-zero on any
# failure. The scratch directory is kept on failure.
# With FM_SOAK_HA=1 the scheduler is two, on an etcd member of their own (--ha-listen,
# --ha-lease 2s): the leader and its standby are killed and paused like the rest (a
# leader paused past its lease exits 3 when it resumes, and is started again, as
# systemd would: that is not "of its own accord"), so takeovers happen under load and
# the invariants must hold across them.
#   scripts/soak.sh [MINUTES] [SEED]      (default 1 minute; the binaries of build/bin,
#                                         or of $FM_BIN, must be built)
set -uo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-1}
seed=${2:-$RANDOM}
RANDOM=$seed
bin=${FM_BIN:-$(pwd)/build/bin}
work=$(mktemp -d /tmp/fm-soak.XXXXXX)
echo "soak: ${minutes} min, seed $seed, scratch $work"

port() { # a base port P with P..P+2 free
  while :; do
    local p=$((10000 + RANDOM % 20000)) # below the kernel's ephemeral range (32768-): no outgoing connect takes it
    ! (ss -ltn | grep -qE ":($p|$((p + 1))|$((p + 2))) ") && { echo "$p"; return; }
  done
}
root="tcp://127.0.0.1:$(port)"
node="tcp://127.0.0.1:$(port)"

declare -A cmd pid killed
start() { # name: (re)starts the process with its command
  local name=$1
  ${cmd[$name]} >>"$work/$name.log" 2>&1 &
  pid[$name]=$!
}
cmd[root]="$bin/fm-broker --bind $root"
cmd[node]="$bin/fm-broker --bind $node --upstream $root"
cmd[scheduler]="$bin/fm-scheduler --broker $root --data $work/data --liveness 2s"
ha=${FM_SOAK_HA:-0}
declare -A fenced
if [ "$ha" = 1 ]; then
  etcd_port=$(port)
  etcd_url="http://127.0.0.1:$etcd_port"
  etcd_peer="http://127.0.0.1:$((etcd_port + 1))"
  /usr/bin/etcd --name soak --data-dir "$work/etcd" --listen-client-urls "$etcd_url" \
    --advertise-client-urls "$etcd_url" --listen-peer-urls "$etcd_peer" --initial-advertise-peer-urls "$etcd_peer" \
    --initial-cluster "soak=$etcd_peer" --heartbeat-interval 100 --election-timeout 1000 >>"$work/etcd.log" 2>&1 &
  etcd_pid=$!
  for _ in $(seq 1 150); do grep -q "ready to serve client requests" "$work/etcd.log" && break; sleep 0.1; done
  ha_flags="--etcd $etcd_url --ha-lease 2s --ha-listen tcp://127.0.0.1:*"
  cmd[scheduler]+=" --ha-node a $ha_flags"
  cmd[standby]="$bin/fm-scheduler --broker $root --data $work/data-b --liveness 2s --ha-node b $ha_flags"
fi
# Whom tasks run as, said as a root worker must (the soak's tasks are its own).
run_as=""
[ "$(id -u)" -eq 0 ] && run_as="--run-as root"
for i in 1 2; do cmd[w$i]="$bin/fm-worker --broker $root --id w$i --slots 4 $run_as"; done
for i in 3 4; do cmd[w$i]="$bin/fm-worker --broker $node --id w$i --slots 4 $run_as"; done
names=(root node scheduler w1 w2 w3 w4)
victims=("${names[@]}")
# With two schedulers, faults fall on them three times as often: takeovers under load.
[ "$ha" = 1 ] && names+=(standby) && victims+=(standby scheduler standby scheduler standby)
for n in "${names[@]}"; do start "$n"; sleep 0.2; done

# A scheduler that found its lease gone (exit 3) is started again, as systemd does.
supervise() {
  [ "$ha" = 1 ] || return 0
  for n in scheduler standby; do
    kill -0 "${pid[$n]}" 2>/dev/null && continue
    wait "${pid[$n]}" 2>/dev/null
    local rc=$?
    [ "$rc" -eq 3 ] || continue # any other exit is left for the invariant below
    fenced[$n]=$((${fenced[$n]:-0} + 1))
    echo "  $(date +%T) $n fenced itself (exit 3): started again" >>"$work/faults.log"
    start "$n"
  done
}

cleanup() {
  for n in "${names[@]}"; do kill -CONT "${pid[$n]}" 2>/dev/null; kill "${pid[$n]}" 2>/dev/null; done
  [ -n "${etcd_pid:-}" ] && kill "$etcd_pid" 2>/dev/null
  [ -n "${submitter:-}" ] && kill "$submitter" 2>/dev/null
  wait 2>/dev/null
}
trap cleanup EXIT

# Keyed tasks stream in: batches of 20 every 0.2 s, each line's answer kept.
(
  i=0
  while [ ! -f "$work/stop" ]; do
    batch=""
    for _ in $(seq 1 20); do
      i=$((i + 1))
      batch+="{\"command\": [\"sleep\", \"0.$((RANDOM % 5))\"], \"key\": \"k$i\", \"max_attempts\": 10}"$'\n'
    done
    printf '%s' "$batch" >>"$work/submitted.jsonl"
    printf '%s' "$batch" | timeout 20 "$bin/fm-submit" --broker "$root" >>"$work/answers.jsonl" 2>>"$work/submit.err"
    sleep 0.2
  done
) &
submitter=$!

# The faults.
faults=0
deadline=$((SECONDS + minutes * 60))
while [ $SECONDS -lt $deadline ]; do
  sleep $((2 + RANDOM % 7))
  victim=${victims[$((RANDOM % ${#victims[@]}))]}
  if ((RANDOM % 2)); then
    kill -KILL "${pid[$victim]}" 2>/dev/null
    wait "${pid[$victim]}" 2>/dev/null
    killed[$victim]=$((${killed[$victim]:-0} + 1))
    echo "  $(date +%T) kill and restart $victim" >>"$work/faults.log"
    start "$victim"
  else
    pause=$((1 + RANDOM % 4))
    echo "  $(date +%T) pause $victim for ${pause}s" >>"$work/faults.log"
    kill -STOP "${pid[$victim]}" 2>/dev/null
    sleep "$pause"
    kill -CONT "${pid[$victim]}" 2>/dev/null
  fi
  faults=$((faults + 1))
  sleep 0.5
  supervise
done
touch "$work/stop"
wait "$submitter" 2>/dev/null
submitter=""

# Settle: every accepted task ends (bounded).
accepted=$(grep -o '"task": "t[0-9]*","status": "accepted"' "$work/answers.jsonl" | grep -o 't[0-9][0-9]*' | sort -u)
n_accepted=$(printf '%s\n' "$accepted" | grep -c . || true)
for _ in $(seq 1 120); do
  # Only an answer counts: fm-ctl fails (and prints nothing) while the root broker it
  # asks is still coming back from the last fault.
  supervise
  if listing=$("$bin/fm-ctl" --broker "$root" tasks 2>/dev/null); then
    left=$(printf '%s\n' "$listing" | awk 'NR > 1 && ($2 == "pending" || $2 == "queued" || $2 == "running")' | wc -l)
    [ "$left" -eq 0 ] && break
  fi
  sleep 1
done

passed=0
failed=0
check() { # description, condition result (0 = holds)
  if [ "$2" -eq 0 ]; then
    passed=$((passed + 1))
    echo "ok   $1"
  else
    failed=$((failed + 1))
    echo "FAIL $1"
  fi
}

timeout 60 "$bin/fm-tap" --broker "$root" --since 1 --json --count 100000000 >"$work/events.jsonl" 2>/dev/null &
tap=$!
sleep 5
kill "$tap" 2>/dev/null
grep -o '"seq": [0-9]*' "$work/events.jsonl" | awk '{print $2}' >"$work/seqs"
first=$(head -1 "$work/seqs")
last=$(tail -1 "$work/seqs")
count=$(wc -l <"$work/seqs")
dups=$(sort -n "$work/seqs" | uniq -d | wc -l)
check "the stream from seq $first to $last has no gap and no seq twice ($count events)" \
  $([ -n "$first" ] && [ $((last - first + 1)) -eq "$count" ] && [ "$dups" -eq 0 ] && echo 0 || echo 1)

grep -E '"type": "task\.(succeeded|failed|cancelled)"' "$work/events.jsonl" | grep -o '"task": "t[0-9]*"' |
  grep -o 't[0-9][0-9]*' | sort >"$work/terminals"
twice=$(uniq -d "$work/terminals" | wc -l)
missing=$(comm -23 <(printf '%s\n' "$accepted" | grep . | sort) <(sort -u "$work/terminals") | wc -l)
check "every one of $n_accepted accepted tasks ended exactly once ($missing without an end, $twice twice)" \
  $([ "$missing" -eq 0 ] && [ "$twice" -eq 0 ] && echo 0 || echo 1)

failed_tasks=$(grep -E '"type": "task\.failed"' "$work/events.jsonl" | grep -c . || true)
check "no task failed ($failed_tasks failed)" $([ "$failed_tasks" -eq 0 ] && echo 0 || echo 1)

if listing=$("$bin/fm-ctl" --broker "$root" tasks 2>/dev/null); then
  stuck=$(printf '%s\n' "$listing" | awk 'NR > 1 && ($2 == "pending" || $2 == "queued" || $2 == "running")' | wc -l)
else
  stuck="fm-ctl got no answer"  # not taken for none
fi
check "nothing is stuck pending, queued or running ($stuck)" $([ "$stuck" = 0 ] && echo 0 || echo 1)

supervise
dead=""
for n in "${names[@]}"; do kill -0 "${pid[$n]}" 2>/dev/null || dead+=" $n"; done
check "no daemon exited of its own accord${dead:+ (exited:$dead)}" $([ -z "$dead" ] && echo 0 || echo 1)

# Every key again: a key whose first submission was accepted answers its task's status as
# it is now (all ran, so succeeded). Keys never accepted (their fm-submit was cut off by
# a fault) are new tasks now and not counted.
head -2000 "$work/submitted.jsonl" | timeout 60 "$bin/fm-submit" --broker "$root" >"$work/again.jsonl" 2>/dev/null
grep -o '"task": "t[0-9]*","status": "[a-z]*"' "$work/again.jsonl" |
  sed 's/"task": "\(t[0-9]*\)","status": "\([a-z]*\)"/\1 \2/' >"$work/again.pairs"
printf '%s\n' "$accepted" | grep . >"$work/accepted"
checked=$(awk 'NR == FNR {a[$1] = 1; next} ($1 in a)' "$work/accepted" "$work/again.pairs" | wc -l)
wrong=$(awk 'NR == FNR {a[$1] = 1; next} ($1 in a) && $2 != "succeeded"' "$work/accepted" "$work/again.pairs" | wc -l)
check "$checked keys submitted again answer their task's status, succeeded ($wrong do not)" \
  $([ "$checked" -gt 0 ] && [ "$wrong" -eq 0 ] && echo 0 || echo 1)

echo "figures: $faults faults (kills: $(for n in "${names[@]}"; do printf '%s=%s ' "$n" "${killed[$n]:-0}"; done)), $n_accepted tasks accepted, $count events"
if [ "$ha" = 1 ]; then
  echo "leaderships (the first and each takeover): $(cat "$work"/scheduler.log "$work"/standby.log 2>/dev/null | grep -c 'leading fm as'), fenced (exit 3): scheduler=${fenced[scheduler]:-0} standby=${fenced[standby]:-0}, standbys dropped from the in-sync set: $(cat "$work"/scheduler.log "$work"/standby.log 2>/dev/null | grep -c 'left the in-sync set')"
fi
echo "$passed passed, $failed failed"
if [ "$failed" -eq 0 ]; then rm -rf "$work"; else echo "kept $work for a look" >&2; exit 1; fi
