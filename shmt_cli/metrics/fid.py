"""Frechet Inception Distance between two image sets (lower is better), without scipy.

FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)) for Gaussians fitted to the pool3
features. The trace of the matrix square root is computed from the eigenvalues of the symmetric
positive semi-definite product sqrt(S1) S2 sqrt(S1), which has the same spectrum as S1 S2; this
avoids scipy's general ``sqrtm`` and its complex round-off. Everything runs in float64 and tiny
negative eigenvalues (round-off of rank-deficient covariances) are clipped to zero.

From features, when both sets have fewer vectors than dimensions (the usual case for a few hundred
results against 2048-d features), the same trace is taken exactly in the small space: with centred
features X1 (n1, D) and X2 (n2, D), S1 S2 and (X1 X2^T)(X1 X2^T)^T / ((n1 - 1)(n2 - 1)) share their
non-zero eigenvalues, so tr((S1 S2)^(1/2)) is the sum of the singular values (nuclear norm) of the
(n1, n2) matrix X1 X2^T divided by sqrt((n1 - 1)(n2 - 1)); no 2048x2048 eigen-decomposition needed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from shmt_cli.metrics.inception import FidInceptionV3, inception_features
from shmt_cli.metrics.paper import ImageBatch


class GaussianStats(NamedTuple):
    """Mean (D,) and covariance (D, D) float64 of a feature set."""

    mean: np.ndarray
    cov: np.ndarray


def feature_statistics(features: np.ndarray) -> GaussianStats:
    """Mean and unbiased covariance (N - 1 denominator, as pytorch-fid) of (N, D) features, N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(
            f"FID needs at least 2 feature vectors in an (N, D) array, got shape {features.shape}"
        )
    return GaussianStats(features.mean(axis=0), np.cov(features, rowvar=False))


def sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD (D, D) matrix (negative round-off clipped)."""
    # torch's LAPACK path is several times faster than numpy's here for D = 2048.
    symmetric = torch.from_numpy(np.asarray(matrix, dtype=np.float64))
    eigenvalues, eigenvectors = torch.linalg.eigh((symmetric + symmetric.T) / 2.0)
    return ((eigenvectors * eigenvalues.clamp_min(0.0).sqrt()) @ eigenvectors.T).numpy()


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """tr((cov1 cov2)^(1/2)) for PSD covariances, via the eigenvalues of sqrt(cov1) cov2 sqrt(cov1)."""
    root1 = sqrt_psd(cov1)
    product = torch.from_numpy(root1 @ np.asarray(cov2, dtype=np.float64) @ root1)
    eigenvalues = torch.linalg.eigvalsh((product + product.T) / 2.0)
    return float(eigenvalues.clamp_min(0.0).sqrt().sum())


def trace_sqrt_product_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) of the two sets' covariances, as the nuclear norm of X1 X2^T (see module doc).

    features: (n1, D) and (n2, D), n >= 2. Cheap when n1, n2 are small; exact for any sizes.
    """
    centred1 = np.asarray(features1, dtype=np.float64) - np.mean(features1, axis=0)
    centred2 = np.asarray(features2, dtype=np.float64) - np.mean(features2, axis=0)
    cross = torch.from_numpy(centred1 @ centred2.T)
    nuclear = float(torch.linalg.svdvals(cross).sum())
    return nuclear / float(np.sqrt((len(centred1) - 1) * (len(centred2) - 1)))


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet (2-Wasserstein squared) distance between N(mean1, cov1) and N(mean2, cov2); >= 0 float."""
    mean1, mean2 = np.asarray(mean1, dtype=np.float64), np.asarray(mean2, dtype=np.float64)
    cov1, cov2 = (
        np.atleast_2d(np.asarray(cov1, dtype=np.float64)),
        np.atleast_2d(np.asarray(cov2, dtype=np.float64)),
    )
    if mean1.shape != mean2.shape or cov1.shape != cov2.shape or cov1.shape != (mean1.size, mean1.size):
        raise ValueError(
            f"mismatched Gaussian statistics: means {mean1.shape} {mean2.shape}, "
            f"covariances {cov1.shape} {cov2.shape}"
        )
    diff = mean1 - mean2
    distance = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt_product(cov1, cov2)
    # Identical sets give zero up to round-off, which may land a hair below it.
    return max(float(distance), 0.0)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two (N, D) feature sets (N may differ, each >= 2)."""
    stats1, stats2 = feature_statistics(features1), feature_statistics(features2)
    if stats1.mean.shape != stats2.mean.shape:
        raise ValueError(f"feature sizes differ: {stats1.mean.shape[0]} and {stats2.mean.shape[0]}")
    dims = stats1.mean.shape[0]
    if max(len(features1), len(features2)) >= dims:
        return frechet_distance(stats1.mean, stats1.cov, stats2.mean, stats2.cov)
    diff = stats1.mean - stats2.mean
    trace_root = trace_sqrt_product_from_features(features1, features2)
    distance = diff @ diff + np.trace(stats1.cov) + np.trace(stats2.cov) - 2.0 * trace_root
    return max(float(distance), 0.0)


def fid(
    model: FidInceptionV3,
    images1: ImageBatch,
    images2: ImageBatch,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> float:
    """FID between two sets of (H, W, 3) uint8 RGB images (e.g. references vs results), each >= 2 images.

    Few images give a biased, high-variance estimate (the paper-style number needs thousands); the
    value is still well defined and comparable between methods on the same sets.
    """
    return fid_from_features(
        inception_features(model, images1, batch_size, device),
        inception_features(model, images2, batch_size, device),
    )
