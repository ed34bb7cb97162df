#!/usr/bin/env bash
# Stop the daemon .ci/docker/start.sh started, by the process id it recorded.
dir=${DOCKER_TEST_DIR:-/tmp/spectra-docker}
[[ -f "$dir/pid" ]] || exit 0
pid=$(cat "$dir/pid")
kill "$pid" 2>/dev/null || true
for _ in $(seq 20); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
done
kill -9 "$pid" 2>/dev/null || true
rm -f "$dir/pid"
