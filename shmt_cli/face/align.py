"""Alignment geometry: similarity transforms, face crops, sidecars and paste-back.

Coordinates are pixel-centre coordinates, as OpenCV's warpAffine uses them: pixel (i, j) is the
point x=j, y=i. A 2x3 matrix ``M`` maps a point ``p`` (x, y) to ``M[:, :2] @ p + M[:, 2]``.
Every matrix called "matrix" below maps *source photo* coordinates to *crop* coordinates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shmt_cli.face.template import TEMPLATE_SIZE, template_for_size

SIDECAR_FORMAT = "shmt-aligned-face/1"

# Index ranges of the iBUG 300-W 68-point scheme.
JAW = slice(0, 17)
BROWS = slice(17, 27)
NOSE_BRIDGE_TOP = 27
NOSE_BASE = 33


# ---------------------------------------------------------------------------------------------
# Transforms


def similarity_transform(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src_pts onto dst_pts.

    src_pts, dst_pts: (N, 2) point arrays (x, y), N >= 2, src not all coincident.
    Returns a (2, 3) float64 matrix. Never a reflection, never a shear: for mirrored input the best
    proper rotation is returned (Umeyama 1991 with the determinant correction).
    """
    src = np.asarray(src_pts, dtype=np.float64)
    dst = np.asarray(dst_pts, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape:
        raise ValueError(f"expected two (N, 2) point arrays of equal shape, got {src.shape} and {dst.shape}")
    if src.shape[0] < 2:
        raise ValueError("a similarity transform needs at least 2 points")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("points must be finite")

    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_c = src - src_mean
    dst_c = dst - dst_mean
    src_var = float((src_c**2).sum()) / len(src)
    if src_var <= 1e-12:
        raise ValueError("source points are all at the same place")

    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    # Flip the weakest axis when the best orthogonal map would be a reflection.
    sign = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rotation = u @ np.diag(sign) @ vt
    scale = float((singular * sign).sum()) / src_var
    linear = scale * rotation
    translation = dst_mean - linear @ src_mean
    return np.hstack([linear, translation[:, None]])


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine matrix, (2, 3) float64. Raises ValueError if it is singular."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (2, 3):
        raise ValueError(f"expected a (2, 3) matrix, got {matrix.shape}")
    linear = matrix[:, :2]
    det = float(np.linalg.det(linear))
    if not math.isfinite(det) or abs(det) < 1e-12:
        raise ValueError("affine matrix is singular")
    inverse_linear = np.linalg.inv(linear)
    return np.hstack([inverse_linear, (-inverse_linear @ matrix[:, 2])[:, None]])


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (N, 2) points (x, y); returns (N, 2) float64."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def matrix_scale(matrix: np.ndarray) -> float:
    """Uniform scale factor of an affine matrix (sqrt of |det| of its linear part)."""
    return math.sqrt(abs(float(np.linalg.det(np.asarray(matrix, dtype=np.float64)[:, :2]))))


def alignment_matrix(landmarks: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """(2, 3) float64 matrix taking source-photo pixels to a size x size crop in the MT framing.

    landmarks: (68, 2) float64 (x, y) in the source photo, iBUG 300-W order.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {landmarks.shape}")
    return similarity_transform(landmarks, template_for_size(size))


# ---------------------------------------------------------------------------------------------
# Warping


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """outer ∘ inner for (2, 3) affine matrices."""
    linear = outer[:, :2] @ inner[:, :2]
    return np.hstack([linear, (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]])


def warp_affine(
    image: np.ndarray,
    matrix: np.ndarray,
    out_size: tuple[int, int],
    interpolation: int = cv2.INTER_CUBIC,
) -> np.ndarray:
    """Warp ``image`` by ``matrix`` (image coords -> output coords) into an (h, w) = out_size[::-1] array.

    image: (H, W) or (H, W, C), uint8 or float32; out_size: (width, height); outside the image is 0.
    When the warp shrinks (scale < 1) the needed region is first area-averaged (INTER_AREA) down to
    the target scale, so strong downscales do not alias; the remaining rotation runs at scale ~1.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    out_w, out_h = int(out_size[0]), int(out_size[1])
    scale = matrix_scale(matrix)
    if scale < 0.999:
        image, matrix = _area_prescale(image, matrix, (out_w, out_h), scale)
    return cv2.warpAffine(
        image,
        matrix,
        (out_w, out_h),
        flags=interpolation,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def _area_prescale(
    image: np.ndarray, matrix: np.ndarray, out_size: tuple[int, int], scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cut the source region the warp reads (plus a margin), shrink it by ``scale`` with INTER_AREA.

    Returns the shrunk region and the matrix from its coordinates to the output.
    """
    height, width = image.shape[:2]
    out_w, out_h = out_size
    corners = np.array([[0, 0], [out_w - 1, 0], [0, out_h - 1], [out_w - 1, out_h - 1]], dtype=np.float64)
    source_corners = transform_points(corners, invert_affine(matrix))
    # Margin: the cubic kernel's reach (2 output px) expressed in source pixels, plus rounding slack.
    margin = 3.0 / scale + 2.0
    x0 = max(0, math.floor(source_corners[:, 0].min() - margin))
    y0 = max(0, math.floor(source_corners[:, 1].min() - margin))
    x1 = min(width, math.ceil(source_corners[:, 0].max() + margin) + 1)
    y1 = min(height, math.ceil(source_corners[:, 1].max() + margin) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        # The output sees (almost) nothing of the image: let warpAffine fill the border.
        return image, matrix
    region = image[y0:y1, x0:x1]
    small_w = max(1, round((x1 - x0) * scale))
    small_h = max(1, round((y1 - y0) * scale))
    small = cv2.resize(region, (small_w, small_h), interpolation=cv2.INTER_AREA)
    fx = small_w / (x1 - x0)
    fy = small_h / (y1 - y0)
    # cv2.resize maps pixel centres: x_small = (x_region + 0.5) * fx - 0.5.
    to_small = np.array([[fx, 0.0, (0.5 - x0) * fx - 0.5], [0.0, fy, (0.5 - y0) * fy - 0.5]])
    return small, _compose(matrix, invert_affine(to_small))


def crop_face(rgb: np.ndarray, matrix: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The (size, size, 3) uint8 crop of an (H, W, 3) uint8 RGB photo under ``matrix`` (photo -> crop).

    Bicubic for upscales, area-averaged pre-shrink for downscales (see warp_affine). Pixels outside
    the photo are black: SHMT's training rotations fill with constant 0, so black corners are what the
    model has seen, they parse as background, and unlike replicate/reflect they invent no hair or skin.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"crop_face expects an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    if size < 1:
        raise ValueError(f"crop size must be positive, got {size}")
    return warp_affine(rgb, matrix, (size, size))


# ---------------------------------------------------------------------------------------------
# Sidecar


# eq=False: the array fields make field-wise == ambiguous.
@dataclass(frozen=True, eq=False)
class AlignedFace:
    """Where one face crop came from: enough to find the face again and paste an edit back.

    source_path: the photo; source_size: (width, height) of the decoded photo in pixels;
    matrix: (2, 3) float64 source -> crop; landmarks_source / landmarks_crop: (68, 2) float64 (x, y);
    score: detector score; face_index: 0 for the best face of the photo; crop_size: crop side in px.
    """

    source_path: str
    source_size: tuple[int, int]
    matrix: np.ndarray
    landmarks_source: np.ndarray
    landmarks_crop: np.ndarray
    score: float
    face_index: int
    crop_size: int

    @classmethod
    def from_landmarks(
        cls,
        landmarks: np.ndarray,
        *,
        source_path: str | Path,
        source_size: tuple[int, int],
        score: float,
        face_index: int = 0,
        crop_size: int = TEMPLATE_SIZE,
    ) -> AlignedFace:
        """Align a detected face: the matrix to the template and the landmarks in both frames."""
        landmarks = np.asarray(landmarks, dtype=np.float64)
        matrix = alignment_matrix(landmarks, crop_size)
        return cls(
            source_path=str(source_path),
            source_size=(int(source_size[0]), int(source_size[1])),
            matrix=matrix,
            landmarks_source=landmarks.copy(),
            landmarks_crop=transform_points(landmarks, matrix),
            score=float(score),
            face_index=int(face_index),
            crop_size=int(crop_size),
        )

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (floats kept at full precision, so reading it back is exact)."""
        return {
            "format": SIDECAR_FORMAT,
            "source_path": self.source_path,
            "source_size": [int(self.source_size[0]), int(self.source_size[1])],
            "crop_size": int(self.crop_size),
            "face_index": int(self.face_index),
            "score": float(self.score),
            "matrix": np.asarray(self.matrix, dtype=np.float64).tolist(),
            "landmarks_source": np.asarray(self.landmarks_source, dtype=np.float64).tolist(),
            "landmarks_crop": np.asarray(self.landmarks_crop, dtype=np.float64).tolist(),
        }

    @classmethod
    def from_json_dict(cls, data: Any, origin: str = "sidecar") -> AlignedFace:
        """Validate a dict made by to_json_dict; ValueError names ``origin`` and the problem."""

        def fail(problem: str) -> ValueError:
            return ValueError(f"{origin}: {problem}")

        if not isinstance(data, dict):
            raise fail(f"expected a JSON object, got {type(data).__name__}")
        required = (
            "format", "source_path", "source_size", "crop_size", "face_index", "score",
            "matrix", "landmarks_source", "landmarks_crop",
        )  # fmt: skip
        missing = [key for key in required if key not in data]
        if missing:
            raise fail(f"missing key(s): {', '.join(missing)}")
        if data["format"] != SIDECAR_FORMAT:
            raise fail(f"unsupported format {data['format']!r} (expected {SIDECAR_FORMAT!r})")
        if not isinstance(data["source_path"], str):
            raise fail("'source_path' must be a string")

        def integer(key: str, minimum: int) -> int:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise fail(f"'{key}' must be an integer >= {minimum}, got {value!r}")
            return value

        def array(key: str, shape: tuple[int, ...]) -> np.ndarray:
            try:
                raw = np.array(data[key])
            except ValueError:  # ragged nesting
                raw = np.array(None)
            if raw.dtype.kind not in "iuf":
                raise fail(f"'{key}' must be a numeric array of shape {shape}")
            values = raw.astype(np.float64)
            if values.shape != shape:
                raise fail(f"'{key}' must have shape {shape}, got {values.shape}")
            if not np.isfinite(values).all():
                raise fail(f"'{key}' contains non-finite numbers")
            return values

        size = array("source_size", (2,))
        if not all(float(v).is_integer() and v >= 1 for v in size):
            raise fail(
                f"'source_size' must be two positive integers (width, height), got {data['source_size']}"
            )
        score = data["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise fail(f"'score' must be a finite number, got {score!r}")
        matrix = array("matrix", (2, 3))
        if matrix_scale(matrix) < 1e-9:
            raise fail("'matrix' is singular")
        return cls(
            source_path=data["source_path"],
            source_size=(int(size[0]), int(size[1])),
            matrix=matrix,
            landmarks_source=array("landmarks_source", (68, 2)),
            landmarks_crop=array("landmarks_crop", (68, 2)),
            score=float(score),
            face_index=integer("face_index", 0),
            crop_size=integer("crop_size", 1),
        )


def read_sidecar(path: str | Path) -> AlignedFace:
    """Read and validate a ``<stem>.json`` sidecar; ValueError naming the file on any problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    return AlignedFace.from_json_dict(data, origin=str(path))


# ---------------------------------------------------------------------------------------------
# Paste-back


def default_face_mask(landmarks_crop: np.ndarray, size: int) -> np.ndarray:
    """(size, size) uint8 {0, 1} mask: hull of the jaw and the brows raised to cover the forehead.

    landmarks_crop: (68, 2) landmarks in crop coordinates.
    """
    points = np.asarray(landmarks_crop, dtype=np.float64)
    jaw = points[JAW]
    brows = points[BROWS]
    # Rule of facial thirds: hairline to brow is about brow to nose base. Raise the brows by 60% of
    # that so the forehead is covered while the hairline (not made up) mostly is not.
    up = points[NOSE_BRIDGE_TOP] - points[NOSE_BASE]
    forehead = brows + 0.6 * up
    hull = cv2.convexHull(np.round(np.vstack([jaw, brows, forehead])).astype(np.int32))
    mask = np.zeros((size, size), dtype=np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    return mask


def feathered_weight(mask: np.ndarray, feather_px: float) -> np.ndarray:
    """(H, W) float32 weights in [0, 1]: 0 on and outside the mask's edge, ramping smoothly to 1 at
    ``feather_px`` pixels inside. The crop's own border counts as an edge, so no hard seam appears.

    mask: (H, W) bool/uint8/float; values > 0.5 are inside.
    """
    inside = (np.asarray(mask, dtype=np.float32) > 0.5).astype(np.uint8)
    padded = cv2.copyMakeBorder(inside, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    # Distance is 1 on the outermost inside pixel; shift so that pixel gets weight 0.
    ramp = np.clip((distance - 1.0) / max(feather_px, 1e-6), 0.0, 1.0)
    return (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)  # smoothstep: no visible kink


def paste_back(
    photo_rgb: np.ndarray,
    crop_rgb: np.ndarray,
    matrix: np.ndarray,
    crop_mask: np.ndarray | None = None,
    feather: float = 0.04,
    landmarks_crop: np.ndarray | None = None,
    original_crop: np.ndarray | None = None,
) -> np.ndarray:
    """Put an edited crop back into the photo it was cut from; returns a new (H, W, 3) uint8 photo.

    photo_rgb: (H, W, 3) uint8; crop_rgb: (S, S, 3) uint8; matrix: (2, 3) photo -> crop.
    crop_mask: (S, S) region to replace, in crop space (e.g. a face-parsing mask); by default a hull of
    ``landmarks_crop`` (or of the template when those are not given) extended over the forehead.
    feather: width of the soft edge as a fraction of the crop side; the weight reaches 0 at the mask's
    edge, so every photo pixel with weight 0 keeps its original bytes.
    original_crop: (S, S, 3) uint8, the crop before editing. When given, only the edit
    (crop_rgb - original_crop) is warped back and added, so a face larger than the crop keeps the
    photo's own full-resolution detail instead of an upsampled copy of the crop.
    """
    if photo_rgb.ndim != 3 or photo_rgb.shape[2] != 3 or photo_rgb.dtype != np.uint8:
        raise ValueError(f"photo must be (H, W, 3) uint8, got {photo_rgb.shape} {photo_rgb.dtype}")
    size = crop_rgb.shape[0]
    if crop_rgb.shape != (size, size, 3) or crop_rgb.dtype != np.uint8:
        raise ValueError(f"crop must be (S, S, 3) uint8, got {crop_rgb.shape} {crop_rgb.dtype}")
    if original_crop is not None and (
        original_crop.shape != crop_rgb.shape or original_crop.dtype != np.uint8
    ):
        raise ValueError(f"original_crop must be ({size}, {size}, 3) uint8 like the crop")
    if crop_mask is None:
        points = template_for_size(size) if landmarks_crop is None else landmarks_crop
        crop_mask = default_face_mask(points, size)
    elif crop_mask.shape != (size, size):
        raise ValueError(f"crop_mask must be ({size}, {size}), got {crop_mask.shape}")
    weight_crop = feathered_weight(crop_mask, feather * size)

    result = photo_rgb.copy()
    support = np.argwhere(weight_crop > 0)
    if support.size == 0:
        return result
    # The support's box grown by one crop pixel (bilinear reach in the crop) and two photo pixels
    # (area pre-shrink and bilinear reach in the photo): outside it every weight is exactly 0.
    (top, left), (bottom, right) = support.min(axis=0) - 1, support.max(axis=0) + 1
    box = np.array([[left, top], [right, top], [left, bottom], [right, bottom]], dtype=np.float64)
    crop_to_photo = invert_affine(matrix)
    corners = transform_points(box, crop_to_photo)
    height, width = photo_rgb.shape[:2]
    x0 = max(0, math.floor(corners[:, 0].min()) - 2)
    y0 = max(0, math.floor(corners[:, 1].min()) - 2)
    x1 = min(width, math.ceil(corners[:, 0].max()) + 3)
    y1 = min(height, math.ceil(corners[:, 1].max()) + 3)
    if x1 <= x0 or y1 <= y0:
        return result

    crop_to_box = crop_to_photo.copy()
    crop_to_box[:, 2] -= (x0, y0)
    box_size = (x1 - x0, y1 - y0)
    weight = warp_affine(weight_crop, crop_to_box, box_size, interpolation=cv2.INTER_LINEAR)
    weight = np.clip(weight, 0.0, 1.0)[..., None]
    original = photo_rgb[y0:y1, x0:x1]
    if original_crop is None:
        change = warp_affine(crop_rgb, crop_to_box, box_size).astype(np.float32) - original
    else:
        edit = crop_rgb.astype(np.float32) - original_crop.astype(np.float32)
        change = warp_affine(edit, crop_to_box, box_size)
    blended = original + weight * change
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    result[y0:y1, x0:x1] = np.where(weight > 0, blended, original)
    return result
