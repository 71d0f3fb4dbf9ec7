#!/usr/bin/env bash
# Runs vae_dist with mpirun on this machine: RANKS ranks (default 4), a sensible thread layout, any config and options passed through.
# Usage: launch/local.sh [CONFIG.ini] [vae_dist options...]     environment: RANKS, THREADS, VAE_DIST (the binary)
set -euo pipefail

# In a source tree the job runs from its root (data/mnist, runs/); an installed copy (PREFIX/share/vae_dist/launch) keeps
# the caller's directory, so relative --data-dir and --run-dir mean what the user typed.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
installed=0
[[ -f "$root/CMakeLists.txt" ]] || installed=1
ranks=${RANKS:-4}
cores=$(nproc)

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

((installed)) || cd "$root"
exec "${mpi[@]}" "$bin" --threads "$threads" "${args[@]}" "$@"
