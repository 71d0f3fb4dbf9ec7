#!/usr/bin/env bash
# Runs one libFuzzer target for a bounded time on a working copy of its seeds; a finding fails the test and is kept.
# Usage: run_fuzz.sh TARGET SECONDS SEEDS_DIR FINDINGS_DIR
set -euo pipefail
target=$1 seconds=$2 seeds=$3 findings=$4
[[ -d "$seeds" ]] || { echo "run_fuzz.sh: error: no seeds in $seeds (scripts/fuzz_corpus.py writes them)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$findings"
# Leaks inside libhdf5 (its error paths on corrupt files) are its own: lsan.supp. A child that check_in_child forks may
# be ended by a libhdf5 crash, which the tools report as a bad file; a sanitizer report that names our code fails the run.
# A request for more memory than there is fails as it would outside ASan (libhdf5 asks for sizes read from the file).
export ASAN_OPTIONS="allocator_may_return_null=1:${ASAN_OPTIONS:-}"
here=$(dirname "${BASH_SOURCE[0]}")
export LSAN_OPTIONS="suppressions=$here/lsan.supp:print_suppressions=0"
export VAE_FUZZ_CONTAINED="$findings/contained"
status=0
"$target" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$findings/" \
  "$work" "$seeds" >"$work.log" 2>&1 || status=$?
grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$work.log" || true
if [[ -d "$findings/contained" ]]; then
  echo "contained libhdf5 crashes (reported by the tools as bad files): $(find "$findings/contained" -type f | wc -l)"
fi
# A child's report is libhdf5's own when the frame that faulted, the first past the sanitizer's interceptors, is in
# libhdf5 or zlib, whoever called them (a corrupt file once made H5Aiterate2 read a header message libhdf5 had freed).
# Any other faulting frame is ours, and fails the run.
faulted_outside_hdf5() {
  awk '/^==[0-9]+==ERROR: AddressSanitizer/ { report = 1; next }
       report && /^ *#[0-9]+ / {
         if ($0 ~ /__interceptor_|__asan_|__sanitizer_|libclang_rt/) next
         if ($0 !~ /libhdf5|libz\.so/) ours = 1
         report = 0
       }
       END { exit !ours }' "$1"
}
if ((status == 0)) && faulted_outside_hdf5 "$work.log"; then
  echo "run_fuzz.sh: a sanitizer report in a checking child faults outside libhdf5:" >&2
  grep -A30 "^==[0-9]*==ERROR: AddressSanitizer" "$work.log" | head -n 60 >&2
  status=1
fi
if ((status != 0)); then
  tail -n 60 "$work.log"
  echo "run_fuzz.sh: $(basename "$target") found an input that fails (kept in $findings); add it to tests/fuzz/regressions/$(basename "$target")/ with the fix" >&2
fi
rm -f "$work.log"
exit "$status"
