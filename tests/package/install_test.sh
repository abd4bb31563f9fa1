#!/usr/bin/env bash
# The Debian packages, as an operator gets them: `cpack -G DEB` in the build tree, each
# package unpacked into a clean root, then checked (layout, conffiles, dependencies,
# the system user, man pages, completion, unit hardening) and a cluster started from the
# installed files alone: a broker, a scheduler and a worker with their /etc/fm configs,
# a task submitted with the installed fm-submit.
#   tests/package/install_test.sh BUILD_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
work=$(mktemp -d /tmp/fm-package-test.XXXXXX)
pids=()
cleanup() {
  for pid in ${pids[@]+"${pids[@]}"}; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

cpack -G DEB -B "$work/out" --config "$build/CPackConfig.cmake" >"$work/cpack.log" 2>&1 || {
  cat "$work/cpack.log" >&2
  fail "cpack -G DEB"
}
root="$work/root"
mkdir -p "$root"
for p in common broker scheduler worker tools; do
  deb=$(ls "$work/out"/fm-${p}_*.deb 2>/dev/null | head -1)
  [ -n "$deb" ] || fail "no fm-$p package"
  dpkg-deb -x "$deb" "$root"
done

# Layout.
for f in usr/bin/fm-broker usr/bin/fm-scheduler usr/bin/fm-worker usr/libexec/fm/fm-cgexec usr/bin/fm-submit usr/bin/fm-tap usr/bin/fm-ctl \
  usr/bin/fm-keygen lib/systemd/system/fm-broker.service lib/systemd/system/fm-scheduler.service \
  lib/systemd/system/fm-worker.service etc/fm/broker.conf etc/fm/scheduler.conf etc/fm/worker.conf \
  usr/lib/sysusers.d/fm.conf usr/share/man/man1/fm-ctl.1.gz usr/share/bash-completion/completions/fm-ctl \
  usr/share/doc/fm-common/OPERATIONS.md; do
  [ -e "$root/$f" ] || fail "$f is not installed"
done
# The configuration is the operator's: conffiles, kept over upgrades.
for d in broker scheduler worker; do
  dpkg-deb -I "$work/out"/fm-${d}_*.deb conffiles | grep -qx "/etc/fm/$d.conf" || fail "/etc/fm/$d.conf is no conffile"
done
# Every dependency is a package this system can satisfy.
dpkg --dry-run -i "$work/out"/*.deb >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dependencies"; }
dpkg-deb -f "$work/out"/fm-scheduler_*.deb Depends | grep -q "librocksdb" || fail "fm-scheduler does not depend on RocksDB"
dpkg-deb -f "$work/out"/fm-scheduler_*.deb Depends | grep -q "libtcmalloc-minimal4" || fail "fm-scheduler does not depend on tcmalloc, its allocator"
dpkg-deb -f "$work/out"/fm-scheduler_*.deb Depends | grep -q "libcurl4" || fail "fm-scheduler does not depend on libcurl (it speaks to etcd)"
# The system user, created in the clean root by sysusers.
systemd-sysusers --root="$root" "$root/usr/lib/sysusers.d/fm.conf"
grep -q "^fm:" "$root/etc/passwd" || fail "sysusers made no user fm"
# Man pages name their program and its options.
MANWIDTH=80 man -l "$root/usr/share/man/man1/fm-scheduler.1.gz" 2>/dev/null | grep -q -- "--task-retention" ||
  fail "man fm-scheduler lacks --task-retention"
# Completion: fm-ctl's subcommands, a daemon's flags from its --help.
got=$(bash -c 'source "$1/usr/share/bash-completion/completions/fm-ctl"; COMP_WORDS=(fm-ctl sn); COMP_CWORD=1
  _fm_complete; echo "${COMPREPLY[*]}"' _ "$root")
[ "$got" = "snapshot" ] || fail "completion of 'fm-ctl sn' gave '$got'"
got=$(bash -c 'source "$1/usr/share/bash-completion/completions/fm-broker"; COMP_WORDS=("$1/usr/bin/fm-broker" --metr)
  COMP_CWORD=1; _fm_complete; echo "${COMPREPLY[*]}"' _ "$root")
[ "$got" = "--metrics-listen" ] || fail "completion of 'fm-broker --metr' gave '$got'"
# Hardened units: exposure at most 4.0 for the broker and the scheduler.
for d in broker scheduler; do
  score=$(systemd-analyze security --offline=yes "$root/lib/systemd/system/fm-$d.service" 2>&1 |
    sed -n 's/.*Overall exposure level for fm-'"$d"'.service: \([0-9.]*\).*/\1/p')
  [ -n "$score" ] || fail "systemd-analyze gave no score for fm-$d"
  awk -v s="$score" 'BEGIN { exit !(s <= 4.0) }' || fail "fm-$d.service exposure $score > 4.0"
  echo "fm-$d.service: exposure $score"
  grep -q '^Type=notify' "$root/lib/systemd/system/fm-$d.service" || fail "fm-$d.service is not Type=notify"
  grep -q '^WatchdogSec=' "$root/lib/systemd/system/fm-$d.service" || fail "fm-$d.service has no watchdog"
done
grep -q '^Requires=' "$root"/lib/systemd/system/*.service && fail "a unit uses Requires="
# The installed configuration is valid as shipped.
for d in broker scheduler worker; do
  "$root/usr/bin/fm-$d" --config "$root/etc/fm/$d.conf" --check-config >/dev/null || fail "/etc/fm/$d.conf"
done

# A cluster from the installed files (the port moved off the default by a flag, which
# wins over the file).
port=$(python3 -c '
import socket
for p in range(10000 + __import__("os").getpid() % 20000, 32700, 3):  # below the ephemeral range
    try:
        ss = [socket.socket() for _ in range(3)]
        for i, s in enumerate(ss): s.bind(("127.0.0.1", p + i))
        for s in ss: s.close()
        print(p); break
    except OSError:
        for s in ss: s.close()
')
url="tcp://127.0.0.1:$port"
"$root/usr/bin/fm-broker" --config "$root/etc/fm/broker.conf" --bind "$url" 2>"$work/broker.log" &
pids+=($!)
"$root/usr/bin/fm-scheduler" --config "$root/etc/fm/scheduler.conf" --broker "$url" --data "$work/data" \
  2>"$work/scheduler.log" &
pids+=($!)
"$root/usr/bin/fm-worker" --config "$root/etc/fm/worker.conf" --broker "$url" --id pkg-worker \
  --state-dir "$work/worker-state" 2>"$work/worker.log" &
pids+=($!)
deadline=$((SECONDS + 60))  # polled: registration takes well under a second when the machine is idle
while [ $SECONDS -lt $deadline ]; do
  "$root/usr/bin/fm-ctl" --broker "$url" --timeout 1s workers 2>/dev/null | grep -q "^pkg-worker " && break
  sleep 0.2
done
"$root/usr/bin/fm-ctl" --broker "$url" workers | grep -q "^pkg-worker " || {
  cat "$work"/*.log >&2
  fail "the installed worker did not register"
}
out=$(echo '{"command":["echo","from the package"]}' | timeout 60 "$root/usr/bin/fm-submit" --broker "$url" --wait) || true
echo "$out" | grep -q '"status": "succeeded"' || {
  echo "$out" >&2
  cat "$work"/broker.log "$work"/scheduler.log "$work"/worker.log >&2
  fail "the task did not succeed"
}
"$root/usr/bin/fm-ctl" --broker "$url" ping
echo "packages install and run"
