#!/usr/bin/env bash
# Sets up podman as a local Docker Engine API for fm's docker executor and its tests:
# runc runtime and ulimits (see shared/ENVIRONMENT.md), and a busybox image built from
# the local busybox-static binary (no registry is reachable), and the session image
# localhost/fm-session:latest (scripts/session-image.sh).
# Usage: scripts/podman-setup.sh            configure and import localhost/fm-busybox:latest
#        scripts/podman-setup.sh serve SOCK  also start the API service on unix socket SOCK
#                                            and print its pid
set -euo pipefail

conf=/etc/containers/containers.conf
if ! grep -q 'runtime = "runc"' "$conf" 2>/dev/null; then
  mkdir -p /etc/containers
  cat >"$conf" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
CONF
fi

# (Made again when it lacks dd, which the memory-limit test uses.)
if podman image exists localhost/fm-busybox:latest 2>/dev/null &&
  ! podman run --rm localhost/fm-busybox:latest ls /bin/dd >/dev/null 2>&1; then
  podman rmi -f localhost/fm-busybox:latest >/dev/null 2>&1 || true
fi
if ! podman image exists localhost/fm-busybox:latest 2>/dev/null; then
  root=$(mktemp -d)
  mkdir -p "$root/bin"
  cp /bin/busybox "$root/bin/busybox"
  for tool in sh echo true false sleep cat ls dd; do ln -sf busybox "$root/bin/$tool"; done
  tar -C "$root" -cf "$root.tar" .
  podman import "$root.tar" localhost/fm-busybox:latest >/dev/null 2>&1
  rm -rf "$root" "$root.tar"
fi

# The default session image (sshd from this machine's openssh-server), made once.
if ! podman image exists localhost/fm-session:latest 2>/dev/null; then
  "$(dirname "$0")/session-image.sh" podman localhost/fm-session:latest >/dev/null ||
    echo "podman-setup: no session image (workers will not announce session)" >&2
fi

if [ "${1:-}" = serve ]; then
  sock=${2:?socket path}
  rm -f "$sock"
  nohup podman system service --time=0 "unix://$sock" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    if curl -sf --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then
      echo "$pid"
      exit 0
    fi
    sleep 0.1
  done
  echo "podman API did not come up on $sock" >&2
  exit 1
fi
