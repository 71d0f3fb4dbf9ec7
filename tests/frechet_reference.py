#!/usr/bin/env python3
"""The Fréchet distance the FID code computes (numpy and scipy.linalg.sqrtm), independent of ours: test_eval's reference.

Usage: frechet_reference.py A.f32 B.f32 DIM   (each file: rows of DIM little-endian float32 features)
"""
import sys

import numpy as np
from scipy import linalg


def frechet(a, b):
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    # sqrtm of a product of covariances can carry a rounding-sized imaginary part
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def main():
    dim = int(sys.argv[3])
    a, b = (np.fromfile(path, dtype="<f4").astype(np.float64).reshape(-1, dim) for path in sys.argv[1:3])
    print(f"{frechet(a, b):.15g}")


if __name__ == "__main__":
    main()
