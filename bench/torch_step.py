#!/usr/bin/env python3
"""The same v3 CVAE (or, with --model conv, the conv CVAE) training step in PyTorch (Debian python3-torch), timed in steady
state: the yardstick of bench/run.py.

Prints "samples/s N". Best fp32 setting on 2 cores: OPENBLAS_NUM_THREADS=2 with --threads 1 (PRODUCT.md); --bf16 runs the
step under bf16 autocast (oneDNN), whose best of 1 and 2 threads bench/run.py reports.
"""
import argparse
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def load_images(data_dir, n):
    with open(os.path.join(data_dir, "train-images-idx3-ubyte"), "rb") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 784)[:n]
    with open(os.path.join(data_dir, "train-labels-idx1-ubyte"), "rb") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:n]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class CVAE(nn.Module):
    def __init__(self, hidden=(640, 320), latent=128):
        super().__init__()
        self.enc = nn.ModuleList()
        d = 784 + 10
        for h in hidden:
            self.enc.append(nn.Linear(d, h))
            d = h
        self.head = nn.Linear(d, 2 * latent)
        self.dec = nn.ModuleList()
        d = latent + 10
        for h in reversed(hidden):
            self.dec.append(nn.Linear(d, h))
            d = h
        self.out = nn.Linear(d, 784)
        self.latent = latent

    def forward(self, x, y):
        h = torch.cat([x, y], 1)
        for layer in self.enc:
            h = F.elu(layer(h))
        mu, logvar = self.head(h).chunk(2, 1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        h = torch.cat([z, y], 1)
        for layer in self.dec:
            h = F.elu(layer(h))
        logits = self.out(h)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu * mu - logvar.exp())
        return (rec + kl) / x.shape[0]


class ConvCVAE(nn.Module):
    """vae_dist's conv preset: 1x28x28 -> 32x14x14 -> 64x7x7 -> [3136 | y] -> 512 -> 2x32, and its mirror."""

    def __init__(self, channels=(32, 64), hidden=512, latent=32):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 4, 2, 1)
        self.conv2 = nn.Conv2d(c1, c2, 4, 2, 1)
        self.enc = nn.Linear(c2 * 49 + 10, hidden)
        self.head = nn.Linear(hidden, 2 * latent)
        self.dec0 = nn.Linear(latent + 10, hidden)
        self.dec1 = nn.Linear(hidden, c2 * 49)
        self.deconv1 = nn.ConvTranspose2d(c2, c1, 4, 2, 1)
        self.deconv2 = nn.ConvTranspose2d(c1, 1, 4, 2, 1)
        self.c2 = c2

    def forward(self, x, y):
        h = F.elu(self.conv2(F.elu(self.conv1(x.view(-1, 1, 28, 28)))))
        h = F.elu(self.enc(torch.cat([h.flatten(1), y], 1)))
        mu, logvar = self.head(h).chunk(2, 1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        h = F.elu(self.dec1(F.elu(self.dec0(torch.cat([z, y], 1)))))
        logits = self.deconv2(F.elu(self.deconv1(h.view(-1, self.c2, 7, 7)))).flatten(1)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu * mu - logvar.exp())
        return (rec + kl) / x.shape[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["v3", "conv"], default="v3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--data-dir", default="data/mnist")
    ap.add_argument("--bf16", action="store_true", help="torch.autocast('cpu', dtype=torch.bfloat16), PyTorch's bf16 mixed precision")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    images, labels = load_images(a.data_dir, 60000)
    model = CVAE() if a.model == "v3" else ConvCVAE()
    opt = torch.optim.Adam(model.parameters(), lr=8e-4 if a.model == "v3" else 1e-3)
    perm = torch.randperm(images.shape[0])

    def step(s):
        idx = perm[(s * a.batch) % (images.shape[0] - a.batch):][: a.batch]
        x = images[idx].float() / 255.0
        y = F.one_hot(labels[idx], 10).float()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            loss = model(x, y)
        loss.backward()
        opt.step()

    for s in range(30):
        step(s)
    t0 = time.perf_counter()
    for s in range(a.steps):
        step(s)
    dt = time.perf_counter() - t0
    print(f"samples/s {a.steps * a.batch / dt:.1f}")


if __name__ == "__main__":
    main()
