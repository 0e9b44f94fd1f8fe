#!/usr/bin/env bash
# Build the TensorGate image for a RUNTIMES value with buildah, no container daemon needed.
#
#   scripts/build_image.sh [RUNTIMES]          # onnx by default; torch, tensorflow, jax, tflite, all, "onnx,torch"
#
# Environment:
#   BASE_IMAGE   the image to build on. Unset: a Debian bookworm base is made with debootstrap once
#                and kept as localhost/tensorgate-base:bookworm (the registries' images may be out of
#                reach; this needs only a Debian mirror).
#   TAG          the image's name (default localhost/tensorgate:<RUNTIMES with ',' as '-'>).
#   DEBIAN_MIRROR  where debootstrap and apt fetch from (default http://deb.debian.org/debian).
#   WHEELS_DIR   extra wheels the build may install from (default: this machine's pip find-links, if
#                any). torch's PyPI wheel for Linux is the multi-GB CUDA build; a local CPU wheel of
#                the pinned version here keeps the torch image small.
#
# The base gets this machine's extra CA certificates (/usr/local/share/ca-certificates), so apt and
# pip inside the build reach the registries behind an intercepting proxy.
# `--format docker` keeps the Dockerfile's SHELL line, and every RUN starts with `set -eu` too, so a
# failed step fails the build in either format.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIMES=${1:-onnx}
TAG=${TAG:-localhost/tensorgate:${RUNTIMES//,/-}}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_TAG=localhost/tensorgate-base:bookworm
CONTEXT_WHEELS=.image-wheels

die() { echo "build_image: $*" >&2; exit 1; }

# RUNTIMES names extras of pyproject.toml: say which ones exist rather than fail deep inside pip.
check_runtimes() {
    local extras runtime
    extras=$(python3 - <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
print(" ".join(sorted(set(extras) - {"examples", "bench", "deploy", "test"})))
EOF
)
    IFS=',' read -ra wanted <<<"$RUNTIMES"
    [ ${#wanted[@]} -gt 0 ] || die "RUNTIMES is empty; pick from: $extras"
    for runtime in "${wanted[@]}"; do
        [[ " $extras " == *" $runtime "* ]] \
            || die "RUNTIMES: '$runtime' is not a runtime extra; pick one or more of: $extras (comma-separated)"
    done
}

need() {
    command -v "$1" >/dev/null \
        || die "$1 is not installed; run: apt-get install -y $2"
}

# A Debian bookworm root filesystem made with debootstrap, imported as an image.
make_base() {
    need debootstrap debootstrap
    local rootfs ctr
    rootfs=$(mktemp -d /var/tmp/tensorgate-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' RETURN
    echo "build_image: making the bookworm base with debootstrap from $DEBIAN_MIRROR" >&2
    debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$DEBIAN_MIRROR" >/dev/null \
        || die "debootstrap failed; is $DEBIAN_MIRROR reachable? Set DEBIAN_MIRROR, or BASE_IMAGE to an image you have"
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb ${DEBIAN_MIRROR%/debian}/debian-security bookworm-security main
EOF
    # No manual pages, translations or docs in the image, now or from later apt installs (licences stay).
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-tensorgate-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
    rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    fi
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*
    ctr=$(buildah from scratch)
    buildah add --quiet "$ctr" "$rootfs" / >/dev/null
    buildah config --cmd /bin/bash --env LANG=C.UTF-8 "$ctr"
    buildah commit --quiet --rm "$ctr" "$BASE_TAG" >/dev/null
    echo "build_image: base $BASE_TAG ready" >&2
}

# Local wheels the build may use (torch's CPU build), copied into the build context.
stage_wheels() {
    local dir=${WHEELS_DIR:-${PIP_FIND_LINKS:-}}
    rm -rf "$CONTEXT_WHEELS"
    mkdir -p "$CONTEXT_WHEELS"
    if [ -n "$dir" ] && [ -d "$dir" ]; then
        find "$dir" -maxdepth 1 -name '*.whl' -exec cp {} "$CONTEXT_WHEELS/" \;
    fi
}

check_runtimes
need buildah buildah
# One build at a time per checkout: they share the staged wheels in the build context.
exec 9>.image-build.lock
flock 9
if [ -z "${BASE_IMAGE:-}" ]; then
    buildah inspect --type image "$BASE_TAG" >/dev/null 2>&1 || make_base
    BASE_IMAGE=$BASE_TAG
else
    buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1 \
        || buildah pull --quiet "$BASE_IMAGE" >/dev/null \
        || die "base image '$BASE_IMAGE' is neither local nor pullable; unset BASE_IMAGE to make one with debootstrap"
fi
stage_wheels
trap 'rm -rf "$CONTEXT_WHEELS"' EXIT

echo "build_image: building $TAG (RUNTIMES=$RUNTIMES) on $BASE_IMAGE" >&2
buildah bud --quiet --format docker --isolation chroot --layers \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "RUNTIMES=$RUNTIMES" \
    -t "$TAG" . >/dev/null
echo "$TAG"
