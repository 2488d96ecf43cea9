# A private Slurm cluster for a test, under a directory of its own: munged with its own key and socket,
# slurmctld and slurmd on ports nobody else uses, every command pointed at it by SLURM_CONF. Source it,
# then `slurm_up DIR [CPUS [NODES]]` (exports SLURM_CONF) and `slurm_down DIR` (also on failure).
#
# NODES > 1: each node is a slurmd in network and UTS namespaces of its own (host name nodeN, address
# $SLURM_NET.N+1 on a bridge whose host side, $SLURM_NET.1, is where slurmctld and dpod listen). Without
# its own UTS namespace Open MPI would see one host and use shared memory, and nothing would cross a
# "node"; with them, the ranks talk TCP over the bridge (tests set OMPI_MCA_btl_tcp_if_include). Unix
# sockets (munge's) are shared through the file system.
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

# slurm_nodes_up DIR NODES: the namespaces and the bridge; sets SLURM_NET (e.g. 10.77.3) and writes
# DIR/nodes (one "name address holder-pid" line a node).
slurm_nodes_up() {
  local d=$1 n=$2 i pid
  SLURM_NET="10.$((20 + RANDOM % 200)).$((RANDOM % 250))"
  export SLURM_NET
  local br="dpbr$((RANDOM % 100000))"
  echo "$br" >"$d/bridge"
  ip link add "$br" type bridge && ip addr add "$SLURM_NET.1/24" dev "$br" && ip link set "$br" up || return 1
  : >"$d/nodes"
  for i in $(seq 1 "$n"); do
    # Its stdio is /dev/null: a holder must never keep the test's output open.
    unshare --net --uts --fork sh -c "hostname node$i; exec sleep infinity" </dev/null >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do [ "$(nsenter -t "$pid" -u hostname 2>/dev/null)" = "node$i" ] && break; sleep 0.05; done
    ip link add "${br}v$i" type veth peer name eth0 netns "$pid" && ip link set "${br}v$i" master "$br" up &&
      nsenter -t "$pid" -n sh -c "ip addr add $SLURM_NET.$((i + 1))/24 dev eth0 && ip link set eth0 up && ip link set lo up" ||
      return 1
    echo "node$i $SLURM_NET.$((i + 1)) $pid" >>"$d/nodes"
  done
}

# slurm_up DIR [CPUS [NODES]]: CPUS a node
slurm_up() {
  local d=$1 cpus=${2:-$(nproc)} nodes=${3:-1} host
  host=$(hostname -s)
  # tmp: TmpFS, where Slurm's PMIx plugin makes its per-step directories (spmix_appdir_UID_JOB.STEP):
  # in /tmp they would outlive a cluster killed mid-job and make the next one's job 1 fail to launch.
  mkdir -p "$d/munge" "$d/ctld" "$d/slurmd" "$d/log" "$d/tmp"
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
TmpFS=$d/tmp
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
  if [ "$nodes" -gt 1 ]; then
    slurm_nodes_up "$d" "$nodes" || { echo "slurm_fixture: cannot make the nodes' namespaces" >&2; return 1; }
    # slurmctld on the bridge's host side; one NodeName line a node, each at its own address.
    sed -i "s/^SlurmctldHost=.*/SlurmctldHost=$host($SLURM_NET.1)/; /^NodeName=/d; /^PartitionName=/d" "$d/slurm.conf"
    sed -i "s|^SlurmdPidFile=.*|SlurmdPidFile=$d/slurmd-%n.pid|; s|^SlurmdSpoolDir=.*|SlurmdSpoolDir=$d/slurmd-%n|; s|^SlurmdLogFile=.*|SlurmdLogFile=$d/log/slurmd-%n.log|" "$d/slurm.conf"
    local name addr pid
    while read -r name addr pid; do
      echo "NodeName=$name NodeAddr=$addr NodeHostname=$name CPUs=$cpus RealMemory=$mem State=UNKNOWN" >>"$d/slurm.conf"
    done <"$d/nodes"
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" >>"$d/slurm.conf"
    echo "DebugFlags=NO_CONF_HASH" >>"$d/slurm.conf" # the nodes' copies differ in TmpFS alone
  fi
  export SLURM_CONF="$d/slurm.conf"
  slurmctld -c || { echo "slurm_fixture: slurmctld did not start" >&2; return 1; }
  if [ "$nodes" -gt 1 ]; then
    # The nodes share one file system, where the PMIx plugin's per-step directories would clash:
    # each slurmd gets a copy of the configuration whose TmpFS is its own.
    while read -r name addr pid; do
      mkdir -p "$d/slurmd-$name" "$d/tmp-$name"
      sed "s|^TmpFS=.*|TmpFS=$d/tmp-$name|" "$SLURM_CONF" >"$d/slurm-$name.conf"
      nsenter -t "$pid" -n -u slurmd -c -f "$d/slurm-$name.conf" -N "$name" ||
        { echo "slurm_fixture: slurmd $name did not start" >&2; return 1; }
    done <"$d/nodes"
  else
    slurmd -c || { echo "slurm_fixture: slurmd did not start" >&2; return 1; }
  fi
  for _ in $(seq 1 100); do
    [ "$(sinfo -h -N -o %T 2>/dev/null | grep -c idle)" = "$nodes" ] && return 0
    sleep 0.2
  done
  echo "slurm_fixture: the node is not idle after 20 s" >&2
  tail -n 20 "$d/log/slurmctld.log" "$d/log/slurmd.log" >&2
  return 1
}

# slurm_down DIR: cancels what runs, stops the daemons and what they left.
slurm_down() {
  local d=$1 f
  [ -f "$d/slurm.conf" ] || [ -f "$d/nodes" ] || return 0
  [ -f "$d/slurm.conf" ] && scancel --full --quiet -u "$(id -un)" 2>/dev/null || true
  for f in "$d"/slurmd*.pid "$d/slurmctld.pid" "$d/munge/munged.pid"; do
    [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true
  done
  sleep 0.5
  pkill -KILL -f -- "$d/" 2>/dev/null || true
  pkill -KILL -x slurmstepd 2>/dev/null || true
  if [ -f "$d/nodes" ]; then
    local name addr pid
    # The holder (unshare) and the child it forked both hold the namespaces.
    while read -r name addr pid; do
      pkill -KILL -P "$pid" 2>/dev/null || true
      kill -KILL "$pid" 2>/dev/null || true
    done <"$d/nodes"
  fi
  [ -f "$d/bridge" ] && ip link del "$(cat "$d/bridge")" 2>/dev/null || true
}
