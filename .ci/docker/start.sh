#!/usr/bin/env bash
# Start a Docker daemon for the image's CI check (.ci/docker/check.sh), without systemd: dockerd
# runs directly as root with overlay2 and no bridge network (builds use the host's network, runs
# none), so nothing is sent to a bridge's private addresses and no iptables rules are written.
# Writes its pid to $DOCKER_TEST_DIR/pid. Needs Debian's docker.io (installed by .ci/run).
set -euo pipefail
dir=${DOCKER_TEST_DIR:-/tmp/spectra-docker}
mkdir -p "$dir"
if docker info >/dev/null 2>&1; then
    echo "a Docker daemon is already running; using it"
    exit 0
fi
dockerd --storage-driver overlay2 --bridge none --iptables=false --ip6tables=false \
    --ip-forward=false --ip-masq=false --pidfile "$dir/dockerd.pid" \
    >"$dir/dockerd.log" 2>&1 &
echo $! > "$dir/pid"
for _ in $(seq 60); do
    if docker info >/dev/null 2>&1; then
        docker info --format 'dockerd {{.ServerVersion}}, storage driver {{.Driver}}'
        exit 0
    fi
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
    sleep 1
done
echo "dockerd did not come up; its log:" >&2
tail -20 "$dir/dockerd.log" >&2 || true
kill "$(cat "$dir/pid")" 2>/dev/null || true
rm -f "$dir/pid"
exit 1
