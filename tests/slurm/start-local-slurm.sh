#!/usr/bin/env bash
# start-local-slurm.sh - a real single-node Slurm cluster on localhost, no systemd (for CI:
# tests/test_slurm.py runs the workflow on it).
#
# Installs Debian's Slurm + MUNGE packages if missing, writes /etc/slurm/slurm.conf
# and /etc/slurm/gres.conf, starts munged, slurmctld and slurmd as plain daemons
# (pid files under $SLURM_LOCAL_BASE), and waits until the node is usable.
# Idempotent: running it again while the cluster is up changes nothing; if the
# generated config differs from the one on disk, slurmctld/slurmd are restarted.
# Stop with: stop-local-slurm.sh  (kills only the PIDs in the pid files below).
#
# Env knobs:
#   SLURM_LOCAL_BASE  state/log/pid dir          (default /tmp/local-slurm)
#   SLURM_FAKE_GPUS   0 or 1 fake gres/gpu       (default 1; File=/dev/null, no real GPU)
#   SLURM_PARTITION   partition name             (default debug)
#   SLURM_WAIT_S      seconds to wait for node   (default 60)
#   SLURM_MIN_JOB_AGE seconds squeue/scontrol still show a finished job (default 300)
set -euo pipefail

BASE=${SLURM_LOCAL_BASE:-/tmp/local-slurm}
FAKE_GPUS=${SLURM_FAKE_GPUS:-1}
PARTITION=${SLURM_PARTITION:-debug}
WAIT_S=${SLURM_WAIT_S:-60}
MIN_JOB_AGE=${SLURM_MIN_JOB_AGE:-300}
NODE=localhost
CONF_DIR=/etc/slurm
PKGS="slurmctld slurmd slurm-client munge"
MUNGE_PIDFILE=/run/munge/munged.pid
MARK="# written by start-local-slurm.sh"

log() { echo "[start-local-slurm] $*"; }
die() { echo "[start-local-slurm] ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
case "$FAKE_GPUS" in 0|1) ;; *) die "SLURM_FAKE_GPUS must be 0 or 1" ;; esac
t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

. "$(dirname "$(readlink -f "$0")")/lib.sh"

# ---- 1. packages -------------------------------------------------------------
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
  log "packages installed after $(elapsed)s"
fi

# ---- 2. config ---------------------------------------------------------------
mkdir -p "$BASE/ctld" "$BASE/d" "$BASE/log" "$CONF_DIR"
# hardware as slurmd itself sees it, e.g.
# NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
hw=$(slurmd -C | head -n1)
hwval() { echo "$hw" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
CPUS=$(hwval CPUs); BOARDS=$(hwval Boards); SOCKETS=$(hwval SocketsPerBoard)
CORES=$(hwval CoresPerSocket); THREADS=$(hwval ThreadsPerCore); MEM=$(hwval RealMemory)
[ -n "$CPUS" ] && [ -n "$MEM" ] || die "could not parse 'slurmd -C': $hw"

gres_node=""; gres_types=""
if [ "$FAKE_GPUS" = 1 ]; then gres_node=" Gres=gpu:1"; gres_types="GresTypes=gpu"; fi

write_if_changed() {  # write stdin to $1; return 0 if the file changed
  local tmp; tmp=$(mktemp)
  cat > "$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
  mv "$tmp" "$1"; chmod 644 "$1"; return 0
}
changed=0
write_if_changed "$CONF_DIR/slurm.conf" <<EOF && changed=1
$MARK
ClusterName=localci
SlurmctldHost=localhost
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$BASE/ctld
SlurmdSpoolDir=$BASE/d
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
# no slurmdbd: sacct does NOT work (only 'sacct -c' reads the jobcomp file);
# the snakemake slurm plugin must use squeue (slurm-status-command: squeue),
# which sees finished jobs for MinJobAge seconds.
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.txt
MinJobAge=$MIN_JOB_AGE
$gres_types
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Boards=$BOARDS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM$gres_node State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
if [ "$FAKE_GPUS" = 1 ]; then
  # gres/gpu drops a GPU without File= ("Removing file-less GPU"), so point it at /dev/null
  write_if_changed "$CONF_DIR/gres.conf" <<EOF && changed=1
$MARK
AutoDetect=off
NodeName=$NODE Name=gpu File=/dev/null Count=1
EOF
else
  write_if_changed "$CONF_DIR/gres.conf" <<EOF && changed=1
$MARK
EOF
fi

if [ "$changed" = 1 ] && { alive "$BASE/slurmd.pid" slurmd || alive "$BASE/slurmctld.pid" slurmctld; }; then
  log "config changed: restarting slurmd/slurmctld"
  stop_pidfile "$BASE/slurmd.pid" slurmd
  stop_pidfile "$BASE/slurmctld.pid" slurmctld
fi

# ---- 3. munged ---------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  log "creating /etc/munge/munge.key"
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 0600 /etc/munge/munge.key
fi
mkdir -p /run/munge; chown munge:munge /run/munge; chmod 0755 /run/munge
if alive "$MUNGE_PIDFILE" munged; then
  log "munged already running (pid $(cat "$MUNGE_PIDFILE"))"
else
  runuser -u munge -- /usr/sbin/munged     # daemonises, writes $MUNGE_PIDFILE
  for i in $(seq 1 50); do alive "$MUNGE_PIDFILE" munged && break; sleep 0.1; done
  alive "$MUNGE_PIDFILE" munged || die "munged did not start (see /var/log/munge/munged.log)"
  cat "$MUNGE_PIDFILE" > "$BASE/munged.started-by-us"   # so the stop script may stop it
  log "started munged (pid $(cat "$MUNGE_PIDFILE"))"
fi
munge -n | unmunge >/dev/null || die "munge credential round-trip failed"

# ---- 4. slurmctld + slurmd ---------------------------------------------------
if alive "$BASE/slurmctld.pid" slurmctld; then
  log "slurmctld already running (pid $(cat "$BASE/slurmctld.pid"))"
else
  slurmctld                                 # daemonises, writes SlurmctldPidFile
  for i in $(seq 1 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.1; done
  alive "$BASE/slurmctld.pid" slurmctld || die "slurmctld did not start, see $BASE/log/slurmctld.log"
  log "started slurmctld (pid $(cat "$BASE/slurmctld.pid"))"
fi
if alive "$BASE/slurmd.pid" slurmd; then
  log "slurmd already running (pid $(cat "$BASE/slurmd.pid"))"
else
  slurmd -N "$NODE"                         # daemonises, writes SlurmdPidFile
  for i in $(seq 1 50); do alive "$BASE/slurmd.pid" slurmd && break; sleep 0.1; done
  alive "$BASE/slurmd.pid" slurmd || die "slurmd did not start, see $BASE/log/slurmd.log"
  log "started slurmd (pid $(cat "$BASE/slurmd.pid"))"
fi

# ---- 5. wait for the node ------------------------------------------------------
resumed=0; state=""
for i in $(seq 1 $((WAIT_S * 5))); do
  state=$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null || true)
  case "$state" in
    idle|mixed|allocated|completing) break ;;
    *drain*|down*|*fail*)                   # e.g. drained by an earlier invalid registration
      if [ "$resumed" = 0 ] && alive "$BASE/slurmd.pid" slurmd; then
        sleep 1; scontrol update nodename="$NODE" state=resume 2>/dev/null || true; resumed=1
      fi ;;
  esac
  sleep 0.2
done
case "$state" in
  idle|mixed|allocated|completing) ;;
  *) sinfo -N -l >&2 || true; die "node $NODE not usable after ${WAIT_S}s (state '$state'), see $BASE/log/" ;;
esac

log "cluster up after $(elapsed)s: node $NODE is $state"
sinfo -N -o '%P %N %T %c %m %G'
cat <<EOF
[start-local-slurm] pids: munged=$(cat "$MUNGE_PIDFILE") slurmctld=$(cat "$BASE/slurmctld.pid") slurmd=$(cat "$BASE/slurmd.pid")
[start-local-slurm] logs: $BASE/log/   config: $CONF_DIR/slurm.conf $CONF_DIR/gres.conf
[start-local-slurm] stop: $(dirname "$(readlink -f "$0")")/stop-local-slurm.sh   (add --purge to delete $BASE and the configs)
[start-local-slurm]   or by hand: kill \$(cat $BASE/slurmd.pid) \$(cat $BASE/slurmctld.pid) \$(cat $MUNGE_PIDFILE)
EOF
