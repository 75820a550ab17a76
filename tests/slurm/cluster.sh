#!/usr/bin/env bash
# A one-node Slurm cluster for the tests: slurmctld and slurmd from Debian's slurm-wlm, as root,
# without systemd or cgroups, listening on 127.0.0.1 only, all state under $DIR.
#
#   cluster.sh start DIR CTLD_PORT SLURMD_PORT   # writes DIR/slurm.conf, waits for an idle node
#   cluster.sh stop DIR                          # stops what start started, by pid file
#
# Clients use it with SLURM_CONF=DIR/slurm.conf. munged is started only when none answers.
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?state directory}

stop_pidfile() {
  local f=$1 name=$2 pid
  pid=$(cat "$f" 2>/dev/null || true)
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

if [ "$cmd" = stop ]; then
  stop_pidfile "$dir/slurmd.pid" slurmd & stop_pidfile "$dir/slurmctld.pid" slurmctld &
  [ -f "$dir/munged.pid" ] && stop_pidfile "$dir/munged.pid" munged &
  wait
  exit 0
fi

ctld_port=${3:?slurmctld port}; slurmd_port=${4:?slurmd port}
[ "$(id -u)" = 0 ] || { echo "cluster.sh: the daemons run as root; this is uid $(id -u)" >&2; exit 3; }
for b in slurmctld slurmd munged sinfo; do
  command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || {
    echo "cluster.sh: $b is missing (apt-get install slurmctld slurmd slurm-client munge)" >&2; exit 3; }
done
mkdir -p "$dir"/{state,spool,log}
export SLURM_CONF=$dir/slurm.conf
cat > "$SLURM_CONF" <<CONF
ClusterName=diffnas-test
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=600
JobRequeue=1
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=1024 State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

if ! (munge -n | unmunge) >/dev/null 2>&1; then
  install -d -o munge -g munge -m 0755 /run/munge
  [ -s /etc/munge/munge.key ] || runuser -u munge -- /usr/sbin/mungekey --create --keyfile=/etc/munge/munge.key
  install -d -o munge -g munge -m 0700 "$dir/munge"
  runuser -u munge -- /usr/sbin/munged --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
  ln -sf "$dir/munge/munged.pid" "$dir/munged.pid"
  (munge -n | unmunge) >/dev/null
fi

# In a UTS namespace whose hostname is "localhost", the daemons bind to what that resolves to.
unshare --uts sh -c 'hostname localhost && exec /usr/sbin/slurmctld -i' 
unshare --uts sh -c 'hostname localhost && exec /usr/sbin/slurmd -N localhost'
for _ in $(seq 150); do
  state=$(timeout 5 sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
  case "$state" in idle|mixed|allocated) exit 0 ;; esac
  sleep 0.2
done
echo "cluster.sh: the node did not come up (state '${state:-}')" >&2
tail -n 20 "$dir"/log/*.log >&2 || true
exit 1
