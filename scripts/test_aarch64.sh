#!/usr/bin/env bash
# Runs an aarch64 build's tests under qemu-aarch64 on three CPUs: NEON only (batches up to 32 rows), then SVE2 at 128 bits (as on
# Grace and Graviton4) and SVE at 512 bits (A64FX): the kernel and layer-gradient tests, with the SVE target's kernels compared
# against the reference at a capped batch, as qemu runs wide SVE up to a thousand times slower than the host runs AVX-512.
# The v3 training tests run 5 of their steps everywhere (VAE_TEST_MAX_STEPS). NEON leaves out the zero-allocation and
# bit-for-bit resume tests: they check the pool and the checkpoint, the same code on every instruction set, run by the
# native suites, and took 322 s of qemu's CPU; nor the v3 bf16 trainer against its reference (57 s: the emulated bf16
# products it runs are held bit for bit to the native ones by the kernel tests here) and the conv model's end-to-end
# gradient checks, with and without dropout and importance samples (36 s without the last, in double on the reference
# kernels, no NEON code). The SVE runs also leave out the trainer and the end-to-end gradient
# checks, which run the reference kernels in double: NEON runs them, and no SVE code is in them.
# --all adds SVE at 256 bits (Graviton3) and SVE2 at 512 bits, which CI leaves out for time.
# Usage: test_aarch64.sh BUILD_DIR [--all]
set -euo pipefail
build=${1:?usage: test_aarch64.sh BUILD_DIR [--all]}

# run CPU ISAS MAX_ROWS [ctest options]: ISAS empty for every instruction set, MAX_ROWS empty for the real batch.
run() {
  local cpu=$1 isas=$2 rows=$3
  shift 3
  echo "== qemu-aarch64 -cpu $cpu${isas:+, instruction sets $isas}${rows:+, at most $rows rows}"
  QEMU_CPU=$cpu VAE_TEST_ISAS=$isas VAE_TEST_MAX_ROWS=$rows VAE_TEST_MAX_STEPS=5 ctest --test-dir "$build" --output-on-failure --timeout 1200 -j2 "$@"
}
run neoverse-n1 "" 32 -E '^Training\.(.*AllocatesNothing|.*ResumeContinuesBitForBit|Bf16TrainsLike.*)$|(EndToEnd(WithDropout)?|ImportanceWeight[a-zA-Z]*)/conv'
run max,sve-max-vq=1 SVE2_128 8 -E '^Training\.|EndToEnd|ImportanceWeight'
run a64fx SVE 8 -E '^Training\.|EndToEnd|ImportanceWeight'
if [[ ${2:-} == --all ]]; then
  run max,sve-max-vq=2 SVE_256 8 -E '^Training\.|EndToEnd|ImportanceWeight'
  run max,sve-max-vq=4 SVE2 8 -E '^Training\.|EndToEnd|ImportanceWeight'
fi
