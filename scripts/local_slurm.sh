#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (Debian/Ubuntu, as root), to run the
# workflow's SLURM profile for real (tests/test_slurm.py, `.ci/run`):
#
#   scripts/local_slurm.sh          # install slurm-wlm + munge if missing, configure, start, wait for the node
#   scripts/local_slurm.sh --stop   # stop slurmctld, slurmd and the munged this script started
#
# slurmctld and slurmd run on this host with no accounting database (the executor plugin
# polls with `squeue`; MinJobAge keeps finished jobs visible to it for a day). One
# partition, named below, holds the one node: this host with its cores and memory.
# Starting it again is safe: a cluster that is up with this configuration is left as it is
# (a changed configuration restarts the daemons). The state and the daemons' logs are in
# $STATE; /etc/slurm/slurm.conf is written only if absent or written by this script.
set -euo pipefail

PARTITION=kdbench
STATE=/var/lib/kdbench-slurm
CONF=/etc/slurm/slurm.conf
MARK="# written by kdbench scripts/local_slurm.sh"
WAIT_S=${KDBENCH_SLURM_WAIT_S:-60}

die() { echo "local_slurm.sh: $*" >&2; exit 1; }

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() {  # the daemon whose pid the file holds (ours), then wait for it to end
    local pidfile=$1 pid
    pid_alive "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    stop_pidfile "$STATE/slurmd.pid"
    stop_pidfile "$STATE/slurmctld.pid"
    if [ -e "$STATE/munged.started" ]; then   # only a munged this script started
        stop_pidfile /run/munge/munged.pid
        rm -f "$STATE/munged.started"
    fi
    echo "local SLURM cluster stopped"
}

install_missing() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null && return 0
    command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and there is no apt-get to install them"
    echo "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; }
}

write_conf() {  # this host, its cores and memory (as slurmd itself measures them)
    local host node
    host=$(hostname -s)
    node=$(slurmd -C | head -n 1)   # NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..
    [[ $node == NodeName=* ]] || die "slurmd -C did not describe this node: $node"
    [ ! -e "$CONF" ] || head -n 1 "$CONF" | grep -qxF "$MARK" \
        || die "$CONF exists and was not written by this script: not touching a real cluster's configuration"
    mkdir -p "$(dirname "$CONF")" "$STATE/ctld" "$STATE/slurmd"
    cat > "$CONF.new" <<EOF
$MARK
ClusterName=kdbench-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=86400
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=60
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    if cmp -s "$CONF.new" "$CONF"; then rm -f "$CONF.new"; else mv -f "$CONF.new" "$CONF"; CHANGED=1; fi
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    touch "$STATE/munged.started"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.2; done
    die "munged did not start"
}

node_state() { sinfo -h -p "$PARTITION" -o %T 2>/dev/null | head -n 1; }

start() {
    [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts system daemons)"
    install_missing
    mkdir -p "$STATE"
    CHANGED=0
    write_conf
    start_munge
    if [ $CHANGED = 1 ]; then   # a new configuration: the daemons start again with it
        stop_pidfile "$STATE/slurmd.pid"
        stop_pidfile "$STATE/slurmctld.pid"
    fi
    pid_alive "$STATE/slurmctld.pid" || slurmctld
    pid_alive "$STATE/slurmd.pid" || slurmd
    local state=""
    for _ in $(seq $((WAIT_S * 2))); do
        state=$(node_state)
        case $state in
            idle|mixed|allocated|completing) break ;;
            down*|drain*) scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    case $state in
        idle|mixed|allocated|completing) ;;
        *) die "the node is not up after ${WAIT_S}s (state: '${state:-none}'); see $STATE/slurmctld.log and $STATE/slurmd.log" ;;
    esac
    echo "local SLURM cluster up: partition '$PARTITION', node $(hostname -s) $state ($(sinfo -h -p "$PARTITION" -o '%c CPUs, %m MB'))"
    echo "stop it with: $0 --stop"
}

case "${1:-}" in
    --stop) stop ;;
    "") start ;;
    *) die "unknown argument '$1' (valid: none to start, --stop)" ;;
esac
