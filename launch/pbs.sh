#!/usr/bin/env bash
# PBS job script for vae_dist (PBS Pro, OpenPBS, Torque): ranks x threads from the select line, a checkpoint before the walltime ends, rerun, resume.
# Usage: qsub [-v "CONFIG=configs/v3.ini,VAE_ARGS=--epochs 20"] launch/pbs.sh     Torque: qsub -F "configs/v3.ini --epochs 20" launch/pbs.sh
#   environment: CONFIG, VAE_ARGS (vae_dist options, split at spaces), VAE_DIST (the binary), RUN_DIR (default:
#                runs/<job name>-<job id> in the submit directory), STOP_BEFORE (seconds before the walltime at which the
#                ranks checkpoint and stop, default 300), REQUEUE (auto: qrerun, else qsub a copy; qrerun; qsub; none),
#                LAUNCHER_ARGS (more mpirun options, e.g. --report-bindings)
# select=N chunks (nodes) of ncpus cores, mpiprocs ranks and ompthreads threads per rank: ncpus = mpiprocs x ompthreads.
# One rank per socket with a thread per core is the layout to start from (docs/cluster.md): here 2 x 16-core sockets.
#PBS -N vae_dist
#PBS -l select=2:ncpus=32:mpiprocs=2:ompthreads=16
#PBS -l place=scatter:excl
#PBS -l walltime=04:00:00
#PBS -r y
#PBS -j oe
set -euo pipefail

script=$(realpath "${BASH_SOURCE[0]}")
cd "${PBS_O_WORKDIR:-.}"

bin=${VAE_DIST:-}
if [[ -z "$bin" ]]; then
  for candidate in build/release/vae_dist "$(command -v vae_dist || true)"; do
    if [[ -n "$candidate" && -x "$candidate" ]]; then bin=$candidate; break; fi
  done
fi
if [[ -z "$bin" ]]; then
  echo "pbs.sh: error: vae_dist not found; set VAE_DIST or put it on PATH" >&2
  exit 2
fi
if [[ -z "${PBS_NODEFILE:-}" || ! -s "$PBS_NODEFILE" ]]; then
  echo "pbs.sh: error: PBS_NODEFILE is not set or empty; submit this script with qsub" >&2
  exit 2
fi

# vae_dist options: CONFIG, then VAE_ARGS, then this script's own arguments (Torque's qsub -F).
user_args=()
[[ -n "${CONFIG:-}" ]] && user_args+=(--config "$CONFIG")
read -r -a words <<<"${VAE_ARGS:-}"
user_args+=("${words[@]}")
if [[ $# -gt 0 && "$1" == *.ini ]]; then
  user_args+=(--config "$1")
  shift
fi
user_args+=("$@")

# Prints the value of option $1 among the other arguments; fails if it is not there.
option_value() {
  local option=$1 previous="" a
  shift
  for a in "$@"; do
    [[ "$previous" == "$option" ]] && { echo "$a"; return 0; }
    [[ "$a" == "$option="* ]] && { echo "${a#*=}"; return 0; }
    previous=$a
  done
  return 1
}
args=()
resubmit_dir=
if ! run_dir=$(option_value --run-dir "${user_args[@]}"); then
  # qrerun keeps the job id, so the same run directory; a resubmitted copy is handed it in RUN_DIR.
  run_dir=${RUN_DIR:-runs/${PBS_JOBNAME:-vae_dist}-${PBS_JOBID:-0}}
  resubmit_dir=$run_dir
  args+=(--run-dir "$run_dir")
fi
option_value --resume "${user_args[@]}" >/dev/null || args+=(--resume auto)

ranks=$(wc -l <"$PBS_NODEFILE")
nodes=$(sort -u "$PBS_NODEFILE" | wc -l)
per_node=$(( ranks / nodes ))
threads=${OMP_NUM_THREADS:-${NCPUS:-1}}
# Parallel file systems (NFS, Lustre) often lack the POSIX locks HDF5 takes by default, and its open then fails.
export HDF5_USE_FILE_LOCKING=FALSE

# A lost node or link: each rank's watchdog names what it waits on after COMM_TIMEOUT seconds without progress, and ends
# itself (exit 5) at twice that. The daemons' TCP keepalive finds a lost node in between, from COMM_TIMEOUT + 2 to
# 1.5 x COMM_TIMEOUT + 2 seconds (Open MPI's default: 8 minutes), and mpirun ends the job with status 205; an abort
# started by a rank's exit before that would wait for the lost daemon forever. Both are requeued, at most
# MAX_COMM_REQUEUES times.
comm_timeout=$(option_value --comm-timeout "${user_args[@]}") || { comm_timeout=${COMM_TIMEOUT:-30}; args+=(--comm-timeout "$comm_timeout"); }
comm_timeout=${comm_timeout%.*}
(( comm_timeout > 0 )) || comm_timeout=600  # the watchdog off: the daemons still give up, after 10 minutes
lost_node=(--mca oob_tcp_keepalive_time $(( (comm_timeout + 1) / 2 ))
           --mca oob_tcp_keepalive_intvl 2 --mca oob_tcp_keepalive_probes $(( comm_timeout / 2 + 1 )))

launch=(mpirun -n "$ranks" --hostfile "$PBS_NODEFILE" --map-by "ppr:$per_node:node:PE=$threads" --bind-to core "${lost_node[@]}"
        -x HDF5_USE_FILE_LOCKING -x PATH -x LD_LIBRARY_PATH)
[[ $(id -u) -eq 0 ]] && launch+=(--allow-run-as-root)
read -r -a extra <<<"${LAUNCHER_ARGS:-}"
launch+=("${extra[@]}")

echo "pbs.sh: job ${PBS_JOBID:-?} on $(sort -u "$PBS_NODEFILE" | paste -sd, -): $nodes node(s) x $per_node rank(s) x $threads thread(s)"
echo "pbs.sh: ${launch[*]} $bin --threads $threads ${args[*]} ${user_args[*]}"

"${launch[@]}" "$bin" --threads "$threads" "${args[@]}" "${user_args[@]}" &
pid=$!
# PBS gives no warning before the walltime: a timer sends this shell USR1 STOP_BEFORE seconds ahead of it. A TERM (qdel,
# preemption) is passed on the same way, though PBS may signal the ranks directly and kill them before they finish.
timer=
walltime=$(qstat -f "${PBS_JOBID:-none}" 2>/dev/null | sed -n 's/^ *Resource_List.walltime = //p' | head -n 1 || true)
if [[ "$walltime" =~ ^([0-9]+):([0-9]+):([0-9]+)$ ]]; then
  seconds=$(( 10#${BASH_REMATCH[1]} * 3600 + 10#${BASH_REMATCH[2]} * 60 + 10#${BASH_REMATCH[3]} - ${STOP_BEFORE:-300} ))
  if (( seconds > 0 )); then
    { sleep "$seconds" && kill -USR1 $$; } &
    timer=$!
  fi
fi
stopped_at=
trap 'stopped_at=${stopped_at:-$(date +%s)}; echo "pbs.sh: stop signal, asking the ranks to checkpoint"; kill -USR1 "$pid" 2>/dev/null || true' USR1 TERM
status=0
wait "$pid" || status=$?
# A trapped signal interrupts wait before mpirun has finished: wait again for its own exit status.
while kill -0 "$pid" 2>/dev/null; do
  status=0
  wait "$pid" || status=$?
done
if [[ -n "$timer" ]]; then
  pkill -P "$timer" 2>/dev/null || true
  kill "$timer" 2>/dev/null || true
fi
echo "pbs.sh: vae_dist exited with $status"
# A TERM to every process of the job (a limit reached without warning, a cancel) has the ranks checkpoint and exit 4,
# but mpirun then exits 1: a mid-epoch checkpoint written since the signal means the same as exit 4.
if [[ -n "$stopped_at" && $status -ne 0 && $status -ne 4 ]] &&
   [[ -n "$(find "$run_dir/checkpoints" -name 'ckpt-e*-s*.h5' -newermt "@$stopped_at" 2>/dev/null)" ]]; then
  echo "pbs.sh: the ranks checkpointed after the stop signal: treated as exit 4"
  status=4
fi

if [[ ($status -eq 5 || $status -eq 205) && -n "${PBS_JOBID:-}" ]]; then
  restarts=${PBS_RUN_COUNT:-0}
  if (( restarts < ${MAX_COMM_REQUEUES:-3} )); then
    echo "pbs.sh: a node or link was lost (exit $status): requeueing from the last checkpoint"
    status=4
  fi
fi
if [[ $status -eq 4 && -n "${PBS_JOBID:-}" ]]; then
  mode=${REQUEUE:-auto}
  if [[ $mode == auto || $mode == qrerun ]] && qrerun "$PBS_JOBID"; then
    echo "pbs.sh: job $PBS_JOBID rerun; it continues with --resume auto"
  elif [[ $mode == auto || $mode == qsub ]]; then
    # qrerun is often for operators only: submit a copy of this script, with the same options and run directory.
    copy=$(realpath "$run_dir")/pbs-resubmit.sh
    cp "$script" "$copy"
    RUN_DIR=$resubmit_dir CONFIG='' VAE_ARGS="${user_args[*]}" VAE_DIST=$bin qsub -V "$copy"
    echo "pbs.sh: resubmitted $copy; it continues with --resume auto"
  fi
fi
exit "$status"
