#!/usr/bin/env bash
# Start a real single-node Slurm (slurmctld + slurmd + its own munged) for the test suite.
#
# Everything lives under $CXRAUG_SLURM_DIR (default /tmp/cxraug-slurm): config, state, spool, logs,
# its own munge key and socket, on non-default ports, so it cannot clash with a Slurm or munge the
# machine already runs. Idempotent: when it is already up, it only prints the export line.
# On success prints `export SLURM_CONF=...` and exits 0; otherwise prints ONE line saying why
# (tests/slurm_cluster.py shows that line as the skip reason) and exits non-zero.
# No cgroups (containers rarely delegate them): proctrack/linuxproc and task/none.
set -u

BASE=${CXRAUG_SLURM_DIR:-/tmp/cxraug-slurm}
CTLD_PORT=${CXRAUG_SLURMCTLD_PORT:-6917}
SLURMD_PORT=${CXRAUG_SLURMD_PORT:-6918}
WAIT_S=${CXRAUG_SLURM_WAIT_S:-60}
CONF=$BASE/etc/slurm.conf
MUNGE_DIR=$BASE/munge
# The key stays private (0700); the socket's folder is open, so users other than root can submit.
SOCKET=$BASE/munge-run/munge.socket.2
export SLURM_CONF=$CONF

fail() { echo "slurm not started: $*"; exit 1; }

tail_logs() {
    local f out=""
    for f in "$BASE/log/slurmctld.log" "$BASE/log/slurmd.log" "$BASE/log/munged.log"; do
        [ -s "$f" ] && out="$out | $(basename "$f"): $(tail -n 3 "$f" | tr '\n' ' ')"
    done
    echo "$out"
}

node_ready() {
    # A node that is idle, mixed or allocated takes jobs; down/drained/unknown does not.
    local state
    state=$(sinfo -h -N -o '%t' 2>/dev/null | head -n 1)
    case "$state" in idle* | mix* | alloc* | comp*) return 0 ;; *) return 1 ;; esac
}

if [ -f "$CONF" ] && command -v scontrol >/dev/null 2>&1 && scontrol ping 2>/dev/null | grep -q UP && node_ready; then
    echo "export SLURM_CONF=$CONF"
    exit 0
fi

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        # Bounded and quiet: CI on a fresh Debian/Ubuntu machine gets the packages, others skip.
        timeout 600 bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge' \
            >"${TMPDIR:-/tmp}/cxraug-slurm-apt.log" 2>&1 \
            || fail "apt-get install slurm-wlm munge failed (see ${TMPDIR:-/tmp}/cxraug-slurm-apt.log)"
    fi
    command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 && command -v munged >/dev/null 2>&1 \
        || fail "slurmctld, slurmd or munged not installed (Debian/Ubuntu: apt-get install slurm-wlm munge)"
fi

[ "$(id -u)" = 0 ] || fail "needs root to start (slurmd runs jobs as their users); once root has started it, other users can submit"

# Stop what an earlier, half-started attempt left running (our own pid files only).
"$(dirname "$0")/stop_slurm.sh" >/dev/null 2>&1

mkdir -p "$BASE"/{etc,state,spool,log,run,munge-run} "$MUNGE_DIR" 2>/dev/null || fail "cannot create $BASE"
chmod 0755 "$BASE" "$BASE/munge-run"
chmod 0700 "$MUNGE_DIR"

# --- munge: our own key and socket, so the machine's munged (if any) is left alone
KEY=$MUNGE_DIR/munge.key
if [ ! -s "$KEY" ]; then
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$KEY" >/dev/null 2>&1 || fail "mungekey could not create $KEY"
    else
        dd if=/dev/urandom of="$KEY" bs=1 count=1024 status=none || fail "could not create $KEY"
    fi
fi
chmod 0400 "$KEY"
munged --force --socket="$SOCKET" --key-file="$KEY" --pid-file="$BASE/run/munged.pid" \
    --log-file="$BASE/log/munged.log" --seed-file="$MUNGE_DIR/munged.seed" >/dev/null 2>&1 \
    || fail "munged did not start$(tail_logs)"

# --- slurm.conf: this host as the only node, its CPUs and topology as slurmd sees them, memory
# less a headroom for the OS and the test process itself.
HOST=$(hostname -s)
HW=$(slurmd -C 2>/dev/null | head -n 1)
[ -n "$HW" ] || fail "slurmd -C printed nothing"
TOTAL_MB=$(echo "$HW" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
[ -n "$TOTAL_MB" ] || TOTAL_MB=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
HEADROOM_MB=$((TOTAL_MB / 5 > 1024 ? TOTAL_MB / 5 : 1024))
MEM_MB=$((TOTAL_MB - HEADROOM_MB))
[ "$MEM_MB" -ge 512 ] || fail "only ${TOTAL_MB} MB of memory; need at least 1.5 GB"
NODE=$(echo "$HW" | sed -e "s/^NodeName=[^ ]*/NodeName=$HOST/" -e "s/RealMemory=[0-9]*/RealMemory=$MEM_MB/")

cat >"$CONF" <<CONF
# Written by cxraug tests/slurm/start_slurm.sh: a throwaway single-node cluster for tests.
ClusterName=cxraug-test
SlurmctldHost=$HOST
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$SOCKET,cred_expire=10
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# Look at pending jobs every few seconds (a requeued job waits for the next pass).
SchedulerParameters=sched_interval=2,bf_interval=2
SwitchType=switch/none
MpiDefault=none
JobRequeue=1
PreemptMode=OFF
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Cancelled and requeued jobs get SIGKILL this many seconds after SIGTERM (default 30).
KillWait=5
# Finished jobs stay visible to squeue/scontrol for this long (there is no accounting database).
MinJobAge=600
InactiveLimit=0
$NODE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

# -i: ignore saved state from an earlier run (its jobs and node state are stale).
slurmctld -i -f "$CONF" >>"$BASE/log/slurmctld.start" 2>&1 || fail "slurmctld did not start$(tail_logs)"
slurmd -f "$CONF" >>"$BASE/log/slurmd.start" 2>&1 || fail "slurmd did not start$(tail_logs)"

for _ in $(seq 1 "$((WAIT_S * 2))"); do
    if scontrol ping 2>/dev/null | grep -q UP && node_ready; then
        echo "export SLURM_CONF=$CONF"
        exit 0
    fi
    sleep 0.5
done
fail "node $HOST not idle within ${WAIT_S} s (sinfo: $(sinfo -h -N -o '%t %E' 2>&1 | head -n 1))$(tail_logs)"
