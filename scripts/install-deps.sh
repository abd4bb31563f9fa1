#!/usr/bin/env bash
# Installs the Debian packages fm builds, tests and demonstrates with, if any is missing.
set -euo pipefail
packages=(build-essential cmake ninja-build pkg-config git curl
  libzmq3-dev cppzmq-dev libflatbuffers-dev flatbuffers-compiler librocksdb-dev libuv1-dev
  libspdlog-dev catch2 libcli11-dev libczmq-dev libsodium-dev prometheus-cpp-dev libsystemd-dev libgoogle-perftools-dev libcurl4-openssl-dev nlohmann-json3-dev etcd-server help2man dpkg-dev systemd man-db python3
  podman runc busybox-static clang-14 libclang-rt-14-dev iproute2 nftables openssh-server openssh-client)
# openssh-server is here for its sshd binary only (the session image is made from it,
# scripts/session-image.sh), etcd-server for its etcd binary (tests start their own
# members): when this script installs them, the host's own ssh and etcd services are
# neither started nor enabled.
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  new_services=false
  [[ " ${missing[*]} " == *" openssh-server "* || " ${missing[*]} " == *" etcd-server "* ]] && new_services=true
  if $new_services && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee /usr/sbin/policy-rc.d >/dev/null
    $sudo_cmd chmod 755 /usr/sbin/policy-rc.d
    trap '$sudo_cmd rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
  if $new_services && command -v systemctl >/dev/null; then
    $sudo_cmd systemctl disable --now ssh.service ssh.socket etcd.service >/dev/null 2>&1 || true
  fi
fi
