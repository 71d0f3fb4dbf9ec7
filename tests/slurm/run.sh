#!/usr/bin/env bash
# End-to-end test of launch/slurm.sbatch on a one-node Slurm brought up here: a smoke job, then a preempted job that is requeued and resumes.
# Usage: bash tests/slurm/run.sh     (as root; installs slurm-wlm and munge if missing)
#   environment: VAE_DIST (the binary, default build/release/vae_dist), KEEP=1 keeps the temporary directory
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=$(realpath "${VAE_DIST:-$root/build/release/vae_dist}")
data=$root/data/mnist
[[ $(id -u) -eq 0 ]] || { echo "slurm test: error: must run as root (it starts munged, slurmctld and slurmd)" >&2; exit 2; }
[[ -x "$bin" ]] || { echo "slurm test: error: $bin not found; build it or set VAE_DIST" >&2; exit 2; }
[[ -f "$data/train-images-idx3-ubyte" ]] || { echo "slurm test: error: no MNIST in $data; run scripts/setup.sh" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "slurm test: installing slurm-wlm and munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

start=$SECONDS
tmp=$(mktemp -d /tmp/vae-slurm.XXXXXX)
chmod 755 "$tmp"
pids=()
passed=0
jobs_submitted=()
munged_started=0
cleanup() {
  local status=$? j p
  set +e
  for j in "${jobs_submitted[@]}"; do scancel "$j" 2>/dev/null; done
  # A job still ending keeps slurmstepd and its ranks alive; give them the time Slurm's KillWait would.
  for _ in $(seq 30); do
    [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break
    sleep 1
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  if ((munged_started)); then kill "$(cat /run/munge/munged.pid)" 2>/dev/null; fi
  if ((status)); then
    for f in "$tmp"/*.log "$tmp"/work/*.out; do [[ -f "$f" ]] && { echo "--- $f (last 30 lines)"; tail -n 30 "$f"; }; done
  fi
  if [[ "${KEEP:-0}" == 1 ]]; then echo "slurm test: kept $tmp"; else rm -rf "$tmp"; fi
  echo "slurm test: $( ((status)) && echo FAILED || echo passed) in $((SECONDS - start)) s"
  echo "slurm: $passed passed, $(( status ? 1 : 0 )) failed"
}
trap cleanup EXIT

fail() { echo "slurm test: FAIL: $*" >&2; exit 1; }

# munged: reuse one that answers, otherwise start our own as the munge user (it refuses to run as root).
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge /etc/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  runuser -u munge -- munged
  munged_started=1
  munge -n | unmunge >/dev/null || fail "munged does not answer"
fi

host=$(hostname -s)
memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$tmp/state" "$tmp/spool" "$tmp/work"
export SLURM_CONF=$tmp/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=vaetest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=2 RealMemory=$memory State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -D -i -f "$SLURM_CONF" >"$tmp/slurmctld.out.log" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >"$tmp/slurmd.out.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do
  [[ "$(sinfo -h -o %T 2>/dev/null)" == idle ]] && break
  sleep 1
done
[[ "$(sinfo -h -o %T)" == idle ]] || fail "the node did not become idle: $(sinfo 2>&1)"
echo "slurm test: one-node Slurm up on $host after $((SECONDS - start)) s"

field() { scontrol show job "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
# Waits until job $1 has ended (MinJobAge keeps its record); fails after $2 seconds.
wait_done() {
  local state
  for _ in $(seq "$2"); do
    state=$(field "$1" JobState)
    case $state in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE) return 0 ;; esac
    sleep 1
  done
  fail "job $1 still $state after $2 s"
}
submit() {
  local id
  id=$(cd "$tmp/work" && VAE_DIST=$bin sbatch --parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 "$@")
  jobs_submitted+=("$id")
  echo "$id"
}
common=(--data-dir "$data" --progress never)

# 1. A smoke job runs to the end: exit 0, three epoch lines, a readable final checkpoint.
job=$(submit --job-name=smoke "$root/launch/slurm.sbatch" "$root/configs/smoke.ini" "${common[@]}")
wait_done "$job" 120
log=$tmp/work/vae_dist-$job.out
run=$tmp/work/runs/smoke-$job
[[ "$(field "$job" JobState) $(field "$job" ExitCode)" == "COMPLETED 0:0" ]] ||
  fail "smoke job $job: $(field "$job" JobState) exit $(field "$job" ExitCode)"
grep -q "2 ranks x 1 thread" "$log" || fail "smoke job: no 2-rank header in the log"
grep -q "epoch   3/3" "$log" || fail "smoke job: no third epoch in the log"
grep -q "vae_dist exited with 0" "$log" || fail "smoke job: no exit status in the log"
[[ $(wc -l <"$run/metrics.jsonl") -eq 3 ]] || fail "smoke job: metrics.jsonl has not 3 lines"
if command -v h5ls >/dev/null; then
  h5ls "$run/checkpoints/ckpt-e0003.h5" | grep -q "^model" || fail "smoke job: ckpt-e0003.h5 has no model group"
else
  [[ -s "$run/checkpoints/ckpt-e0003.h5" ]] || fail "smoke job: no ckpt-e0003.h5"
fi
passed=$((passed + 1))
echo "slurm test: smoke job $job completed (exit 0, 3 epochs, checkpoint readable) at $((SECONDS - start)) s"

# 2. Preemption, with the ranks started by mpirun and then by srun (Slurm's PMIx): USR1 to the batch shell only, as
# --signal=B:USR1@... sends it; the trap passes it to the launcher and so to the ranks, which checkpoint mid-epoch and
# exit 4; the script requeues the job, and the second run resumes and finishes.
epochs=30
preempt() {
  local job run log last
  job=$(LAUNCHER=$1 submit --job-name="preempt-$1" "$root/launch/slurm.sbatch" "$root/configs/smoke.ini" "${common[@]}" \
        --epochs "$epochs" --train-limit 12000)
  run=$tmp/work/runs/preempt-$1-$job
  log=$tmp/work/vae_dist-$job.out
  for _ in $(seq 120); do
    [[ -f "$run/checkpoints/ckpt-e0001.h5" ]] && break
    sleep 0.5
  done
  [[ -f "$run/checkpoints/ckpt-e0001.h5" ]] || fail "$1 job $job: no first checkpoint within 60 s"
  scancel --signal=USR1 --batch "$job"
  echo "slurm test: sent USR1 to the batch shell of job $job ($1) at $((SECONDS - start)) s"
  for _ in $(seq 120); do
    [[ "$(field "$job" Restarts)" -ge 1 ]] && break
    sleep 1
  done
  [[ "$(field "$job" Restarts)" -ge 1 ]] || fail "$1 job $job was not requeued"
  # A requeued job waits out a begin time (two minutes here); release it once the first run's step daemons are gone:
  # the second run reuses their step ids, and an srun step's PMIx socket outlives the step by a second or two.
  for _ in $(seq 60); do
    pgrep -f "^slurmstepd: \[$job\." >/dev/null || break
    sleep 0.5
  done
  scontrol update JobId="$job" StartTime=now 2>/dev/null || true
  wait_done "$job" 400
  [[ "$(field "$job" JobState) $(field "$job" ExitCode)" == "COMPLETED 0:0" ]] ||
    fail "$1 job $job: $(field "$job" JobState) exit $(field "$job" ExitCode)"
  grep -q "stopped by a signal at step" "$log" || fail "$1 job: the ranks did not stop on the signal"
  grep -q "vae_dist exited with 4" "$log" || fail "$1 job: the first run did not exit 4"
  grep -q "resumed after epoch" "$log" || fail "$1 job: the requeued run did not resume"
  last=$(tail -n 1 "$run/metrics.jsonl")
  [[ "$last" == "{\"epoch\":$epochs,"* ]] || fail "$1 job: last metrics line is not epoch $epochs: $last"
  passed=$((passed + 1))
  echo "slurm test: job $job ($1) checkpointed, exited 4, was requeued and finished all $epochs epochs at $((SECONDS - start)) s"
}
preempt mpirun
preempt srun
