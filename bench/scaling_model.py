#!/usr/bin/env python3
"""Alpha-beta model of ring allreduce for v3's gradient across nodes: predicted efficiency at 2-64 nodes (docs/scaling.md).

Usage: python3 bench/scaling_model.py [--compute-ms-64 3.5] [--compute-ms-256 11.6]
The compute times are one node's measured whole step (bench/run.py, v3, 1 process × 2 threads) at each local batch.
"""
import argparse

GRADIENT_BYTES = 1_548_560 * 4  # v3: one float per parameter
LINKS = {"25 Gb/s Ethernet (RoCE), α = 10 µs": (10e-6, 25e9 / 8), "100 Gb/s InfiniBand, α = 2 µs": (2e-6, 100e9 / 8)}
NODES = [2, 4, 8, 16, 32, 64]


def ring_allreduce(p, n, alpha, beta, buckets=1):
    """2(p-1) steps per bucket, each moving n/p bytes (reduce-scatter, then allgather)."""
    return buckets * 2 * (p - 1) * alpha + 2 * (p - 1) / p * n / beta


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compute-ms-64", type=float, default=3.5)
    ap.add_argument("--compute-ms-256", type=float, default=11.6)
    ap.add_argument("--buckets", type=int, default=4, help="buckets the gradient is sent in")
    a = ap.parse_args()
    for link, (alpha, beta) in LINKS.items():
        print(f"\n{link}, {GRADIENT_BYTES / 1e6:.1f} MB gradient in {a.buckets} buckets\n")
        print("| nodes | allreduce ms | efficiency, batch 64/node, no overlap | overlapped | batch 256/node, no overlap | overlapped |")
        print("|---|---|---|---|---|---|")
        for p in NODES:
            t = ring_allreduce(p, GRADIENT_BYTES, alpha, beta, a.buckets)
            row = [f"{p}", f"{1e3 * t:.2f}"]
            for compute_ms in (a.compute_ms_64, a.compute_ms_256):
                tc = compute_ms / 1e3
                # The backward pass is ~2/3 of the step; all buckets but the last (the first layer's) can hide behind it.
                hidden = min(t * (a.buckets - 1) / a.buckets, tc * 2 / 3)
                row += [f"{tc / (tc + t):.2f}", f"{tc / (tc + t - hidden):.2f}"]
            print("| " + " | ".join(row) + " |")
        # A bucket should carry well more bytes than the link moves in the per-step latency of a ring: n_b >> 2(p-1)·α·β.
        print(f"\nBucket size where latency equals transfer time at 64 nodes: {2 * 63 * alpha * beta / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
