#!/usr/bin/env python3
"""K-fold validation: trains one model per fold (--kfold K --fold i) and prints each fold's final validation -ELBO and
their mean ± standard deviation.

Usage: scripts/kfold.py [--k 5] [--ranks N] [--run-dir runs/kfold] [--vae-dist PATH] -- [vae_dist options, e.g. --config configs/v3.ini]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_vae_dist(given):
    if given:
        return given
    for build in ("release", "native", "ci"):
        path = os.path.join(ROOT, "build", build, "vae_dist")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("vae_dist") or sys.exit("kfold: error: vae_dist not found; build it or give --vae-dist")


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ours = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=5, help="folds (the report used 5)")
    ap.add_argument("--ranks", type=int, default=1, help="MPI ranks per training run")
    ap.add_argument("--run-dir", default="runs/kfold", help="fold i trains in RUN_DIR/fold-i")
    ap.add_argument("--vae-dist", default="", help="the vae_dist binary")
    args = ap.parse_args(ours)
    if args.k < 2:
        sys.exit("kfold: error: --k must be at least 2")
    binary = find_vae_dist(args.vae_dist)
    mpi = []
    if args.ranks > 1:
        mpi = ["mpirun", "-n", str(args.ranks), "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    scores = []
    for fold in range(args.k):
        run_dir = os.path.join(args.run_dir, f"fold-{fold}")
        cmd = mpi + [binary, *extra, "--kfold", str(args.k), "--fold", str(fold), "--run-dir", run_dir, "--progress", "never"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.stderr.write(p.stderr)
            sys.exit(f"kfold: error: fold {fold} failed with exit code {p.returncode}: {' '.join(cmd)}")
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            last = json.loads(f.read().splitlines()[-1])
        scores.append(last["val_elbo"])
        print(f"fold {fold}: validation -ELBO {last['val_elbo']:.3f}  test -ELBO {last['test_elbo']:.3f}  (epoch {last['epoch']})", flush=True)
    print(f"{args.k}-fold validation -ELBO: {statistics.mean(scores):.3f} ± {statistics.stdev(scores):.3f} (mean ± sample std)")


if __name__ == "__main__":
    main()
