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

epochs=50
export PATH=$tmp/bin:$PATH PBS_NODEFILE=$tmp/nodefile PBS_O_WORKDIR=$tmp/work PBS_JOBNAME=vae_dist OMP_NUM_THREADS=1
# 12 s of walltime less STOP_BEFORE 10: the ranks are told to stop 2 s into a run that takes longer than that.
status=0
PBS_JOBID=1.emulated WALLTIME=00:00:12 STOP_BEFORE=10 VAE_DIST=$bin \
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
