"""SHMT's training augmentations (spec §1.5), each a pure function of explicit parameters.

The official dataset draws its parameters inside albumentations 1.2.1 from Python's global ``random``; we
cannot (and do not try to) reproduce that stream. Instead every transform here takes its drawn
parameters as arguments and reproduces albumentations' pixels bit-exactly for them (OpenCV, NumPy and
SciPy's ``gaussian_filter``), and separate ``draw_*`` functions draw the parameters from a
``numpy.random.Generator`` with the official ranges and probabilities.

Arrays are channels-last NumPy uint8: images (H, W, C) with C = 3 (RGB) or 6 ([RGB ‖ 3D render]), label
maps (H, W) of integer ids. Label maps always use nearest-neighbour interpolation and a 0 (background)
border, so they stay integer ids of the input's set (plus 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

# Official ranges: ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2).
JITTER_STRENGTH = 0.2
HUE_SHIFT = 0.2
# A1 (shared colour jitter) fires with p = 0.5; A2 (content jitter) always.
A1_PROBABILITY = 0.5
A2_PROBABILITY = 1.0
RESIZE_SIZE = 286
CROP_SIZE = 256
ROTATION_LIMIT = 45.0
ROTATION_PROBABILITY = 0.5
ELASTIC_ALPHA = 120.0
ELASTIC_SIGMA = 10.0
ELASTIC_ALPHA_AFFINE = 50.0
ELASTIC_PROBABILITY = 0.8
# albumentations seeds the elastic field's RandomState with random.randint(0, 10000) (both ends included).
ELASTIC_SEED_MAX = 10000
# The four colour operations, indexed as in ColorJitter's ``order``.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


# ----------------------------------------------------------------------------------------------------
# Colour jitter.


@dataclass(frozen=True)
class JitterParams:
    """One ColorJitter draw: brightness, contrast, saturation factors (neutral 1) and hue shift (neutral 0,
    a fraction of the hue circle), applied in ``order`` (a permutation of BRIGHTNESS..HUE)."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    order: tuple[int, ...] = (BRIGHTNESS, CONTRAST, SATURATION, HUE)


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Multiply every channel by ``factor`` (uint8 LUT, values clipped to 0..255 then truncated)."""
    if factor == 1:
        return image
    lut = np.clip(np.arange(256) * factor, 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend towards the mean gray level: v·c + mean·(1 − c), mean of the whole RGB->gray image.

    The mean includes any black background, so c < 1 lifts pure black to trunc(mean·(1 − c)).
    """
    if factor == 1:
        return image
    mean = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean()
    lut = np.clip(np.arange(256) * factor + mean * (1 - factor), 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the image's own gray version (cv2.addWeighted: rounded and saturated to uint8)."""
    if factor == 1:
        return image
    gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(image, factor, gray, 1 - factor, 0)


def adjust_hue(image: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue by ``shift`` × 360° in OpenCV's 8-bit HSV (H in 0..179)."""
    if shift == 0:
        return image
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    lut = np.mod(np.arange(256, dtype=np.int16) + 180 * shift, 180).astype(np.uint8)
    hsv[..., 0] = cv2.LUT(hsv[..., 0], lut)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def color_jitter(image: np.ndarray, params: JitterParams) -> np.ndarray:
    """ColorJitter on an (H, W, 3) uint8 RGB image; returns a new (H, W, 3) uint8 image."""
    _check_image(image, channels=(3,))
    steps = {
        BRIGHTNESS: lambda x: adjust_brightness(x, params.brightness),
        CONTRAST: lambda x: adjust_contrast(x, params.contrast),
        SATURATION: lambda x: adjust_saturation(x, params.saturation),
        HUE: lambda x: adjust_hue(x, params.hue),
    }
    out = np.ascontiguousarray(image)
    for step in params.order:
        out = steps[step](out)
    return out if out is not image else out.copy()


def draw_jitter(rng: np.random.Generator) -> JitterParams:
    """brightness, contrast, saturation ~ U[0.8, 1.2]; hue ~ U[−0.2, 0.2]; order a uniform permutation."""
    low, high = 1 - JITTER_STRENGTH, 1 + JITTER_STRENGTH
    brightness, contrast, saturation = (float(v) for v in rng.uniform(low, high, 3))
    hue = float(rng.uniform(-HUE_SHIFT, HUE_SHIFT))
    order = tuple(int(v) for v in rng.permutation(4))
    return JitterParams(brightness, contrast, saturation, hue, order)


def draw_maybe_jitter(rng: np.random.Generator, probability: float) -> JitterParams | None:
    """With ``probability`` a ``draw_jitter`` draw, else None (not applied).

    Always consumes the same number of draws, so later draws do not depend on whether it fired.
    """
    fires = rng.random() < probability
    params = draw_jitter(rng)
    return params if fires else None


# ----------------------------------------------------------------------------------------------------
# Geometry.


def resize(image: np.ndarray, size: int = RESIZE_SIZE) -> np.ndarray:
    """Bilinear resize of an (H, W, C) uint8 image to (size, size, C) (aspect ratio not kept)."""
    _check_image(image)
    return _per_chunk(image, lambda x: cv2.resize(x, (size, size), interpolation=cv2.INTER_LINEAR))


def resize_labels(labels: np.ndarray, size: int = RESIZE_SIZE) -> np.ndarray:
    """Nearest resize of an (h, w) label map to (size, size) (from any size: 512² official, 256² ours)."""
    _check_labels(labels)
    return cv2.resize(np.ascontiguousarray(labels), (size, size), interpolation=cv2.INTER_NEAREST)


@dataclass(frozen=True)
class CropParams:
    """Top-left corner (y, x) of the crop window, in pixels."""

    y: int
    x: int


def crop(array: np.ndarray, params: CropParams, size: int = CROP_SIZE) -> np.ndarray:
    """The (size, size[, C]) window at (params.y, params.x) of an image or label map (a copy)."""
    height, width = array.shape[:2]
    if not (0 <= params.y <= height - size and 0 <= params.x <= width - size):
        raise ValueError(f"crop {size}² at ({params.y}, {params.x}) leaves a {height}x{width} array")
    return array[params.y : params.y + size, params.x : params.x + size].copy()


def crop_from_fractions(
    y_fraction: float, x_fraction: float, in_size: int = RESIZE_SIZE, size: int = CROP_SIZE
) -> CropParams:
    """The window albumentations' RandomCrop picks for h_start, w_start in [0, 1):
    offset = int((in_size − size + 1) · fraction), i.e. 0..30 for 286 -> 256."""
    return CropParams(int((in_size - size + 1) * y_fraction), int((in_size - size + 1) * x_fraction))


def draw_crop(rng: np.random.Generator, in_size: int = RESIZE_SIZE, size: int = CROP_SIZE) -> CropParams:
    """Offsets uniform over 0..in_size − size on each axis (0..30 for 286 -> 256)."""
    y_fraction, x_fraction = rng.random(2)
    return crop_from_fractions(float(y_fraction), float(x_fraction), in_size, size)


def rotation_matrix(angle: float, size: int = CROP_SIZE) -> np.ndarray:
    """(2, 3) float64 matrix rotating by ``angle`` degrees (counter-clockwise) about the pixel centre."""
    centre = (size / 2 - 0.5, size / 2 - 0.5)
    return cv2.getRotationMatrix2D(centre, angle, 1.0)


def rotate(image: np.ndarray, angle: float) -> np.ndarray:
    """Rotate an (H, W, C) uint8 square image by ``angle`` degrees; bilinear, black border.

    More than 4 channels are warped in chunks as albumentations does (0–3 together, the rest one by one):
    OpenCV 5's 2-channel warp rounds differently from its 1-, 3- and 4-channel warps.
    """
    _check_image(image)
    return _per_chunk(image, lambda x: _warp(x, rotation_matrix(angle, image.shape[0]), cv2.INTER_LINEAR))


def rotate_labels(labels: np.ndarray, angle: float) -> np.ndarray:
    """Rotate a square (H, W) label map by ``angle`` degrees; nearest, border label 0."""
    _check_labels(labels)
    return _warp(labels, rotation_matrix(angle, labels.shape[0]), cv2.INTER_NEAREST)


def draw_rotation(rng: np.random.Generator) -> float | None:
    """With p = 0.5 an angle ~ U[−45°, 45°], else None (no rotation). Always consumes two draws."""
    fires = rng.random() < ROTATION_PROBABILITY
    angle = float(rng.uniform(-ROTATION_LIMIT, ROTATION_LIMIT))
    return angle if fires else None


# ----------------------------------------------------------------------------------------------------
# Elastic warp.


def elastic_fields(random_state: int, size: int = CROP_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The elastic warp that ``random_state`` selects: (affine (2, 3), map_x, map_y (size, size) float32).

    The affine moves three anchor points of a centred square (side 2·size//3) by U(−50, 50) px each; the
    maps add a displacement of Gaussian-smoothed (σ 10, SciPy defaults) U(−1, 1) noise × 120 px.
    """
    state = np.random.RandomState(random_state)
    centre = np.float32((size, size)) // 2
    half = size // 3
    anchors = np.float32(
        [centre + half, [centre[0] + half, centre[1] - half], centre - half],
    )
    moved = anchors + state.uniform(-ELASTIC_ALPHA_AFFINE, ELASTIC_ALPHA_AFFINE, anchors.shape).astype(
        np.float32
    )
    affine = cv2.getAffineTransform(anchors, moved)
    dx = np.float32(gaussian_filter(state.rand(size, size) * 2 - 1, ELASTIC_SIGMA) * ELASTIC_ALPHA)
    dy = np.float32(gaussian_filter(state.rand(size, size) * 2 - 1, ELASTIC_SIGMA) * ELASTIC_ALPHA)
    cols, rows = np.meshgrid(np.arange(size), np.arange(size))
    return affine, np.float32(cols + dx), np.float32(rows + dy)


def elastic(image: np.ndarray, random_state: int) -> np.ndarray:
    """ElasticTransform(alpha 120, sigma 10, alpha_affine 50) of a square (H, W, C) uint8 image; bilinear,
    black border. The same ``random_state`` gives ``elastic_labels`` the same field."""
    _check_image(image)
    affine, map_x, map_y = elastic_fields(random_state, image.shape[0])

    def warp(chunk: np.ndarray) -> np.ndarray:
        return _remap(_warp(chunk, affine, cv2.INTER_LINEAR), map_x, map_y, cv2.INTER_LINEAR)

    return _per_chunk(image, warp)


def elastic_labels(labels: np.ndarray, random_state: int) -> np.ndarray:
    """The elastic warp of a square (H, W) label map; nearest, border label 0."""
    _check_labels(labels)
    affine, map_x, map_y = elastic_fields(random_state, labels.shape[0])
    return _remap(_warp(labels, affine, cv2.INTER_NEAREST), map_x, map_y, cv2.INTER_NEAREST)


def draw_elastic(rng: np.random.Generator) -> int | None:
    """With p = 0.8 a field seed in 0..10000, else None (no warp). Always consumes two draws."""
    fires = rng.random() < ELASTIC_PROBABILITY
    seed = int(rng.integers(0, ELASTIC_SEED_MAX, endpoint=True))
    return seed if fires else None


# ----------------------------------------------------------------------------------------------------
# The two spatial pipelines.


@dataclass(frozen=True)
class SpatialParams:
    """Spatial-A (resize 286, crop, optional rotation) and, for Spatial-B, an optional elastic warp.

    angle None: not rotated; elastic None: not warped (always None for Spatial-A).
    """

    crop: CropParams
    angle: float | None = None
    elastic: int | None = None


def spatial(image: np.ndarray, labels: np.ndarray, params: SpatialParams) -> tuple[np.ndarray, np.ndarray]:
    """Apply a spatial pipeline jointly to an (H, W, C) uint8 image and its (h, w) label map (any sizes:
    both are resized to 286 independently). Returns ((256, 256, C) uint8, (256, 256) uint8 ids)."""
    out_image = crop(resize(image), params.crop)
    out_labels = crop(resize_labels(labels), params.crop)
    if params.angle is not None:
        out_image, out_labels = rotate(out_image, params.angle), rotate_labels(out_labels, params.angle)
    if params.elastic is not None:
        out_image = elastic(out_image, params.elastic)
        out_labels = elastic_labels(out_labels, params.elastic)
    return out_image, out_labels


def draw_spatial_a(rng: np.random.Generator) -> SpatialParams:
    """Spatial-A: crop offsets 0..30 each axis; rotation with p 0.5, angle U[−45°, 45°]."""
    return SpatialParams(crop=draw_crop(rng), angle=draw_rotation(rng))


def draw_spatial_b(rng: np.random.Generator) -> SpatialParams:
    """Spatial-B: Spatial-A's draws, then an elastic warp with p 0.8 (field seed 0..10000)."""
    crop_params, angle = draw_crop(rng), draw_rotation(rng)
    return SpatialParams(crop=crop_params, angle=angle, elastic=draw_elastic(rng))


# ----------------------------------------------------------------------------------------------------
# Amplitude jitter of the texture detail (spec §1.7).

DETAIL_SCALE_CENTRE = 0.6
DETAIL_SCALE_SPREAD = 0.4


def draw_detail_scale(rng: np.random.Generator) -> float:
    """The training amplitude jitter s of the texture detail h: s = 0.6 + 0.4·u, u ~ U(−1, 1), so
    s ∈ [0.2, 1.0]. The official code draws one s per batch (1 at inference); apply it to the float32
    band as ``band * np.float32(s)``, which is how the official float32 × Python-float product rounds."""
    return DETAIL_SCALE_CENTRE + DETAIL_SCALE_SPREAD * float(rng.uniform(-1.0, 1.0))


# ----------------------------------------------------------------------------------------------------
# Helpers.


def _warp(array: np.ndarray, matrix: np.ndarray, interpolation: int) -> np.ndarray:
    height, width = array.shape[:2]
    return cv2.warpAffine(
        np.ascontiguousarray(array),
        matrix,
        (width, height),
        flags=interpolation,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def _remap(array: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, interpolation: int) -> np.ndarray:
    return cv2.remap(
        np.ascontiguousarray(array),
        map_x,
        map_y,
        interpolation=interpolation,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def _per_chunk(image: np.ndarray, operation: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Run a per-image OpenCV operation on up to 4 channels at a time, as albumentations does for wider
    images: groups of 4, and a remainder of 2 as two single channels (OpenCV treats (H, W, 1) as (H, W))."""
    channels = image.shape[2]
    if channels <= 4:
        out = operation(np.ascontiguousarray(image))
        return out[:, :, None] if out.ndim == 2 else out
    pieces = []
    for start in range(0, channels, 4):
        chunk = image[:, :, start : start + 4]
        singles = chunk.shape[2] == 2
        for part in [chunk[:, :, :1], chunk[:, :, 1:]] if singles else [chunk]:
            out = operation(np.ascontiguousarray(part))
            pieces.append(out[:, :, None] if out.ndim == 2 else out)
    return np.concatenate(pieces, axis=2)


def _check_image(image: np.ndarray, channels: tuple[int, ...] | None = None) -> None:
    if image.ndim != 3 or image.dtype != np.uint8 or (channels and image.shape[2] not in channels):
        wanted = f"{'/'.join(map(str, channels))}-channel " if channels else ""
        raise ValueError(f"expected an (H, W, C) uint8 {wanted}image, got {image.shape} {image.dtype}")


def _check_labels(labels: np.ndarray) -> None:
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"expected an (H, W) uint8 label map, got {labels.shape} {labels.dtype}")
