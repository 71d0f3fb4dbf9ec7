#!/usr/bin/env bash
# Runs vae_dist with mpirun on this machine: RANKS ranks (default one per core, up to 4), a sensible thread layout, any config and options passed through.
# Usage: launch/local.sh [CONFIG.ini] [vae_dist options...]     environment: RANKS, THREADS, VAE_DIST (the binary)
set -euo pipefail

# In a source tree the job runs from its root (data/mnist, runs/); an installed copy (PREFIX/share/vae_dist/launch) keeps
# the caller's directory, so relative --data-dir and --run-dir mean what the user typed.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
installed=0
[[ -f "$root/CMakeLists.txt" ]] || installed=1
cores=$(nproc)
# One rank per core, up to 4, unless told.
ranks=${RANKS:-$(( cores < 4 ? cores : 4 ))}

bin=${VAE_DIST:-}
if [[ -z "$bin" ]]; then
  candidates=("$root/build/release/vae_dist" "$root/build/native/vae_dist" "$root/build/ci/vae_dist")
  ((installed)) && candidates=("$root/../../bin/vae_dist")
  for candidate in "${candidates[@]}" "$(command -v vae_dist || true)"; do
    if [[ -n "$candidate" && -x "$candidate" ]]; then bin=$candidate; break; fi
  done
fi
if [[ -z "$bin" ]]; then
  echo "local.sh: error: vae_dist not found; build it with: cmake --preset release && cmake --build --preset release" >&2
  exit 2
fi
[[ "$bin" != */* ]] || bin=$(realpath "$bin")

args=()
if [[ $# -gt 0 && "$1" == *.ini ]]; then
  config=$1
  # configs/NAME.ini also names the shipped config when the caller's directory has none.
  [[ -f "$config" || ! -f "$root/$config" ]] || config=$root/$config
  [[ -f "$config" ]] && config=$(realpath "$config")
  args+=(--config "$config")
  shift
fi

# Threads per rank: the cores divided among the ranks, at least one.
threads=${THREADS:-$(( cores / ranks > 0 ? cores / ranks : 1 ))}

mpi=(mpirun -n "$ranks")
[[ $(id -u) -eq 0 ]] && mpi+=(--allow-run-as-root)
if (( ranks * threads > cores )); then
  # More ranks than cores: let the kernel schedule them rather than pile them onto bound cores.
  mpi+=(--oversubscribe --bind-to none)
else
  mpi+=(--map-by "slot:PE=$threads" --bind-to core)
fi

# The live progress line when this script's output is a terminal: under mpirun the ranks cannot tell (mpirun gives them
# a pseudo-terminal either way). An explicit --progress wins.
[[ -t 1 && " $* " != *" --progress"* ]] && args+=(--progress always)

((installed)) || cd "$root"
# After any non-zero exit Open MPI adds two banners ("Primary job terminated normally, but ..." and "mpirun detected that
# one or more processes exited with non-zero status ..."); vae_dist's own line has said what went wrong, so exactly
# those two are dropped. Everything else mpirun says (a crash, MPI_Abort, a missing executable) passes through.
drop_exit_banners() {
  awk '
    function flush_block() { if (block !~ /Primary job +terminated normally|exited with non-zero status/) printf "%s", block; block = "" }
    /^-----+$/ { block = block $0 "\n"; if (open) { flush_block(); open = 0 } else open = 1; fflush(); next }
    open { block = block $0 "\n"; next }
    { print; fflush() }
    END { if (open) printf "%s", block }'
}
"${mpi[@]}" "$bin" --threads "$threads" "${args[@]}" "$@" 2> >(drop_exit_banners >&2) &
pid=$!
# mpirun runs in the background so that a stop signal sent to this script reaches the ranks (which checkpoint, exit 4).
trap 'kill -TERM "$pid" 2>/dev/null || true' TERM
trap 'kill -USR1 "$pid" 2>/dev/null || true' USR1
trap 'kill -USR2 "$pid" 2>/dev/null || true' USR2
status=0
wait "$pid" || status=$?
while kill -0 "$pid" 2>/dev/null; do
  status=0
  wait "$pid" || status=$?
done
wait  # for the filter to pass on the last of mpirun's output
exit "$status"
