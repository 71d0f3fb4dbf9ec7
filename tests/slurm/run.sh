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

# shellcheck source=tests/slurm/common.sh
source "$root/tests/slurm/common.sh"
slurm_cmd=()
install_slurm "slurm test"

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

start_munge

host=$(hostname -s)
memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$tmp/state" "$tmp/spool" "$tmp/work"
export SLURM_CONF=$tmp/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=vaetest
SlurmctldHost=$host(127.0.0.1)
SlurmdSpoolDir=$tmp/spool
SlurmdPidFile=$tmp/slurmd.pid
SlurmdLogFile=$tmp/slurmd.log
$(common_slurm_conf)
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
# Enough that a run is still training when its USR1 arrives (the checkpoint poll is 0.5 s; 30 epochs took 1.6 s on a fast host).
epochs=100
preempt() {
  local job
  job=$(LAUNCHER=$1 submit --job-name="preempt-$1" "$root/launch/slurm.sbatch" "$root/configs/smoke.ini" "${common[@]}" \
        --epochs "$epochs" --train-limit 12000)
  expect_preempted_and_resumed "$job" "$1" "$tmp/work/runs/preempt-$1-$job" "$tmp/work/vae_dist-$job.out"
  passed=$((passed + 1))
}
preempt mpirun
preempt srun
