#!/usr/bin/env bash
# Runs one libFuzzer target for a bounded time on a working copy of its seeds; a finding fails the test and is kept.
# Usage: run_fuzz.sh TARGET SECONDS SEEDS_DIR FINDINGS_DIR
set -euo pipefail
target=$1 seconds=$2 seeds=$3 findings=$4
[[ -d "$seeds" ]] || { echo "run_fuzz.sh: error: no seeds in $seeds (scripts/fuzz_corpus.py writes them)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$findings"
# ASan's leak check stays on; HDF5 keeps global state for the process's life, which LSan reports as no leak.
status=0
"$target" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$findings/" \
  "$work" "$seeds" >"$work.log" 2>&1 || status=$?
grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$work.log" || true
if ((status != 0)); then
  tail -n 60 "$work.log"
  echo "run_fuzz.sh: $(basename "$target") found an input that fails (kept in $findings); add it to tests/fuzz/regressions/$(basename "$target")/ with the fix" >&2
fi
rm -f "$work.log"
exit "$status"
