#!/usr/bin/env bash
# Test of launch/pbs.sh without a PBS server: stand-in qstat, qrerun and qsub, a node file; the walltime timer stops the job, it exits 4, is resubmitted and resumes.
# Usage: bash tests/slurm/pbs_emulated.sh     environment: VAE_DIST (the binary, default build/release/vae_dist)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=$(realpath "${VAE_DIST:-$root/build/release/vae_dist}")
[[ -x "$bin" ]] || { echo "pbs test: error: $bin not found; build it or set VAE_DIST" >&2; exit 2; }
tmp=$(mktemp -d /tmp/vae-pbs.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "pbs test: FAIL: $*" >&2; exit 1; }

mkdir -p "$tmp/bin" "$tmp/work"
# qstat reports the walltime in $WALLTIME; qrerun is refused, as it is to users on most sites; qsub records what it was given.
cat >"$tmp/bin/qstat" <<'EOF'
#!/usr/bin/env bash
echo "Job Id: $2"
echo "    Resource_List.walltime = $WALLTIME"
EOF
cat >"$tmp/bin/qrerun" <<'EOF'
#!/usr/bin/env bash
echo "qrerun: Unauthorized Request  $1" >&2
exit 159
EOF
cat >"$tmp/bin/qsub" <<EOF
#!/usr/bin/env bash
printf 'RUN_DIR=%q\nVAE_ARGS=%q\nVAE_DIST=%q\nCONFIG=%q\nscript=%q\nflags=%q\n' "\$RUN_DIR" "\$VAE_ARGS" "\$VAE_DIST" "\$CONFIG" "\${@: -1}" "\$1" >"$tmp/qsub.env"
echo 2.emulated
EOF
chmod +x "$tmp/bin/"*
printf 'localhost\nlocalhost\n' >"$tmp/nodefile"

# Enough epochs that the first job is still training when its timer fires: 50 took 2.3 s on a fast host, under the 2 s
# the timer waits (plus rounding), and the job ended before the signal.
epochs=200
export PATH=$tmp/bin:$PATH PBS_NODEFILE=$tmp/nodefile PBS_O_WORKDIR=$tmp/work PBS_JOBNAME=vae_dist OMP_NUM_THREADS=1
# The ranks are told to stop 2 s after they have started training, in a run that takes longer than that: the start-up
# (MPI, the data) is timed first, since a sanitizer build takes several times as long as a release build.
start=$(date +%s%N)
"$bin" --data-dir "$root/data/mnist" --progress never --config "$root/configs/smoke.ini" --run-dir "$tmp/probe" --max-steps 1 \
  >/dev/null 2>&1 || fail "vae_dist does not start"
startup=$(( ($(date +%s%N) - start + 999999999) / 1000000000 ))
status=0
PBS_JOBID=1.emulated WALLTIME=00:01:00 STOP_BEFORE=$(( 60 - startup - 2 )) VAE_DIST=$bin \
  VAE_ARGS="--data-dir $root/data/mnist --progress never --epochs $epochs" \
  bash "$root/launch/pbs.sh" "$root/configs/smoke.ini" >"$tmp/first.log" 2>&1 || status=$?
[[ $status -eq 4 ]] || { cat "$tmp/first.log"; fail "first job exited $status, expected 4"; }
grep -q "stopped by a signal at step" "$tmp/first.log" || fail "the ranks did not stop on the timer's signal"
[[ -f "$tmp/qsub.env" ]] || fail "the job was not resubmitted"
flags="" script=""
# shellcheck source=/dev/null
source "$tmp/qsub.env"
[[ "$flags" == -V && "$RUN_DIR" == runs/vae_dist-1.emulated && -f "$script" ]] || fail "resubmitted as: $(cat "$tmp/qsub.env")"
[[ "$VAE_ARGS" == *"--config $root/configs/smoke.ini"* ]] || fail "the resubmission lost the config: $VAE_ARGS"
echo "pbs test: first job stopped by the walltime timer, exited 4 and resubmitted $script"

status=0
PBS_JOBID=2.emulated WALLTIME=01:00:00 RUN_DIR=$RUN_DIR VAE_ARGS=$VAE_ARGS VAE_DIST=$VAE_DIST CONFIG=$CONFIG \
  bash "$script" >"$tmp/second.log" 2>&1 || status=$?
[[ $status -eq 0 ]] || { cat "$tmp/second.log"; fail "resubmitted job exited $status"; }
grep -q "resumed after epoch" "$tmp/second.log" || fail "the resubmitted job did not resume"
last=$(tail -n 1 "$tmp/work/$RUN_DIR/metrics.jsonl")
[[ "$last" == "{\"epoch\":$epochs,"* ]] || fail "last metrics line is not epoch $epochs: $last"
echo "pbs test: resubmitted job resumed and finished all $epochs epochs"

# A TERM to every process of the job, as qdel or a limit without warning sends it: mpirun exits 1, but the ranks wrote
# their checkpoint, and the script reports 4.
status=0
PBS_JOBID=3.emulated WALLTIME=01:00:00 REQUEUE=none VAE_DIST=$bin VAE_ARGS="--data-dir $root/data/mnist --progress never" \
  setsid bash "$root/launch/pbs.sh" "$root/configs/smoke.ini" --epochs "$epochs" >"$tmp/third.log" 2>&1 &
job=$!
for _ in $(seq 600); do
  # any whole-epoch checkpoint: the run keeps only the newest three, and a fast host writes several between two looks
  compgen -G "$tmp/work/runs/vae_dist-3.emulated/checkpoints/ckpt-e[0-9][0-9][0-9][0-9].h5" >/dev/null && break
  sleep 0.1
done
kill -TERM -- "-$job"
wait "$job" || status=$?
[[ $status -eq 4 ]] || { cat "$tmp/third.log"; fail "job sent TERM exited $status, expected 4"; }
grep -q "treated as exit 4" "$tmp/third.log" || fail "exit 4 came from mpirun itself; the TERM path was not exercised"
echo "pbs test: TERM to the whole job: checkpoint written, exit 4"
