# shellcheck shell=bash disable=SC2034,SC2154 # the caller defines and reads tmp, start, epochs, slurm_cmd, munged_started
# What the one-node (tests/slurm/run.sh) and two-node (tests/cluster/slurm.sh) Slurm tests share; sourced, not run.
# The caller defines fail, tmp, start, epochs and the array slurm_cmd (the prefix Slurm's commands run under: empty on
# the machine, the cluster's node 1 for the two-node test), and sets munged_started=0.

install_slurm() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "$1: installing slurm-wlm and munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  fi
}

# munged: reuse one that answers, otherwise start our own as the munge user (it refuses to run as root).
start_munge() {
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
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
}

# The slurm.conf lines both tests use; each adds its hosts, spool and log paths, nodes and partition.
common_slurm_conf() {
  cat <<END
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$tmp/state
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmctldLogFile=$tmp/slurmctld.log
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
END
}

field() { "${slurm_cmd[@]}" scontrol show job "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
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

# Whether run directory $1 holds a whole-epoch checkpoint. Not ckpt-e0001.h5 by name: on a fast host a run can write
# four in the half second between two looks, and it keeps only the newest three.
has_checkpoint() { compgen -G "$1/checkpoints/ckpt-e[0-9][0-9][0-9][0-9].h5" >/dev/null; }

# Job $1 (label $2) with run directory $3 and log $4: once its first checkpoint is on disk, USR1 to the batch shell only,
# as --signal=B:USR1@... sends it; the trap passes it to the launcher and so to the ranks, which checkpoint mid-epoch and
# exit 4; the script requeues the job, and the second run resumes and finishes all $epochs epochs.
expect_preempted_and_resumed() {
  local job=$1 label=$2 run=$3 log=$4 last
  for _ in $(seq 240); do
    has_checkpoint "$run" && break
    sleep 0.5
  done
  has_checkpoint "$run" || fail "$label job $job: no first checkpoint within 120 s"
  "${slurm_cmd[@]}" scancel --signal=USR1 --batch "$job"
  echo "slurm test: sent USR1 to the batch shell of job $job ($label) at $((SECONDS - start)) s"
  for _ in $(seq 120); do
    [[ "$(field "$job" Restarts)" -ge 1 ]] && break
    sleep 1
  done
  [[ "$(field "$job" Restarts)" -ge 1 ]] || fail "$label job $job was not requeued"
  # A requeued job waits out a begin time (two minutes here); release it once the first run's step daemons are gone:
  # the second run reuses their step ids, and an srun step's PMIx socket outlives the step by a second or two.
  for _ in $(seq 60); do
    pgrep -f "^slurmstepd: \[$job\." >/dev/null || break
    sleep 0.5
  done
  # Each slurmd revokes the first run's credential when it handles the terminate, and refuses a credential made in the
  # same second or earlier ("Job credential revoked", the job then fails): wait until no node is completing, so every
  # revocation is done, then let the clock pass into the next second before the job may start.
  for _ in $(seq 60); do
    "${slurm_cmd[@]}" sinfo -h -o %T 2>/dev/null | grep -q completing || break
    sleep 0.5
  done
  sleep 1.1
  "${slurm_cmd[@]}" scontrol update JobId="$job" StartTime=now 2>/dev/null || true
  # Right after the requeue the record may still show the first run's end: wait for the second run's last line.
  for _ in $(seq 400); do
    [[ $(grep -c "slurm.sbatch: vae_dist exited with" "$log") -ge 2 ]] && break
    sleep 1
  done
  wait_done "$job" 60
  [[ "$(field "$job" JobState) $(field "$job" ExitCode)" == "COMPLETED 0:0" ]] ||
    fail "$label job $job: $(field "$job" JobState) exit $(field "$job" ExitCode)"
  grep -q "stopped by a signal at step" "$log" || fail "$label job: the ranks did not stop on the signal"
  grep -q "vae_dist exited with 4" "$log" || fail "$label job: the first run did not exit 4"
  grep -q "resumed after epoch" "$log" || fail "$label job: the requeued run did not resume"
  last=$(tail -n 1 "$run/metrics.jsonl")
  [[ "$last" == "{\"epoch\":$epochs,"* ]] || fail "$label job: last metrics line is not epoch $epochs: $last"
  echo "slurm test: job $job ($label) checkpointed, exited 4, was requeued and finished all $epochs epochs at $((SECONDS - start)) s"
}
