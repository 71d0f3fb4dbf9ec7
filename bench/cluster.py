#!/usr/bin/env python3
"""v3 on two emulated nodes against one node: samples/s, sync-wait share, bytes across nodes per step, and the link.

Usage (as root): python3 bench/cluster.py [--repetitions N] [--binary build/bench/vae_dist] [--pingpong build/bench/bench/pingpong]
Layouts at global batch 64 and 256: 1 process × 2 threads, 1 node × 2 ranks (shared pass), 2 nodes × 1 rank (fp32 and
bf16 wire), each cluster unshaped and shaped (tc netem 10 Gb/s + 50 µs per node). All layouts run interleaved, every
layout once per repetition; medians reported. The link is measured by a ping-pong on the same veths and fed to the α–β
model (bench/scaling_model.py), whose 2-node prediction is printed beside the measurement. Run on an otherwise idle machine.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "tests", "cluster", "cluster.sh")
sys.path.insert(0, os.path.join(ROOT, "bench"))
import scaling_model  # noqa: E402

# The shaped link adds 50 µs of delay where the kernel has sch_netem (--delay); this machine's has not, so by default the
# rate alone is shaped.
CLUSTERS = {"unshaped": ("bu", "-", "-"), "10 Gb/s": ("bs", "10gbit", "-")}
PHASES = ["time_data", "time_forward", "time_backward", "time_allreduce_wait", "time_update"]


def tx_bytes(name, node):
    """Bytes the node has sent on its link (counted on the bridge side of its veth, where the node's sends arrive)."""
    with open(f"/sys/class/net/vv{name}n{node}/statistics/rx_bytes") as f:
        return int(f.read())


def args_for(batch, run_dir, steps):
    return ["--preset", "v3", "--batch", str(batch), "--epochs", "1", "--max-steps", str(steps), "--test-limit", "64",
            "--progress", "never", "--run-dir", run_dir, "--checkpoint-every", "0"]


def record(run_dir):
    rec = json.loads(open(os.path.join(run_dir, "metrics.jsonl")).read().splitlines()[-1])
    return rec["samples_per_s"], rec["time_allreduce_wait"] / sum(rec[p] for p in PHASES)


def train(cmd, batch, run_dir):
    steps = 60000 // batch // 2  # half an epoch: the steady state, without the evaluation
    subprocess.run(cmd + args_for(batch, run_dir, steps), cwd=ROOT, check=True, capture_output=True)
    return record(run_dir) + (steps,)


def run_layout(layout, batch, binary):
    kind, cluster, wire = layout
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    with tempfile.TemporaryDirectory() as d:
        if kind == "1x2":
            return train([binary, "--threads", "2"], batch, d) + (0.0,)
        if kind == "half":
            # What each of two nodes computes, half the batch on its core and the whole update, with the other core
            # doing the same at the same time (two independent processes): the compute the α–β model adds the link to.
            steps = 60000 // batch // 2
            runs = [os.path.join(d, str(k)) for k in (0, 1)]
            procs = [subprocess.Popen([binary, "--threads", "1"] + args_for(batch // 2, r, steps), cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for r in runs]
            assert all(p.wait() == 0 for p in procs)
            return sum(record(r)[0] for r in runs), 0.0, steps, 0.0
        if kind == "node2x1":
            cmd = [shutil.which("mpirun"), *root, "-n", "2", "--map-by", "slot:PE=1", "--bind-to", "core", binary, "--threads", "1"]
            return train(cmd, batch, d) + (0.0,)
        name = CLUSTERS[cluster][0]
        before = tx_bytes(name, 1) + tx_bytes(name, 2)
        cmd = ["bash", CLUSTER, "mpirun", name, "2", "1", binary, "--threads", "1", "--wire", wire]
        rate, wait, steps = train(cmd, batch, d)
        sent = (tx_bytes(name, 1) + tx_bytes(name, 2) - before) / 2 / steps  # per node and step
        return rate, wait, steps, sent


def pingpong(binary, name):
    out = subprocess.run(["bash", CLUSTER, "mpirun", name, "2", "1", binary], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "bench", "vae_dist"))
    ap.add_argument("--pingpong", default=os.path.join(ROOT, "build", "bench", "bench", "pingpong"))
    ap.add_argument("--delay", default="-", help="one-way delay of the shaped link, e.g. 50us (needs sch_netem)")
    a = ap.parse_args()
    if a.delay != "-":
        CLUSTERS["10 Gb/s + " + a.delay] = ("bs", "10gbit", a.delay)
        del CLUSTERS["10 Gb/s"]
    layouts = [("1x2", None, None), ("half", None, None), ("node2x1", None, None)]
    layouts += [("2nodes", c, w) for c in CLUSTERS for w in ("fp32", "bf16")]
    try:
        for name, rate, delay in CLUSTERS.values():
            subprocess.run(["bash", CLUSTER, "up", name, "2", rate, delay], check=True)
        links = {c: pingpong(a.pingpong, CLUSTERS[c][0]) for c in CLUSTERS}
        results = {}
        for _ in range(a.repetitions):
            for batch in (64, 256):
                for layout in layouts:
                    results.setdefault((batch, layout), []).append(run_layout(layout, batch, a.binary))
    finally:
        for name, _, _ in CLUSTERS.values():
            subprocess.run(["bash", CLUSTER, "down", name])

    print("| link | one-way latency α | bandwidth β | bf16 wire's passes, per gradient float |\n|---|---|---|---|")
    for c, l in links.items():
        print(f"| {c} | {1e6 * l['alpha_s']:.1f} µs | {l['beta_bytes_per_s'] / 1e9:.2f} GB/s | {1e9 * l['bf16_seconds_per_float']:.2f} ns |")
    print("\n| global batch | layout | samples/s | vs 1 × 2 | sync wait, share of step | bytes sent per node and step | "
          "α–β model | model / measured |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in (64, 256):
        base = statistics.median(r[0] for r in results[(batch, layouts[0])])
        for layout in layouts:
            rs = results[(batch, layout)]
            rate, wait = statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)
            kind, cluster, wire = layout
            label = {"1x2": "1 process × 2 threads", "node2x1": "1 node × 2 ranks",
                     "half": "two nodes' compute without sync: 2 processes × 1 thread at half the batch"}.get(kind) or f"2 nodes × 1 rank, {cluster}, {wire} wire"
            sent = model = ratio = ""
            if kind == "2nodes":
                sent = f"{statistics.median(r[3] for r in rs) / 1e6:.2f} MB"
                link = links[cluster]
                wire_bytes = scaling_model.GRADIENT_BYTES // (2 if wire == "bf16" else 1)
                compute = batch / statistics.median(r[0] for r in results[(batch, ("half", None, None))])
                convert = link["bf16_seconds_per_float"] * scaling_model.GRADIENT_BYTES / 4 if wire == "bf16" else 0.0
                buckets = 4  # the hierarchical sync's buckets of --bucket-mb 1 with one rank per node
                predicted = batch / scaling_model.emulated_step(compute, 2, wire_bytes, link["alpha_s"], link["beta_bytes_per_s"],
                                                                buckets, convert)
                model, ratio = f"{predicted:,.0f}", f"{predicted / rate:.2f}"
            print(f"| {batch} | {label} | {rate:,.0f} | {rate / base:.2f} | {100 * wait:.1f}% | {sent} | {model} | {ratio} |")
    print(f"\nv3, medians of {a.repetitions} interleaved runs of half an epoch each.")


if __name__ == "__main__":
    main()
