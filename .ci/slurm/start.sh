#!/usr/bin/env bash
# Start a one-node SLURM cluster on localhost for the SLURM profile's test (no systemd: munged,
# slurmctld and slurmd run directly as root). Writes their pids to $SLURM_TEST_DIR/pids.
# Needs Debian's slurm-wlm, slurm-client and munge (installed by .ci/run).
set -euo pipefail
dir=${SLURM_TEST_DIR:-/tmp/spectra-slurm}
mkdir -p "$dir" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /run/munge /var/log/slurm
host=$(hostname -s)
cpus=$(nproc)
memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))

[[ -s /etc/munge/munge.key ]] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
chmod 400 /etc/munge/munge.key
chown -R root:root /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=spectra-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2000
GresTypes=gpu
ReturnToService=2
# The squeue status command of the Snakemake plugin needs finished jobs kept this long
# (at least 3x its --slurm-init-seconds-before-status-checks); an hour also lets the tests read
# the finished jobs back with scontrol.
MinJobAge=3600
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$memory_mb Gres=gpu:fake:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cat > /etc/slurm/gres.conf <<CONF
AutoDetect=off
Name=gpu Type=fake File=/dev/null
CONF

munged --force
sleep 1
slurmctld
slurmd
: > "$dir/pids"
for _ in $(seq 30); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed)'; then
        pgrep -x slurmd >> "$dir/pids" || true
        pgrep -x slurmctld >> "$dir/pids" || true
        pgrep -x munged >> "$dir/pids" || true
        sinfo
        exit 0
    fi
    sleep 1
done
echo "SLURM did not come up; slurmctld log:" >&2
tail -20 /var/log/slurm/slurmctld.log >&2 || true
tail -20 /var/log/slurm/slurmd.log >&2 || true
exit 1
