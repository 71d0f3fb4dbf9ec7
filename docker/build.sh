#!/usr/bin/env bash
# Builds the vae_dist image with buildah and no registry: debian:bookworm made here by debootstrap, then docker/Dockerfile, then --help and a smoke run inside it.
# Usage: bash docker/build.sh     (as root; installs buildah and debootstrap if missing)
#   environment: IMAGE (default vae_dist:latest), MIRROR (default: this machine's Debian mirror), REBASE=1 rebuilds the base
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
image=${IMAGE:-vae_dist:latest}
[[ $(id -u) -eq 0 ]] || { echo "build.sh: error: run as root (buildah and debootstrap need it)" >&2; exit 2; }
[[ -f data/mnist/train-images-idx3-ubyte ]] || { echo "build.sh: error: data/mnist is missing; run bash scripts/setup.sh" >&2; exit 2; }
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah debootstrap >/dev/null
fi

# The mirror apt uses here (deb822 or one-line sources), so the base comes from where this machine may reach.
mirror=${MIRROR:-$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's|^URIs: *\(http[^ ]*/debian\)/*$|\1|p' | head -n 1)}
[[ -n "$mirror" ]] || mirror=$(sed -n 's|^deb  *\(http[^ ]*/debian\)/* .*bookworm.*|\1|p' /etc/apt/sources.list 2>/dev/null | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}

tmp=$(mktemp -d /var/tmp/vae-docker.XXXXXX)
containers=()
cleanup() {
  local c
  for c in "${containers[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

start=$SECONDS
if [[ "${REBASE:-0}" == 1 ]] || ! buildah inspect --type image docker.io/library/debian:bookworm >/dev/null 2>&1; then
  echo "build.sh: debootstrap bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$tmp/rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
    { tail -n 20 "$tmp/debootstrap.log"; exit 1; }
  rm -rf "$tmp"/rootfs/var/cache/apt/archives/*.deb "$tmp"/rootfs/var/lib/apt/lists/*
  tar -C "$tmp/rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf "$tmp/rootfs.tar" .
  ctr=$(buildah from scratch)
  containers+=("$ctr")
  buildah add "$ctr" "$tmp/rootfs.tar" / >/dev/null
  buildah config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  # The name a Dockerfile's FROM debian:bookworm resolves to, so the build never asks a registry.
  buildah commit --quiet "$ctr" docker.io/library/debian:bookworm >/dev/null
  rm -rf "$tmp/rootfs" "$tmp/rootfs.tar"
  echo "build.sh: base image debian:bookworm made in $((SECONDS - start)) s"
fi

build_start=$SECONDS
buildah bud --isolation=chroot --pull=never --layers -f docker/Dockerfile -t "$image" .
build_seconds=$((SECONDS - build_start))
echo "build.sh: $image built in $build_seconds s"

ctr=$(buildah from --pull=never "$image")
containers+=("$ctr")
[[ "$(buildah run --isolation=chroot "$ctr" -- id -un)" == vae ]] || { echo "build.sh: error: the image does not run as vae" >&2; exit 1; }
buildah run --isolation=chroot "$ctr" -- vae_dist --help >"$tmp/help.txt"
head -n 1 "$tmp/help.txt"
buildah run --isolation=chroot --env RANKS=2 "$ctr" -- /opt/vae_dist/share/vae_dist/launch/local.sh configs/smoke.ini \
  --run-dir runs/smoke --progress never
buildah run --isolation=chroot "$ctr" -- test -s runs/smoke/checkpoints/ckpt-e0003.h5
if buildah run --isolation=chroot "$ctr" -- test -x /opt/vae_dist/bin/vae_eval; then
  buildah run --isolation=chroot "$ctr" -- vae_eval --checkpoint runs/smoke/checkpoints/ckpt-e0003.h5 >"$tmp/eval.txt"
  grep -i "elbo" "$tmp/eval.txt" | head -n 2
fi
echo "build.sh: the image trains as user vae; total $((SECONDS - start)) s (image build $build_seconds s)"
