#!/usr/bin/env bash
# Stop the test cluster tests/slurm/start_slurm.sh started (by its own pid files; nothing else).
set -u
BASE=${CXRAUG_SLURM_DIR:-/tmp/cxraug-slurm}
for name in slurmd slurmctld munged; do
    pidfile=$BASE/run/$name.pid
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pidfile"
done
echo "slurm test cluster stopped ($BASE)"
