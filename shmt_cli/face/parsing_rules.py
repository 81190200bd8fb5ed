"""Colour evidence of the rule-based face parser: the landmark outlines moved to what the image shows.

Per image, Gaussian colour models (CIELAB) of a part against its surroundings move the outlines of
parsing_shapes.py by a few pixels: lips against the nearby skin, eyes and brows against the lid and
brow skin, teeth and the dark gap between the lips against the lip colour. Each eye is then cut to
the convex hull of its eyeball evidence (white of the eye and the darkest iris-sized disc), which
drops most liner and lashes that the landmark outline takes in; an open mouth (enough teeth or
cavity pixels inside dlib's inner-lip polygon) is that polygon with its edge moved by colour.
"""

from __future__ import annotations

import cv2
import numpy as np

from shmt_cli.face.parsing_params import shipped_params
from shmt_cli.face.parsing_shapes import (
    LIP_SHIFT_V,
    Frame,
    brow_polygon,
    catmull_rom,
    disk,
    eye_polygon,
    fill_polygon,
    inner_lip_polygon,
    lip_polygons,
    signed_distance,
)

# --- Colour refinement parameters, read from parsing_rules.json (section "rules"), fitted with the
# shape parameters (parsing_shapes.py) by coordinate search on the 36 dev photos with
# tools/parsing_iou.py; lengths in interocular distances (iod).
_PARAMS = shipped_params()
# Eye refinement by colour (eye against lid skin and lashes): weak, the outline is mostly right.
EYE_WEIGHT = _PARAMS.number("rules", "EYE_WEIGHT")
EYE_SOFT = _PARAMS.number("rules", "EYE_SOFT")
EYE_BAND = _PARAMS.number("rules", "EYE_BAND")
EYE_MARGIN = _PARAMS.number("rules", "EYE_MARGIN")
# Lower-lid liner peel: at most this deep (iod), pixels darker than LINER_LIGHTNESS (Lab L) with
# chroma below LINER_CHROMA (black or grey, unlike irises).
LINER_DEPTH = _PARAMS.number("rules", "LINER_DEPTH")
LINER_LIGHTNESS = _PARAMS.number("rules", "LINER_LIGHTNESS")
LINER_CHROMA = _PARAMS.number("rules", "LINER_CHROMA")
# Half width (iod) of the band around the eye centre where the upper lid is not peeled (the iris).
LINER_IRIS_HALF = _PARAMS.number("rules", "LINER_IRIS_HALF")
# Eyeball evidence: sclera pixels are at least as light as the eye's median (Lab L) with chroma below
# SCLERA_CHROMA; the iris is the darkest disc of radius IRIS_RADIUS (iod) centred within IRIS_BAND of
# the eye points' centre line. The eye is cut to their convex hull grown by EYEBALL_GROW, unless that
# would keep less than EYEBALL_MIN_KEEP of it (no usable evidence).
SCLERA_CHROMA = _PARAMS.number("rules", "SCLERA_CHROMA")
IRIS_RADIUS = _PARAMS.number("rules", "IRIS_RADIUS")
IRIS_BAND = _PARAMS.number("rules", "IRIS_BAND")
EYEBALL_GROW = _PARAMS.number("rules", "EYEBALL_GROW")
EYEBALL_MIN_KEEP = _PARAMS.number("rules", "EYEBALL_MIN_KEEP")
# Brow refinement: brow hair (or paint) against the surrounding skin.
BROW_WEIGHT = _PARAMS.number("rules", "BROW_WEIGHT")
BROW_SOFT = _PARAMS.number("rules", "BROW_SOFT")
BROW_BAND = _PARAMS.number("rules", "BROW_BAND")
BROW_MARGIN = _PARAMS.number("rules", "BROW_MARGIN")
# Lip colour refinement: prior softness, search band, sampling margins (interocular distances).
LIP_SOFT = _PARAMS.number("rules", "LIP_SOFT")
LIP_BAND = _PARAMS.number("rules", "LIP_BAND")
LIP_MARGIN = _PARAMS.number("rules", "LIP_MARGIN")
LIP_CORE = _PARAMS.number("rules", "LIP_CORE")
LIP_WEIGHT = _PARAMS.number("rules", "LIP_WEIGHT")
# Inner mouth: search this far around dlib's inner-lip polygon; squared Mahalanobis distance from the
# lip colour above which a pixel is teeth or cavity rather than lip.
MOUTH_GROW = _PARAMS.number("rules", "MOUTH_GROW")
MOUTH_MAHA = _PARAMS.number("rules", "MOUTH_MAHA")
# Open mouth: when the pixels unlike the lips fill at least MOUTH_OPEN_RATIO of dlib's own inner-lip
# polygon (points 60..67, lip calibration), CelebAMask labels the whole opening (gums and shaded teeth
# too): the polygon is kept and its edge moved by colour (teeth/cavity against lip), with prior
# softness and search band in iod.
MOUTH_OPEN_RATIO = _PARAMS.number("rules", "MOUTH_OPEN_RATIO")
MOUTH_WEIGHT = _PARAMS.number("rules", "MOUTH_WEIGHT")
MOUTH_SOFT = _PARAMS.number("rules", "MOUTH_SOFT")
MOUTH_BAND = _PARAMS.number("rules", "MOUTH_BAND")
# Teeth beside the lip midline (within TEETH_BAND iod): chroma below TEETH_CHROMA_RATIO of the lips'
# median chroma and Lab lightness above TEETH_LIGHTNESS.
TEETH_BAND = _PARAMS.number("rules", "TEETH_BAND")
TEETH_CHROMA_RATIO = _PARAMS.number("rules", "TEETH_CHROMA_RATIO")
TEETH_LIGHTNESS = _PARAMS.number("rules", "TEETH_LIGHTNESS")


# ----------------------------------------------------------------------------------------------------------
# image evidence


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (L 0..100, a and b about -128..127) float32 of uint8 RGB pixels (..., 3), same shape."""
    if rgb.size == 0:
        return np.zeros(rgb.shape, np.float32)  # a part window outside the image (cvtColor refuses it)
    return cv2.cvtColor(rgb.astype(np.float32).reshape(-1, 1, 3) / 255.0, cv2.COLOR_RGB2Lab).reshape(
        rgb.shape
    )


def mahalanobis(features: np.ndarray, samples: np.ndarray, floor: float) -> tuple[np.ndarray, float]:
    """Squared Mahalanobis distances of (N, C) features to a Gaussian fitted to (M, C) samples, and the
    log-determinant of its covariance (floored by `floor` on the diagonal)."""
    mean = samples.mean(axis=0)
    cov = np.cov(samples, rowvar=False) + np.eye(samples.shape[1]) * floor
    diff = (features - mean).astype(np.float64)
    # Row-wise quadratic form: one (N, C) x (C, C) product, a quarter of a three-operand einsum's time.
    maha = np.einsum("nc,nc->n", diff @ np.linalg.inv(cov), diff)
    return maha, float(np.linalg.slogdet(cov)[1])


def inliers(samples: np.ndarray, limit: float) -> np.ndarray:
    """Boolean (M,): which of the (M, C) samples lie within `limit` robust standard deviations (median
    absolute deviation, per channel) of the median in every channel."""
    med = np.median(samples, axis=0)
    spread = np.median(np.abs(samples - med), axis=0) * 1.4826 + 1.0
    return (np.abs(samples - med) / spread).max(axis=1) < limit


def trim_outliers(samples: np.ndarray, limit: float, keep_at_least: int = 20) -> np.ndarray:
    """(M, C) samples without those farther than `limit` robust standard deviations (median absolute
    deviation, per channel) from the median; all samples when fewer than `keep_at_least` would remain."""
    keep = inliers(samples, limit)
    return samples[keep] if keep.sum() >= keep_at_least else samples


def _gaussian_loglik(features: np.ndarray, samples: np.ndarray, floor: float) -> np.ndarray:
    """Log-likelihood (up to a constant) of (N, C) features under a Gaussian fitted to (M, C) samples."""
    maha, logdet = mahalanobis(features, samples, floor)
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
    dist = signed_distance(prior)
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


def eye_region(lab: np.ndarray, points: np.ndarray, frame: Frame) -> np.ndarray:
    """Boolean (H, W) mask of one eye: the landmark outline moved by colour evidence.

    Then the lids' dark, colourless rim (eyeliner, lash line), which dlib's eye points often
    include, is peeled off: along the lower lid, and along the upper lid beside the iris only
    (a dark iris touches the upper lid).
    """
    prior = fill_polygon(lab.shape[:2], eye_polygon(points, frame))
    iod = frame.iod
    eye = refine_region(
        lab, prior, softness=EYE_SOFT * iod, band=EYE_BAND * iod, margin=EYE_MARGIN * iod, weight=EYE_WEIGHT
    )
    if not eye.any():
        return eye
    ys, xs = np.nonzero(eye)
    top, left = ys.min(), xs.min()
    bottom, right = min(ys.max() + 2, eye.shape[0]), min(xs.max() + 2, eye.shape[1])
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


def _eyeball_hull(lab: np.ndarray, eye: np.ndarray, points: np.ndarray, frame: Frame) -> np.ndarray:
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
    kernel = disk(radius).astype(np.float32)
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
    hull = cv2.dilate(hull, disk(max(1, round(EYEBALL_GROW * iod))))
    kept = box & hull.astype(bool)
    if kept.sum() < EYEBALL_MIN_KEEP * box.sum():
        return eye
    out = np.zeros_like(eye)
    out[top:bottom, left:right] = kept
    return out


def brow_region(lab: np.ndarray, points: np.ndarray, frame: Frame, inner_first: bool) -> np.ndarray:
    """Boolean (H, W) mask of one brow: the landmark band moved to the brow's colour against local skin."""
    prior = fill_polygon(lab.shape[:2], brow_polygon(points, frame, inner_first))
    iod = frame.iod
    core = prior & (signed_distance(prior) > 1.0)
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
    pts = np.round(catmull_rom(midline, closed=False) * 16).astype(np.int32)
    cv2.polylines(line, [pts], False, 1, thickness=1, lineType=cv2.LINE_8, shift=4)
    near = cv2.dilate(line, disk(max(1, round(TEETH_BAND * iod)))).astype(bool) & lips
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
    frame = Frame(landmarks)
    midline = midline + LIP_SHIFT_V * frame.iod * frame.v
    pts = np.round(catmull_rom(midline, closed=False) * 16).astype(np.int32)
    cv2.polylines(near, [pts], False, 1, thickness=1, lineType=cv2.LINE_8, shift=4)
    grow = round(MOUTH_GROW * iod)
    if grow > 0:
        near = cv2.dilate(near, disk(grow))
    near = near.astype(bool)
    maha = mahalanobis(lab[near], lab[lip_core], 4.0)[0]
    out = np.zeros(mouth.shape, bool)
    out[near] = maha > MOUTH_MAHA
    teeth = _visible_teeth(lab, lips | mouth, lip_core, midline, iod)
    # Isolated specks go (a gap between lips is thin but long, so no morphological opening).
    unlike_lips = _drop_specks(out, max(3, round((0.03 * iod) ** 2))) | teeth
    opening = fill_polygon(mouth.shape, inner_lip_polygon(frame))
    if unlike_lips.sum() < 8 or unlike_lips.sum() < MOUTH_OPEN_RATIO * opening.sum():
        # Closed or barely open: only the visible gap itself.
        return unlike_lips
    dist = signed_distance(opening)
    band = MOUTH_BAND * iod
    roi = np.abs(dist) < band
    llr = _gaussian_loglik(lab[roi], lab[unlike_lips], 4.0) - _gaussian_loglik(lab[roi], lab[lip_core], 4.0)
    score = np.sign(dist) * 10.0
    score[roi] = np.clip(llr, -8.0, 8.0) * MOUTH_WEIGHT + dist[roi] / (MOUTH_SOFT * iod)
    return (score > 0) | teeth


def mouth_regions(
    lab: np.ndarray, landmarks: np.ndarray, iod: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean (H, W) masks of the upper lip, lower lip and inner mouth, refined by lip colour."""
    shape = lab.shape[:2]
    upper_poly, lower_poly, mouth_poly = lip_polygons(Frame(landmarks))
    upper, lower = fill_polygon(shape, upper_poly), fill_polygon(shape, lower_poly)
    mouth = fill_polygon(shape, mouth_poly)
    lips = upper | lower
    outer = lips | mouth
    lip_core = lips & (signed_distance(lips) > LIP_CORE * iod)
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
    if not refined.any():
        return refined, refined, refined  # the mouth is outside the image
    mouth = _open_mouth(lab, mouth, lips, lip_core, landmarks, iod) & refined
    # Upper or lower lip: whichever landmark lip is nearer.
    d_upper = cv2.distanceTransform((~upper).astype(np.uint8), cv2.DIST_L2, 3)
    d_lower = cv2.distanceTransform((~lower).astype(np.uint8), cv2.DIST_L2, 3)
    rest = refined & ~mouth
    return rest & (d_upper <= d_lower), rest & (d_upper > d_lower), mouth
