#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora from real files: MNIST's IDX files (raw and gzip), the shipped configs, a tiny
checkpoint trained for the purpose, the shipped classifier. Usage: fuzz_corpus.py VAE_DIST OUT_DIR"""
import gzip
import os
import shutil
import struct
import subprocess
import sys
import tempfile

vae_dist, out = sys.argv[1], sys.argv[2]
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
data = os.path.join(root, "data", "mnist")


def seed(target, name, payload):
    os.makedirs(os.path.join(out, target), exist_ok=True)
    with open(os.path.join(out, target, name), "wb") as f:
        f.write(payload)


# IDX: the first byte of an input picks gzip (bit 0) and labels (bit 1); a real file's first images and labels follow.
with open(os.path.join(data, "train-images-idx3-ubyte"), "rb") as f:
    head = f.read(16 + 784)
with open(os.path.join(data, "train-labels-idx1-ubyte"), "rb") as f:
    labels = f.read(8 + 1)
one_image = struct.pack(">IIII", 0x803, 1, 28, 28) + head[16:]
one_label = struct.pack(">II", 0x801, 1) + labels[8:]
for flag, name, payload in [(0, "images", one_image), (2, "labels", one_label)]:
    seed("fuzz_idx", name, bytes([flag]) + payload)
    seed("fuzz_idx", name + ".gz", bytes([flag | 1]) + gzip.compress(payload, mtime=0))

# Config: each shipped INI, then NUL-separated arguments.
for ini in sorted(os.listdir(os.path.join(root, "configs"))):
    if ini.endswith(".ini"):
        with open(os.path.join(root, "configs", ini), "rb") as f:
            seed("fuzz_config", ini, f.read() + b"\0--batch\0" + b"32\0--digits\0" + b"0,1")

# Checkpoint: a model small enough that a fuzzer can afford to mutate the whole file.
with tempfile.TemporaryDirectory() as d:
    subprocess.run([vae_dist, "--progress", "never", "--data-dir", data, "--run-dir", d, "--hidden", "8", "--latent", "2",
                    "--batch", "32", "--train-limit", "64", "--test-limit", "32", "--epochs", "1", "--threads", "1"],
                   check=True, stdout=subprocess.DEVNULL)
    os.makedirs(os.path.join(out, "fuzz_checkpoint"), exist_ok=True)
    shutil.copy(os.path.join(d, "checkpoints", "ckpt-e0001.h5"), os.path.join(out, "fuzz_checkpoint", "ckpt.h5"))
    # The same model's decoder as the browser page reads it.
    os.makedirs(os.path.join(out, "fuzz_web_decoder"), exist_ok=True)
    subprocess.run([os.path.join(os.path.dirname(vae_dist), "vae_export"), "--checkpoint", os.path.join(d, "checkpoints", "ckpt-e0001.h5"),
                    "--out", os.path.join(out, "fuzz_web_decoder", "model.vaed")], check=True, stdout=subprocess.DEVNULL)

os.makedirs(os.path.join(out, "fuzz_classifier"), exist_ok=True)
shutil.copy(os.path.join(root, "configs", "mnist_classifier.h5"), os.path.join(out, "fuzz_classifier", "classifier.h5"))
print(f"fuzz_corpus: seeds in {out}")
