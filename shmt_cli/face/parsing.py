"""Face parsing in CelebAMask-HQ label ids, built in (no weights), plus loading and remapping external maps.

The built-in parser (`parse_face`) works from dlib's 68 landmarks and the image, with numpy/OpenCV:

* lips, inner mouth, eyes and brows are smooth curves through the landmarks, calibrated in the face
  frame (units of the interocular distance), then moved by per-image colour models (lip colour
  against the surrounding skin; eye and brow colour against the nearby skin; teeth and the dark
  gap between the lips against the lip colour);
* each eye is then cut to the convex hull of its eyeball evidence (white of the eye and the
  darkest iris-sized disc), which drops most liner and lashes that the landmark outline takes in;
* an open mouth (enough teeth or cavity pixels inside dlib's inner-lip polygon) is that polygon
  with its edge moved by colour; pale, nearly grey teeth beside the lip midline count as mouth even
  when dlib's inner-lip points are closed;
* the nose is a mean CelebAMask nose (bridge from between the eyes to the alae) learned from
  reference maps in landmark-normalised coordinates and fitted to each face by an affine map;
* the skin region (forehead up to the hairline, neck, ears where visible) is grown by GrabCut from
  seeds chosen by a per-image skin colour model learned on the landmark face interior, bounded by
  a generous landmark prior; a coarse hair label comes from the colour just above the hairline.

Known limits: eyes hidden behind heavy eyeliner still come out somewhat large, and costume makeup
that pulls dlib's eye and brow points onto painted lines is only partly corrected (brows by darkness
against the local skin, eyes by colour; the landmark geometry still decides where they are). Lips
parted by a dark slit only are labelled by the slit's own pixels, which CelebAMask maps often label
differently (larger, smaller or not at all); mouths that are dark and barely open can be missed.

Label ids (spec §1.2): 0 background, 1 skin, 2 nose, 3 eyeglasses, 4 l_eye, 5 r_eye, 6 l_brow,
7 r_brow, 8 l_ear, 9 r_ear, 10 inner mouth, 11 upper lip, 12 lower lip, 13 hair, 14 hat, 15 earring,
16 necklace, 17 neck, 18 cloth. "l_" is the subject's left, i.e. the IMAGE's right side.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from shmt_cli.face.labels import (  # noqa: F401 (BACKGROUND, NUM_CLASSES: used as parsing.X)
    BACKGROUND,
    HAIR,
    L_BROW,
    L_EAR,
    L_EYE,
    L_LIP,
    MOUTH,
    NECK,
    NOSE,
    NUM_LABELS,
    R_BROW,
    R_EAR,
    R_EYE,
    SKIN,
    U_LIP,
)
from shmt_cli.face.labels import NUM_LABELS as NUM_CLASSES  # noqa: F401 (parsing_net reads it here)

# --- Global shape parameters. Lengths are in interocular distances (iod) in the face frame (u along
# the eye line, v perpendicular and pointing down). They were fitted once by coordinate search on the
# 36 dev photos with tools/parsing_iou.py, each against one region's mean IoU; they are ratios of
# landmark distances shared by all photos, not per-photo constants.
# Eyes: scale of the 6 eye points about their centre (along u; above / below the centre along v) and
# a shift along v: CelebAMask eyes are a little flatter and higher than dlib's eye points. The outline
# starts a little wide because the eyeball hull (below) trims what the corners take in.
EYE_SCALE_U = 1.04
EYE_SCALE_V = 0.85
EYE_SCALE_LOW = 0.85
EYE_SHIFT_V = -0.01
# Eye refinement by colour (eye against lid skin and lashes): weak, the outline is mostly right.
EYE_WEIGHT = 0.1
EYE_SOFT = 0.03
EYE_BAND = 0.09
EYE_MARGIN = 0.01
# Lower-lid liner peel: at most this deep (iod), pixels darker than LINER_LIGHTNESS (Lab L) with
# chroma below LINER_CHROMA (black or grey, unlike irises).
LINER_DEPTH = 0.04
LINER_LIGHTNESS = 20.0
LINER_CHROMA = 6.0
# Half width (iod) of the band around the eye centre where the upper lid is not peeled (the iris).
LINER_IRIS_HALF = 0.12
# Eyeball evidence: sclera pixels are at least as light as the eye's median (Lab L) with chroma below
# SCLERA_CHROMA; the iris is the darkest disc of radius IRIS_RADIUS (iod) centred within IRIS_BAND of
# the eye points' centre line. The eye is cut to their convex hull grown by EYEBALL_GROW, unless that
# would keep less than EYEBALL_MIN_KEEP of it (no usable evidence).
SCLERA_CHROMA = 20.0
IRIS_RADIUS = 0.07
IRIS_BAND = 0.02
EYEBALL_GROW = 0.01
EYEBALL_MIN_KEEP = 0.5
# Brow thickness below dlib's brow points (iBUG marks the upper brow edge) at the inner and outer end.
BROW_THICK_INNER = 0.12
BROW_THICK_OUTER = 0.09
# Shift of the brow points along the face's vertical (down positive), and how much longer (positive)
# or shorter (negative) the brow is than dlib's points at its inner and outer end.
BROW_LIFT = -0.02
BROW_EXT_INNER = 0.0
BROW_EXT_OUTER = -0.1
# Brow refinement: brow hair (or paint) against the surrounding skin.
BROW_WEIGHT = 0.3
BROW_SOFT = 0.06
BROW_BAND = 0.08
BROW_MARGIN = 0.03
# Nose: a mean CelebAMask nose learned from the dev reference maps (`tools/parsing_iou.py --fit-nose`),
# in face-frame coordinates: anchor landmarks (27..35, inner eye corners 39 and 42), the top and
# bottom of the outline and its half width at 16 heights. Mirrored photos were included, so it is
# symmetric. Leave-one-photo-out IoU on the dev photos is within 0.005 of the in-sample IoU.
NOSE_ANCHOR_IDS = (27, 28, 29, 30, 31, 32, 33, 34, 35, 39, 42)
NOSE_ANCHORS = [
    [0.0, -0.036], [0.0, 0.157], [0.0, 0.349], [0.0, 0.54], [-0.185, 0.679], [-0.095, 0.71],
    [0.0, 0.737], [0.095, 0.71], [0.185, 0.679], [-0.293, 0.032], [0.293, 0.032],
]  # fmt: skip
NOSE_TOP_V = -0.116
NOSE_BOTTOM_V = 0.714
NOSE_HALF_WIDTHS = [
    [-0.067, 0.124], [-0.018, 0.136], [0.031, 0.14], [0.08, 0.144], [0.128, 0.149], [0.177, 0.151],
    [0.226, 0.156], [0.275, 0.162], [0.324, 0.173], [0.372, 0.19], [0.421, 0.217], [0.47, 0.244],
    [0.519, 0.261], [0.568, 0.273], [0.617, 0.272], [0.665, 0.246],
]  # fmt: skip
# Lips: horizontal scale of the mouth points about their centre and vertical shift (down positive).
LIP_SCALE_U = 0.97
LIP_SHIFT_V = -0.015
# Lip colour refinement: prior softness, search band, sampling margins (interocular distances).
LIP_SOFT = 0.1
LIP_BAND = 0.10
LIP_MARGIN = 0.03
LIP_CORE = 0.015
LIP_WEIGHT = 0.05
# Inner mouth: search this far around dlib's inner-lip polygon; squared Mahalanobis distance from the
# lip colour above which a pixel is teeth or cavity rather than lip.
MOUTH_GROW = 0.0
MOUTH_MAHA = 8.0
# Open mouth: when the pixels unlike the lips fill at least MOUTH_OPEN_RATIO of dlib's own inner-lip
# polygon (points 60..67, lip calibration), CelebAMask labels the whole opening (gums and shaded teeth
# too): the polygon is kept and its edge moved by colour (teeth/cavity against lip), with prior
# softness and search band in iod.
MOUTH_OPEN_RATIO = 0.4
# Scale of dlib's inner-lip points about their centre along the mouth, for that opening.
MOUTH_SCALE_U = 0.9
MOUTH_WEIGHT = 0.3
MOUTH_SOFT = 0.01
MOUTH_BAND = 0.04
# Teeth beside the lip midline (within TEETH_BAND iod): chroma below TEETH_CHROMA_RATIO of the lips'
# median chroma and Lab lightness above TEETH_LIGHTNESS.
TEETH_BAND = 0.04
TEETH_CHROMA_RATIO = 0.5
TEETH_LIGHTNESS = 35.0

# Faces with a larger interocular distance (px) are parsed at this size and the labels scaled back.
PARSE_MAX_INTEROCULAR = 160.0

# --- Skin region.
# Working scale for the image-driven skin region: the face is resampled so that the interocular
# distance is this many pixels (GrabCut cost grows with the pixel count).
WORK_INTEROCULAR = 56.0
# Face-frame polygons (u along the eyes, v down; origin between the eyes; interocular units) bounding
# where the face may be: head (forehead up to a typical hairline height), neck, and the search area.
HEAD_PRIOR = [
    [-1.03, 0.2],
    [-0.99, -0.51],
    [-0.72, -1.02],
    [0.0, -1.23],
    [0.72, -1.02],
    [0.99, -0.51],
    [1.03, 0.2],
]
NECK_PRIOR = [[-0.85, 1.3], [0.85, 1.3], [0.95, 4.5], [-0.95, 4.5]]
# Throat patch, relative to the chin point (landmark 8).
THROAT_SEED = [[-0.25, 0.12], [0.25, 0.12], [0.25, 0.32], [-0.25, 0.32]]
WIDE_PRIOR = [
    [-1.7, 0.2],
    [-1.5, -1.6],
    [0.0, -2.3],
    [1.5, -1.6],
    [1.7, 0.2],
    [1.5, 1.8],
    [1.6, 4.6],
    [-1.6, 4.6],
    [-1.5, 1.8],
]
# Hair: where hair is searched (face frame), and the squared Mahalanobis distance to the hair colour.
HAIR_PRIOR = [[-1.9, 1.2], [-1.8, -1.2], [-1.0, -2.2], [0.0, -2.5], [1.0, -2.2], [1.8, -1.2], [1.9, 1.2],
              [1.9, 3.5], [-1.9, 3.5]]  # fmt: skip
HAIR_MAHA = 12.0
# Ears: zone beside the jaw line (gap and width beyond the jaw's widest point, top height).
EAR_GAP = 0.02
EAR_WIDTH = 0.45
EAR_TOP_V = -0.25
# Squared Mahalanobis distance to the per-image skin colour below which a prior pixel starts as face.
SKIN_MAHA = 25.0
NECK_MAHA = 128.0
HEAD_MAHA = 12.0
ALLOWED_GROW = 0.15
GRABCUT_ITERS = 4


# ----------------------------------------------------------------------------------------------------------
# geometry helpers


def _catmull_rom(points: np.ndarray, closed: bool, samples: int = 8) -> np.ndarray:
    """Uniform Catmull-Rom curve through (N, 2) points (`samples` per segment); returns (M, 2) float64."""
    pts = np.asarray(points, dtype=np.float64)
    if closed:
        padded = np.concatenate([pts[-1:], pts, pts[:2]])
        count = len(pts)
    else:
        padded = np.concatenate([2 * pts[:1] - pts[1:2], pts, 2 * pts[-1:] - pts[-2:-1]])
        count = len(pts) - 1
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[:, None]
    t2, t3 = t * t, t * t * t
    out = []
    for i in range(count):
        p0, p1, p2, p3 = padded[i], padded[i + 1], padded[i + 2], padded[i + 3]
        out.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t3
            )
        )
    if not closed:
        out.append(pts[-1:])
    return np.concatenate(out)


def _fill(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask of a filled polygon given in float pixel coordinates (sub-pixel accurate)."""
    mask = np.zeros(shape, np.uint8)
    if len(polygon) >= 3:
        # Pixel centres are at integer coordinates; shift=4 keeps 1/16 px precision.
        pts = np.round(np.asarray(polygon) * 16).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


class _Frame:
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


# ----------------------------------------------------------------------------------------------------------
# landmark shapes


def lip_polygons(frame: _Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    outer_top = _catmull_rom(outer[0:7], closed=False)  # 48..54
    outer_bottom = _catmull_rom(np.concatenate([outer[6:12], outer[:1]]), closed=False)  # 54..59, 48
    # Inner chain from the outer mouth corners so that the lips meet at the corners.
    inner_top = _catmull_rom(
        np.concatenate([outer[:1], inner[1:4], outer[6:7]]), closed=False
    )  # 48,61..63,54
    inner_bottom = _catmull_rom(
        np.concatenate([outer[6:7], inner[5:8], outer[:1]]), closed=False
    )  # 54,65..67,48
    upper = np.concatenate([outer_top, inner_top[::-1]])
    lower = np.concatenate([outer_bottom, inner_bottom[::-1]])
    mouth = np.concatenate([inner_top, inner_bottom])
    return upper, lower, mouth


def eye_polygon(points: np.ndarray, frame: _Frame) -> np.ndarray:
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
    top = _catmull_rom(pts[0:4], closed=False)
    bottom = _catmull_rom(np.concatenate([pts[3:6], pts[:1]]), closed=False)
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


def brow_polygon(points: np.ndarray, frame: _Frame, inner_first: bool) -> np.ndarray:
    """Brow band (M, 2): dlib's 5 brow points mark the upper edge; thickness tapers from inner to outer."""
    pts = points + frame.v * BROW_LIFT * frame.iod
    upper = _catmull_rom(pts, closed=False, samples=16)
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
    smooth = _catmull_rom(outline, closed=True, samples=4)
    design = np.hstack([anchors, np.ones((len(anchors), 1))])
    affine = np.linalg.lstsq(design, local_anchors, rcond=None)[0]
    return np.hstack([smooth, np.ones((len(smooth), 1))]) @ affine


def nose_polygon(frame: _Frame) -> np.ndarray:
    """CelebAMask-style nose outline (M, 2) in image pixels: bridge from between the eyes to the alae.

    The shape is the mean reference nose learned from the dev maps in landmark-normalised coordinates
    (see NOSE_ANCHORS); an affine fit of its anchor landmarks lets it follow each face's proportions.
    """
    local = frame.to_local(frame.lm[list(NOSE_ANCHOR_IDS)])
    outline = nose_outline_from_shape(
        local, np.array(NOSE_ANCHORS), NOSE_TOP_V, NOSE_BOTTOM_V, np.array(NOSE_HALF_WIDTHS)
    )
    return frame.to_image(outline)


def face_frame(landmarks: np.ndarray) -> _Frame:
    """The face frame of 68 landmarks: origin between the eye centres, unit = interocular distance."""
    return _Frame(np.asarray(landmarks, dtype=np.float64))


# ----------------------------------------------------------------------------------------------------------
# image evidence


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance (H, W) float32 in pixels to the boundary of a boolean mask, positive inside."""
    m = mask.astype(np.uint8)
    inside = cv2.distanceTransform(m, cv2.DIST_L2, 3)
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, 3)
    return inside - outside


def _mahalanobis(features: np.ndarray, samples: np.ndarray, floor: float) -> tuple[np.ndarray, float]:
    """Squared Mahalanobis distances of (N, C) features to a Gaussian fitted to (M, C) samples, and the
    log-determinant of its covariance (floored by `floor` on the diagonal)."""
    mean = samples.mean(axis=0)
    cov = np.cov(samples, rowvar=False) + np.eye(samples.shape[1]) * floor
    diff = features - mean
    maha = np.einsum("nc,cd,nd->n", diff, np.linalg.inv(cov), diff)
    return maha, float(np.linalg.slogdet(cov)[1])


def _trim_outliers(samples: np.ndarray, limit: float, keep_at_least: int = 20) -> np.ndarray:
    """(M, C) samples without those farther than `limit` robust standard deviations (median absolute
    deviation, per channel) from the median; all samples when fewer than `keep_at_least` would remain."""
    med = np.median(samples, axis=0)
    spread = np.median(np.abs(samples - med), axis=0) * 1.4826 + 1.0
    keep = (np.abs(samples - med) / spread).max(axis=1) < limit
    return samples[keep] if keep.sum() >= keep_at_least else samples


def _gaussian_loglik(features: np.ndarray, samples: np.ndarray, floor: float) -> np.ndarray:
    """Log-likelihood (up to a constant) of (N, C) features under a Gaussian fitted to (M, C) samples."""
    maha, logdet = _mahalanobis(features, samples, floor)
    return -0.5 * maha - 0.5 * logdet


def refine_region(
    lab: np.ndarray,
    prior: np.ndarray,
    softness: float,
    band: float,
    margin: float,
    weight: float = 1.0,
    fg_samples: np.ndarray | None = None,
    floor: float = 4.0,
) -> np.ndarray:
    """Move the boundary of a landmark-drawn region to where the image says it is.

    lab: (H, W, 3) float32 CIELAB-like features; prior: boolean (H, W) region from the landmarks.
    Per image, a Gaussian colour model is fitted to the region's inside (deeper than `margin` px, or to
    `fg_samples`) and another to a ring outside it (between `margin` and `band` px away). The decision
    adds the prior's signed distance over `softness` px to `weight` times the log-likelihood ratio, so
    the image can move the boundary by a few pixels where its colours disagree, but far pixels never flip.
    Returns a boolean (H, W) mask.
    """
    if not prior.any():
        return prior
    dist = _signed_distance(prior)
    roi = np.abs(dist) < band
    inner = fg_samples if fg_samples is not None else dist > margin
    if inner.sum() < 8:
        inner = dist > 0
    ring = (dist < -margin) & (dist > -band)
    if inner.sum() < 8 or ring.sum() < 8:
        return prior
    feats = lab[roi]
    llr = _gaussian_loglik(feats, lab[inner], floor) - _gaussian_loglik(feats, lab[ring], floor)
    score = np.zeros(prior.shape, np.float32)
    score[roi] = np.clip(llr, -8.0, 8.0) * weight
    score += np.clip(dist, -band, band) / softness
    score[~roi] = np.sign(dist[~roi]) * 10.0
    score = cv2.GaussianBlur(score, (0, 0), 0.8)
    return score > 0


def eye_region(lab: np.ndarray, points: np.ndarray, frame: _Frame) -> np.ndarray:
    """Boolean (H, W) mask of one eye: the landmark outline moved by colour evidence.

    Then the lids' dark, colourless rim (eyeliner, lash line), which dlib's eye points often
    include, is peeled off: along the lower lid, and along the upper lid beside the iris only
    (a dark iris touches the upper lid).
    """
    prior = _fill(lab.shape[:2], eye_polygon(points, frame))
    iod = frame.iod
    eye = refine_region(
        lab, prior, softness=EYE_SOFT * iod, band=EYE_BAND * iod, margin=EYE_MARGIN * iod, weight=EYE_WEIGHT
    )
    if not eye.any():
        return eye
    ys, xs = np.nonzero(eye)
    top, bottom, left, right = ys.min(), ys.max() + 2, xs.min(), xs.max() + 2
    box = eye[top:bottom, left:right].astype(np.uint8)
    patch = lab[top:bottom, left:right]
    gy, gx = np.mgrid[top:bottom, left:right]
    rel = np.stack([gx, gy], axis=-1) - points.mean(axis=0)
    # Lower lid everywhere; upper lid only beside the iris.
    peelable = (rel @ frame.v > 0) | (np.abs(rel @ frame.u) > LINER_IRIS_HALF * iod)
    dark = (patch[..., 0] < LINER_LIGHTNESS) & (np.hypot(patch[..., 1], patch[..., 2]) < LINER_CHROMA)
    liner = dark & peelable
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(max(1, round(LINER_DEPTH * iod))):
        rim = box.astype(bool) & ~cv2.erode(box, kernel).astype(bool)
        drop = rim & liner
        if not drop.any():
            break
        box[drop] = 0
    eye[top:bottom, left:right] = box.astype(bool)
    return _eyeball_hull(lab, eye, points, frame)


def _eyeball_hull(lab: np.ndarray, eye: np.ndarray, points: np.ndarray, frame: _Frame) -> np.ndarray:
    """Boolean (H, W) eye cut to the convex hull of its eyeball evidence (sclera and iris), slightly grown.

    Liner, lashes and shadow that the landmark outline takes in lie outside the hull of the white of
    the eye and the iris; the hull keeps the lid shape smooth and the iris whole.
    """
    if eye.sum() < 10:
        return eye
    iod = frame.iod
    ys, xs = np.nonzero(eye)
    pad = max(2, round(IRIS_RADIUS * iod) + 1)
    top, left = max(0, ys.min() - pad), max(0, xs.min() - pad)
    bottom, right = min(eye.shape[0], ys.max() + pad + 1), min(eye.shape[1], xs.max() + pad + 1)
    box = eye[top:bottom, left:right]
    patch = lab[top:bottom, left:right]
    lightness = patch[..., 0]
    chroma = np.hypot(patch[..., 1], patch[..., 2])
    evidence = box & (lightness >= np.median(lightness[box])) & (chroma < SCLERA_CHROMA)
    # Iris: the darkest disc whose centre lies near the eye's centre line (liner is dark too, but on
    # the lids, above and below it).
    radius = max(1, round(IRIS_RADIUS * iod))
    kernel = _disk(radius).astype(np.float32)
    darkness = cv2.filter2D(
        np.where(box, 100.0 - lightness, 0.0).astype(np.float32), -1, kernel / kernel.sum()
    )
    gy, gx = np.mgrid[top:bottom, left:right]
    across = (np.stack([gx, gy], axis=-1) - points.mean(axis=0)) @ frame.v
    darkness[~box | (np.abs(across) > IRIS_BAND * iod)] = -1.0
    if darkness.max() >= 0:
        cy, cx = np.unravel_index(int(np.argmax(darkness)), darkness.shape)
        disc = np.zeros(box.shape, np.uint8)
        cv2.circle(disc, (int(cx), int(cy)), radius, 1, -1)
        evidence |= disc.astype(bool) & box
    if evidence.sum() < 5:
        return eye
    hull = np.zeros(box.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.argwhere(evidence)[:, ::-1].astype(np.int32)), 1)
    # At least a pixel: the hull runs through the centres of the outermost evidence pixels.
    hull = cv2.dilate(hull, _disk(max(1, round(EYEBALL_GROW * iod))))
    kept = box & hull.astype(bool)
    if kept.sum() < EYEBALL_MIN_KEEP * box.sum():
        return eye
    out = np.zeros_like(eye)
    out[top:bottom, left:right] = kept
    return out


def brow_region(lab: np.ndarray, points: np.ndarray, frame: _Frame, inner_first: bool) -> np.ndarray:
    """Boolean (H, W) mask of one brow: the landmark band moved to the brow's colour against local skin."""
    prior = _fill(lab.shape[:2], brow_polygon(points, frame, inner_first))
    iod = frame.iod
    core = prior & (_signed_distance(prior) > 1.0)
    return refine_region(
        lab,
        prior,
        softness=BROW_SOFT * iod,
        band=BROW_BAND * iod,
        margin=BROW_MARGIN * iod,
        weight=BROW_WEIGHT,
        fg_samples=core,
    )


def _drop_specks(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Boolean mask without its 8-connected components smaller than min_area pixels."""
    out = mask.astype(np.uint8)
    count, comp, stats, _ = cv2.connectedComponentsWithStats(out, connectivity=8)
    for i in range(1, count):
        if stats[i, cv2.CC_STAT_AREA] < min_area:
            out[comp == i] = 0
    return out.astype(bool)


def _visible_teeth(
    lab: np.ndarray, lips: np.ndarray, lip_core: np.ndarray, midline: np.ndarray, iod: float
) -> np.ndarray:
    """Boolean (H, W) teeth between the lips: near the lip midline, much less colourful than the lips.

    dlib often closes its inner-lip points over a slightly open mouth; teeth show then as pale,
    nearly grey pixels beside the midline, which no lip colour has (shadowed teeth are not bright,
    so the test is on chroma, with a lightness floor against the dark gap of closed lips).
    """
    lip_chroma = float(np.median(np.hypot(lab[lip_core][:, 1], lab[lip_core][:, 2])))
    line = np.zeros(lips.shape, np.uint8)
    pts = np.round(_catmull_rom(midline, closed=False) * 16).astype(np.int32)
    cv2.polylines(line, [pts], False, 1, thickness=1, lineType=cv2.LINE_8, shift=4)
    near = cv2.dilate(line, _disk(max(1, round(TEETH_BAND * iod)))).astype(bool) & lips
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    teeth = near & (chroma < TEETH_CHROMA_RATIO * lip_chroma) & (lab[..., 0] > TEETH_LIGHTNESS)
    return _drop_specks(teeth, max(3, round((0.03 * iod) ** 2)))


def _open_mouth(
    lab: np.ndarray,
    mouth: np.ndarray,
    lips: np.ndarray,
    lip_core: np.ndarray,
    landmarks: np.ndarray,
    iod: float,
) -> np.ndarray:
    """Inner-mouth pixels: those near the landmark mouth opening whose colour is unlike the lips.

    dlib draws an inner-lip polygon even for closed mouths and often a closed one for slightly open
    mouths; teeth and the dark gap are what CelebAMask labels as mouth. So the search covers the
    inner-lip polygon plus the line between the lips, and keeps pixels far from the per-image lip
    colour, plus teeth beside that line. When these fill enough of dlib's opening, the opening itself
    (edges moved by colour) is the mouth.
    """
    if lip_core.sum() < 8:
        return np.zeros_like(mouth)
    near = mouth.astype(np.uint8)
    # Midline between the upper and lower inner lip points, corner to corner.
    midline = (landmarks[[60, 61, 62, 63, 64]] + landmarks[[60, 67, 66, 65, 64]]) / 2
    # Same vertical calibration as the lip outlines (lip_polygons).
    frame = _Frame(landmarks)
    midline = midline + LIP_SHIFT_V * frame.iod * frame.v
    pts = np.round(_catmull_rom(midline, closed=False) * 16).astype(np.int32)
    cv2.polylines(near, [pts], False, 1, thickness=1, lineType=cv2.LINE_8, shift=4)
    grow = round(MOUTH_GROW * iod)
    if grow > 0:
        near = cv2.dilate(near, _disk(grow))
    near = near.astype(bool)
    maha = _mahalanobis(lab[near], lab[lip_core], 4.0)[0]
    out = np.zeros(mouth.shape, bool)
    out[near] = maha > MOUTH_MAHA
    teeth = _visible_teeth(lab, lips | mouth, lip_core, midline, iod)
    # Isolated specks go (a gap between lips is thin but long, so no morphological opening).
    unlike_lips = _drop_specks(out, max(3, round((0.03 * iod) ** 2))) | teeth
    opening = _fill(mouth.shape, inner_lip_polygon(frame))
    if unlike_lips.sum() < 8 or unlike_lips.sum() < MOUTH_OPEN_RATIO * opening.sum():
        # Closed or barely open: only the visible gap itself.
        return unlike_lips
    dist = _signed_distance(opening)
    band = MOUTH_BAND * iod
    roi = np.abs(dist) < band
    llr = _gaussian_loglik(lab[roi], lab[unlike_lips], 4.0) - _gaussian_loglik(lab[roi], lab[lip_core], 4.0)
    score = np.sign(dist) * 10.0
    score[roi] = np.clip(llr, -8.0, 8.0) * MOUTH_WEIGHT + dist[roi] / (MOUTH_SOFT * iod)
    return (score > 0) | teeth


def inner_lip_polygon(frame: _Frame) -> np.ndarray:
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
    return _catmull_rom(moved, closed=True)


def mouth_regions(
    lab: np.ndarray, landmarks: np.ndarray, iod: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean (H, W) masks of the upper lip, lower lip and inner mouth, refined by lip colour."""
    shape = lab.shape[:2]
    upper_poly, lower_poly, mouth_poly = lip_polygons(_Frame(landmarks))
    upper, lower, mouth = _fill(shape, upper_poly), _fill(shape, lower_poly), _fill(shape, mouth_poly)
    lips = upper | lower
    outer = lips | mouth
    lip_core = lips & (_signed_distance(lips) > LIP_CORE * iod)
    refined = refine_region(
        lab,
        outer,
        softness=LIP_SOFT * iod,
        band=LIP_BAND * iod,
        margin=LIP_MARGIN * iod,
        weight=LIP_WEIGHT,
        fg_samples=lip_core,
    )
    refined |= mouth
    mouth = _open_mouth(lab, mouth, lips, lip_core, landmarks, iod) & refined
    # Upper or lower lip: whichever landmark lip is nearer.
    d_upper = cv2.distanceTransform((~upper).astype(np.uint8), cv2.DIST_L2, 3)
    d_lower = cv2.distanceTransform((~lower).astype(np.uint8), cv2.DIST_L2, 3)
    rest = refined & ~mouth
    return rest & (d_upper <= d_lower), rest & (d_upper > d_lower), mouth


# ----------------------------------------------------------------------------------------------------------
# image-driven skin region


def _skin_region(rgb: np.ndarray, frame: _Frame) -> np.ndarray:
    """Boolean (H, W) face region (skin, nose, brows, eyes, lips, mouth, ears, neck) grown from the image.

    Works at a reduced scale (interocular distance WORK_INTEROCULAR px). A Gaussian skin model in Lab is
    fitted to the landmark face interior (eyes, brows and mouth cut out); its Mahalanobis distance picks
    which pixels of a generous head-and-neck prior start as probable face, and GrabCut (colour GMMs for
    face and surroundings plus a contrast-sensitive smoothness term) settles the boundary against hair,
    background and clothes.
    """
    height, width = rgb.shape[:2]
    # Downscale large faces; never upscale small ones (that would only add pixels).
    scale = min(1.0, WORK_INTEROCULAR / frame.iod)
    small_w, small_h = max(8, round(width * scale)), max(8, round(height * scale))
    small = cv2.resize(
        rgb, (small_w, small_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    )
    lm = frame.lm * scale
    sframe = _Frame(lm)
    iod = sframe.iod
    shape = (small_h, small_w)

    # Facial features that are not skin-coloured: cut out of the skin sample and painted over with the
    # skin colour for GrabCut, so that dark brows and lashes do not teach the face model "hair".
    features = np.zeros(shape, np.uint8)
    for points in (lm[36:42], lm[42:48], lm[48:60]):
        hull = cv2.convexHull(np.round(points).astype(np.int32))
        cv2.fillConvexPoly(features, hull, 1)
    features = cv2.dilate(features, _disk(round(0.08 * iod))).astype(bool)
    # Brows: cut out of the skin sample and painted too, but only their tight hull (bangs may cover
    # them, and what lies around them must be decided by GrabCut).
    brows = np.zeros(shape, np.uint8)
    for points in (lm[17:22], lm[22:27]):
        cv2.fillConvexPoly(brows, cv2.convexHull(np.round(points).astype(np.int32)), 1)
    brows = brows.astype(bool)

    jaw = _catmull_rom(lm[0:17], closed=False)
    interior = _fill(shape, np.concatenate([jaw, lm[26:16:-1]]))
    features |= brows & interior
    core = interior & ~features & ~brows & (_signed_distance(interior) > 0.12 * iod)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2Lab).astype(np.float32)
    samples = lab[core]
    if len(samples) < 20:
        samples = lab[interior]
    if len(samples) < 20:
        # The face is (nearly) outside the image or tiny: nothing to learn a colour from.
        return _upscale_mask(interior.astype(np.uint8), width, height)
    # Robust Gaussian: shadows, stray hair and highlights in the sample are dropped first.
    maha = _mahalanobis(lab.reshape(-1, 3), _trim_outliers(samples, 2.5), 2.0)[0].reshape(shape)

    head = _fill(shape, sframe.to_image(np.array(HEAD_PRIOR)))
    neck = _fill(shape, sframe.to_image(np.array(NECK_PRIOR)))
    wide = _fill(shape, sframe.to_image(np.array(WIDE_PRIOR)))
    skin_like = maha < SKIN_MAHA

    mask = np.full(shape, cv2.GC_BGD, np.uint8)
    mask[wide] = cv2.GC_PR_BGD
    # The neck is usually in the chin's shadow, darker than the cheeks: a looser colour test there.
    mask[(interior & skin_like) | (head & (maha < HEAD_MAHA)) | (neck & (maha < NECK_MAHA))] = cv2.GC_PR_FGD
    # Sure face: the skin-coloured landmark interior (bangs over the forehead fail the colour test),
    # the painted-over features, and a patch of the throat right under the chin when it is skin-ish,
    # so that the face colour model also knows the shadowed skin of the neck.
    chin = sframe.to_local(lm[8])
    throat = _fill(shape, sframe.to_image(chin + np.array(THROAT_SEED)))
    mask[(core & skin_like) | (interior & features) | (throat & (maha < NECK_MAHA))] = cv2.GC_FGD
    bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    bgr[features] = np.round(np.median(bgr[core], axis=0) if core.any() else bgr[features].mean(0))
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    is_fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    if wide.any() and is_fg.any() and not is_fg.all():
        # Only the search area (plus a margin of sure background) takes part: the cost is per pixel.
        ys, xs = np.nonzero(wide)
        pad = max(2, round(0.1 * iod))
        top, bottom = max(0, ys.min() - pad), min(small_h, ys.max() + pad + 1)
        left, right = max(0, xs.min() - pad), min(small_w, xs.max() + pad + 1)
        crop_mask = np.ascontiguousarray(mask[top:bottom, left:right])
        crop_bgr = np.ascontiguousarray(bgr[top:bottom, left:right])
        # GrabCut seeds its colour mixtures with k-means on OpenCV's (thread-local) RNG: fix it so
        # that a photo always parses the same way.
        cv2.setRNGSeed(20241211)
        crop_fg = (crop_mask == cv2.GC_FGD) | (crop_mask == cv2.GC_PR_FGD)
        if crop_fg.any() and not crop_fg.all():
            cv2.grabCut(crop_bgr, crop_mask, None, bgd_model, fgd_model, GRABCUT_ITERS, cv2.GC_INIT_WITH_MASK)
            mask[top:bottom, left:right] = crop_mask
    face = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    # GrabCut's colour mixtures can leak into similar hair or clothes far from the face: the prior
    # (slightly grown, for ears and loose landmarks) bounds the result.
    allowed = cv2.dilate((head | neck | interior).astype(np.uint8), _disk(round(ALLOWED_GROW * iod)))
    face = _largest_component((face & allowed.astype(bool)).astype(np.uint8))
    radius = max(1, round(0.04 * iod))
    face = cv2.morphologyEx(face, cv2.MORPH_OPEN, _disk(radius))
    face = cv2.morphologyEx(face, cv2.MORPH_CLOSE, _disk(radius))
    return _upscale_mask(face, width, height)


def _upscale_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean (height, width) mask from a {0, 1} uint8 mask at the working scale (bilinear, 50 %)."""
    return cv2.resize(mask * 255, (width, height), interpolation=cv2.INTER_LINEAR) >= 128


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if count <= 1:
        return mask.astype(np.uint8)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    out = (labels == best).astype(np.uint8)
    # Fill holes (eyes, mouth) so that part labels drawn later sit inside the face.
    inv = (1 - out).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    h, w = mask.shape
    for i in range(1, count):
        x, y, bw, bh, _ = stats[i]
        if x > 0 and y > 0 and x + bw < w and y + bh < h:
            out[labels == i] = 1
    return out


# ----------------------------------------------------------------------------------------------------------
# ears and hair


def _ear_zones(shape: tuple[int, int], frame: _Frame, jaw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (H, W) zones beside the jaw contour where ears appear: image-left, image-right.

    Each zone starts just outside the widest point of the jaw's upper third on its side and spans
    from brow height to about halfway down the jaw (face-frame units), where a frontal photo shows
    the ear.
    """
    local = frame.to_local(jaw)
    third = len(local) // 3
    top = EAR_TOP_V
    bottom = float(local[0, 1] + 0.45 * (local[len(local) // 2, 1] - local[0, 1]))
    zones = []
    for side, part in ((-1.0, local[:third]), (1.0, local[-third:])):
        half_width = np.abs(part[:, 0]).max()
        inner_u, outer_u = side * (half_width + EAR_GAP), side * (half_width + EAR_WIDTH)
        polygon = np.array([[inner_u, top], [outer_u, top], [outer_u, bottom], [inner_u, bottom]])
        zones.append(_fill(shape, frame.to_image(polygon)))
    return zones[0], zones[1]


def _hair_region(lab: np.ndarray, face: np.ndarray, frame: _Frame) -> np.ndarray:
    """Boolean (H, W) hair: non-face pixels around the head that match the colour found above the forehead.

    The colour model is fitted to a thin band just outside the face above the eyes (hairline); where
    the head is bald or the band shows background, that is what gets modelled, so this is a coarse
    label (hair is not part of any SHMT mask).
    """
    iod = frame.iod
    grown = cv2.dilate(face.astype(np.uint8), _disk(max(1, round(0.12 * iod)))).astype(bool)
    ys, xs = np.mgrid[0 : face.shape[0], 0 : face.shape[1]]
    local_v = (np.stack([xs, ys], axis=-1) - frame.origin) @ frame.v / iod
    band = grown & ~face & (local_v < -0.3)
    if band.sum() < 20:
        return np.zeros_like(face)
    samples = _trim_outliers(lab[band], 3.0)
    head = _fill(face.shape, frame.to_image(np.array(HAIR_PRIOR)))
    candidates = head & ~face
    out = np.zeros_like(face)
    out[candidates] = _mahalanobis(lab[candidates], samples, 4.0)[0] < HAIR_MAHA
    # Keep hair connected to the band above the forehead.
    _, comp = cv2.connectedComponents(out.astype(np.uint8), connectivity=8)
    touching = np.unique(comp[band & out])
    hair = np.isin(comp, touching[touching > 0]).astype(np.uint8)
    # Strands alternate light and dark: close the gaps, without spilling onto the face.
    hair = cv2.morphologyEx(hair, cv2.MORPH_CLOSE, _disk(max(1, round(0.05 * iod))))
    return hair.astype(bool) & head & ~face


# ----------------------------------------------------------------------------------------------------------
# public API


PARSE_METHODS = ("net", "rules")


def parse_face(rgb: np.ndarray, landmarks: np.ndarray, method: str = "rules") -> np.ndarray:
    """19-class CelebAMask-HQ label map (H, W) uint8 of the face whose 68 landmarks are given.

    rgb: (H, W, 3) uint8 RGB; landmarks: (68, 2) float (x, y) in dlib / iBUG 300-W order.
    method: "rules" (default) the rule-based parser (GrabCut skin region); "net" the fast landmark
    prior refined by the shipped network (shmt_cli/face/parsing_net.py), experimental: faster, but
    its 3-fold held-out skin region is below the rules' (tools/parsing_train.py --kfold 3).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError("parse_face expects an (H, W, 3) uint8 RGB image")
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"parse_face expects (68, 2) landmarks, got {lm.shape}")
    if method not in PARSE_METHODS:
        raise ValueError(f"unknown parse method {method!r}; expected one of {PARSE_METHODS}")
    if method == "net":
        # Imported here: torch is only needed when the network runs.
        from shmt_cli.face import parsing_net

        return parsing_net.refine_parse(rgb, lm)
    return _parse_rules(rgb, lm, grow_skin=True)


def _parse_rules(rgb: np.ndarray, lm: np.ndarray, grow_skin: bool) -> np.ndarray:
    """The rule-based parser on the whole image (see _parse_roi for grow_skin)."""
    height, width = rgb.shape[:2]
    labels = np.zeros((height, width), np.uint8)
    # Everything happens inside the region where face and hair may be, so the cost does not grow with
    # the photo's size; the rest stays background.
    frame = _Frame(lm)
    reach = frame.to_image(np.concatenate([np.array(HAIR_PRIOR), np.array(WIDE_PRIOR)]))
    margin = 0.1 * frame.iod
    left, top = np.floor(reach.min(axis=0) - margin).astype(int)
    right, bottom = np.ceil(reach.max(axis=0) + margin).astype(int) + 1
    left, top, right, bottom = max(0, left), max(0, top), min(width, right), min(height, bottom)
    if right - left < 2 or bottom - top < 2:
        return labels
    roi = np.ascontiguousarray(rgb[top:bottom, left:right])
    roi_lm = lm - np.array([left, top])
    # Very large faces are parsed at a bounded size and the labels scaled back (nearest).
    factor = min(1.0, PARSE_MAX_INTEROCULAR / frame.iod)
    if factor < 1.0:
        roi_w, roi_h = right - left, bottom - top
        small_size = (max(2, round(roi_w * factor)), max(2, round(roi_h * factor)))
        small = cv2.resize(roi, small_size, interpolation=cv2.INTER_AREA)
        scaled_lm = (roi_lm + 0.5) * np.array([small_size[0] / roi_w, small_size[1] / roi_h]) - 0.5
        small_labels = _parse_roi(small, scaled_lm, grow_skin)
        labels[top:bottom, left:right] = cv2.resize(
            small_labels, (roi_w, roi_h), interpolation=cv2.INTER_NEAREST
        )
    else:
        labels[top:bottom, left:right] = _parse_roi(roi, roi_lm, grow_skin)
    return labels


def landmark_face_prior(shape: tuple[int, int], frame: _Frame) -> np.ndarray:
    """Boolean (H, W) region where the face may be from the landmarks alone: jaw-and-brow interior,
    head (forehead to a typical hairline) and neck polygons of the face frame."""
    lm = frame.lm
    jaw = _catmull_rom(lm[0:17], closed=False)
    interior = _fill(shape, np.concatenate([jaw, lm[26:16:-1]]))
    head = _fill(shape, frame.to_image(np.array(HEAD_PRIOR)))
    neck = _fill(shape, frame.to_image(np.array(NECK_PRIOR)))
    return interior | head | neck


def parse_prior(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Fast rule-based label map (H, W) uint8 without the image-driven skin region and hair.

    Parts (nose, eyes, brows, lips, inner mouth) are drawn as in `parse_face` with method "rules"; the
    face is the landmark prior region (`landmark_face_prior`), split into neck and ears by geometry.
    This is the prior the learned refinement (shmt_cli/face/parsing_net.py) takes as input.
    """
    return _parse_rules(rgb, np.asarray(landmarks, dtype=np.float64), grow_skin=False)


def _parse_roi(rgb: np.ndarray, lm: np.ndarray, grow_skin: bool = True) -> np.ndarray:
    """The rule-based parser on an image cropped around the face (landmarks in the crop's pixels).

    grow_skin: GrabCut skin region and hair (slow); otherwise the landmark prior region, no hair.
    """
    shape = rgb.shape[:2]
    frame = _Frame(lm)
    iod = frame.iod

    labels = np.zeros(shape, np.uint8)
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    if grow_skin:
        face = _skin_region(rgb, frame)
        labels[_hair_region(lab, face, frame)] = HAIR
    else:
        face = landmark_face_prior(shape, frame)
    labels[face] = SKIN

    # Neck: face pixels below the jaw line. Ears: face pixels beside the jaw, between brow and jaw.
    jaw = _catmull_rom(lm[0:17], closed=False)
    far = 10.0 * iod
    below_jaw = _fill(shape, np.concatenate([jaw, [lm[16] + far * frame.v, lm[0] + far * frame.v]]))
    labels[face & below_jaw] = NECK
    beside = _ear_zones(shape, frame, jaw)
    labels[face & beside[0] & ~below_jaw] = R_EAR
    labels[face & beside[1] & ~below_jaw] = L_EAR

    labels[_fill(shape, nose_polygon(frame))] = NOSE
    labels[brow_region(lab, lm[17:22], frame, inner_first=False)] = R_BROW
    labels[brow_region(lab, lm[22:27], frame, inner_first=True)] = L_BROW
    labels[eye_region(lab, lm[36:42], frame)] = R_EYE
    labels[eye_region(lab, lm[42:48], frame)] = L_EYE
    upper, lower, mouth = mouth_regions(lab, lm, iod)
    labels[upper] = U_LIP
    labels[lower] = L_LIP
    labels[mouth] = MOUTH
    return labels


# ----------------------------------------------------------------------------------------------------------
# external label maps

# zllrunning BiSeNet (face-parsing.PyTorch) order -> CelebAMask ids (spec §7).
_BISENET_TO_CELEBAMASK = np.array(
    [0, 1, 6, 7, 4, 5, 3, 8, 9, 15, 2, 10, 11, 12, 17, 16, 18, 13, 14], np.uint8
)
# MT (BeautyGAN) dataset order, as stated for the MT-Dataset parsing maps in
# github.com/makeuptransfer/SCGAN issue #20: 0 background, 1 skin, 2 left_brow, 3 right_brow,
# 4 left_eye, 5 right_eye, 6 nose, 7 up_lip, 8 teeth, 9 down_lip, 10 hair, 11 left_ear, 12 right_ear,
# 13 neck. ASSUMPTION: MT's "left" uses the same (subject's left) convention as CelebAMask's "l_".
_MT_TO_CELEBAMASK = np.array([0, 1, 6, 7, 4, 5, 2, 11, 10, 12, 13, 8, 9, 17], np.uint8)

LABEL_ORDERS: dict[str, np.ndarray] = {
    "celebamask": np.arange(NUM_LABELS, dtype=np.uint8),
    "bisenet": _BISENET_TO_CELEBAMASK,
    "mt": _MT_TO_CELEBAMASK,
}


def remap_labels(labels: np.ndarray, order: str) -> np.ndarray:
    """Map an integer label map from `order` ('celebamask', 'bisenet', 'mt') to CelebAMask ids (uint8).

    Raises ValueError for an unknown order or a value that the order does not define.
    """
    if order not in LABEL_ORDERS:
        raise ValueError(f"unknown label order {order!r}; expected one of {sorted(LABEL_ORDERS)}")
    table = LABEL_ORDERS[order]
    arr = np.asarray(labels)
    if arr.size and (arr.min() < 0 or arr.max() >= len(table)):
        raise ValueError(
            f"label values must lie in 0..{len(table) - 1} for order {order!r}, "
            f"found {arr.min()}..{arr.max()}"
        )
    return table[arr.astype(np.intp)]


def load_label_map(path: str | Path, size: tuple[int, int] | int, order: str = "celebamask") -> np.ndarray:
    """Read a PNG label map, resize it (nearest) to `size` = (height, width) or a side, remap to CelebAMask.

    Accepts 8-bit 1-channel maps (grey or palette: the palette indices are the labels) and 3-channel
    maps whose channels are identical. Raises ValueError naming the file for anything else
    (unreadable file, other channel counts or bit depths, differing channels, values out of range).
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            mode = image.mode
            raw = np.array(image)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read as an image ({exc})") from exc
    if mode not in ("L", "P", "RGB"):
        channels = {"LA": 2, "PA": 2, "RGBA": 4, "CMYK": 4}.get(mode)
        if channels is not None:
            raise ValueError(f"{path}: label map must have 1 or 3 channels, got {channels} (mode {mode})")
        raise ValueError(f"{path}: label map must be 8-bit with 1 or 3 channels, got mode {mode}")
    if raw.ndim == 3:
        if not (np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 0], raw[..., 2])):
            raise ValueError(
                f"{path}: 3-channel label map has channels that differ (a colour visualisation?)"
            )
        raw = raw[..., 0]
    height, width = (size, size) if isinstance(size, int) else size
    if raw.shape != (height, width):
        raw = cv2.resize(raw, (width, height), interpolation=cv2.INTER_NEAREST)
    try:
        return remap_labels(raw, order)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
