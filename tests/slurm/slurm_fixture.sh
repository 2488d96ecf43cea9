# A private single-node Slurm cluster for a test, under a directory of its own: munged with its own key
# and socket, slurmctld and slurmd on ports nobody else uses, every command pointed at it by SLURM_CONF.
# Source it, then `slurm_up DIR` (exports SLURM_CONF) and `slurm_down DIR` (also on failure).
#
# The settings a test needs: cred_expire=5 so that a requeued job may start again within seconds (the
# default is 120 s), sched_interval=1 and bf_interval=1 so the scheduler looks every second,
# EnforcePartLimits=NO so that an impossible job pends with a reason instead of being refused,
# KillWait=5 between SIGTERM and SIGKILL at a cancel or time limit.

slurm_free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((30000 + RANDOM % 20000))
    ! (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null && { echo "$p"; return 0; }
  done
  return 1
}

# slurm_up DIR [CPUS]
slurm_up() {
  local d=$1 cpus=${2:-$(nproc)} host
  host=$(hostname -s)
  mkdir -p "$d/munge" "$d/ctld" "$d/slurmd" "$d/log"
  chmod 700 "$d/munge"
  dd if=/dev/urandom of="$d/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$d/munge/munge.key"
  munged --force --socket="$d/munge/munge.sock" --key-file="$d/munge/munge.key" \
    --pid-file="$d/munge/munged.pid" --log-file="$d/log/munged.log" --seed-file="$d/munge/seed" ||
    { echo "slurm_fixture: munged did not start" >&2; return 1; }
  local ctld_port d_port
  ctld_port=$(slurm_free_port) && d_port=$(slurm_free_port) || return 1
  local mem
  mem=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)
  cat >"$d/slurm.conf" <<CONF
ClusterName=dpodtest
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$d/munge/munge.sock,cred_expire=5
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
StateSaveLocation=$d/ctld
SlurmdSpoolDir=$d/slurmd
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
EnforcePartLimits=NO
JobRequeue=1
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  export SLURM_CONF="$d/slurm.conf"
  slurmctld -c || { echo "slurm_fixture: slurmctld did not start" >&2; return 1; }
  slurmd -c || { echo "slurm_fixture: slurmd did not start" >&2; return 1; }
  for _ in $(seq 1 100); do
    sinfo -h -o %T 2>/dev/null | grep -q idle && return 0
    sleep 0.2
  done
  echo "slurm_fixture: the node is not idle after 20 s" >&2
  tail -n 20 "$d/log/slurmctld.log" "$d/log/slurmd.log" >&2
  return 1
}

# slurm_down DIR: cancels what runs, stops the daemons and what they left.
slurm_down() {
  local d=$1 f
  [ -f "$d/slurm.conf" ] || return 0
  scancel --full --quiet -u "$(id -un)" 2>/dev/null || true
  for f in slurmd slurmctld munge/munged; do
    [ -f "$d/$f.pid" ] && kill -TERM "$(cat "$d/$f.pid")" 2>/dev/null || true
  done
  sleep 0.5
  pkill -KILL -f -- "$d/" 2>/dev/null || true
  pkill -KILL -x slurmstepd 2>/dev/null || true
}
