"""Smooth fields and texture bands of the classic engine (engines/classic.py uses these).

Filling a region where the warped reference lacks it (normalised convolution), the Laplacian bands
finer than a level, and the guard that keeps the source's dark fine detail (nostrils) from being
lightened by the reference's texture.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np
import torch

from shmt_cli.pyramid import laplacian_pyramid, reconstruct_pyramid

# Weight of the fallback (the region's mean reference colour) in the normalised convolution, relative
# to a pixel surrounded by valid reference pixels: only matters far from any of them.
_FILL_PRIOR = 1e-3
# Dark detail: the source's lightness below its local mean (Gaussian sigma in face widths) by this many
# L units and more is fully guarded; nostrils are 10-30 L units below theirs.
_DARK_SIGMA = 0.06
_DARK_FULL = 5.0
# Structure: the lightness difference's gradient at this scale (Gaussian sigma, px) at which a pore, a
# glitter speck or a fine painted pattern has faded and an edge (a jaw contour, a fold, a shadow's
# border) has not. In pixels, not face widths: the texture bands it guards (h0, h1) are pixel scales.
_STRUCTURE_SIGMA = 2.0


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (sigma px, at least 0.3) with replicated borders."""
    return cv2.GaussianBlur(image, (0, 0), sigmaX=max(sigma, 0.3), borderType=cv2.BORDER_REPLICATE)


def smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (h, w[, C]) float32 image; wide ones run on a 2x or 4x smaller copy.

    The result only feeds smooth fields (fills, tones), where the resampling error is far below a
    level of the output.
    """
    factor = 4 if sigma >= 6.0 else 2 if sigma >= 3.0 else 1
    if factor == 1:
        return blur(image, sigma)
    height, width = image.shape[:2]
    small = cv2.resize(image, (-(-width // factor), -(-height // factor)), interpolation=cv2.INTER_AREA)
    return cv2.resize(blur(small, sigma / factor), (width, height), interpolation=cv2.INTER_LINEAR)


def fill_region(values: np.ndarray, valid: np.ndarray, fallback: np.ndarray, sigma: float) -> np.ndarray:
    """Values where `valid` (soft, (h, w)), elsewhere a normalised convolution of the valid ones.

    values: (h, w) or (h, w, C) float32; fallback: scalar or (C,), used far from any valid pixel.
    """
    weight = valid if values.ndim == 2 else valid[..., None]
    density = smooth(valid, sigma)
    if values.ndim == 3:
        density = density[..., None]
    prior = np.float32(_FILL_PRIOR)
    filled = (smooth(values * weight, sigma) + prior * np.float32(fallback)) / (density + prior)
    return filled + weight * (values - filled)


def fine_details(x: np.ndarray, level: int, depths: Iterable[int]) -> list[np.ndarray]:
    """For each depth d, the sum of the Laplacian bands h0..h_{min(d, level)-1} of an (h, w) float32 image.

    One decomposition serves every depth; depth 0 (or level 0) gives zeros.
    """
    depths = [min(depth, level) for depth in depths]
    if max(depths, default=0) == 0:
        return [np.zeros_like(x) for _ in depths]
    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    details = []
    with torch.no_grad():
        bands = laplacian_pyramid(tensor, max(depths))
        for depth in depths:
            if depth == 0:
                details.append(np.zeros_like(x))
                continue
            # Bands h0..h_{depth-1} over a zero residual of level `depth`'s size: no upsampling of zeros.
            kept = [*bands[:depth], torch.zeros_like(bands[depth])]
            details.append(reconstruct_pyramid(kept)[0, 0].numpy())
    return details


def guard_dark_detail(
    texture: np.ndarray, source_l: np.ndarray, where: np.ndarray, width: float
) -> np.ndarray:
    """`texture` (L units, (h, w) float32) with its lightening removed where the source is darker than
    its surroundings inside `where` ((h, w) float32 weights in [0, 1]).

    The reference's skin texture is its own relief: where its nostril lies a little off the source's,
    the source's nostril takes the reference's lighter skin and washes out. Darkening still passes.
    """
    darkness = blur(source_l, _DARK_SIGMA * width) - source_l
    guard = np.clip(darkness / np.float32(_DARK_FULL), 0.0, 1.0) * where
    return texture - guard * np.maximum(texture, 0.0)


def structure_gate(difference: np.ndarray, limit: float) -> np.ndarray:
    """(h, w) float32 in (0, 1]: 1 where the lightness `difference` (reference minus source, L units)
    has no structure, falling as 1 / (1 + (g / limit)²) with its gradient g (L units per pixel) at
    `_STRUCTURE_SIGMA`, taken as the largest within a pixel (the fine bands of an edge reach a little
    beyond its smoothed gradient).

    Fine texture is pores, specks and fine patterns: they vanish at that scale. An edge of either face
    (the reference's jaw contour or a fold, the source's own outline) does not, and its fine bands would
    draw the reference's structure on the source or wipe out the source's.
    """
    smoothed = blur(difference, _STRUCTURE_SIGMA)
    gx = cv2.Sobel(smoothed, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(smoothed, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    spread = cv2.dilate(gx * gx + gy * gy, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    return (1.0 / (1.0 + spread / np.float32(limit * limit))).astype(np.float32)
