#!/usr/bin/env bash
# Builds the default session image, localhost/fm-session:latest, offline from this
# machine's Debian packages: sshd and the libraries it links (openssh-server), busybox
# for a shell, a user `fm`, host keys made here, and /fm-session, which writes the
# session's public keys ($FM_SSH_KEYS, one per line) to ~fm/.ssh/authorized_keys and
# runs sshd on port 22 (public keys only; no password, no root). Any image that does the
# same works as a session image (fm-worker --session-image).
# Usage: scripts/session-image.sh [podman|docker] [IMAGE]
set -euo pipefail
engine=${1:-podman}
image=${2:-localhost/fm-session:latest}
[ -x /usr/sbin/sshd ] || { echo "session-image: /usr/sbin/sshd missing (apt-get install openssh-server)" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "session-image: /bin/busybox missing (apt-get install busybox-static)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root" "$root.tar"' EXIT
mkdir -p "$root"/{bin,usr/sbin,etc/ssh,run/sshd,home/fm/.ssh,var/empty,tmp,root}
chmod 1777 "$root/tmp"
chmod 755 "$root/run/sshd"
cp /usr/sbin/sshd "$root/usr/sbin/sshd"
# sshd's libraries and the dynamic loader, at the paths ldd names.
for lib in $(ldd /usr/sbin/sshd | awk '/=>/ {print $3} /^\t\// {print $1}'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp /bin/busybox "$root/bin/busybox"
for tool in sh echo cat ls id env sleep true false printf chmod chown mkdir rm head tail grep ps; do
  ln -sf busybox "$root/bin/$tool"
done
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
sshd:x:100:65534:sshd privilege separation:/run/sshd:/bin/false
fm:x:1000:1000:fm session:/home/fm:/bin/sh
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
fm:x:1000:
GROUP
# "*": no password, not locked (sshd refuses locked accounts even for keys).
printf 'root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\nfm:*:19000:0:99999:7:::\n' >"$root/etc/shadow"
chmod 600 "$root/etc/shadow"
ssh-keygen -q -A -f "$root"
cat >"$root/etc/ssh/sshd_config" <<'CONF'
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
HostKey /etc/ssh/ssh_host_rsa_key
PubkeyAuthentication yes
AuthorizedKeysFile /home/fm/.ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers fm
UsePAM no
PidFile /run/sshd.pid
PrintMotd no
CONF
cat >"$root/fm-session" <<'ENTRY'
#!/bin/sh
# The session's keys, one per line, and nothing else: only they may log in.
umask 077
printf '%s\n' "$FM_SSH_KEYS" >/home/fm/.ssh/authorized_keys
unset FM_SSH_KEYS
chown -R fm:fm /home/fm
chmod 700 /home/fm/.ssh
exec /usr/sbin/sshd -D -e
ENTRY
chmod 755 "$root/fm-session"
chown -R 1000:1000 "$root/home/fm"
tar -C "$root" -cf "$root.tar" .
"$engine" rmi -f "$image" >/dev/null 2>&1 || true
"$engine" import --change 'CMD ["/fm-session"]' "$root.tar" "$image" >/dev/null
echo "$image"
