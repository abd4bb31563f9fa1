#!/usr/bin/env bash
# Runs fm on this machine: a root broker on the default tcp://127.0.0.1:5550, a scheduler
# with its RocksDB store under .fm/data, two workers that differ in hardware and labels
# (one with docker through podman), fm-tap showing the stream, and examples/tasks.jsonl
# piped through fm-submit --wait. The cluster keeps running afterwards.
#   scripts/demo.sh           install what is missing, build, start, submit the examples
#   scripts/demo.sh --secure  the same, secured: a certificate per process (fm-keygen, in
#                             .fm/keys), CURVE on every link, the broker admitting only the
#                             keys in its trust directory, the tools as an operator
#   scripts/demo.sh stop      stop the cluster
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
state=$root/.fm
bin=$root/build/bin

stop() {
  if [ -f "$state/pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$state/pids"
    rm -f "$state/pids"
    # A worker that stops leaves its containers (its next start removes them): the
    # demo's two will not start again, so theirs go now (a session outlives its worker).
    if command -v podman >/dev/null; then
      for id in big small; do
        podman ps -aq --filter "label=fm.worker=$id" 2>/dev/null | xargs -r podman rm -f >/dev/null 2>&1 || true
      done
    fi
    echo "fm stopped (logs and data stay in $state)"
  else
    echo "fm is not running from $state"
  fi
}
if [ "${1:-}" = stop ]; then stop; exit 0; fi
secure=false
if [ "${1:-}" = --secure ]; then secure=true; fi
if [ -f "$state/pids" ]; then
  echo "fm already runs from $state; stop it with: scripts/demo.sh stop" >&2
  exit 1
fi

scripts/install-deps.sh
scripts/build.sh
mkdir -p "$state/logs"
: >"$state/pids"
start() {  # name, command...
  local name=$1
  shift
  "$@" >>"$state/logs/$name.log" 2>&1 &
  echo $! >>"$state/pids"
}

docker_args=()
if podman_pid=$(scripts/podman-setup.sh serve "$state/docker.sock" 2>>"$state/logs/podman.log"); then
  echo "$podman_pid" >>"$state/pids"
  docker_args=(--docker-socket "$state/docker.sock")
else
  echo "(podman did not start; the docker task will be rejected: see $state/logs/podman.log)"
fi

broker_args=() scheduler_args=() big_args=() small_args=()
# A worker running as root runs no task as root: here each owner's tasks get a uid of
# their own from a range no user of this system has.
if [ "$(id -u)" -eq 0 ]; then
  big_args=(--task-uids 200000-200999 --state-dir "$state/worker-big")
  small_args=(--task-uids 201000-201999 --state-dir "$state/worker-small")
fi
if $secure; then
  # One certificate per process. The trust directory holds the public halves (a broker
  # reads only *.cert there); the secret halves stay with their owners (mode 0600).
  keys=$state/keys me=$(id -un)
  for spec in broker:broker scheduler:scheduler big:worker small:worker "$me-ops:operator"; do
    name=${spec%%:*}
    [ -f "$keys/$name.cert" ] || "$bin/fm-keygen" "$name" --role "${spec##*:}" --out "$keys" >/dev/null
  done
  broker_args=(--cert "$keys/broker.cert_secret" --trust "$keys")
  scheduler_args=(--cert "$keys/scheduler.cert_secret" --broker-cert "$keys/broker.cert")
  big_args+=(--cert "$keys/big.cert_secret" --broker-cert "$keys/broker.cert")
  small_args+=(--cert "$keys/small.cert_secret" --broker-cert "$keys/broker.cert")
  export FM_CERT=$keys/$me-ops.cert_secret FM_BROKER_CERT=$keys/broker.cert  # the tools below
fi

start broker "$bin/fm-broker" "${broker_args[@]}"
start scheduler "$bin/fm-scheduler" --data "$state/data" "${scheduler_args[@]}"
start worker-big "$bin/fm-worker" --id big --slots 2 --label zone=a "${docker_args[@]}" "${big_args[@]}" \
  --advertise-host 127.0.0.1 --session-bind 127.0.0.1 --session-probe 2s
start worker-small "$bin/fm-worker" --id small --slots 2 --cpus 1 --memory 1GiB --label zone=b "${small_args[@]}"
# Wait until both workers registered, then follow the stream from its start.
for _ in $(seq 1 100); do
  n=$("$bin/fm-ctl" workers 2>/dev/null | grep -c ' live ' || true)
  [ "$n" -ge 2 ] && break
  sleep 0.1
done
"$bin/fm-tap" --since 1 > >(sed -u 's/^/  tap | /') &
echo $! >>"$state/pids"
"$bin/fm-ctl" workers
echo
echo "== fm-submit --wait < examples/tasks.jsonl"
set +e
"$bin/fm-submit" --wait <examples/tasks.jsonl
status=$?
set -e
sleep 0.3  # let the tap print the last events before the summary

# An interactive session on the worker that can start one (docker and the session image).
session_note="(no session: worker big does not announce capability session; see $state/logs/worker-big.log)"
for _ in $(seq 1 50); do
  "$bin/fm-ctl" workers 2>/dev/null | grep -q '^big .*session' && break
  sleep 0.2
done
if "$bin/fm-ctl" workers 2>/dev/null | grep -q '^big .*session'; then
  key=$state/session_key
  [ -f "$key" ] || ssh-keygen -q -t ed25519 -N "" -C fm-demo -f "$key"
  echo
  echo "== fm-submit --session --ssh-key $key.pub --ttl 5m, then ssh into it"
  task=$("$bin/fm-submit" --session --ssh-key "$key.pub" --ttl 5m | sed 's/.*"task": "\([^"]*\)".*/\1/')
  if cmd=$("$bin/fm-ctl" ssh "$task" -i "$key" --print --wait 60s); then
    echo "\$ $cmd echo hello from a session"
    ${cmd/-o StrictHostKeyChecking=accept-new/-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR} \
      echo "hello from a session on \$(hostname)" || true
    session_note="Session $task stays up for 5 min: $bin/fm-ctl ssh $task -i $key"
  fi
  sleep 0.3
fi
cat <<TXT

fm-submit exited $status: non-zero because not every task succeeded. Three examples fail on
purpose: one exits 3, one runs past its timeout, and one needs a GPU no worker has (rejected
at once, with the reason).

The cluster keeps running (logs in $state/logs).$($secure && printf '\nIt is secured: every link is CURVE; a tool needs a certificate the broker trusts:\n  export FM_CERT=%s FM_BROKER_CERT=%s\n  env -u FM_CERT -u FM_BROKER_CERT %s workers   # refused: the broker requires CURVE' "$FM_CERT" "$FM_BROKER_CERT" "$bin/fm-ctl")
Try:
  echo '{"command": ["sh", "-c", "echo more"]}' | $bin/fm-submit --wait
  $bin/fm-submit --require gpu -- nvidia-smi        # rejected here, with the reason
  $bin/fm-tap --since 1                            # the whole stream so far
  $bin/fm-ctl workers        $bin/fm-ctl tasks
$session_note
Stop it with:
  scripts/demo.sh stop
TXT
