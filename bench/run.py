#!/usr/bin/env python3
"""Runs every benchmark interleaved and prints the tables of docs/benchmarks.md (medians, ratios measured side by side).

Usage: python3 bench/run.py [--repetitions N] [--skip-build] [--sections step,torch,precision,bf16,decode,memory,conv_torch,conv,gemm]
       [--markdown FILE]
Run it on an otherwise idle machine: a concurrent build or test halves every figure.
"""
import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build", "bench")


def sh(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, check=True, text=True, capture_output=True, **kw).stdout


def build():
    subprocess.run(["cmake", "--preset", "bench"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", "--preset", "bench"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def gbench(exe, filt, reps, min_time):
    """Runs a Google Benchmark binary with every repetition randomly interleaved; returns {name: [runs]}."""
    out = sh([os.path.join(BUILD, "bench", exe), f"--benchmark_filter={filt}", f"--benchmark_repetitions={reps}",
              "--benchmark_enable_random_interleaving=true", f"--benchmark_min_time={min_time}",
              "--benchmark_format=json", "--benchmark_display_aggregates_only=false"])
    runs = {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        runs.setdefault(re.sub(r"(/iterations:\d+)?(/real_time)?$", "", b["run_name"]), []).append(b)
    return runs


def order(name):
    """Sorts benchmark names by model, then batch and threads as numbers, then as registered."""
    return [int(x) if x.isdigit() else x for x in re.split(r"[/bt]?(\d+)(?=/|$)", name)]


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def machine():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    flags = open("/proc/cpuinfo").read()
    isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "SSE"
    return f"{model}, {os.cpu_count()} cores, {isa}; {platform.platform()}"


def gemm_table(reps):
    runs = gbench("bench_kernels", "gemm/", reps, 0.05)
    rows, worst = [], {1: 9.9, 2: 9.9}
    keys = sorted({n.rsplit("/", 2)[0] for n in runs}, key=step_order)
    for key in keys:
        _, preset, batch, layer, op = key.split("/")
        g = {impl: median(runs[f"{key}/{impl}"], "FLOPS") / 1e9 for impl in
             ("ours/t1", "openblas/t1", "ours/t2", "openblas/t2", "reference/t1", "ours_fused/t1", "ours_fused/t2")
             if f"{key}/{impl}" in runs}
        r1, r2 = g["ours/t1"] / g["openblas/t1"], g["ours/t2"] / g["openblas/t2"]
        worst[1], worst[2] = min(worst[1], r1), min(worst[2], r2)
        fused = f"{g['ours_fused/t1']:.1f} / {g['ours_fused/t2']:.1f}" if "ours_fused/t1" in g else ""
        rows.append(f"| {preset} | {batch[1:]} | {layer} | {op} | {g['ours/t1']:.1f} | {g['openblas/t1']:.1f} | {r1:.2f} "
                    f"| {g['ours/t2']:.1f} | {g['openblas/t2']:.1f} | {r2:.2f} | {fused} | {g['reference/t1']:.2f} |")
    head = ["| model | batch | layer | product | ours 1t | OpenBLAS 1t | ratio | ours 2t | OpenBLAS 2t | ratio "
            "| ours + fused ELU 1t / 2t | reference 1t |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    return head + rows + ["", f"GFLOP/s, medians of {reps} interleaved repetitions. Lowest ratio ours/OpenBLAS: "
                              f"{worst[1]:.2f} on 1 thread, {worst[2]:.2f} on 2 threads."]


def step_table(reps):
    runs = gbench("bench_step", "step/", reps, 0.5)
    rows = []
    keys = sorted({n.rsplit("/", 1)[0] for n in runs}, key=order)
    for key in keys:
        _, preset, batch, t = key.split("/")
        ours = median(runs[key + "/ours"], "items_per_second")
        pool = runs[key + "/ours"][0].get("pool_bytes", 0)
        if key + "/openblas_gemms" not in runs:  # the conv model: its convolutions are not GEMMs OpenBLAS could run alone
            rows.append(f"| {preset} | {batch[1:]} | {t[1:]} | {ours:,.0f} | | | {pool:,.0f} |")
            continue
        blas = median(runs[key + "/openblas_gemms"], "items_per_second")
        rows.append(f"| {preset} | {batch[1:]} | {t[1:]} | {ours:,.0f} | {blas:,.0f} | {ours / blas:.2f} | {pool:,.0f} |")
    head = ["| model | batch | threads | whole step, samples/s | OpenBLAS GEMMs only, samples/s | ratio | pool bytes |",
            "|---|---|---|---|---|---|---|"]
    return head + rows + ["", f"Medians of {reps} interleaved repetitions; one process, the real MNIST."]


def torch_python():
    """An interpreter that imports torch: this one, or Debian's (python3-torch installs there)."""
    for py in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(py) and subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0:
            return py
    return None


def torch_table(reps):
    py = torch_python()
    if not py:
        return ["PyTorch is not installed (`apt-get install python3-torch`); comparison skipped."]
    version = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True).stdout.strip()
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="1")
    ours, theirs = [], []
    for _ in range(reps):
        r = gbench("bench_step", "step/v3/b64/t2/ours", 1, 3.0)
        ours.append(r["step/v3/b64/t2/ours"][0]["items_per_second"])
        out = subprocess.run([py, os.path.join(ROOT, "bench", "torch_step.py"), "--threads", "1"], cwd=ROOT, env=env,
                             check=True, text=True, capture_output=True).stdout
        theirs.append(float(re.search(r"samples/s ([0-9.]+)", out).group(1)))
    o, t = statistics.median(ours), statistics.median(theirs)
    return ["| v3, batch 64 | samples/s (median) | runs |", "|---|---|---|",
            f"| vae_dist, 1 process × 2 threads | {o:,.0f} | {', '.join(f'{x:,.0f}' for x in ours)} |",
            f"| PyTorch {version}, 1 torch thread, OPENBLAS_NUM_THREADS=2 | {t:,.0f} | "
            f"{', '.join(f'{x:,.0f}' for x in theirs)} |", "", f"Ratio {o / t:.2f}, alternating runs."]


def torch_samples(py, batch, threads, bf16, model="v3", blas_threads=2):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(blas_threads), OMP_NUM_THREADS=str(threads))
    cmd = [py, os.path.join(ROOT, "bench", "torch_step.py"), "--model", model, "--threads", str(threads), "--batch", str(batch), "--steps", "200"]
    out = subprocess.run(cmd + (["--bf16"] if bf16 else []), cwd=ROOT, env=env, check=True, text=True, capture_output=True).stdout
    return float(re.search(r"samples/s ([0-9.]+)", out).group(1))


# PyTorch's settings for the conv model: (torch threads, OpenBLAS threads, bf16 autocast); its best is the one compared with.
CONV_TORCH_SETTINGS = ((1, 1, False), (1, 2, False), (2, 1, False), (2, 2, False), (1, 1, True), (2, 1, True))


def conv_torch_table(reps):
    """The conv CVAE's whole step, ours (1 and 2 threads, fp32 and bf16) against PyTorch's same model at each setting, alternating."""
    py = torch_python()
    if not py:
        return ["PyTorch is not installed (`apt-get install python3-torch`); comparison skipped."]
    got = {}
    for _ in range(reps):
        r = gbench("bench_step", "step/conv/b64/t[12]/ours(_bf16)?/", 1, 3.0)
        for t in (1, 2):
            got.setdefault(f"ours t{t}", []).append(r[f"step/conv/b64/t{t}/ours"][0]["items_per_second"])
            got.setdefault(f"ours t{t} bf16", []).append(r[f"step/conv/b64/t{t}/ours_bf16"][0]["items_per_second"])
        for t, blas, bf16 in CONV_TORCH_SETTINGS:
            got.setdefault(f"torch t{t} blas{blas}{' bf16' if bf16 else ''}", []).append(torch_samples(py, 64, t, bf16, "conv", blas))
    m = {k: statistics.median(v) for k, v in got.items()}
    ours = max((m[k], k) for k in m if k.startswith("ours") and not k.endswith("bf16"))
    ours16 = max((m[k], k) for k in m if k.startswith("ours") and k.endswith("bf16"))
    best = max((m[k], k) for k in m if k.startswith("torch"))
    rows = [f"| {k} | {m[k]:,.0f} | {', '.join(f'{x:,.0f}' for x in got[k])} |" for k in got]
    return ["| conv CVAE, batch 64 | samples/s (median) | runs |", "|---|---|---|"] + rows + [
        "", f"Ours at its best in fp32 ({ours[1]}) / PyTorch at its best ({best[1]}: torch threads, OPENBLAS_NUM_THREADS, bf16 "
            f"autocast): **{ours[0] / best[0]:.2f}**; ours in bf16 ({ours16[1]}): **{ours16[0] / best[0]:.2f}**, "
            f"{ours16[0] / ours[0]:.2f}× our fp32; {reps} alternating rounds, every setting once a round."]


def conv_table(reps):
    """Each conv-preset convolution product on 1 and 2 threads against the fp32 ceiling measured in the same run."""
    runs = gbench("bench_kernels", "peak/fp32/t[12]|conv/", reps, 0.1)
    peak = {t: median(runs[f"peak/fp32/t{t}"], "FLOPS") / 1e9 for t in (1, 2)}
    ops = {"forward": 0, "weight_grad": 1, "input_grad": 2}
    keys = sorted({n.rsplit("/", 2)[0] for n in runs if n.startswith("conv/")},
                  key=lambda k: (int(k.split("/")[2][1:]), k.split("/")[3].startswith("dec"), k.split("/")[3], ops[k.split("/")[4]]))
    rows = []
    for key in keys:
        _, _, batch, layer, op = key.split("/")
        g = {impl: median(runs[f"{key}/{impl}"], "FLOPS") / 1e9 for impl in ("ours/t1", "ours/t2", "reference/t1")}
        rows.append(f"| {batch[1:]} | {layer} | {op} | {g['ours/t1']:.1f} | {100 * g['ours/t1'] / peak[1]:.0f}% | {g['ours/t2']:.1f} "
                    f"| {100 * g['ours/t2'] / peak[2]:.0f}% | {g['reference/t1']:.2f} |")
    return ["| batch | layer | product | ours 1t | of the 1t ceiling | ours 2t | of the 2t ceiling | reference 1t |",
            "|---|---|---|---|---|---|---|---|"] + rows + [
        "", f"GFLOP/s (2·k²·in_c·out_c per output position of the equivalent convolution), medians of {reps} interleaved "
            f"repetitions; the fp32 FMA ceiling measured in the same run: {peak[1]:.0f} GFLOP/s on 1 thread, {peak[2]:.0f} on 2."]


def precision_table(reps):
    """The v3 step in fp32 and bf16 against PyTorch fp32 and bf16 autocast (each at its best of 1 and 2 threads), alternating."""
    py = torch_python()
    rows = []
    for batch in (64, 256):
        got = {}
        for _ in range(reps):
            r = gbench("bench_step", f"step/v3/b{batch}/t2/ours(_bf16)?/", 1, 2.0)
            for name, impl in ((f"step/v3/b{batch}/t2/ours", "ours fp32"), (f"step/v3/b{batch}/t2/ours_bf16", "ours bf16")):
                got.setdefault(impl, []).append(r[name][0]["items_per_second"])
            if py:
                for bf16 in (False, True):
                    for t in (1, 2):
                        got.setdefault(f"torch {'bf16' if bf16 else 'fp32'} t{t}", []).append(torch_samples(py, batch, t, bf16))
        m = {k: statistics.median(v) for k, v in got.items()}
        t32 = max((m[k], k) for k in m if k.startswith("torch fp32")) if py else (float("nan"), "-")
        t16 = max((m[k], k) for k in m if k.startswith("torch bf16")) if py else (float("nan"), "-")
        best = max(t32, t16)
        rows.append(f"| {batch} | {m['ours fp32']:,.0f} | {m['ours bf16']:,.0f} | {m['ours bf16'] / m['ours fp32']:.2f} "
                    f"| {t32[0]:,.0f} ({t32[1][-2:]}) | {t16[0]:,.0f} ({t16[1][-2:]}) | {m['ours bf16'] / best[0]:.2f} |")
    return ["| batch | ours fp32 | ours bf16 | bf16 / fp32 | PyTorch fp32 (threads) | PyTorch bf16 autocast (threads) "
            "| ours bf16 / PyTorch's best |", "|---|---|---|---|---|---|---|"] + rows + [
        "", f"v3, samples/s, medians of {reps} alternating runs; ours 1 process × 2 threads; PyTorch at its best of 1 and 2 "
            "torch threads (OPENBLAS_NUM_THREADS=2)."]


def bf16_table(reps):
    """Each v3 batch-256 bf16 product on 2 threads, as the step runs it, against the bf16 ceiling measured in the same run."""
    runs = gbench("bench_kernels", "peak/bf16/t2|gemm/v3/b256/.*/ours_bf16(_step)?/t2", reps, 0.2)
    if "peak/bf16/t2" not in runs:
        return ["No native bf16 product on this CPU: no ceiling to compare with."]
    peak = median(runs["peak/bf16/t2"], "FLOPS") / 1e9
    rows = []
    for key in sorted({n.rsplit("/", 2)[0] for n in runs if n.startswith("gemm/")}, key=step_order):
        step = median(runs[f"{key}/ours_bf16_step/t2"], "FLOPS") / 1e9
        packed = median(runs[f"{key}/ours_bf16/t2"], "FLOPS") / 1e9
        _, _, _, layer, op = key.split("/")
        rows.append(f"| {layer} | {op} | {step:.0f} | {100 * step / peak:.0f}% | {packed:.0f} | {100 * packed / peak:.0f}% |")
    return ["| layer | product | as in the step, GFLOP/s | of the ceiling | packing its operands, GFLOP/s | of the ceiling |",
            "|---|---|---|---|---|---|"] + rows + [
        "", f"v3, batch 256, 2 threads; the `vdpbf16ps` ceiling ({peak:.0f} GFLOP/s, `peak/bf16/t2`) measured in the same "
            f"interleaved run; medians of {reps} repetitions. \"As in the step\": W from the optimizer's weight copy, X and dY "
            "from their bf16 shadows, Y or dX written with theirs (`bench_ours_step`)."]


def step_order(key):
    """Sorts gemm/<model>/b<batch>/<layer>/<op>/… names as the step runs them: encoder before decoder, forward first."""
    ops = {"forward": 0, "weight_grad": 1, "input_grad": 2}
    _, preset, batch, layer, op = key.split("/")[:5]
    return preset, int(batch[1:]), layer.startswith("dec"), layer.replace("head", "9").replace("out", "9"), ops[op]


def decode_table(reps):
    runs = gbench("bench_decode", "generate|latency", reps, 0.5)
    g = {p: {t: median(runs[f"generate/v3/b1024/{p}/t{t}"], "items_per_second") for t in (1, 2)} for p in ("fp32", "int8")}
    lat = {(p, t): (median(runs[f"latency/v3/b1/{p}/t{t}"], "median_us"), median(runs[f"latency/v3/b1/{p}/t{t}"], "p99_us"))
           for p in ("fp32", "int8") for t in (1, 2)}
    return ["| v3 decoder | fp32 | INT8 | INT8 / fp32 |", "|---|---|---|---|"] + [
        f"| generation, batch 1,024, {t} thread{'s' if t > 1 else ''} (samples/s) | {g['fp32'][t]:,.0f} | {g['int8'][t]:,.0f} "
        f"| {g['int8'][t] / g['fp32'][t]:.2f} |" for t in (1, 2)] + [
        f"| one sample, {t} thread{'s' if t > 1 else ''}, median / p99 (µs) | {lat[('fp32', t)][0]:.1f} / {lat[('fp32', t)][1]:.1f} "
        f"| {lat[('int8', t)][0]:.1f} / {lat[('int8', t)][1]:.1f} | |" for t in (1, 2)] + [
        "", f"Medians of {reps} interleaved repetitions; the latency is of 10,000 calls (1 thread: on the calling thread)."]


def memory_table():
    exe = os.path.join(BUILD, "vae_dist")
    flags = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    rows = []
    for ranks, threads in ((1, 2), (2, 1), (4, 1)):
        with tempfile.TemporaryDirectory() as run:
            out = subprocess.run([shutil.which("mpirun"), "-n", str(ranks), *flags, exe, "--preset", "v3", "--epochs", "1",
                                  "--max-steps", "300", "--threads", str(threads), "--run-dir", run],
                                 cwd=ROOT, check=True, capture_output=True, text=True).stdout
            rec = json.loads(open(os.path.join(run, "metrics.jsonl")).read().splitlines()[-1])
        pool = int(re.search(r"memory pool: ([0-9,]+) bytes", out).group(1).replace(",", ""))
        rows.append(f"| {ranks} × {threads} | {pool:,} | {rec['peak_rss_bytes'] / 2**20:.0f} MiB |")
    return ["| ranks × threads | pool bytes per rank | peak RSS (largest rank) |", "|---|---|---|"] + rows + [
        "", "With more than one rank on the node, the parameters and the activations of the global batch live in shared "
        "memory (one copy per node), outside the per-rank pool; each rank's pool keeps its gradient and Adam moments."]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--sections", default="step,torch,precision,bf16,decode,memory,conv_torch,conv,gemm",
                    help="comma-separated subset of step,torch,precision,bf16,decode,memory,conv_torch,conv,gemm")
    ap.add_argument("--markdown", help="also write the tables to this file")
    a = ap.parse_args()
    if not a.skip_build:
        build()
    every = {"step": ("Whole training step", lambda: step_table(a.repetitions)),
             "torch": ("Against PyTorch", lambda: torch_table(a.repetitions)),
             "precision": ("Precision: fp32, bf16 and PyTorch", lambda: precision_table(a.repetitions)),
             "bf16": ("bf16 products against the bf16 ceiling", lambda: bf16_table(a.repetitions)),
             "decode": ("Generation and one-sample latency, fp32 and INT8", lambda: decode_table(a.repetitions)),
             "memory": ("Memory per rank (v3, batch 64)", memory_table),
             "conv_torch": ("The conv CVAE against PyTorch", lambda: conv_torch_table(a.repetitions)),
             "conv": ("Convolution products against the fp32 ceiling", lambda: conv_table(a.repetitions)),
             "gemm": ("GEMMs", lambda: gemm_table(a.repetitions))}
    sections = [every[name] for name in a.sections.split(",")]
    out = [f"Machine: {machine()}", ""]
    print(out[0], flush=True)
    for title, table in sections:
        lines = [f"## {title}", ""] + table() + [""]
        print("\n".join(lines), flush=True)
        out += lines
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
