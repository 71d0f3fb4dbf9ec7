#!/usr/bin/env bash
# Installs a build to a temporary prefix and runs the installed vae_dist and launch/local.sh from outside the source tree.
# Usage: bash tests/install_check.sh BUILD_DIR DATA_DIR
set -euo pipefail

build=$(realpath "$1")
data=$(realpath "$2")
tmp=$(mktemp -d /tmp/vae-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "install check: FAIL: $*" >&2; exit 1; }

prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" >"$tmp/install.log"
for f in bin/vae_dist bin/vae_sample bin/vae_average share/vae_dist/configs/smoke.ini share/vae_dist/launch/local.sh \
         share/vae_dist/launch/slurm.sbatch share/vae_dist/launch/pbs.sh; do
  [[ -e "$prefix/$f" ]] || fail "$f was not installed"
done
if [[ -x "$build/vae_eval" ]]; then
  [[ -x "$prefix/bin/vae_eval" && -f "$prefix/share/vae_dist/configs/mnist_classifier.h5" ]] ||
    fail "vae_eval or its classifier was not installed"
fi
# Neither a run path nor a library may point back into the build tree.
if readelf -d "$prefix/bin/vae_dist" | grep -E 'RPATH|RUNPATH' | grep -qF "$build"; then fail "vae_dist keeps a run path into $build"; fi
if ldd "$prefix/bin/vae_dist" | grep -qF "$build"; then fail "vae_dist loads a library from $build"; fi

cd /
"$prefix/bin/vae_dist" --version | grep -q "^vae_dist " || fail "--version"

# The installed launcher keeps the caller's directory: the relative run directory lands here, and configs/smoke.ini is
# found in share/vae_dist when this directory has none.
mkdir "$tmp/work"
cd "$tmp/work"
RANKS=2 "$prefix/share/vae_dist/launch/local.sh" configs/smoke.ini --data-dir "$data" --run-dir run --epochs 1 \
  --progress never >"$tmp/run.log" 2>&1 || { cat "$tmp/run.log"; fail "installed local.sh run failed"; }
grep -q "2 ranks" "$tmp/run.log" || fail "no 2-rank header: $(cat "$tmp/run.log")"
[[ -s "$tmp/work/run/metrics.jsonl" && -f "$tmp/work/run/checkpoints/ckpt-e0001.h5" ]] ||
  fail "no metrics or checkpoint in the caller's directory"
echo "install check: installed vae_dist and local.sh ran from $tmp/work"
