"""Laplacian pyramid with the 5x5 binomial kernel, as SHMT builds its texture detail (spec §1.7).

One implementation for every caller (the `decompose` command, the SHMT engine, the classic engine,
training). Tensors are (B, C, H, W) floating point on any device; every channel is filtered on its own.

Definitions (K = k kᵀ / 256, k = [1, 4, 6, 4, 1]):

* ``gaussian_blur(x)``: reflect-101 padding by 2 (mirror without repeating the edge pixel, OpenCV
  BORDER_REFLECT_101), then a valid 5x5 convolution with K.
* ``downsample(x)``: ``x[..., ::2, ::2]`` (keeps even rows and columns, so H -> ceil(H / 2)).
* ``upsample(x)``: x placed at the even positions of a zero (2H, 2W) grid, then blurred with 4K.
* Decomposition with L levels: c0 = x; d = downsample(blur(ci)); hi = ci - upsample(d); c(i+1) = d.
  Result ``[h0, ..., h(L-1), cL]``; for a 256² input the sizes are 256, 128, 64, 32, 16, ... and the
  residual is 256 / 2^L.

Odd sizes. ``upsample(downsample(c))`` is one row/column too large when c has an odd side. The official
code then resizes it to c's size with nearest interpolation; from H + 1 to H that picks source rows
floor(i · (H + 1) / H) = i, i.e. it simply drops the last row/column. This module crops, which is the
same result, keeps every upsampled pixel at its true position, and matches ``cv2.pyrDown``/``cv2.pyrUp``
(with ``dstsize``) on any size. Reconstruction is exact for every size. Every decomposed level must be
at least 3 pixels on each side (the reflect padding needs it); see ``max_levels``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BINOMIAL_5 = (1.0, 4.0, 6.0, 4.0, 1.0)
_MIN_SIDE = 3


def binomial_kernel(
    channels: int, device: torch.device, dtype: torch.dtype, gain: float = 1.0
) -> torch.Tensor:
    """Depth-wise 5x5 binomial kernel ``gain · k kᵀ / 256``, shape (channels, 1, 5, 5)."""
    taps = torch.tensor(_BINOMIAL_5, device=device, dtype=dtype)
    kernel = torch.outer(taps, taps) / 256.0
    if gain != 1.0:
        kernel = kernel * gain
    return kernel.expand(channels, 1, 5, 5).contiguous()


def gaussian_blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Reflect-101 padded 5x5 binomial blur of (B, C, H, W) float, H and W >= 3; same shape and dtype."""
    _check_side(x)
    channels = x.shape[1]
    kernel = binomial_kernel(channels, x.device, x.dtype, gain)
    # torch's "reflect" mode mirrors without repeating the edge pixel, i.e. BORDER_REFLECT_101.
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    return F.conv2d(padded, kernel, groups=channels)


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Even rows and columns of (B, C, H, W): (B, C, ceil(H / 2), ceil(W / 2))."""
    return x[..., ::2, ::2]


def upsample(x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Zero-insertion x2 upsampling followed by the 4K blur: (B, C, H, W) -> (B, C, 2H, 2W).

    With ``size`` (at most 2H x 2W) the result is cropped to it (see "Odd sizes" in the module docstring).
    """
    batch, channels, height, width = x.shape
    grid = x.new_zeros(batch, channels, 2 * height, 2 * width)
    grid[..., ::2, ::2] = x
    # Gain 4: three of every four grid samples are zero, so the blur must restore the mean level.
    up = gaussian_blur(grid, gain=4.0)
    if size is None:
        return up
    height, width = int(size[0]), int(size[1])
    if height > up.shape[-2] or width > up.shape[-1]:
        raise ValueError(f"cannot crop a {tuple(up.shape[-2:])} upsampled level to the larger {tuple(size)}")
    return up[..., :height, :width]


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Bands ``[h0, ..., h(levels-1), residual]`` of (B, C, H, W) float; ``levels + 1`` tensors.

    h_i has the size of the i-th Gaussian level, ceil(H / 2^i) x ceil(W / 2^i); values are in the
    input's units (differences, so about [-2, 2] for a [-1, 1] image). ``levels = 0`` returns ``[x]``.
    """
    if levels < 0:
        raise ValueError(f"levels must be >= 0, got {levels}")
    if levels > max_levels(x.shape[-2], x.shape[-1]):
        raise ValueError(
            f"{levels} levels need every level at least {_MIN_SIDE} px; "
            f"a {x.shape[-2]}x{x.shape[-1]} input allows {max_levels(x.shape[-2], x.shape[-1])}"
        )
    bands: list[torch.Tensor] = []
    current = x
    for _ in range(levels):
        coarser = downsample(gaussian_blur(current))
        bands.append(current - upsample(coarser, size=current.shape[-2:]))
        current = coarser
    bands.append(current)
    return bands


def reconstruct_pyramid(bands: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of ``laplacian_pyramid``: the (B, C, H, W) image of band 0's size."""
    if not bands:
        raise ValueError("bands is empty")
    image = bands[-1]
    for band in reversed(bands[:-1]):
        image = band + upsample(image, size=band.shape[-2:])
    return image


def max_levels(height: int, width: int) -> int:
    """Largest number of bands a height x width input allows (each decomposed level needs >= 3 px)."""
    levels = 0
    while min(height, width) >= _MIN_SIDE:
        levels += 1
        height, width = (height + 1) // 2, (width + 1) // 2
    return levels


def _check_side(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < _MIN_SIDE:
        raise ValueError(f"reflect padding needs H and W >= {_MIN_SIDE}, got {tuple(x.shape[-2:])}")
