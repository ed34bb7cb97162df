#!/usr/bin/env bash
# Stop the daemons .ci/slurm/start.sh started, by the process ids it recorded.
dir=${SLURM_TEST_DIR:-/tmp/spectra-slurm}
[[ -f "$dir/pids" ]] || exit 0
mapfile -t pids < "$dir/pids"
kill "${pids[@]}" 2>/dev/null || true
for _ in $(seq 10); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 1
done
kill -9 "${pids[@]}" 2>/dev/null || true
rm -f "$dir/pids"
