#!/usr/bin/env bash
# Start a one-node SLURM test cluster on this machine (controller and only
# compute node = this host), for the tests and CI.  Idempotent: a second run
# notices the cluster is up and returns at once.
#
# Needs root.  Installs Debian's slurm-wlm and munge with apt when missing,
# writes /etc/slurm/slurm.conf and starts munged, slurmctld and slurmd as
# plain background daemons (no systemd).  Everything the cluster writes lives
# under $SLURM_TEST_DIR (default /var/lib/slurm-test), never in the repo.
# Stop it with scripts/stop_test_cluster.sh.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

BASE=${SLURM_TEST_DIR:-/var/lib/slurm-test}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
WAIT_S=${SLURM_TEST_WAIT_S:-60}
PARTITION=debug

die() { echo "start_test_cluster: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (uid is $(id -u))"

# Serialise concurrent callers (e.g. several test workers starting it at once).
if command -v flock >/dev/null; then
    exec 9>/tmp/start_test_cluster.lock
    flock -w 300 9 || die "another start_test_cluster.sh holds /tmp/start_test_cluster.lock"
fi

HOST=$(hostname -s 2>/dev/null || true)
[ -n "$HOST" ] || die "hostname -s returned nothing"

node_state() {
    # Prints the node's state (idle, mixed, alloc, down*, ...) or nothing.
    timeout 10 sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1 || true
}

daemon_running() {  # $1 = pidfile
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# ---------------------------------------------------------------- install
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sinfo >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die "slurm/munge missing and apt-get not available"
    export DEBIAN_FRONTEND=noninteractive
    # Keep package post-install scripts from trying to start services.
    made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt_install() {
        apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120 \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            slurm-wlm munge >/dev/null
    }
    if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
        apt-get update -qq -o DPkg::Lock::Timeout=120 >/dev/null || true
    fi
    if ! apt_install 2>/tmp/start_test_cluster.apt.log; then
        apt-get update -qq -o DPkg::Lock::Timeout=120 >/dev/null 2>>/tmp/start_test_cluster.apt.log || true
        apt_install 2>>/tmp/start_test_cluster.apt.log || {
            [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
            die "apt-get install slurm-wlm munge failed (see /tmp/start_test_cluster.apt.log)"
        }
    fi
    [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
    command -v slurmctld >/dev/null || die "slurmctld still missing after apt-get install"
fi

# ------------------------------------------------------------- slurm.conf
mkdir -p "$BASE"/state "$BASE"/spool "$BASE"/log "$BASE"/run "$CONF_DIR"
chmod 755 "$BASE"

NCPU=$(nproc)
# Memory: a bit under the total (90%), never above what slurmd detects.
MEM_KB=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
MEM_MB=$(( MEM_KB / 1024 * 9 / 10 ))
DET_MB=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1 || true)
if [ -n "$DET_MB" ] && [ "$DET_MB" -gt 0 ] && [ "$DET_MB" -lt "$MEM_MB" ]; then
    MEM_MB=$(( DET_MB * 9 / 10 ))
fi
[ "$MEM_MB" -ge 100 ] || MEM_MB=100

NEW_CONF=$(mktemp)
trap 'rm -f "$NEW_CONF"' EXIT
cat > "$NEW_CONF" <<EOF
# Written by scripts/start_test_cluster.sh: one-node SLURM test cluster.
ClusterName=testcluster
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start
# again (cred_expire + 1 s; default 120 s, minimum 5).
AuthInfo=cred_expire=5
MpiDefault=none
MailProg=/bin/true

StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

# No cgroups in the container: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobContainerType=job_container/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
ReturnToService=2
# Reject at submit time what this one node can never run (e.g. --nodes=2,
# --cpus-per-task above nproc) instead of leaving it PENDING forever.
EnforcePartLimits=ALL

# No accounting (no slurmdbd): sacct does not work on this cluster.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none

# Fast, deterministic requeue and time limits for tests.  slurmctld checks
# time limits (and sends --signal warnings) only every 30 s (hard-coded), so a
# job is killed 0-30 s after its limit; then SIGCONT+SIGTERM, SIGKILL KillWait
# seconds later.  Finished jobs stay readable (squeue -t all -j ID,
# scontrol show job) for MinJobAge..MinJobAge+60 s.
JobRequeue=1
KillWait=5
OverTimeLimit=0
MinJobAge=60
InactiveLimit=0
Waittime=0
MessageTimeout=10
SlurmdTimeout=60
SlurmctldTimeout=60

# Up to 4 jobs share a CPU: the tests' jobs mostly sleep (tests/slurm_jobs.py), so they run side
# by side instead of queueing behind each other on 2 CPUs.
NodeName=$HOST NodeAddr=127.0.0.1 NodeHostname=$HOST CPUs=$NCPU RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE DefaultTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF

CONF_CHANGED=
if ! cmp -s "$NEW_CONF" "$CONF"; then
    [ -e "$CONF" ] && cp -f "$CONF" "$CONF.bak-start-test-cluster" 2>/dev/null || true
    cp -f "$NEW_CONF" "$CONF"
    chmod 644 "$CONF"
    CONF_CHANGED=1
fi

# --------------------------------------------------------- already up?
if [ -z "$CONF_CHANGED" ] \
   && daemon_running "$BASE/run/slurmctld.pid" && daemon_running "$BASE/run/slurmd.pid"; then
    st=$(node_state)
    case "$st" in
        idle*|mix*|alloc*|comp*)
            echo "SLURM test cluster already up: node $HOST ($st), partition $PARTITION"
            exit 0 ;;
    esac
fi

# ----------------------------------------------------------------- munge
MUNGE_KEY=/etc/munge/munge.key
id munge >/dev/null 2>&1 || die "user 'munge' missing (munge package broken?)"
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s "$MUNGE_KEY" ]; then
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile="$MUNGE_KEY" --force >/dev/null
    else
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge "$MUNGE_KEY" /var/lib/munge /var/log/munge /run/munge
chmod 700 /etc/munge /var/lib/munge /var/log/munge
chmod 400 "$MUNGE_KEY"
chmod 755 /run/munge

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
    if [ -s /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; then
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
        sleep 1
    fi
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged --force \
        </dev/null >>"$BASE/log/munged.start.log" 2>&1 9>&- \
        || die "munged failed to start (see $BASE/log/munged.start.log, /var/log/munge/munged.log)"
    for _ in $(seq 1 50); do munge_ok && break; sleep 0.2; done
    munge_ok || die "munged started but munge -n | unmunge fails (see /var/log/munge/munged.log)"
fi

# ----------------------------------------------------------- slurm daemons
stop_pidfile() {  # $1 = pidfile
    if daemon_running "$1"; then
        local pid; pid=$(cat "$1")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}
if [ -n "$CONF_CHANGED" ]; then
    # New configuration: restart whatever runs with the old one.
    stop_pidfile "$BASE/run/slurmd.pid"
    stop_pidfile "$BASE/run/slurmctld.pid"
fi

if ! daemon_running "$BASE/run/slurmctld.pid"; then
    slurmctld </dev/null >>"$BASE/log/slurmctld.start.log" 2>&1 9>&- \
        || die "slurmctld failed to start (see $BASE/log/slurmctld.log)"
fi
ctld_ok=
for _ in $(seq 1 $(( WAIT_S * 2 ))); do
    if timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; then ctld_ok=1; break; fi
    daemon_running "$BASE/run/slurmctld.pid" || sleep 0.5
    sleep 0.5
done
[ -n "$ctld_ok" ] || die "slurmctld not answering (see $BASE/log/slurmctld.log)"

if ! daemon_running "$BASE/run/slurmd.pid"; then
    slurmd </dev/null >>"$BASE/log/slurmd.start.log" 2>&1 9>&- \
        || die "slurmd failed to start (see $BASE/log/slurmd.log)"
fi

# ------------------------------------------------------ wait for the node
deadline=$(( $(date +%s) + WAIT_S ))
st=
while [ "$(date +%s)" -lt "$deadline" ]; do
    st=$(node_state)
    case "$st" in
        idle*|mix*|alloc*)
            echo "SLURM test cluster up: node $HOST ($st, $NCPU CPUs, ${MEM_MB} MB), partition $PARTITION, $(slurmctld -V)"
            exit 0 ;;
        drain*|down*|fail*|inval*)
            # Left over from an earlier run (e.g. killed slurmd): bring it back.
            timeout 10 scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    daemon_running "$BASE/run/slurmd.pid" || die "slurmd died (see $BASE/log/slurmd.log)"
    sleep 1
done
reason=$(timeout 10 sinfo -h -N -n "$HOST" -o '%E' 2>/dev/null | head -n1 || true)
die "node $HOST not idle after ${WAIT_S}s (state '${st:-unknown}'${reason:+, reason: $reason}; see $BASE/log/)"
