"""Weight-free quality metrics for makeup transfer on aligned face crops (numpy/OpenCV + dlib).

* makeup fidelity: mean CIEDE2000 between the result and the reference warped onto the result's
  geometry, per region (lips, skin, eye-shadow area), lower is better;
* colour-histogram distance: 1D earth mover's distance of a* and b* per region, lower is better;
* content preservation: SSIM of the luminance detail (L minus its Gaussian blur) between source and
  result inside the face mask, higher is better;
* identity: distance between dlib face-recognition embeddings (same person below 0.6);
* background PSNR outside the face mask (inf when untouched);
* landmark displacement: mean distance between two landmark sets, px.

Images are (H, W, 3) uint8 RGB, labels (H, W) uint8 CelebAMask-HQ ids, landmarks (68, 2) float (x, y).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from functools import lru_cache

import cv2
import numpy as np

from shmt_cli.color import rgb_to_lab
from shmt_cli.engines.classic import eye_shadow_mask
from shmt_cli.face.labels import FACE_LABELS
from shmt_cli.face.warp import apply_warp, piecewise_affine_map

# Same-person threshold of dlib's face-recognition model (its documented operating point).
SAME_PERSON_DISTANCE = 0.6

# Per region: result labels it covers and reference labels that may be compared with it.
FIDELITY_REGIONS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "lips": ((11, 12), (11, 12)),
    "skin": ((1, 2), (1, 2)),
    "eyes": ((1,), (1,)),
}


def face_mask(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: SHMT's face mask (skin, nose, brows, ears, lips, neck)."""
    return np.isin(labels, FACE_LABELS)


def region_mask(labels: np.ndarray, landmarks: np.ndarray, region: str) -> np.ndarray:
    """(H, W) bool mask of a fidelity region: 'lips', 'skin' or 'eyes' (eye-shadow area ∩ skin)."""
    own, _ = FIDELITY_REGIONS[region]
    mask = np.isin(labels, own)
    if region == "eyes":
        mask &= eye_shadow_mask(np.asarray(landmarks, dtype=np.float64), labels.shape[:2])
    return mask


# ---------------------------------------------------------------------------------------------------
# CIEDE2000 (Sharma, Wu & Dalal 2005)


def ciede2000(
    lab1: np.ndarray, lab2: np.ndarray, k_l: float = 1.0, k_c: float = 1.0, k_h: float = 1.0
) -> np.ndarray:
    """CIEDE2000 colour difference of two (..., 3) CIELAB arrays (broadcastable): (...) float64 >= 0."""
    lab1 = np.asarray(lab1, dtype=np.float64)
    lab2 = np.asarray(lab2, dtype=np.float64)
    l1, a1, b1 = np.moveaxis(lab1, -1, 0)
    l2, a2, b2 = np.moveaxis(lab2, -1, 0)

    chroma_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2.0
    c7 = chroma_mean**7
    g = 0.5 * (1.0 - np.sqrt(c7 / (c7 + 25.0**7)))
    a1p, a2p = (1.0 + g) * a1, (1.0 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    # atan2(0, 0) = 0 gives hue 0 for achromatic colours, as the formula specifies.
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360.0
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360.0

    chromatic = (c1p * c2p) != 0.0
    dh = h2p - h1p
    dh = np.where(dh > 180.0, dh - 360.0, np.where(dh < -180.0, dh + 360.0, dh))
    dh = np.where(chromatic, dh, 0.0)
    d_l = l2 - l1
    d_c = c2p - c1p
    d_h = 2.0 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2.0)

    l_mean = (l1 + l2) / 2.0
    cp_mean = (c1p + c2p) / 2.0
    h_sum = h1p + h2p
    h_mean = np.where(
        np.abs(h1p - h2p) <= 180.0,
        h_sum / 2.0,
        np.where(h_sum < 360.0, (h_sum + 360.0) / 2.0, (h_sum - 360.0) / 2.0),
    )
    h_mean = np.where(chromatic, h_mean, h_sum)

    t = (
        1.0
        - 0.17 * np.cos(np.radians(h_mean - 30.0))
        + 0.24 * np.cos(np.radians(2.0 * h_mean))
        + 0.32 * np.cos(np.radians(3.0 * h_mean + 6.0))
        - 0.20 * np.cos(np.radians(4.0 * h_mean - 63.0))
    )
    d_theta = 30.0 * np.exp(-(((h_mean - 275.0) / 25.0) ** 2))
    cp7 = cp_mean**7
    r_c = 2.0 * np.sqrt(cp7 / (cp7 + 25.0**7))
    s_l = 1.0 + 0.015 * (l_mean - 50.0) ** 2 / np.sqrt(20.0 + (l_mean - 50.0) ** 2)
    s_c = 1.0 + 0.045 * cp_mean
    s_h = 1.0 + 0.015 * cp_mean * t
    r_t = -np.sin(np.radians(2.0 * d_theta)) * r_c

    term_l = d_l / (k_l * s_l)
    term_c = d_c / (k_c * s_c)
    term_h = d_h / (k_h * s_h)
    return np.sqrt(np.maximum(term_l**2 + term_c**2 + term_h**2 + r_t * term_c * term_h, 0.0))


# ---------------------------------------------------------------------------------------------------
# Makeup


def makeup_fidelity(
    result_rgb: np.ndarray,
    result_labels: np.ndarray,
    result_landmarks: np.ndarray,
    ref_rgb: np.ndarray,
    ref_labels: np.ndarray,
    ref_landmarks: np.ndarray,
) -> dict[str, float]:
    """Mean CIEDE2000 between the result and the reference warped onto it, per region, lower is better.

    A region's pixels count where the result has the region and the warped reference has the
    matching labels. Returns {'lips', 'skin', 'eyes', 'mean'}; 'mean' averages the regions present
    (NaN for a region with no such pixel).
    """
    warped_rgb, warped_labels = warp_reference(ref_rgb, ref_labels, ref_landmarks, result_landmarks)
    return makeup_fidelity_warped(result_rgb, result_labels, result_landmarks, warped_rgb, warped_labels)


def warp_reference(
    ref_rgb: np.ndarray, ref_labels: np.ndarray, ref_landmarks: np.ndarray, result_landmarks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The reference image and labels warped onto the result's geometry (same crop size)."""
    warp = piecewise_affine_map(ref_landmarks, result_landmarks, ref_labels.shape[:2])
    return apply_warp(ref_rgb, warp), apply_warp(ref_labels, warp, labels=True)


def makeup_fidelity_warped(
    result_rgb: np.ndarray,
    result_labels: np.ndarray,
    result_landmarks: np.ndarray,
    warped_ref_rgb: np.ndarray,
    warped_ref_labels: np.ndarray,
) -> dict[str, float]:
    """`makeup_fidelity` with the reference already warped (`warp_reference`), to score many results."""
    regions = {}
    for region, (_, ref_own) in FIDELITY_REGIONS.items():
        regions[region] = region_mask(result_labels, result_landmarks, region) & np.isin(
            warped_ref_labels, ref_own
        )
    union = np.logical_or.reduce(list(regions.values()))
    # Colour differences only where some region needs them.
    difference = np.zeros(union.shape, dtype=np.float64)
    difference[union] = ciede2000(rgb_to_lab(result_rgb[union]), rgb_to_lab(warped_ref_rgb[union]))
    scores = {
        region: float(difference[inside].mean()) if inside.any() else math.nan
        for region, inside in regions.items()
    }
    present = [value for value in scores.values() if not math.isnan(value)]
    scores["mean"] = float(np.mean(present)) if present else math.nan
    return scores


def emd_1d(samples_a: np.ndarray, samples_b: np.ndarray, quantiles: int = 256) -> float:
    """Earth mover's (Wasserstein-1) distance of two 1D samples, via their quantile functions."""
    if samples_a.size == 0 or samples_b.size == 0:
        return math.nan
    levels = (np.arange(quantiles) + 0.5) / quantiles

    def quantile_function(samples: np.ndarray) -> np.ndarray:
        ordered = np.sort(np.asarray(samples, dtype=np.float64).ravel())
        return np.interp(levels, (np.arange(len(ordered)) + 0.5) / len(ordered), ordered)

    return float(np.abs(quantile_function(samples_a) - quantile_function(samples_b)).mean())


def histogram_distance(
    result_rgb: np.ndarray,
    result_labels: np.ndarray,
    result_landmarks: np.ndarray,
    ref_rgb: np.ndarray,
    ref_labels: np.ndarray,
    ref_landmarks: np.ndarray,
) -> dict[str, float]:
    """Per region, mean of the a* and b* 1D EMDs between the result's and the reference's own pixels.

    Geometry-free (each face uses its own region masks). Returns {'lips', 'skin', 'eyes', 'mean'}.
    """
    result_lab, ref_lab = rgb_to_lab(result_rgb), rgb_to_lab(ref_rgb)
    scores: dict[str, float] = {}
    for region in FIDELITY_REGIONS:
        ours = result_lab[region_mask(result_labels, result_landmarks, region)]
        theirs = ref_lab[region_mask(ref_labels, ref_landmarks, region)]
        if len(ours) == 0 or len(theirs) == 0:
            scores[region] = math.nan
            continue
        scores[region] = 0.5 * (emd_1d(ours[:, 1], theirs[:, 1]) + emd_1d(ours[:, 2], theirs[:, 2]))
    present = [value for value in scores.values() if not math.isnan(value)]
    scores["mean"] = float(np.mean(present)) if present else math.nan
    return scores


# ---------------------------------------------------------------------------------------------------
# Content


def luminance_detail(rgb: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """(H, W) float32: CIELAB L minus its Gaussian blur (sigma px), the fine structure of the face."""
    lightness = rgb_to_lab(rgb)[..., 0]
    return lightness - cv2.GaussianBlur(lightness, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101)


def ssim_map(x: np.ndarray, y: np.ndarray, data_range: float, sigma: float = 1.5) -> np.ndarray:
    """Per-pixel SSIM of two (H, W) float images with a Gaussian window (Wang et al. 2004 constants)."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)

    def blur(image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


# Luminance detail spans about ±DETAIL_RANGE / 2 on faces; SSIM's stabilising constants are set from it
# (with L's full 100 they would swamp the detail's small variances and every score would be ~1).
DETAIL_RANGE = 20.0


def content_preservation(source_rgb: np.ndarray, result_rgb: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM of the luminance detail of source and result over `mask` ((H, W) bool); 1 = identical."""
    if not mask.any():
        return math.nan
    scores = ssim_map(luminance_detail(source_rgb), luminance_detail(result_rgb), DETAIL_RANGE)
    return float(scores[mask].mean())


def background_psnr(source_rgb: np.ndarray, result_rgb: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB, peak 255) of the result against the source outside `mask`; inf when identical there."""
    outside = ~mask
    if not outside.any():
        return math.inf
    error = (source_rgb[outside].astype(np.float64) - result_rgb[outside].astype(np.float64)) ** 2
    mse = float(error.mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


def landmark_displacement(landmarks_a: np.ndarray, landmarks_b: np.ndarray) -> float:
    """Mean Euclidean distance between corresponding (68, 2) landmarks, px."""
    return float(np.linalg.norm(np.asarray(landmarks_a) - np.asarray(landmarks_b), axis=1).mean())


# ---------------------------------------------------------------------------------------------------
# Identity


class FaceEmbedder:
    """dlib's ResNet face-recognition model: 128-d embeddings from an image and its 68 landmarks."""

    def __init__(self) -> None:
        import dlib

        from shmt_cli.face.detect import dlib_model_path

        self._dlib = dlib
        self._model = dlib.face_recognition_model_v1(
            str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat"))
        )
        self._lock = threading.Lock()

    def embed(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(128,) float64 embedding of the face at `landmarks` in an (H, W, 3) uint8 RGB image."""
        points = np.asarray(landmarks, dtype=np.float64)
        left, top = np.floor(points.min(axis=0)).astype(int)
        right, bottom = np.ceil(points.max(axis=0)).astype(int)
        rect = self._dlib.rectangle(int(left), int(top), int(right), int(bottom))
        parts = [self._dlib.point(round(x), round(y)) for x, y in points]
        shape = self._dlib.full_object_detection(rect, parts)
        with self._lock:
            descriptor = self._model.compute_face_descriptor(np.ascontiguousarray(rgb), shape)
        return np.array(descriptor, dtype=np.float64)


@lru_cache(maxsize=1)
def default_embedder() -> FaceEmbedder:
    """A process-wide embedder (the model loads in about a second)."""
    return FaceEmbedder()


def identity_distance(
    rgb_a: np.ndarray,
    landmarks_a: np.ndarray,
    rgb_b: np.ndarray,
    landmarks_b: np.ndarray,
    embedder: FaceEmbedder | None = None,
) -> float:
    """Euclidean distance of the dlib embeddings of two faces; below SAME_PERSON_DISTANCE = same person."""
    embedder = embedder or default_embedder()
    return float(np.linalg.norm(embedder.embed(rgb_a, landmarks_a) - embedder.embed(rgb_b, landmarks_b)))


def summarise(rows: list[Mapping[str, float]]) -> dict[str, float]:
    """Column means of metric rows, ignoring NaN; infinities kept (an all-inf column stays inf)."""
    keys = list(rows[0]) if rows else []
    summary: dict[str, float] = {}
    for key in keys:
        values = np.array([row[key] for row in rows], dtype=np.float64)
        values = values[~np.isnan(values)]
        summary[key] = float(values.mean()) if len(values) else math.nan
    return summary
