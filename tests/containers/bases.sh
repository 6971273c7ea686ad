#!/usr/bin/env bash
# Build the local stand-ins of the images' two bases, once, and print their tags.
#
#   tests/containers/bases.sh amd64|arm64
#   LUCID_BASES_CACHED_ONLY=1 tests/containers/bases.sh arm64   # exit 4 unless cached
#
# No registry can be reached here, so the real bases (python:3.13-slim-trixie and
# gcr.io/distroless/python3-debian13:nonroot) are replaced by one Debian 13 (trixie) root
# filesystem made with debootstrap (python3 3.13, pip, ca-certificates), imported twice:
#   builder: as it is, with a shell to RUN with;
#   runtime: without shells, apt, dpkg or pip, with user nonroot 65532, like distroless.
# The tarballs are cached under $LUCID_BASES_CACHE (outside the repo, default
# /var/cache/lucid-test-bases), keyed by the hash of this recipe; an arm64 debootstrap runs
# its second stage under qemu (binfmt, see engine.sh).
set -euo pipefail

ARCH=${1:?usage: bases.sh amd64|arm64}
DOCKER=${DOCKER:-/usr/bin/docker}
CACHE=${LUCID_BASES_CACHE:-/var/cache/lucid-test-bases}
MIRROR=${LUCID_DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEY=$(sha256sum "$0" | cut -c1-12)
DIR=$CACHE/$KEY
BUILDER=lucid-test-base/builder:$KEY-$ARCH
RUNTIME=lucid-test-base/runtime:$KEY-$ARCH
ENVS=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
      --change 'ENV LANG=C.UTF-8')

have() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

rootfs() {  # -> $DIR/rootfs-$ARCH.tar
    local tar=$DIR/rootfs-$ARCH.tar
    [ -s "$tar" ] && return 0
    mkdir -p "$DIR"
    local root
    root=$(mktemp -d "$DIR/.rootfs-$ARCH.XXXXXX")
    echo "bases: debootstrap trixie ($ARCH) into $root" >&2
    debootstrap --variant=minbase --arch="$ARCH" --include=python3,python3-pip,ca-certificates \
        trixie "$root" "$MIRROR" >&2 \
        || { rm -rf "$root"; echo "bases: debootstrap failed" >&2; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tar.part" . && mv "$tar.part" "$tar"
    rm -rf "$root"
}

runtime_rootfs() {  # -> $DIR/runtime-$ARCH.tar: the rootfs made distroless-like
    local tar=$DIR/runtime-$ARCH.tar
    [ -s "$tar" ] && return 0
    rootfs
    local root
    root=$(mktemp -d "$DIR/.runtime-$ARCH.XXXXXX")
    tar -C "$root" -xf "$DIR/rootfs-$ARCH.tar"
    rm -f "$root"/usr/bin/{sh,bash,rbash,dash,apt,apt-get,apt-cache,dpkg,pip,pip3,pip3.13}
    rm -rf "$root"/usr/lib/python3/dist-packages/pip "$root"/var/lib/dpkg "$root"/var/lib/apt
    echo "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin" >> "$root"/etc/passwd
    echo "nonroot:x:65532:" >> "$root"/etc/group
    mkdir -p "$root"/home/nonroot && chown 65532:65532 "$root"/home/nonroot
    tar -C "$root" -cf "$tar.part" . && mv "$tar.part" "$tar"
    rm -rf "$root"
}

if [ "${LUCID_BASES_CACHED_ONLY:-0}" = 1 ] && ! have "$BUILDER" && [ ! -s "$DIR/rootfs-$ARCH.tar" ]; then
    echo "bases: no cached $ARCH stand-in bases under $DIR" >&2
    exit 4
fi
if ! have "$BUILDER"; then
    rootfs
    "$DOCKER" import "${ENVS[@]}" "$DIR/rootfs-$ARCH.tar" "$BUILDER" >/dev/null
fi
if ! have "$RUNTIME"; then
    runtime_rootfs
    "$DOCKER" import "${ENVS[@]}" --change 'USER 65532:65532' "$DIR/runtime-$ARCH.tar" \
        "$RUNTIME" >/dev/null
fi
echo "$BUILDER $RUNTIME"
