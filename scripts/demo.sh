#!/usr/bin/env bash
# Runs fm on this machine: a root broker on the default tcp://127.0.0.1:5550, a scheduler
# with its RocksDB store under .fm/data, two workers that differ in hardware and labels
# (one with docker through podman), fm-tap showing the stream, and examples/tasks.jsonl
# piped through fm-submit --wait. The cluster keeps running afterwards.
#   scripts/demo.sh         install what is missing, build, start, submit the examples
#   scripts/demo.sh stop    stop the cluster
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
state=$root/.fm
bin=$root/build/bin

stop() {
  if [ -f "$state/pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$state/pids"
    rm -f "$state/pids"
    echo "fm stopped (logs and data stay in $state)"
  else
    echo "fm is not running from $state"
  fi
}
if [ "${1:-}" = stop ]; then stop; exit 0; fi
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

start broker "$bin/fm-broker"
start scheduler "$bin/fm-scheduler" --data "$state/data"
start worker-big "$bin/fm-worker" --id big --slots 2 --label zone=a "${docker_args[@]}"
start worker-small "$bin/fm-worker" --id small --slots 2 --cpus 1 --memory 1GiB --label zone=b
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
cat <<TXT

fm-submit exited $status: non-zero because not every task succeeded. Three examples fail on
purpose: one exits 3, one runs past its timeout, and one needs a GPU no worker has (rejected
at once, with the reason).

The cluster keeps running (logs in $state/logs). Try:
  echo '{"command": ["sh", "-c", "echo more"]}' | $bin/fm-submit --wait
  $bin/fm-submit --require gpu -- nvidia-smi        # rejected here, with the reason
  $bin/fm-tap --since 1                            # the whole stream so far
  $bin/fm-ctl workers        $bin/fm-ctl tasks
Stop it with:
  scripts/demo.sh stop
TXT
