#!/usr/bin/env bash
# Make a container engine usable for the container tests; print why not and exit 3 if it cannot.
#
# Uses a running daemon when /usr/bin/docker (Debian's docker.io client, which has BuildKit)
# reaches one.  Otherwise, as root with apt-get, installs docker.io, debootstrap and
# qemu-user-static and starts dockerd with networking off (no bridge, no iptables: containers
# use the host network), then registers qemu's binfmt handler for arm64 (lost at reboot).
set -uo pipefail

DOCKER=/usr/bin/docker
LOG=${LUCID_DOCKERD_LOG:-/var/log/lucid-dockerd.log}
PACKAGES=(docker.io debootstrap qemu-user-static binfmt-support)

fail() { echo "engine: $*" >&2; exit 3; }

need_install=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_install+=("$p")
done
if [ "${#need_install[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || fail "not root, cannot install ${need_install[*]}"
    command -v apt-get >/dev/null || fail "no apt-get to install ${need_install[*]}"
    echo "engine: installing ${need_install[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || fail "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${need_install[@]}" >&2 \
        || fail "apt-get install ${need_install[*]} failed"
fi
[ -x "$DOCKER" ] || fail "$DOCKER missing after install"

if ! "$DOCKER" info >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || fail "no running docker daemon and not root to start one"
    echo "engine: starting dockerd (log: $LOG)" >&2
    setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false >>"$LOG" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
        "$DOCKER" info >/dev/null 2>&1 && break
        sleep 1
    done
    "$DOCKER" info >/dev/null 2>&1 || fail "dockerd did not come up; see $LOG"
fi

# arm64 under qemu: optional, reported, never fatal.
if [ "$(id -u)" = 0 ] && [ -d /proc/sys/fs/binfmt_misc ]; then
    [ -e /proc/sys/fs/binfmt_misc/register ] \
        || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    echo "engine: ready (arm64 via qemu: yes)" >&2
else
    echo "engine: ready (arm64 via qemu: no)" >&2
fi
