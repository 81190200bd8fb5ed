"""Quarter turns of photos and of points: searching a sideways photo for its face.

A rotation is the number of degrees (0, 90, 180, 270) the photo is turned counter-clockwise, as
``np.rot90`` turns it, before detection. Points found in the turned photo map back to the photo as
it was, so a face is aligned (and pasted back) in the original photo without ever rotating it.
"""

from __future__ import annotations

import numpy as np

ROTATIONS = (0, 90, 180, 270)


def rotate_image(image: np.ndarray, degrees: int) -> np.ndarray:
    """(H, W, ...) image turned counter-clockwise by a multiple of 90 degrees (contiguous copy)."""
    if degrees not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {degrees}")
    return np.ascontiguousarray(np.rot90(image, k=degrees // 90))


def unrotate_points(points: np.ndarray, degrees: int, shape: tuple[int, ...]) -> np.ndarray:
    """(N, 2) (x, y) points of the turned photo mapped into the photo as it was.

    shape: (H, W, ...) of the photo *before* it was turned. Pixel-centre coordinates.
    """
    if degrees not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {degrees}")
    height, width = int(shape[0]), int(shape[1])
    x, y = np.asarray(points, dtype=np.float64).T
    # np.rot90 by 90°: turned[i, j] = photo[j, W-1-i], i.e. turned (x=j, y=i) is photo (x=W-1-i, y=j).
    if degrees == 0:
        back = (x, y)
    elif degrees == 90:
        back = (width - 1 - y, x)
    elif degrees == 180:
        back = (width - 1 - x, height - 1 - y)
    else:
        back = (y, height - 1 - x)
    return np.stack(back, axis=1)


def rotate_points(points: np.ndarray, degrees: int, shape: tuple[int, ...]) -> np.ndarray:
    """(N, 2) (x, y) points of the photo mapped into the photo turned by `degrees` (inverse of
    unrotate_points). shape: (H, W, ...) of the photo before it was turned."""
    if degrees not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {degrees}")
    # Turning by `degrees` is undone by turning the turned photo (W x H after a quarter turn) on by the rest.
    turned_shape = (shape[1], shape[0]) if degrees in (90, 270) else (shape[0], shape[1])
    return unrotate_points(points, (360 - degrees) % 360, turned_shape)
