#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine (node "localhost", partition "debug"), for the tests
# marked `slurm` and for trying `megastarid grid-search --launcher slurm` before using a real cluster.
#
# Idempotent: installs slurm-wlm and munge from the system package manager when missing, writes a minimal
# /etc/slurm/slurm.conf (the machine's real CPU count and memory; no cgroups: proctrack/linuxproc,
# task/none; select/cons_tres) unless one not written by this script is there, starts munged, slurmctld
# and slurmd when they are not running, and waits until the node is idle. Needs root (or sudo).
set -euo pipefail

NODE=localhost
PARTITION=debug
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARK="# written by megastarid ci/slurm-up.sh"
SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n1 | tr -d '*~#!%$@^-'; }

node_up() { case "$(node_state)" in idle | mix | alloc) return 0 ;; *) return 1 ;; esac; }

if command -v sinfo >/dev/null && node_up; then
    echo "slurm-up: $NODE is already up ($(node_state))"
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm-up: installing slurm-wlm and munge"
    $SUDO apt-get update -qq
    # The packages try to start their services; there is no init system to do that in a container.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

if [ ! -f /etc/munge/munge.key ]; then
    $SUDO mkdir -p /etc/munge
    $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
$SUDO mkdir -p /run/munge /var/log/munge /var/lib/munge
$SUDO chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
$SUDO chmod 0400 /etc/munge/munge.key
$SUDO chmod 0755 /run/munge
if ! munge -n </dev/null >/dev/null 2>&1; then
    $SUDO -u munge /usr/sbin/munged 2>/dev/null || $SUDO runuser -u munge -- /usr/sbin/munged
fi

if [ ! -f "$CONF" ] || head -n1 "$CONF" | grep -qF "$MARK"; then
    # `slurmd -C` prints this machine's CPUs, sockets, cores, threads and RealMemory as a NodeName line.
    hardware=$(slurmd -C | head -n1 | sed -e 's/^NodeName=[^ ]* //')
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hardware")
    memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hardware")
    $SUDO mkdir -p "$CONF_DIR"
    $SUDO tee "$CONF" >/dev/null <<EOF
$MARK
ClusterName=megastarid
SlurmctldHost=$NODE
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((memory / cpus / 2))
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
KillWait=30
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
fi
$SUDO mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
$SUDO chown slurm:slurm /var/spool/slurmctld /var/log/slurm

if ! scontrol ping 2>/dev/null | grep -q UP; then
    $SUDO slurmctld
fi
if ! pgrep -x slurmd >/dev/null; then
    $SUDO slurmd -N "$NODE"
fi

for _ in $(seq 60); do
    if node_up; then
        echo "slurm-up: $NODE is up: $(sinfo -h -o 'partition %P, %D node, %c CPUs, %m MB')"
        exit 0
    fi
    case "$(node_state)" in
        down | drain | drng | fail) $SUDO scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
done
echo "slurm-up: $NODE did not come up; see /var/log/slurm/slurmctld.log and /var/log/slurm/slurmd.log" >&2
exit 1
