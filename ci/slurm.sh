#!/usr/bin/env bash
# A real single-node Slurm cluster on loopback, for tests/test_cluster.py and tests/test_workflows.py.
#
#   bash ci/slurm.sh install   # apt-get slurm-wlm + munge (idempotent; needs root or sudo)
#   bash ci/slurm.sh up        # munged, slurmctld, slurmd as root, no systemd; prints `export SLURM_CONF=…`
#   bash ci/slurm.sh status    # sinfo
#   bash ci/slurm.sh down      # stop what `up` started, by PID
#
# Everything lives under $GEOSEG_SLURM_DIR (default /tmp/geoseg-slurm): slurm.conf, state, logs,
# pid files. One node `localhost` with this machine's CPU count and 3/4 of its memory, so a job
# asking for more than that waits forever (Slurm's rule, not ours). Every client needs
# SLURM_CONF=$GEOSEG_SLURM_DIR/slurm.conf.
set -euo pipefail
DIR="${GEOSEG_SLURM_DIR:-/tmp/geoseg-slurm}"
CONF="$DIR/slurm.conf"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

install() {
    if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v munged >/dev/null; then
        echo "slurm: slurm-wlm and munge already installed"
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends slurm-wlm munge
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
    if [ "$(id -u)" -ne 0 ]; then echo "slurm up: run as root (slurmd must be root)" >&2; exit 1; fi
    mkdir -p "$DIR"/{state,spool,log,run}
    # munge: a key, then munged (as root with --force; it refuses root otherwise)
    if ! running "$DIR/run/munged.pid"; then
        mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
        if [ ! -s /etc/munge/munge.key ]; then
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        fi
        chmod 0700 /etc/munge /var/lib/munge /var/log/munge; chmod 0755 /run/munge
        chmod 0400 /etc/munge/munge.key
        chown -R root:root /etc/munge /run/munge /var/lib/munge /var/log/munge
        munged --force --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log"
    fi
    local cpus mem
    # nproc honours OMP_NUM_THREADS, which Dask and torch set to 1 in the test process
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 3 / 4)}' /proc/meminfo)
    cat > "$CONF" <<CONF
ClusterName=geoseg
SlurmctldHost=localhost
SlurmctldPort=${GEOSEG_SLURMCTLD_PORT:-6817}
SlurmdPort=${GEOSEG_SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
InactiveLimit=0
KillWait=5
MinJobAge=60
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF="$CONF"
    running "$DIR/run/slurmctld.pid" || slurmctld -c -f "$CONF"
    running "$DIR/run/slurmd.pid" || slurmd -f "$CONF"
    for _ in $(seq 1 60); do
        if sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
            echo "export SLURM_CONF=$CONF"
            return
        fi
        sleep 0.5
    done
    echo "slurm up: the node did not become idle; see $DIR/log" >&2
    sinfo >&2 || true
    exit 1
}

down() {
    for name in slurmd slurmctld munged; do
        local pidfile="$DIR/run/$name.pid"
        if running "$pidfile"; then
            kill "$(cat "$pidfile")"
            for _ in $(seq 1 40); do running "$pidfile" || break; sleep 0.25; done
        fi
        rm -f "$pidfile"
    done
    echo "slurm: down"
}

case "${1:-}" in
    install) install ;;
    up) up ;;
    down) down ;;
    status) SLURM_CONF="$CONF" sinfo ;;
    *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
