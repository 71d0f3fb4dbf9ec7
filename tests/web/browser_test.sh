#!/usr/bin/env bash
# The browser test end to end: trains a v3 model briefly with the native build (the real decoder's shapes, so the timing
# is the real one), exports it with reference rows, and checks the page in headless Chromium against them
# (browser_test.mjs). Usage: browser_test.sh NATIVE_BUILD SITE_DIR OUT_DIR
set -euo pipefail
native=$1 site=$2 out=$3
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
"$native/vae_dist" --progress never --config "$src/configs/v3.ini" --epochs 2 --fast.until 1 --balanced.until 2 --train-limit 8192 \
  --test-limit 512 --data-dir "$src/data/mnist" --run-dir "$work/run" >/dev/null
checkpoint=$(find "$work/run" -name 'ckpt-e*.h5' | sort | tail -1)
"$native/vae_export" --checkpoint "$checkpoint" --out "$out/model.vaed" --reference "$out/reference.json" --reference-count 100
node "$src/tests/web/browser_test.mjs" --site "$site" --model "$out/model.vaed" --reference "$out/reference.json" \
  --screenshot "$out/page.png" --result "$out/result.json"
echo "browser_test: screenshot in $out/page.png"
