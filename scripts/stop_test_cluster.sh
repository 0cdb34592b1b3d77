#!/usr/bin/env bash
# Stop the one-node SLURM test cluster started by scripts/start_test_cluster.sh:
# cancel all jobs, then stop slurmd, slurmctld and munged.  Idempotent: does
# nothing (and succeeds) when nothing runs.
set -uo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

BASE=${SLURM_TEST_DIR:-/var/lib/slurm-test}

[ "$(id -u)" = 0 ] || { echo "stop_test_cluster: FAILED: must run as root" >&2; exit 1; }

stop_pidfile() {  # $1 = pidfile, $2 = name
    local pid
    [ -s "$1" ] || return 0
    pid=$(cat "$1")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
            echo "stop_test_cluster: $2 (pid $pid) did not stop on SIGTERM, killed" >&2
        fi
    fi
    rm -f "$1"
}

if command -v scancel >/dev/null && [ -s "$BASE/run/slurmctld.pid" ] \
   && kill -0 "$(cat "$BASE/run/slurmctld.pid")" 2>/dev/null; then
    # Cancel every job; give their processes KillWait (5 s) to go.
    ids=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u)
    if [ -n "$ids" ]; then
        # shellcheck disable=SC2086
        timeout 10 scancel --quiet $ids 2>/dev/null || true
        for _ in $(seq 1 30); do
            [ -z "$(timeout 10 squeue -h -t RUNNING,COMPLETING,SUSPENDED,CONFIGURING -o %A 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

stop_pidfile "$BASE/run/slurmd.pid" slurmd
stop_pidfile "$BASE/run/slurmctld.pid" slurmctld
stop_pidfile /run/munge/munged.pid munged
echo "SLURM test cluster stopped"
