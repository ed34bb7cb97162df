#!/usr/bin/env bash
# Build a local stand-in for the Dockerfile's CUDA base image, which no registry here can serve:
# a minimal Debian 12 (bookworm, Python 3.11) from Debian's own packages with debootstrap,
# imported as ${1:-spectra-ci-base:bookworm}. It has apt and little else, as the CUDA base has;
# the Dockerfile installs Python itself. Needs debootstrap (installed by .ci/run) and dockerd.
set -euo pipefail
tag=${1:-spectra-ci-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag exists; using it"
    exit 0
fi
root=$(mktemp -d /tmp/spectra-debootstrap.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -20 "$root.log" >&2
    exit 1
}
rm -f "$root.log"
# The downloaded packages and lists are not needed in the base (the Dockerfile runs apt-get update).
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import --change 'CMD ["bash"]' - "$tag" >/dev/null
docker image ls "$tag"
