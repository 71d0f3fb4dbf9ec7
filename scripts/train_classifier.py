#!/usr/bin/python3
"""Trains the MNIST classifier vae_eval uses to read generated digits, and writes configs/mnist_classifier.h5.

Run with Debian's Python (python3-torch, python3-h5py, python3-numpy): /usr/bin/python3 scripts/train_classifier.py
A small CNN (conv 5×5 ×16, max-pool, conv 5×5 ×32, max-pool, dense 64, dense 10, ReLU), trained on the 60,000 training
images, each drawn with a random small rotation, scaling, shear and shift, and half of them blurred by a Gaussian of random
width and their contrast changed: a decoder's mean image is a smoothed, lower-contrast digit, and a reader trained only on
sharp digits misreads those for their blur rather than their shape.
The file stores the weights in PyTorch's layout, the test accuracy, and the logits of the first 32 test images, which
the C++ inference must reproduce (tests/test_eval.cpp)."""
import argparse
import os
import struct
import sys
import time

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_idx(path):
    with open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    dims = struct.unpack(">" + "I" * (magic & 0xFF), data[4:4 + 4 * (magic & 0xFF)])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):  # x [N, 1, 28, 28] in [0, 1]
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def augmented(x, rng):
    """Each image rotated by up to 12°, scaled by 0.85–1.15, sheared by up to 0.15 and moved by up to two pixels; half of
    them then blurred (Gaussian, σ up to 1.2 pixels) and their contrast scaled by 0.6–1."""
    n = x.shape[0]
    angle = np.deg2rad(rng.uniform(-12, 12, n))
    scale = rng.uniform(0.85, 1.15, n)
    shear = rng.uniform(-0.15, 0.15, n)
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    theta[:, 0, 0] = np.cos(angle) / scale
    theta[:, 0, 1] = (-np.sin(angle) + shear) / scale
    theta[:, 1, 0] = np.sin(angle) / scale
    theta[:, 1, 1] = np.cos(angle) / scale
    theta[:, :, 2] = rng.uniform(-2, 2, (n, 2)) * 2 / 28
    grid = F.affine_grid(torch.from_numpy(theta), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    blur = rng.random(n) < 0.5
    if blur.any():
        sigma = rng.uniform(0.3, 1.2)
        r = torch.arange(-3, 4, dtype=torch.float32)
        k = torch.exp(-r ** 2 / (2 * sigma ** 2))
        k = k / k.sum()
        idx = torch.from_numpy(np.flatnonzero(blur))
        b = F.conv2d(out[idx], k.view(1, 1, 1, 7), padding=(0, 3))
        b = F.conv2d(b, k.view(1, 1, 7, 1), padding=(3, 0))
        gain = torch.from_numpy(rng.uniform(0.6, 1.0, len(idx)).astype(np.float32)).view(-1, 1, 1, 1)
        out[idx] = (b / b.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6) * gain).clamp(0, 1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "data", "mnist"))
    ap.add_argument("--out", default=os.path.join(ROOT, "configs", "mnist_classifier.h5"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(os.cpu_count())

    train_x = torch.from_numpy(read_idx(os.path.join(args.data_dir, "train-images-idx3-ubyte")).astype(np.float32) / 255).unsqueeze(1)
    train_y = torch.from_numpy(read_idx(os.path.join(args.data_dir, "train-labels-idx1-ubyte")).astype(np.int64))
    test_u8 = read_idx(os.path.join(args.data_dir, "t10k-images-idx3-ubyte"))
    test_x = torch.from_numpy(test_u8.astype(np.float32) / 255).unsqueeze(1)
    test_y = torch.from_numpy(read_idx(os.path.join(args.data_dir, "t10k-labels-idx1-ubyte")).astype(np.int64))

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    t0 = time.time()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.from_numpy(rng.permutation(len(train_x)))
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(net(augmented(train_x[idx], rng)), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        net.eval()
        with torch.no_grad():
            acc = (net(test_x).argmax(1) == test_y).float().mean().item()
        print(f"epoch {epoch + 1}: test accuracy {acc:.4f} ({time.time() - t0:.0f} s)", flush=True)
    if acc < 0.985:
        sys.exit(f"train_classifier: error: test accuracy {acc:.4f} is below 0.985")

    with torch.no_grad():
        logits = net(test_x[:32]).numpy()
    with h5py.File(args.out, "w") as f:
        # Fixed-length strings (np.bytes_), as every vae_dist file stores them.
        f.attrs["format"] = np.bytes_("vae_dist-classifier")
        f.attrs["architecture"] = np.bytes_(
            "conv5x5(1->16,pad 2) relu maxpool2 | conv5x5(16->32,pad 2) relu maxpool2 | dense(1568->64) relu | dense(64->10)")
        f.attrs["layout"] = np.bytes_(
            "PyTorch: conv weight [out, in, 5, 5], dense weight [out, in]; dense input flattened as [channel, row, column]")
        f.attrs["test_accuracy"] = acc
        f.attrs["epochs"] = args.epochs
        for name, p in net.state_dict().items():
            layer, kind = name.split(".")
            f.create_dataset(f"{layer}/{kind}", data=p.numpy())
        f.create_dataset("reference/images", data=test_u8[:32])
        f.create_dataset("reference/logits", data=logits)
    print(f"wrote {args.out}: test accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
