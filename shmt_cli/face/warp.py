"""Piecewise-affine warp of a face from one 68-landmark geometry onto another.

The 68 iBUG points only cover brows-to-chin, so the triangulation is extended with points derived from
the landmarks (the brows lifted over the forehead, the jaw pushed outwards) and with the crop's corners
and edge midpoints as fixed anchors; the whole crop is then covered and its border does not move.

A warp is computed once per (reference, source) pair as a dense `cv2.remap` map and can be applied to
any number of images and label maps of that geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

# Forehead points: brow points moved up by this fraction of the brow-to-chin distance (the forehead is
# roughly half as tall as the brow-to-chin span) plus a half-way ring so the forehead does not stretch
# as one big triangle.
FOREHEAD_LIFTS = (0.25, 0.5)
BROW_POINTS = (17, 19, 21, 22, 24, 26)
# Jaw points pushed away from the face centre by this fraction of their distance to it: carries the
# cheeks' surroundings (ears, hair, neck) along with the face instead of stretching them.
JAW_PUSH = 0.18
JAW_POINTS = tuple(range(0, 17, 2))
# Extra points closer than this (px) to an already used point are dropped so the triangulation stays valid.
MIN_POINT_GAP = 1.0


@dataclass(frozen=True)
class WarpMap:
    """Dense backward map for `cv2.remap`: output pixel (y, x) samples the input at (map_y, map_x).

    map_x, map_y: (H, W) float32 in input pixel coordinates.
    """

    map_x: np.ndarray
    map_y: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the warped output."""
        return self.map_x.shape[0], self.map_x.shape[1]


def extended_points(landmarks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The 68 landmarks followed by derived forehead/jaw points and fixed crop anchors.

    landmarks: (68, 2) float (x, y); size: (height, width) of the crop.
    Returns (68 + 6·len(FOREHEAD_LIFTS) + 9 + 8, 2) float64; derived points may lie outside the crop.
    The order is fixed, so the i-th point of two faces correspond.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {points.shape}")
    height, width = size
    chin = points[8]
    brow_centre = points[17:27].mean(axis=0)
    up = brow_centre - chin
    forehead = [points[list(BROW_POINTS)] + lift * up for lift in FOREHEAD_LIFTS]
    centre = points[27:36].mean(axis=0)
    jaw = points[list(JAW_POINTS)]
    pushed_jaw = jaw + JAW_PUSH * (jaw - centre)
    derived = np.concatenate([*forehead, pushed_jaw])
    right, bottom = width - 1.0, height - 1.0
    anchors = np.array(
        [
            [0.0, 0.0],
            [right / 2, 0.0],
            [right, 0.0],
            [right, bottom / 2],
            [right, bottom],
            [right / 2, bottom],
            [0.0, bottom],
            [0.0, bottom / 2],
        ]
    )
    return np.concatenate([points, derived, anchors])


def _usable_indices(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Indices of points to triangulate: every landmark, the anchors, and derived points that lie inside
    the crop without crowding an earlier point."""
    height, width = size
    gaps = np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
    crowded = (np.tril(gaps < MIN_POINT_GAP, k=-1)).any(axis=1)
    inside = (
        (points[:, 0] >= MIN_POINT_GAP)
        & (points[:, 0] <= width - 1 - MIN_POINT_GAP)
        & (points[:, 1] >= MIN_POINT_GAP)
        & (points[:, 1] <= height - 1 - MIN_POINT_GAP)
    )
    derived = np.zeros(len(points), dtype=bool)
    derived[68 : len(points) - 8] = True
    drop = derived & (crowded | ~inside)
    return np.flatnonzero(~drop)


def delaunay_triangles(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Delaunay triangulation of (N, 2) float points inside a (height, width) crop: (T, 3) int indices."""
    height, width = size
    subdiv = cv2.Subdiv2D((-1, -1, width + 2, height + 2))
    subdiv.insert([(float(x), float(y)) for x, y in points])
    corners = subdiv.getTriangleList().reshape(-1, 3, 2)
    # Subdiv2D stores float32 coordinates, so corners map back to point indices exactly; triangles
    # touching its virtual outer vertices (far outside the crop) match no point and are dropped.
    keys = np.ascontiguousarray(points.astype(np.float32)).view(np.int64)[:, 0]
    wanted = np.ascontiguousarray(corners.astype(np.float32)).view(np.int64)[..., 0]
    order = np.argsort(keys)
    slot = np.clip(np.searchsorted(keys, wanted, sorter=order), 0, len(keys) - 1)
    indices = order[slot]
    found = keys[indices] == wanted
    return indices[found.all(axis=1)].astype(np.int64)


def piecewise_affine_map(
    src_landmarks: np.ndarray,
    dst_landmarks: np.ndarray,
    size: tuple[int, int],
    box: tuple[int, int, int, int] | None = None,
) -> WarpMap:
    """Backward map that moves a face with `src_landmarks` onto `dst_landmarks` in a (height, width) crop.

    Both landmark sets are (68, 2) float (x, y) in crop pixels. Output pixels inside a destination
    triangle sample the input through that triangle's affine map; the crop border stays in place.
    box: optional output window (top, bottom, left, right) of the crop; the map then covers only those
    pixels (still sampling the whole input), which saves time when only a region is needed.
    """
    # Derived points are used only where they fall inside the output crop (it is triangulated there);
    # on the input side they may lie outside it (sampled with a replicated border), so a forehead above
    # the input's top edge is not squeezed onto the edge row.
    src_points = extended_points(src_landmarks, size)
    dst_points = extended_points(dst_landmarks, size)
    usable = _usable_indices(dst_points, size)
    src_points, dst_points = src_points[usable], dst_points[usable]
    triangles = delaunay_triangles(dst_points, size)

    # Per triangle, coefficients C (3, 2) with [x, y, 1] @ C = source (x, y) for destination (x, y).
    dst_h = np.concatenate([dst_points[triangles], np.ones((len(triangles), 3, 1))], axis=2)
    coefficients = np.linalg.pinv(dst_h) @ src_points[triangles]

    height, width = size
    owner = np.full((height, width), -1, dtype=np.int32)
    # Sub-pixel vertex positions (shift 4 = 1/16 px) so shared edges rasterise consistently.
    for index, triangle in enumerate(triangles):
        vertices = np.round(dst_points[triangle] * 16).astype(np.int32)
        cv2.fillConvexPoly(owner, vertices, int(index), lineType=cv2.LINE_8, shift=4)

    # Pixels no triangle claimed (rounding at the crop border) keep their place, as the anchors do
    # (border pixels claimed by a neighbouring triangle move by under a pixel):
    # they get an extra identity "triangle" at index T.
    identity = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    table = np.concatenate([coefficients, identity[None]]).reshape(-1, 6).astype(np.float32)
    owner[owner < 0] = len(triangles)
    top, bottom, left, right = (0, height, 0, width) if box is None else box
    coeff = table[owner[top:bottom, left:right]]
    xs, ys = _pixel_grid(height, width)
    xs, ys = xs[top:bottom, left:right], ys[top:bottom, left:right]
    map_x = xs * coeff[..., 0] + ys * coeff[..., 2] + coeff[..., 4]
    map_y = xs * coeff[..., 1] + ys * coeff[..., 3] + coeff[..., 5]
    return WarpMap(map_x, map_y)


@lru_cache(maxsize=4)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    xs = np.broadcast_to(np.arange(width, dtype=np.float32)[None, :], (height, width))
    ys = np.broadcast_to(np.arange(height, dtype=np.float32)[:, None], (height, width))
    return xs, ys


def apply_warp(image: np.ndarray, warp: WarpMap, labels: bool = False) -> np.ndarray:
    """Warp an (H, W) or (H, W, C) array with a precomputed map; same dtype.

    Images interpolate bilinearly; label maps (`labels=True`) take the nearest label. Outside the
    input the border is replicated (the map never leaves the crop by much).
    """
    interpolation = cv2.INTER_NEAREST if labels else cv2.INTER_LINEAR
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels <= 4:
        return cv2.remap(image, warp.map_x, warp.map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)
    # cv2.remap handles at most 4 channels at once.
    parts = [
        cv2.remap(
            np.ascontiguousarray(image[..., start : start + 4]),
            warp.map_x,
            warp.map_y,
            interpolation,
            borderMode=cv2.BORDER_REPLICATE,
        )
        for start in range(0, channels, 4)
    ]
    parts = [part[..., None] if part.ndim == 2 else part for part in parts]
    return np.concatenate(parts, axis=2)


def warp_to_landmarks(
    image: np.ndarray,
    src_landmarks: np.ndarray,
    dst_landmarks: np.ndarray,
    size: tuple[int, int] | None = None,
    labels: bool = False,
) -> np.ndarray:
    """Warp `image` (face at `src_landmarks`) so its face lies on `dst_landmarks`.

    image: (H, W[, C]) of any dtype cv2.remap accepts; label maps with `labels=True` (nearest).
    size: (height, width) of the output, default the input's; landmarks are (68, 2) float (x, y).
    """
    out_size = image.shape[:2] if size is None else size
    warp = piecewise_affine_map(src_landmarks, dst_landmarks, (int(out_size[0]), int(out_size[1])))
    return apply_warp(image, warp, labels=labels)
