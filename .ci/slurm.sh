#!/usr/bin/env bash
# Best effort: install Debian's Slurm and munge, start a one-node cluster on this machine and wait
# until its node is idle. Prints "ready" last; any failure exits non-zero and the Slurm tests skip.
# The node offers Gres=gpu:2 backed by stand-in device files, so --gres=gpu:1 sets CUDA_VISIBLE_DEVICES.
# Stop: bash .ci/slurm.sh stop
set -euo pipefail
state=/tmp/segtricks-slurm
if [[ ${1:-} == stop ]]; then
  for pid in "$state"/slurmd.pid "$state"/slurmctld.pid /run/munge/munged.pid; do
    [[ -f $pid ]] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
     slurmctld slurmd slurm-client munge) >/dev/null 2>&1
fi
mkdir -p "$state"/spool "$state"/ctld /etc/slurm /run/munge /var/log/munge /var/lib/munge
[[ -f /etc/munge/munge.key ]] || mungekey --create >/dev/null 2>&1
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su munge -s /bin/sh -c "munged --key-file=/etc/munge/munge.key" \
  || munged --force
for i in 0 1; do  # stand-in GPU device files (the null device: Slurm only needs a path per GPU)
  [[ -e $state/gpu$i ]] || mknod "$state/gpu$i" c 1 3
done
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > /etc/slurm/gres.conf <<CONF
NodeName=$host Name=gpu File=$state/gpu[0-1]
CONF
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=segtricks-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
JobRequeue=1
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerParameters=sched_interval=1
MinJobAge=600
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 1 60); do
  if sinfo -h -N -o "%t" 2>/dev/null | grep -qE "^(idle|mix|alloc)"; then echo ready; exit 0; fi
  sleep 0.5
done
echo "slurm did not become ready; see $state/slurmctld.log and $state/slurmd.log" >&2
exit 1
