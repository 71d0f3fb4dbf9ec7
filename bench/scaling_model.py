#!/usr/bin/env python3
"""Alpha-beta model of ring allreduce for v3's gradient across nodes: predicted efficiency at 2-64 nodes (docs/scaling.md).

Usage: python3 bench/scaling_model.py [--compute-ms-64 2.96] [--compute-ms-256 8.76] [--link-alpha-us A --link-gbs B]
The compute times are one node's measured whole step (bench/cluster.py, v3, 1 process × 2 threads) at each local batch.
With the hierarchical sync each node sends its gradient across the network once (its ranks each send their rows), so
the per-node bytes are those of one rank per node; --wire bf16 halves them. --link-alpha-us/--link-gbs add a measured
link (bench/cluster.py's ping-pong).
"""
import argparse

GRADIENT_BYTES = 1_548_560 * 4  # v3: one float per parameter
LINKS = {"25 Gb/s Ethernet (RoCE), α = 10 µs": (10e-6, 25e9 / 8), "100 Gb/s InfiniBand, α = 2 µs": (2e-6, 100e9 / 8)}
NODES = [2, 4, 8, 16, 32, 64]


def ring_allreduce(p, n, alpha, beta, buckets=1):
    """2(p-1) steps per bucket, each moving n/p bytes (reduce-scatter, then allgather)."""
    return buckets * 2 * (p - 1) * alpha + 2 * (p - 1) / p * n / beta


def emulated_step(compute_s, p, n, alpha, beta, buckets=12, convert_s=0.0):
    """A step on emulated nodes (TCP over veth on shared cores): the node's compute, then the allreduce with nothing hidden,
    since the cores that would overlap it are the ones that copy its bytes. Each rank sends and receives 2(p-1)/p·n bytes,
    and the ping-pong's β already holds one side's sending and the other's receiving: the rank's core pays both.
    convert_s: the wire format's own passes over the gradient (bf16: round, add on arrival, widen).
    """
    return compute_s + buckets * 2 * (p - 1) * alpha + 2 * 2 * (p - 1) / p * n / beta + convert_s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compute-ms-64", type=float, default=2.96)
    ap.add_argument("--compute-ms-256", type=float, default=8.76)
    ap.add_argument("--buckets", type=int, default=6, help="buckets the gradient is sent in (v3 with several ranks per node: one per layer)")
    ap.add_argument("--wire", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--link-alpha-us", type=float)
    ap.add_argument("--link-gbs", type=float)
    a = ap.parse_args()
    links = dict(LINKS)
    if a.link_alpha_us and a.link_gbs:
        links[f"measured link, α = {a.link_alpha_us:g} µs, β = {a.link_gbs:g} GB/s"] = (a.link_alpha_us * 1e-6, a.link_gbs * 1e9)
    n = GRADIENT_BYTES // (2 if a.wire == "bf16" else 1)
    for link, (alpha, beta) in links.items():
        print(f"\n{link}, {n / 1e6:.1f} MB of gradient ({a.wire}) per node in {a.buckets} buckets\n")
        print("| nodes | allreduce ms | efficiency, batch 64/node, no overlap | overlapped | batch 256/node, no overlap | overlapped |")
        print("|---|---|---|---|---|---|")
        for p in NODES:
            t = ring_allreduce(p, n, alpha, beta, a.buckets)
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
