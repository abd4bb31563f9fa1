#!/usr/bin/env bash
# Fails when the test suite left something behind: a container a worker or a probe made
# (labels fm.worker, fm.probe), a process of ours (daemons, tools, the exec shim), a
# podman API service, an etcd member or a network namespace a test started. scripts/test.sh runs it last.
set -uo pipefail
status=0
if command -v podman >/dev/null; then
  for label in fm.worker fm.probe; do
    left=$(podman ps --all --filter "label=$label" --format '{{.ID}} {{.Status}} {{.Labels}}' 2>/dev/null)
    if [ -n "$left" ]; then
      echo "check-leftovers: containers with label $label left behind:" >&2
      echo "$left" | sed 's/^/  /' >&2
      status=1
    fi
  done
fi
for name in fm-broker fm-scheduler fm-worker fm-submit fm-tap fm-ctl fm-cgexec; do
  if pids=$(pgrep -x "$name"); then
    echo "check-leftovers: $name still running: $(echo $pids)" >&2
    status=1
  fi
done
# etcd members the tests started (their data under /tmp/fm-test-*).
if members=$(pgrep -f '^/usr/bin/etcd --name m[a-z0-9]* --data-dir /tmp/'); then
  echo "check-leftovers: etcd members of tests still running: $(echo $members)" >&2
  status=1
fi
# Network namespaces the host tests made (fmHOSTPID, fmswPID).
if spaces=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^fm[a-z0-9]*[0-9]$'); then
  echo "check-leftovers: network namespaces of tests left behind: $(echo $spaces)" >&2
  status=1
fi
if services=$(pgrep -f '^/usr/bin/podman system service --time=0 unix:///tmp/'); then
  echo "check-leftovers: podman API services of tests still running: $(echo $services)" >&2
  status=1
fi
[ "$status" = 0 ] && echo "check-leftovers: the tests left no container and no process behind"
exit "$status"
