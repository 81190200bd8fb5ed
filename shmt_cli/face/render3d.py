"""Weight-free shaded 3D face render from 68 landmarks, in the style of 3DDFA_V2 as SHMT uses it.

SHMT's content representation includes a gray Phong-shaded face mesh on a black canvas of the
photo's size (3DDFA_V2 + Sim3DR). This module builds the same kind of image without any model file:
the generic surface of `surface.py` is posed from the landmarks (scaled orthographic camera), warped
onto them (thin-plate spline of the residuals), rasterised into an image-space depth map, and shaded
with the Sim3DR lighting (ambient 0.3, directional 0.6, specular 0.1 with exponent 5, light and
viewer at (0, 0, 5) in the mesh's normalised coordinates, white material).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from shmt_cli.face.surface import (
    CANONICAL_LANDMARKS,
    DEFAULT_REGION,
    DEFAULT_SHAPE,
    INNER_LIPS,
    FaceRegion,
    SurfaceShape,
    canonical_depth,
    canonical_landmarks_3d,
    region_outline,
)

AMBIENT = 0.3
DIFFUSE = 0.6
SPECULAR = 0.1
SPECULAR_EXPONENT = 5.0
LIGHT_POSITION = (0.0, 0.0, 5.0)
VIEWER_POSITION = (0.0, 0.0, 5.0)

# Faces wider than this (eye centre to eye centre, pixels) are rendered smaller and enlarged:
# the mesh cost grows with the face area and the shading has no detail finer than that.
MAX_INTEROCULAR_PX = 160.0
# Canonical grid step in output pixels: small enough that every pixel centre falls in a triangle.
_GRID_STEP_PX = 0.9
# The residual warp is smooth: it is evaluated on a coarse grid (canonical units) and resized.
_WARP_STEP = 0.05
# Landmark residuals after the rigid pose are partly noise and partly real shape; a strongly
# regularised spline follows the real part (expression, face proportions) without wobbling
# (chosen on the dev set: 10 beats 1e-3 by 0.015 correlation and 0.003 IoU).
_TPS_REGULARISATION = 10.0


@dataclass(frozen=True)
class Pose:
    """Scaled orthographic camera: image (x, y) = scale * rotation[:2] @ p + translation, depth z =
    scale * rotation[2] @ p for a canonical point p = (u, v, d); rotation is (3, 3) float64."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def angles_deg(self) -> tuple[float, float, float]:
        """(yaw, pitch, roll) in degrees with rotation = Rz(roll) @ Ry(yaw) @ Rx(pitch), for inspection."""
        r = self.rotation
        yaw = np.degrees(np.arcsin(np.clip(-r[2, 0], -1.0, 1.0)))
        pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
        roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
        return float(yaw), float(pitch), float(roll)


def fit_pose(landmarks: np.ndarray, points_3d: np.ndarray | None = None) -> Pose:
    """Least-squares scaled orthographic pose of the canonical 3D landmarks onto (68, 2) image landmarks."""
    model = canonical_landmarks_3d() if points_3d is None else points_3d
    model_centre = model.mean(axis=0)
    image_centre = landmarks.mean(axis=0)
    # Best affine camera first, then the nearest scaled rotation (orthonormal rows, equal scales).
    affine, *_ = np.linalg.lstsq(model - model_centre, landmarks - image_centre, rcond=None)
    u_mat, singular, vt = np.linalg.svd(affine.T, full_matrices=False)
    rows = u_mat @ vt
    rotation = np.vstack([rows, np.cross(rows[0], rows[1])])
    scale = float(singular.mean())
    translation = image_centre - scale * rotation[:2] @ model_centre
    return Pose(scale=scale, rotation=rotation, translation=translation)


def _tps_kernel(sq_dist: np.ndarray) -> np.ndarray:
    return np.where(sq_dist > 0.0, sq_dist * np.log(np.maximum(sq_dist, 1e-300)), 0.0)


def thin_plate_spline(
    anchors: np.ndarray, values: np.ndarray, queries: np.ndarray, regularisation: float | np.ndarray = 0.0
) -> np.ndarray:
    """Thin-plate spline through `values` (N, K) at `anchors` (N, 2), evaluated at `queries` (M, 2).

    `regularisation` (scalar or per anchor) trades exactness at the anchors for smoothness.
    """
    count = len(anchors)
    system = np.zeros((count + 3, count + 3))
    system[:count, :count] = _tps_kernel(((anchors[:, None] - anchors[None]) ** 2).sum(-1))
    system[:count, :count] += np.diag(np.broadcast_to(np.asarray(regularisation, float), (count,)))
    affine_basis = np.hstack([np.ones((count, 1)), anchors])
    system[:count, count:] = affine_basis
    system[count:, :count] = affine_basis.T
    rhs = np.zeros((count + 3, values.shape[1]))
    rhs[:count] = values
    weights = np.linalg.solve(system, rhs)
    kernel = _tps_kernel(((queries[:, None] - anchors[None]) ** 2).sum(-1))
    return kernel @ weights[:count] + weights[count] + queries @ weights[count + 1 :]


def _forehead_anchors(region: FaceRegion) -> np.ndarray:
    # Points on the forehead arc, except its two ends: those sit next to jaw points 0 and 16, whose
    # own residuals (large on the far side of a turned face) must not be pinned to zero beside them.
    outline = region_outline(region, points_per_side=3)
    return outline[18:-1]


def _grid_triangles(valid: np.ndarray) -> np.ndarray:
    """Two triangles per grid cell whose corners are all valid: (T, 3) int64 flat vertex ids."""
    ids = np.arange(valid.size).reshape(valid.shape)
    a, b = ids[:-1, :-1].ravel(), ids[:-1, 1:].ravel()
    c, d = ids[1:, :-1].ravel(), ids[1:, 1:].ravel()
    triangles = np.concatenate([np.stack([a, b, c], axis=1), np.stack([b, d, c], axis=1)])
    flat = valid.ravel()
    return triangles[flat[triangles[:, 0]] & flat[triangles[:, 1]] & flat[triangles[:, 2]]]


def rasterise(
    vertices: np.ndarray,
    triangles: np.ndarray,
    size_hw: tuple[int, int],
    attributes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Z-buffer a small-triangle mesh: the nearest surface (largest z) wins at each pixel centre.

    vertices: (V, 3) float (x, y pixels, z toward the viewer); triangles: (T, 3) int vertex ids;
    attributes: optional (V, K) float interpolated barycentrically on the winning triangle.
    Returns (depth (H, W) float64, -inf where empty; attributes (H, W, K) float64 or None).
    """
    height, width = size_hw
    tri_x, tri_y, tri_z = (vertices[:, axis][triangles] for axis in range(3))

    # Reductions over a length-3 axis are slow in numpy; two elementwise calls are not.
    def lowest(a: np.ndarray) -> np.ndarray:
        return np.minimum(np.minimum(a[:, 0], a[:, 1]), a[:, 2])

    def highest(a: np.ndarray) -> np.ndarray:
        return np.maximum(np.maximum(a[:, 0], a[:, 1]), a[:, 2])

    x0 = np.ceil(lowest(tri_x)).astype(np.int64)
    y0 = np.ceil(lowest(tri_y)).astype(np.int64)
    extent = np.maximum(np.floor(highest(tri_x)) - x0, np.floor(highest(tri_y)) - y0).astype(np.int64) + 1
    pixels, depths, owners, weights = [], [], [], []
    # Triangles are about a pixel wide; stretched ones (an opening mouth) get bigger search windows.
    low = 0
    for window in (2, 5, 16):
        group = np.nonzero((extent > low) & (extent <= window))[0]
        low = window
        if not len(group):
            continue
        offset_y, offset_x = (o.ravel()[None] for o in np.mgrid[0:window, 0:window])
        px, py = x0[group, None] + offset_x, y0[group, None] + offset_y
        ax, bx, cx = (tri_x[group, k : k + 1] for k in range(3))
        ay, by, cy = (tri_y[group, k : k + 1] for k in range(3))
        area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        area = np.where(np.abs(area) < 1e-12, np.nan, area)
        w_b = ((px - ax) * (cy - ay) - (py - ay) * (cx - ax)) / area
        w_c = ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) / area
        w_a = 1.0 - w_b - w_c
        inside = (w_a >= 0) & (w_b >= 0) & (w_c >= 0) & (px >= 0) & (px < width) & (py >= 0) & (py < height)
        rows, cols = np.nonzero(inside)
        bary = np.stack([w_a[rows, cols], w_b[rows, cols], w_c[rows, cols]], axis=1)
        owner_z = tri_z[group[rows]]
        pixels.append(py[rows, cols] * width + px[rows, cols])
        depths.append(bary[:, 0] * owner_z[:, 0] + bary[:, 1] * owner_z[:, 1] + bary[:, 2] * owner_z[:, 2])
        owners.append(group[rows])
        weights.append(bary)
    zbuf = np.full(height * width, -np.inf)
    if not pixels:
        return zbuf.reshape(height, width), None
    pixel, depth = np.concatenate(pixels), np.concatenate(depths)
    np.maximum.at(zbuf, pixel, depth)
    if attributes is None:
        return zbuf.reshape(height, width), None
    winner = depth == zbuf[pixel]
    owner, bary = np.concatenate(owners)[winner], np.concatenate(weights)[winner]
    values = np.zeros((height * width, attributes.shape[1]))
    values[pixel[winner]] = np.einsum("nk,nkc->nc", bary, attributes[triangles[owner]])
    return zbuf.reshape(height, width), values.reshape(height, width, -1)


@dataclass(frozen=True)
class FaceSurface:
    """The posed, warped face surface seen from the camera.

    depth: (H, W) float32 pixels, larger = nearer the viewer, 0 outside the face;
    mask: (H, W) bool, the face surface without the inner mouth;
    canonical_uv: (H, W, 2) float32 canonical (u, v) of the surface point at each pixel (0 outside);
    pose: the rigid part of the fit.
    """

    depth: np.ndarray
    mask: np.ndarray
    canonical_uv: np.ndarray
    pose: Pose


def face_surface(
    landmarks: np.ndarray,
    size_hw: tuple[int, int],
    shape: SurfaceShape = DEFAULT_SHAPE,
    region: FaceRegion = DEFAULT_REGION,
) -> FaceSurface:
    """Pose the generic surface from (68, 2) float64 (x, y) landmarks, warp it onto them and rasterise
    it into an (H, W) = size_hw canvas."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    height, width = size_hw
    points_3d = canonical_landmarks_3d(shape, region)
    pose = fit_pose(landmarks, points_3d)

    outline = region_outline(region)
    u_min, v_min = outline.min(axis=0) - 0.02
    u_max, v_max = outline.max(axis=0) + 0.02
    step = _GRID_STEP_PX / max(pose.scale, 1e-6)
    cols = int(np.ceil((u_max - u_min) / step)) + 1
    rows = int(np.ceil((v_max - v_min) / step)) + 1
    u = u_min + step * np.arange(cols)
    v = v_min + step * np.arange(rows)
    grid_u, grid_v = np.meshgrid(u, v)
    inside = np.zeros((rows, cols), np.uint8)
    outline_px = np.round((outline - [u_min, v_min]) / step * 16).astype(np.int32)
    cv2.fillPoly(inside, [outline_px], 1, lineType=cv2.LINE_8, shift=4)
    points = np.stack([grid_u, grid_v, canonical_depth(grid_u, grid_v, shape, region)], axis=-1)
    posed = pose.scale * points @ pose.rotation.T
    image_x = posed[..., 0] + pose.translation[0]
    image_y = posed[..., 1] + pose.translation[1]

    # Non-rigid part: what the rigid pose leaves unexplained at the landmarks, spread smoothly
    # over the face; forehead anchors keep the rigid pose where there are no landmarks.
    residual = landmarks - (pose.scale * points_3d @ pose.rotation[:2].T + pose.translation)
    forehead = _forehead_anchors(region)
    anchors = np.vstack([CANONICAL_LANDMARKS, forehead])
    values = np.vstack([residual, np.zeros_like(forehead)])
    coarse_cols = int(np.ceil((u_max - u_min) / _WARP_STEP)) + 2
    coarse_rows = int(np.ceil((v_max - v_min) / _WARP_STEP)) + 2
    coarse_u = u_min + _WARP_STEP * np.arange(coarse_cols)
    coarse_v = v_min + _WARP_STEP * np.arange(coarse_rows)
    coarse = np.stack(np.meshgrid(coarse_u, coarse_v), axis=-1).reshape(-1, 2)
    warp = thin_plate_spline(anchors, values, coarse, _TPS_REGULARISATION)
    warp = warp.reshape(coarse_rows, coarse_cols, 2).astype(np.float32)
    # Bilinear lookup of the coarse field at every grid vertex (coarse cell = _WARP_STEP).
    map_u = ((grid_u - u_min) / _WARP_STEP).astype(np.float32)
    map_v = ((grid_v - v_min) / _WARP_STEP).astype(np.float32)
    warp = cv2.remap(warp, map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    image_x += warp[..., 0]
    image_y += warp[..., 1]

    vertices = np.stack([image_x.ravel(), image_y.ravel(), posed[..., 2].ravel()], axis=1)
    triangles = _grid_triangles(inside.astype(bool))
    canonical_uv = np.stack([grid_u.ravel(), grid_v.ravel()], axis=1)
    zbuf, uv = rasterise(vertices, triangles, (height, width), canonical_uv)
    mask = np.isfinite(zbuf)
    hole = np.zeros((height, width), np.uint8)
    lips = np.round(landmarks[INNER_LIPS] * 16).astype(np.int32)
    cv2.fillPoly(hole, [lips], 1, lineType=cv2.LINE_8, shift=4)
    mask &= hole == 0
    depth = np.where(mask, zbuf, 0.0).astype(np.float32)
    uv = np.where(mask[..., None], uv, 0.0).astype(np.float32)
    return FaceSurface(depth=depth, mask=mask, canonical_uv=uv, pose=pose)


def face_depth(
    landmarks: np.ndarray,
    size_hw: tuple[int, int],
    shape: SurfaceShape = DEFAULT_SHAPE,
    region: FaceRegion = DEFAULT_REGION,
) -> tuple[np.ndarray, np.ndarray]:
    """(depth (H, W) float32 pixels, larger = nearer, 0 outside; mask (H, W) bool) of the face surface
    for (68, 2) float64 (x, y) landmarks; see `face_surface`."""
    surface = face_surface(landmarks, size_hw, shape, region)
    return surface.depth, surface.mask


def depth_normals(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) float32 (x right, y down, z toward the viewer) of an image depth map.

    Central differences inside the face, one-sided at its border; zero vectors outside `mask`.
    """
    z = depth.astype(np.float64)

    def slope(axis: int) -> np.ndarray:
        ahead = np.roll(z, -1, axis=axis)
        behind = np.roll(z, 1, axis=axis)
        ahead_ok = np.roll(mask, -1, axis=axis) & mask
        behind_ok = np.roll(mask, 1, axis=axis) & mask
        # np.roll wraps around: the canvas edge has no neighbour beyond it.
        last = [slice(None)] * 2
        last[axis] = -1
        ahead_ok[tuple(last)] = False
        last[axis] = 0
        behind_ok[tuple(last)] = False
        forward = np.where(ahead_ok, ahead - z, 0.0)
        backward = np.where(behind_ok, z - behind, 0.0)
        count = ahead_ok.astype(np.float64) + behind_ok
        return (forward + backward) / np.maximum(count, 1.0)

    normals = np.stack([-slope(1), -slope(0), np.ones_like(z)], axis=-1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    normals[~mask] = 0.0
    return normals.astype(np.float32)


def _normalised_positions(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # Sim3DR lights the mesh in coordinates shifted to the origin and scaled so that the largest
    # extent spans 2, centred per axis; the point light at (0, 0, 5) then sits a few face sizes away.
    ys, xs = np.nonzero(mask)
    points = np.stack([xs, ys, depth[ys, xs]], axis=1).astype(np.float64)
    low = points.min(axis=0)
    span = points.max(axis=0) - low
    largest = max(float(span.max()), 1e-6)
    normalised = (points - low) / largest * 2.0 - span / largest
    out = np.zeros((*mask.shape, 3))
    out[ys, xs] = normalised
    return out


def shade(normals: np.ndarray, mask: np.ndarray, depth: np.ndarray | None = None) -> np.ndarray:
    """Sim3DR Phong intensity (H, W) float32 in [0, 1] (0 outside `mask`) for unit `normals` (H, W, 3).

    With `depth` the light and viewer are points at (0, 0, 5) in normalised mesh coordinates, as in
    Sim3DR; without it they are at infinity along +z.
    """
    if depth is not None and mask.any():
        positions = _normalised_positions(depth, mask)
        to_light = np.asarray(LIGHT_POSITION) - positions
        to_viewer = np.asarray(VIEWER_POSITION) - positions
        to_light /= np.linalg.norm(to_light, axis=-1, keepdims=True)
        to_viewer /= np.linalg.norm(to_viewer, axis=-1, keepdims=True)
    else:
        to_light = np.broadcast_to(np.array([0.0, 0.0, 1.0]), normals.shape)
        to_viewer = to_light
    n = normals.astype(np.float64)
    cosine = (n * to_light).sum(axis=-1)
    reflection = 2.0 * cosine[..., None] * n - to_light
    specular = np.clip((reflection * to_viewer).sum(axis=-1), 0.0, 1.0) ** SPECULAR_EXPONENT
    light = AMBIENT + DIFFUSE * np.clip(cosine, 0.0, 1.0) + SPECULAR * specular
    return np.where(mask, np.clip(light, 0.0, 1.0), 0.0).astype(np.float32)


def render_face_normals(
    landmarks: np.ndarray, size_hw: tuple[int, int], shape: SurfaceShape = DEFAULT_SHAPE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normals (H, W, 3) float32, mask (H, W) bool, depth (H, W) float32) of the face surface."""
    depth, mask = face_depth(landmarks, size_hw, shape)
    return depth_normals(depth, mask), mask, depth


def render_face(
    landmarks: np.ndarray, size_hw: tuple[int, int], shape: SurfaceShape = DEFAULT_SHAPE
) -> np.ndarray:
    """Gray shaded face (H, W, 3) uint8, R = G = B, face about 76..255 on an exactly 0 background.

    landmarks: (68, 2) float64 (x, y) pixels in dlib order; size_hw: (H, W) of the photo.
    Very large faces are rendered at a reduced size and enlarged (the shading is smooth).
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    interocular = np.linalg.norm(landmarks[42:48].mean(axis=0) - landmarks[36:42].mean(axis=0))
    factor = min(1.0, MAX_INTEROCULAR_PX / max(interocular, 1e-6))
    height, width = size_hw
    small_hw = (max(1, round(height * factor)), max(1, round(width * factor)))
    # Pixel centres map as x_small = (x + 0.5) * factor - 0.5 under cv2.resize.
    small_landmarks = (landmarks + 0.5) * factor - 0.5 if factor < 1.0 else landmarks
    normals, mask, depth = render_face_normals(small_landmarks, small_hw, shape)
    gray = np.round(shade(normals, mask, depth) * 255.0).astype(np.uint8)
    gray[~mask] = 0
    if factor < 1.0:
        mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        gray = cv2.resize(gray, (width, height), interpolation=cv2.INTER_LINEAR)
        # Keep the lighting floor at the silhouette (no blend with the black background).
        gray = np.where(mask, np.maximum(gray, round(AMBIENT * 255.0)), 0).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)
