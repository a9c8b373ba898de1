#!/usr/bin/env bash
# A throwaway single-node SLURM cluster (SLURM 22.05 from Debian) for tests and CI.
#   tests/slurm/cluster.sh start   install if needed, write config, start daemons, wait for an idle node
#   tests/slurm/cluster.sh stop    kill the daemons this script started (idempotent)
#   tests/slurm/cluster.sh status  print sinfo, exit non-zero if the cluster is not up
# Needs root (apt-get, /etc/slurm symlink, munge). State lives in $DTI_SLURM_DIR (default /tmp/dti-slurm).
# The node advertises fake GPUs (gres File=/dev/null, /dev/zero, ...) so `sbatch --gpus=1` is schedulable, and, by
# default, 16 CPUs and 128 GB whatever the machine has (SlurmdParameters=config_overrides): enough for the
# real-cluster sizes in profiles/slurm (cpus_per_gpu 4, mem_mb 32000) so the tests use that profile
# unchanged, with CPUs to spare for CPU jobs while both GPUs are busy. Nothing enforces these limits here
# (no cgroups), so tiny test jobs oversubscribe harmlessly.
set -euo pipefail

STATE_DIR="${DTI_SLURM_DIR:-/tmp/dti-slurm}"
NODE_CPUS="${DTI_SLURM_CPUS:-16}"
NODE_MEM_MB="${DTI_SLURM_MEM_MB:-128000}"
# Two fake GPUs: two GPU jobs at a time, one per core of a 2-core CI machine.
NODE_GPUS="${DTI_SLURM_GPUS:-2}"
START_TIMEOUT_S="${DTI_SLURM_START_TIMEOUT:-60}"
PIDS_FILE="$STATE_DIR/daemons.pids"

log() { echo "[slurm-cluster] $*" >&2; }

install_if_missing() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || { log "SLURM is not installed and installing needs root"; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    # Only refresh the package lists when apt does not know the packages yet.
    if ! apt-cache show slurmctld >/dev/null 2>&1; then
        apt-get update -qq
    fi
    log "installing slurmctld slurmd slurm-client munge"
    # policy-rc.d keeps the packages' init scripts from starting daemons we do not manage.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1
    fi
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    [ "$created_policy" = 1 ] && rm -f "$policy"
    return 0
}

write_config() {
    mkdir -p "$STATE_DIR"/{state,spool,log,run}
    # Settings that work without cgroups, systemd or an accounting database, as in a container: processes
    # tracked through /proc (proctrack/linuxproc), no task plugin, no job accounting.
    cat >"$STATE_DIR/slurm.conf" <<CONF
ClusterName=dti-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
MinJobAge=300
SchedulerParameters=sched_interval=2
SlurmdParameters=config_overrides
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB Gres=gpu:$NODE_GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=UNLIMITED State=UP
CONF
    # Without File= slurmd drops a GPU and the node turns invalid; harmless character devices stand in
    # for the device files (one distinct file per fake GPU).
    local devices=(/dev/null /dev/zero /dev/full /dev/urandom) i
    [ "$NODE_GPUS" -le "${#devices[@]}" ] || { log "at most ${#devices[@]} fake GPUs"; exit 1; }
    {
        echo "AutoDetect=off"
        for ((i = 0; i < NODE_GPUS; i++)); do echo "NodeName=localhost Name=gpu File=${devices[$i]}"; done
    } >"$STATE_DIR/gres.conf"
    # The executor strips SLURM_CONF inside jobs, so the in-job srun must find the default path.
    mkdir -p /etc/slurm
    if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
        mv /etc/slurm/slurm.conf /etc/slurm/slurm.conf.dti-backup
    fi
    ln -sfn "$STATE_DIR/slurm.conf" /etc/slurm/slurm.conf
    ln -sfn "$STATE_DIR/gres.conf" /etc/slurm/gres.conf
}

start_munge() {
    # Reuse a munged that is already answering (ours from an earlier start, or the system's).
    if munge -n </dev/null >/dev/null 2>&1; then return; fi
    mkdir -p /run/munge /etc/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /run/munge /etc/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    runuser -u munge -- munged --force
    local pid
    for _ in $(seq 50); do
        pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
        [ -n "$pid" ] && munge -n </dev/null >/dev/null 2>&1 && break
        sleep 0.1
    done
    [ -n "$pid" ] || { log "munged did not start"; exit 1; }
    echo "munged $pid" >>"$PIDS_FILE"
}

pid_alive() {  # pid -> 0 if it runs; a zombie counts as dead (PID 1 may never reap it)
    [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

daemon_alive() {  # name -> 0 if the pid recorded for it is alive
    local pid
    pid=$(awk -v n="$1" '$1 == n {print $2}' "$PIDS_FILE" 2>/dev/null | tail -n1)
    [ -n "$pid" ] && pid_alive "$pid"
}

node_state() {
    sinfo --noheader -N -o '%t' 2>/dev/null | head -n1 | tr -d ' *'
}

start() {
    install_if_missing
    if daemon_alive slurmctld && daemon_alive slurmd && [ "$(node_state)" = idle ]; then
        log "already running"; return
    fi
    stop quiet
    local t0=$SECONDS
    write_config
    : >"$PIDS_FILE"
    start_munge
    export SLURM_CONF="$STATE_DIR/slurm.conf"
    # -i ignores stale state from a previous run; -c clears saved jobs.
    slurmctld -c -i
    slurmd
    for _ in $(seq 50); do
        [ -s "$STATE_DIR/run/slurmctld.pid" ] && [ -s "$STATE_DIR/run/slurmd.pid" ] && break
        sleep 0.1
    done
    echo "slurmctld $(cat "$STATE_DIR/run/slurmctld.pid")" >>"$PIDS_FILE"
    echo "slurmd $(cat "$STATE_DIR/run/slurmd.pid")" >>"$PIDS_FILE"
    local deadline=$((SECONDS + START_TIMEOUT_S)) state=""
    while [ $SECONDS -lt $deadline ]; do
        state=$(node_state)
        [ "$state" = idle ] && break
        sleep 0.2
    done
    if [ "$state" != idle ]; then
        log "node not idle after ${START_TIMEOUT_S}s (state: '${state}'); logs in $STATE_DIR/log"
        tail -n 20 "$STATE_DIR"/log/*.log >&2 || true
        stop quiet
        exit 1
    fi
    log "up in $((SECONDS - t0))s (state dir $STATE_DIR)"
}

terminate() {  # names... -> SIGTERM the recorded pids, wait up to 5 s, then SIGKILL
    local name pid pids=()
    for name in "$@"; do
        pid=$(awk -v n="$name" '$1 == n {print $2}' "$PIDS_FILE" | tail -n1)
        [ -n "$pid" ] && kill "$pid" 2>/dev/null && pids+=("$pid")
    done
    for _ in $(seq 100); do
        local alive=0
        for pid in "${pids[@]}"; do pid_alive "$pid" && alive=1; done
        [ "$alive" = 0 ] && return 0
        sleep 0.05
    done
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}

stop() {
    [ -f "$PIDS_FILE" ] || { [ "${1:-}" = quiet ] || log "not running"; return 0; }
    # All at once: each daemon takes 1-2 s to shut down, and the state is thrown away anyway.
    terminate slurmd slurmctld munged
    rm -f "$PIDS_FILE"
    # Only remove the config links if they still point at our state dir.
    for f in slurm.conf gres.conf; do
        if [ "$(readlink /etc/slurm/$f 2>/dev/null)" = "$STATE_DIR/$f" ]; then rm -f "/etc/slurm/$f"; fi
    done
    if [ -e /etc/slurm/slurm.conf.dti-backup ] && [ ! -e /etc/slurm/slurm.conf ]; then
        mv /etc/slurm/slurm.conf.dti-backup /etc/slurm/slurm.conf
    fi
    [ "${1:-}" = quiet ] || log "stopped"
}

status() {
    if daemon_alive slurmctld && daemon_alive slurmd; then
        SLURM_CONF="$STATE_DIR/slurm.conf" sinfo -N -l
    else
        echo "not running"; return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
