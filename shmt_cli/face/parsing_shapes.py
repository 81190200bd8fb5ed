"""Landmark shapes of the rule-based face parser: the face frame and the part outlines from dlib's points.

Lips, inner mouth, eyes and brows are smooth curves through the 68 landmarks (iBUG 300-W order),
calibrated in the face frame (units of the interocular distance); the nose is a mean CelebAMask nose
fitted to each face by an affine map. Pure geometry: the image is not looked at here (parsing_rules.py
moves these outlines by colour, parsing_skin.py grows the skin region).
"""

from __future__ import annotations

import cv2
import numpy as np

from shmt_cli.face.parsing_params import shipped_params

# --- Global shape parameters, read from parsing_rules.json (sections "shapes" and "nose"; the file
# states the objective, the data and how each group was fitted). Lengths are in interocular distances
# (iod) in the face frame (u along the eye line, v perpendicular and pointing down). They were fitted
# once by coordinate search on the 36 dev photos with tools/parsing_iou.py, each against one region's
# mean IoU; they are ratios of landmark distances shared by all photos, not per-photo constants.
_PARAMS = shipped_params()
# Eyes: scale of the 6 eye points about their centre (along u; above / below the centre along v) and
# a shift along v: CelebAMask eyes are a little flatter and higher than dlib's eye points. The outline
# starts a little wide because the eyeball hull (below) trims what the corners take in.
EYE_SCALE_U = _PARAMS.number("shapes", "EYE_SCALE_U")
EYE_SCALE_V = _PARAMS.number("shapes", "EYE_SCALE_V")
EYE_SCALE_LOW = _PARAMS.number("shapes", "EYE_SCALE_LOW")
EYE_SHIFT_V = _PARAMS.number("shapes", "EYE_SHIFT_V")
# Brow thickness below dlib's brow points (iBUG marks the upper brow edge) at the inner and outer end.
BROW_THICK_INNER = _PARAMS.number("shapes", "BROW_THICK_INNER")
BROW_THICK_OUTER = _PARAMS.number("shapes", "BROW_THICK_OUTER")
# Shift of the brow points along the face's vertical (down positive), and how much longer (positive)
# or shorter (negative) the brow is than dlib's points at its inner and outer end.
BROW_LIFT = _PARAMS.number("shapes", "BROW_LIFT")
BROW_EXT_INNER = _PARAMS.number("shapes", "BROW_EXT_INNER")
BROW_EXT_OUTER = _PARAMS.number("shapes", "BROW_EXT_OUTER")
# Nose: a mean CelebAMask nose learned from the dev reference maps (`tools/parsing_iou.py --fit-nose`
# writes the "nose" section), in face-frame coordinates: anchor landmarks (27..35, inner eye corners
# 39 and 42), the top and bottom of the outline and its half width at 16 heights. Mirrored photos were
# included, so it is symmetric. Leave-one-photo-out IoU on the dev photos is within 0.005 of the
# in-sample IoU (both in the file).
NOSE_ANCHOR_IDS = _PARAMS.integers("nose", "NOSE_ANCHOR_IDS")
NOSE_ANCHORS = _PARAMS.points("nose", "NOSE_ANCHORS")
NOSE_TOP_V = _PARAMS.number("nose", "NOSE_TOP_V")
NOSE_BOTTOM_V = _PARAMS.number("nose", "NOSE_BOTTOM_V")
NOSE_HALF_WIDTHS = _PARAMS.points("nose", "NOSE_HALF_WIDTHS")
# Lips: horizontal scale of the mouth points about their centre and vertical shift (down positive).
LIP_SCALE_U = _PARAMS.number("shapes", "LIP_SCALE_U")
LIP_SHIFT_V = _PARAMS.number("shapes", "LIP_SHIFT_V")
# Open mouth outline: scale of dlib's inner-lip points about their centre along the mouth (the
# opening that parsing_rules keeps for open mouths).
MOUTH_SCALE_U = _PARAMS.number("shapes", "MOUTH_SCALE_U")


# ----------------------------------------------------------------------------------------------------------
# geometry helpers


def catmull_rom(points: np.ndarray, closed: bool, samples: int = 8) -> np.ndarray:
    """Uniform Catmull-Rom curve through (N, 2) points (`samples` per segment); returns (M, 2) float64."""
    pts = np.asarray(points, dtype=np.float64)
    if closed:
        padded = np.concatenate([pts[-1:], pts, pts[:2]])
        count = len(pts)
    else:
        padded = np.concatenate([2 * pts[:1] - pts[1:2], pts, 2 * pts[-1:] - pts[-2:-1]])
        count = len(pts) - 1
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[None, :, None]
    t2, t3 = t * t, t * t * t
    # All segments at once: (count, 1, 2) control points against (1, samples, 1) parameters.
    p0, p1, p2, p3 = (padded[k : k + count, None, :] for k in range(4))
    curve = 0.5 * (
        2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t3
    )
    out = [curve.reshape(-1, 2)]
    if not closed:
        out.append(pts[-1:])
    return np.concatenate(out)


def fill_polygon(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask of a filled polygon given in float pixel coordinates (sub-pixel accurate)."""
    mask = np.zeros(shape, np.uint8)
    if len(polygon) >= 3 and mask.size:
        # Pixel centres are at integer coordinates; shift=4 keeps 1/16 px precision.
        pts = np.round(np.asarray(polygon) * 16).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


class Frame:
    """Face frame from landmarks: u along the eye line (image left to right), v perpendicular, downwards."""

    def __init__(self, landmarks: np.ndarray) -> None:
        self.lm = landmarks
        self.eye_a = landmarks[36:42].mean(axis=0)  # image-left eye (subject's right)
        self.eye_b = landmarks[42:48].mean(axis=0)  # image-right eye (subject's left)
        axis = self.eye_b - self.eye_a
        self.iod = float(max(np.linalg.norm(axis), 1.0))
        self.u = axis / self.iod
        self.v = np.array([-self.u[1], self.u[0]])
        self.origin = (self.eye_a + self.eye_b) / 2

    def to_local(self, xy: np.ndarray) -> np.ndarray:
        rel = np.asarray(xy, dtype=np.float64) - self.origin
        return np.stack([rel @ self.u, rel @ self.v], axis=-1) / self.iod

    def to_image(self, uv: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, dtype=np.float64) * self.iod
        return self.origin + uv[..., :1] * self.u + uv[..., 1:2] * self.v


def disk(radius: int) -> np.ndarray:
    """Elliptic structuring element (2 radius + 1 square) uint8."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance (H, W) float32 in pixels to the boundary of a boolean mask, positive inside."""
    m = mask.astype(np.uint8)
    if m.size == 0:
        return np.zeros(m.shape, np.float32)
    inside = cv2.distanceTransform(m, cv2.DIST_L2, 3)
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, 3)
    return inside - outside


# ----------------------------------------------------------------------------------------------------------
# landmark shapes


def lip_polygons(frame: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth outlines (M, 2) of the upper lip, lower lip and inner mouth from the 20 mouth landmarks.

    The mouth points are first narrowed by LIP_SCALE_U about their centre along the eye line and moved
    by LIP_SHIFT_V along the face's vertical (dlib's lip points sit slightly wide and low of the
    annotated lip border).
    """
    mouth = frame.lm[48:68]
    centre = mouth[:12].mean(axis=0)
    rel = mouth - centre
    along, across = rel @ frame.u, rel @ frame.v
    moved = (
        centre + np.outer(along * LIP_SCALE_U, frame.u) + np.outer(across + LIP_SHIFT_V * frame.iod, frame.v)
    )
    outer = moved[:12]
    inner = moved[12:]
    outer_top = catmull_rom(outer[0:7], closed=False)  # 48..54
    outer_bottom = catmull_rom(np.concatenate([outer[6:12], outer[:1]]), closed=False)  # 54..59, 48
    # Inner chain from the outer mouth corners so that the lips meet at the corners.
    inner_top = catmull_rom(np.concatenate([outer[:1], inner[1:4], outer[6:7]]), closed=False)  # 48,61..63,54
    inner_bottom = catmull_rom(
        np.concatenate([outer[6:7], inner[5:8], outer[:1]]), closed=False
    )  # 54,65..67,48
    upper = np.concatenate([outer_top, inner_top[::-1]])
    lower = np.concatenate([outer_bottom, inner_bottom[::-1]])
    mouth = np.concatenate([inner_top, inner_bottom])
    return upper, lower, mouth


def eye_polygon(points: np.ndarray, frame: Frame) -> np.ndarray:
    """Smooth closed outline of one eye from its 6 landmarks, scaled about its centre in the face frame."""
    centre = points.mean(axis=0)
    rel = points - centre
    along, across = rel @ frame.u, rel @ frame.v
    pts = (
        centre
        + np.outer(along * EYE_SCALE_U, frame.u)
        + np.outer(
            across * np.where(across < 0, EYE_SCALE_V, EYE_SCALE_LOW) + EYE_SHIFT_V * frame.iod, frame.v
        )
    )
    top = catmull_rom(pts[0:4], closed=False)
    bottom = catmull_rom(np.concatenate([pts[3:6], pts[:1]]), closed=False)
    return np.concatenate([top, bottom])


def _trim_curve(curve: np.ndarray, start: float, end: float) -> np.ndarray:
    """Curve (M, 2) lengthened (positive, along its end direction) or cut (negative) by arc lengths in px."""
    seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    lo, hi = max(0.0, -start), arc[-1] - max(0.0, -end)
    if hi - lo < 1e-6:
        return curve
    grid = np.linspace(lo, hi, len(curve))
    out = np.stack([np.interp(grid, arc, curve[:, 0]), np.interp(grid, arc, curve[:, 1])], axis=1)
    if start > 0:
        head = out[0] - out[1]
        out = np.concatenate([[out[0] + head / max(np.linalg.norm(head), 1e-6) * start], out])
    if end > 0:
        tail = out[-1] - out[-2]
        out = np.concatenate([out, [out[-1] + tail / max(np.linalg.norm(tail), 1e-6) * end]])
    return out


def brow_polygon(points: np.ndarray, frame: Frame, inner_first: bool) -> np.ndarray:
    """Brow band (M, 2): dlib's 5 brow points mark the upper edge; thickness tapers from inner to outer."""
    pts = points + frame.v * BROW_LIFT * frame.iod
    upper = catmull_rom(pts, closed=False, samples=16)
    # Trim or extend the ends: dlib's outer brow point runs past where annotators end the tail.
    ext_first, ext_last = (
        (BROW_EXT_INNER, BROW_EXT_OUTER) if inner_first else (BROW_EXT_OUTER, BROW_EXT_INNER)
    )
    upper = _trim_curve(upper, ext_first * frame.iod, ext_last * frame.iod)
    weights = np.linspace(0.0, 1.0, len(upper))
    if inner_first:
        weights = weights[::-1]
    # weights: 1 at the inner end, 0 at the outer end.
    thick = (BROW_THICK_OUTER + (BROW_THICK_INNER - BROW_THICK_OUTER) * weights) * frame.iod
    lower = upper + thick[:, None] * frame.v
    return np.concatenate([upper, lower[::-1]])


def nose_outline_from_shape(
    local_anchors: np.ndarray,
    anchors: np.ndarray,
    top_v: float,
    bottom_v: float,
    half_widths: np.ndarray,
) -> np.ndarray:
    """Mean nose outline (M, 2), mapped onto a face by the affine fit of the mean anchors to its anchors.

    All coordinates are in the face frame (interocular units); half_widths is (K, 2) of (v, half width).
    """
    right = half_widths[:, ::-1]  # (half width, v) = (u, v) on the image-right side
    left = right[::-1] * np.array([-1.0, 1.0])
    outline = np.concatenate([[[0.0, top_v]], right, [[0.0, bottom_v]], left])
    smooth = catmull_rom(outline, closed=True, samples=4)
    design = np.hstack([anchors, np.ones((len(anchors), 1))])
    affine = np.linalg.lstsq(design, local_anchors, rcond=None)[0]
    return np.hstack([smooth, np.ones((len(smooth), 1))]) @ affine


def nose_polygon(frame: Frame) -> np.ndarray:
    """CelebAMask-style nose outline (M, 2) in image pixels: bridge from between the eyes to the alae.

    The shape is the mean reference nose learned from the dev maps in landmark-normalised coordinates
    (see NOSE_ANCHORS); an affine fit of its anchor landmarks lets it follow each face's proportions.
    """
    local = frame.to_local(frame.lm[list(NOSE_ANCHOR_IDS)])
    outline = nose_outline_from_shape(
        local, np.array(NOSE_ANCHORS), NOSE_TOP_V, NOSE_BOTTOM_V, np.array(NOSE_HALF_WIDTHS)
    )
    return frame.to_image(outline)


def face_frame(landmarks: np.ndarray) -> Frame:
    """The face frame of 68 landmarks: origin between the eye centres, unit = interocular distance."""
    return Frame(np.asarray(landmarks, dtype=np.float64))


def inner_lip_polygon(frame: Frame) -> np.ndarray:
    """Smooth closed outline (M, 2) through dlib's 8 inner-lip points, narrowed, with the lip calibration.

    Unlike the inner chain of lip_polygons (which runs to the outer mouth corners so that the lips
    meet), this follows the opening itself: the outline of an open mouth.
    """
    inner = frame.lm[60:68]
    centre = inner.mean(axis=0)
    rel = inner - centre
    # Narrowed along the mouth: dlib's inner corners run into the lip corners, where CelebAMask has lip.
    moved = (
        centre
        + np.outer(rel @ frame.u * MOUTH_SCALE_U, frame.u)
        + np.outer(rel @ frame.v + LIP_SHIFT_V * frame.iod, frame.v)
    )
    return catmull_rom(moved, closed=True)
