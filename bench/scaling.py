#!/usr/bin/env python3
"""Rank × thread layouts of v3 at global batch 64 and 256 under mpirun: samples/s and the allreduce-wait share of the step.

Usage: python3 bench/scaling.py [--repetitions N] [--bucket-mb X] [--binary build/bench/vae_dist]
Layouts run interleaved (every layout once, then again), medians reported. Run on an otherwise idle machine.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = [(1, 2), (2, 1), (4, 1)]  # ranks × threads on 2 cores; 4 × 1 is oversubscribed


def run(binary, ranks, threads, batch, bucket_mb):
    flags = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    flags += ["--bind-to", "none"] if ranks * threads > os.cpu_count() else ["--map-by", f"slot:PE={threads}", "--bind-to", "core"]
    steps = 60000 // batch // 2  # half an epoch: the steady state, without the evaluation
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([shutil.which("mpirun"), "-n", str(ranks), *flags, binary, "--preset", "v3", "--batch", str(batch),
                        "--threads", str(threads), "--epochs", "1", "--max-steps", str(steps), "--test-limit", "64",
                        "--bucket-mb", str(bucket_mb), "--progress", "never", "--run-dir", d],
                       cwd=ROOT, check=True, capture_output=True)
        rec = json.loads(open(os.path.join(d, "metrics.jsonl")).read().splitlines()[-1])
    phases = ["time_data", "time_forward", "time_backward", "time_allreduce_wait", "time_update"]
    return rec["samples_per_s"], rec["time_allreduce_wait"] / sum(rec[p] for p in phases)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--bucket-mb", type=float, default=1.0)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "bench", "vae_dist"))
    a = ap.parse_args()
    results = {}
    for _ in range(a.repetitions):
        for batch in (64, 256):
            for ranks, threads in LAYOUTS:
                results.setdefault((batch, ranks, threads), []).append(run(a.binary, ranks, threads, batch, a.bucket_mb))
    print(f"| global batch | ranks × threads | samples/s | vs 1 × 2 | allreduce wait, share of step |")
    print("|---|---|---|---|---|")
    for batch in (64, 256):
        base = statistics.median(r[0] for r in results[(batch, 1, 2)])
        for ranks, threads in LAYOUTS:
            rs = results[(batch, ranks, threads)]
            rate, wait = statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)
            print(f"| {batch} | {ranks} × {threads} | {rate:,.0f} | {rate / base:.2f} | {100 * wait:.1f}% |")
    print(f"\nv3, --bucket-mb {a.bucket_mb}, medians of {a.repetitions} interleaved runs of half an epoch each.")


if __name__ == "__main__":
    main()
