#!/usr/bin/python3
"""Prints the SSIM values that tests/test_eval.cpp checks vae::ssim against, computed independently with scikit-image
(Debian python3-skimage): /usr/bin/python3 tests/ssim_reference.py. The image pairs are integer formulas that the C++
test builds the same way."""
import numpy as np
from skimage.metrics import structural_similarity


def pair(kind):
    i, j = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    if kind == 0:
        a, b = (i * i + 3 * j) % 256, (i * j + 7) % 256
    elif kind == 1:
        a = (i * 28 + j) * 5 % 256
        b = np.clip(a + (i * j % 17) - 8, 0, 255)
    elif kind == 2:
        a = np.maximum(0, 255 - 2 * ((i - 14) ** 2 + (j - 14) ** 2))
        b = np.maximum(0, 255 - 2 * ((i - 14) ** 2 + (j - 15) ** 2))
    else:
        a, b = np.zeros((28, 28)), np.full((28, 28), 51)
    return a.astype(np.float64) / 255, b.astype(np.float64) / 255


for kind in range(4):
    a, b = pair(kind)
    s = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    print(f"{kind} {s:.12f}")
