#!/usr/bin/env bash
# Build the local stand-ins of the images' two bases, once, and print their tags.
#
#   tests/containers/bases.sh amd64|arm64
#
# No registry can be reached here, so the real bases (python:3.13-slim-trixie and
# gcr.io/distroless/python3-debian13:nonroot) are replaced by Debian 13 (trixie) root
# filesystems made with debootstrap and imported into the engine:
#   builder: python3 (3.13) with pip and ca-certificates, and a shell to RUN with;
#   runtime: python3 only, no shell, user nonroot 65532, like distroless' :nonroot.
# The root filesystems are cached as tarballs under $LUCID_BASES_CACHE (outside the repo,
# default /var/cache/lucid-test-bases), keyed by the hash of this recipe.
set -euo pipefail

ARCH=${1:?usage: bases.sh amd64|arm64}
DOCKER=${DOCKER:-/usr/bin/docker}
CACHE=${LUCID_BASES_CACHE:-/var/cache/lucid-test-bases}
MIRROR=${LUCID_DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEY=$(sha256sum "$0" | cut -c1-12)
BUILDER=lucid-test-base/builder:$KEY-$ARCH
RUNTIME=lucid-test-base/runtime:$KEY-$ARCH
ENVS=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
      --change 'ENV LANG=C.UTF-8')

rootfs() {  # rootfs NAME PACKAGES -> $CACHE/$KEY/NAME-$ARCH.tar
    local name=$1 packages=$2 tar=$CACHE/$KEY/$1-$ARCH.tar
    [ -s "$tar" ] && return 0
    mkdir -p "$CACHE/$KEY"
    local dir
    dir=$(mktemp -d "$CACHE/$KEY/.$name-$ARCH.XXXXXX")
    echo "bases: debootstrap $name ($ARCH) into $dir" >&2
    debootstrap --variant=minbase --arch="$ARCH" --include="$packages" trixie "$dir" "$MIRROR" >&2 \
        || { rm -rf "$dir"; echo "bases: debootstrap $name failed" >&2; exit 1; }
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    if [ "$name" = runtime ]; then
        # distroless-like: no shell, no package manager, a nonroot user 65532
        rm -f "$dir"/usr/bin/{sh,bash,rbash,dash,apt,apt-get,dpkg} "$dir"/bin/{sh,bash,dash}
        echo "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin" >> "$dir"/etc/passwd
        echo "nonroot:x:65532:" >> "$dir"/etc/group
        mkdir -p "$dir"/home/nonroot && chown 65532:65532 "$dir"/home/nonroot
    fi
    tar -C "$dir" -cf "$tar.part" . && mv "$tar.part" "$tar"
    rm -rf "$dir"
}

have() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

if ! have "$BUILDER"; then
    rootfs builder python3,python3-pip,ca-certificates
    "$DOCKER" import "${ENVS[@]}" "$CACHE/$KEY/builder-$ARCH.tar" "$BUILDER" >/dev/null
fi
if ! have "$RUNTIME"; then
    rootfs runtime python3
    "$DOCKER" import "${ENVS[@]}" --change 'USER 65532:65532' \
        "$CACHE/$KEY/runtime-$ARCH.tar" "$RUNTIME" >/dev/null
fi
echo "$BUILDER $RUNTIME"
