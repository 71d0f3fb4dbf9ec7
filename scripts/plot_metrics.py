#!/usr/bin/python3
"""Plots the loss curves (train loss, test and validation -ELBO per epoch) and the throughput of one or more runs as a PNG."""
import argparse
import json
import os
import sys

USAGE_EXAMPLES = """
inputs: a run directory (its metrics.jsonl), a metrics.jsonl file, or a checkpoint .h5 (its /metrics group, needs h5py)
examples:
  scripts/plot_metrics.py runs/quickstart -o quickstart.png
  scripts/plot_metrics.py runs/a runs/b --labels "4 ranks,1 rank" -o compare.png
"""


def fail(message):
    print(f"plot_metrics: error: {message}", file=sys.stderr)
    sys.exit(2)


def read_jsonl(path):
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    fail(f"{path}:{number}: not JSON ({e.msg})")
    return rows


def read_checkpoint(path):
    try:
        import h5py
    except ImportError:
        fail(f"reading {path} needs h5py, which {sys.executable} lacks (Debian: apt-get install python3-h5py); "
             "or plot the run directory's metrics.jsonl")
    with h5py.File(path, "r") as f:
        if "metrics" not in f:
            fail(f"{path} has no /metrics group")
        group = f["metrics"]
        columns = {name: group[name][...].tolist() for name in group}
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    for r in rows:
        # The checkpoint keeps the loss's parts; the β-weighted training loss is rebuilt from them.
        r.setdefault("train_loss", r["train_recon"] + r["beta"] * r["train_kl"])
        if r.get("val_elbo", -1) < 0:
            r.pop("val_elbo", None)
    return rows


def read_run(path):
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(path):
        fail(f"{path}: no such file")
    rows = read_checkpoint(path) if path.endswith(".h5") else read_jsonl(path)
    # A run resumed from an older checkpoint repeats epochs in metrics.jsonl: the later record is the one that counts.
    by_epoch = {int(r["epoch"]): r for r in rows}
    if not by_epoch:
        fail(f"{path}: no epochs recorded")
    return [by_epoch[e] for e in sorted(by_epoch)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="run directory, metrics.jsonl or checkpoint .h5")
    parser.add_argument("-o", "--out", default="metrics.png", help="PNG to write (default metrics.png)")
    parser.add_argument("--labels", help="comma-separated legend names, one per input (default: the paths)")
    parser.add_argument("--title", help="figure title")
    args = parser.parse_args()

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        fail(f"matplotlib is not installed for {sys.executable}; on Debian: apt-get install python3-matplotlib, "
             "then run /usr/bin/python3 scripts/plot_metrics.py")

    labels = args.labels.split(",") if args.labels else [p.rstrip("/") for p in args.inputs]
    if len(labels) != len(args.inputs):
        fail(f"{len(labels)} labels for {len(args.inputs)} inputs")
    runs = [(label, read_run(path)) for label, path in zip(labels, args.inputs)]

    fig, (loss_ax, speed_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rows) in enumerate(runs):
        color = colors[i % len(colors)]
        epochs = [r["epoch"] for r in rows]
        prefix = f"{label}: " if len(runs) > 1 else ""
        loss_ax.plot(epochs, [r["train_loss"] for r in rows], "--", color=color, label=f"{prefix}train loss (β-weighted)")
        loss_ax.plot(epochs, [r["test_elbo"] for r in rows], "-o", color=color, markersize=3, label=f"{prefix}test −ELBO")
        if any("val_elbo" in r for r in rows):
            loss_ax.plot(epochs, [r.get("val_elbo", float("nan")) for r in rows], ":", color=color, label=f"{prefix}validation −ELBO")
        speed_ax.plot(epochs, [r["samples_per_s"] for r in rows], "-o", color=color, markersize=3, label=label)
    for ax in (loss_ax, speed_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set(xlabel="epoch", ylabel="nats per image", title="loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    speed_ax.set(xlabel="epoch", ylabel="training samples/s", title="throughput")
    speed_ax.set_ylim(bottom=0)
    speed_ax.grid(alpha=0.3)
    if len(runs) > 1:
        speed_ax.legend(fontsize=8)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    last = runs[0][1][-1]
    print(f"plot_metrics: wrote {args.out} ({len(runs[0][1])} epochs; last test -ELBO {last['test_elbo']:.2f})")


if __name__ == "__main__":
    main()
