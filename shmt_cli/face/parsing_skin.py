"""Skin region, ears and hair of the rule-based face parser, grown from the image.

The skin region (forehead up to the hairline, neck, ears where visible) is grown by GrabCut from
seeds chosen by a per-image skin colour model learned on the landmark face interior, bounded by a
generous landmark prior; a coarse hair label comes from the colour just above the hairline.
"""

from __future__ import annotations

import cv2
import numpy as np

from shmt_cli.face.parsing_params import shipped_params
from shmt_cli.face.parsing_rules import inliers, mahalanobis, rgb_to_lab, trim_outliers
from shmt_cli.face.parsing_shapes import Frame, catmull_rom, disk, fill_polygon, signed_distance

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
# The skin region's extent inside those zones (the "skin" section of parsing_rules.json, written by
# tools/parsing_rules_kfold.py --fit-all --write, which states the objective and the held-out figures):
# - SKIN_MAHA, HEAD_MAHA, NECK_MAHA: squared Mahalanobis distance to the per-image skin colour below
#   which a pixel of the landmark interior, the head prior and the neck prior starts as probable face
#   (the neck is usually in the chin's shadow: a looser test there);
# - CORE_INSET: inset (interocular distances) of the landmark face outline within which the skin colour
#   is sampled and which is face whatever its colour;
# - ALLOWED_GROW: how far (interocular distances) the result may reach beyond the head, neck and
#   interior priors;
# - SIDE_SOFT: the skin colour model is one Gaussian per half of the face, blended across the nose line
#   over this many interocular distances (logistic scale);
# - BOUNDARY_BAND: the band either side of the working scale's boundary that is re-decided at full
#   resolution (_refine_boundary), in interocular distances.
_PARAMS = shipped_params()
SKIN_MAHA = _PARAMS.number("skin", "SKIN_MAHA")
HEAD_MAHA = _PARAMS.number("skin", "HEAD_MAHA")
NECK_MAHA = _PARAMS.number("skin", "NECK_MAHA")
CORE_INSET = _PARAMS.number("skin", "CORE_INSET")
ALLOWED_GROW = _PARAMS.number("skin", "ALLOWED_GROW")
SIDE_SOFT = _PARAMS.number("skin", "SIDE_SOFT")
BOUNDARY_BAND = _PARAMS.number("skin", "BOUNDARY_BAND")
# A half of the face with fewer skin samples (working-scale pixels) uses the whole face's Gaussian.
SIDE_MIN_SAMPLES = 20
# The largest face (interocular px) whose boundary is refined at its own size (larger ones at this
# scale: the cost grows with the pixel count; 256 px align crops have about 77).
BOUNDARY_WORK_INTEROCULAR = 96.0
# GrabCut iterations at the working scale: since the boundary is re-decided at full resolution
# (_refine_boundary), a third moves M_face IoU on the dev photos' 256 px align crops by less than
# 0.001 (made-up and bare) and costs about 10 ms per face.
GRABCUT_ITERS = 2
# Cheaper settings for the prior of the learned refinement (parsing_net.py), which corrects the skin
# region itself: about a quarter of GrabCut's cost for ~0.003 less M_face IoU from the rules alone.
FAST_WORK_INTEROCULAR = 40.0
FAST_GRABCUT_ITERS = 2


# ----------------------------------------------------------------------------------------------------------
# image-driven skin region


def skin_region(rgb: np.ndarray, frame: Frame, fast: bool = False) -> np.ndarray:
    """Boolean (H, W) face region (skin, nose, brows, eyes, lips, mouth, ears, neck) grown from the image.

    Works at a reduced scale (interocular distance WORK_INTEROCULAR px). A Gaussian skin model in Lab is
    fitted to the landmark face interior (eyes, brows and mouth cut out), one per half of the face
    (_skin_distance); its Mahalanobis distance picks which pixels of a generous head-and-neck prior
    start as probable face, and GrabCut (colour GMMs for face and surroundings plus a contrast-sensitive
    smoothness term) settles the boundary against hair, background and clothes. The boundary is then
    re-decided in a narrow band at up to full resolution (_refine_boundary). fast: the cheaper FAST_*
    working scale and GrabCut iterations, one skin Gaussian and no boundary pass (the prior that
    parsing_net.py was trained on).
    """
    height, width = rgb.shape[:2]
    work_iod, iters = (
        (FAST_WORK_INTEROCULAR, FAST_GRABCUT_ITERS) if fast else (WORK_INTEROCULAR, GRABCUT_ITERS)
    )
    # Downscale large faces; never upscale small ones (that would only add pixels).
    scale = min(1.0, work_iod / frame.iod)
    small_w, small_h = max(8, round(width * scale)), max(8, round(height * scale))
    small = cv2.resize(
        rgb, (small_w, small_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    )
    lm = frame.lm * scale
    sframe = Frame(lm)
    iod = sframe.iod
    shape = (small_h, small_w)

    # Facial features that are not skin-coloured: cut out of the skin sample and painted over with the
    # skin colour for GrabCut, so that dark brows and lashes do not teach the face model "hair".
    features = np.zeros(shape, np.uint8)
    for points in (lm[36:42], lm[42:48], lm[48:60]):
        hull = cv2.convexHull(np.round(points).astype(np.int32))
        cv2.fillConvexPoly(features, hull, 1)
    features = cv2.dilate(features, disk(round(0.08 * iod))).astype(bool)
    # Brows: cut out of the skin sample and painted too, but only their tight hull (bangs may cover
    # them, and what lies around them must be decided by GrabCut).
    brows = np.zeros(shape, np.uint8)
    for points in (lm[17:22], lm[22:27]):
        cv2.fillConvexPoly(brows, cv2.convexHull(np.round(points).astype(np.int32)), 1)
    brows = brows.astype(bool)

    jaw = catmull_rom(lm[0:17], closed=False)
    interior = fill_polygon(shape, np.concatenate([jaw, lm[26:16:-1]]))
    features |= brows & interior
    deep = interior & (signed_distance(interior) > CORE_INSET * iod)
    core = deep & ~features & ~brows
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2Lab).astype(np.float32)
    samples = lab[core]
    if len(samples) < 20:
        samples = lab[interior]
    if len(samples) < 20:
        # The face is (nearly) outside the image or tiny: nothing to learn a colour from.
        return _upscale_mask(interior.astype(np.uint8), width, height)
    maha = _skin_distance(lab, core, samples, sframe, per_side=not fast)

    head = fill_polygon(shape, sframe.to_image(np.array(HEAD_PRIOR)))
    neck = fill_polygon(shape, sframe.to_image(np.array(NECK_PRIOR)))
    wide = fill_polygon(shape, sframe.to_image(np.array(WIDE_PRIOR)))
    skin_like = maha < SKIN_MAHA

    mask = np.full(shape, cv2.GC_BGD, np.uint8)
    mask[wide] = cv2.GC_PR_BGD
    # The neck is usually in the chin's shadow, darker than the cheeks: a looser colour test there.
    mask[(interior & skin_like) | (head & (maha < HEAD_MAHA)) | (neck & (maha < NECK_MAHA))] = cv2.GC_PR_FGD
    # Sure face: the skin-coloured landmark interior (bangs over the forehead fail the colour test),
    # the painted-over features, and a patch of the throat right under the chin when it is skin-ish,
    # so that the face colour model also knows the shadowed skin of the neck.
    chin = sframe.to_local(lm[8])
    throat = fill_polygon(shape, sframe.to_image(chin + np.array(THROAT_SEED)))
    mask[(core & skin_like) | (interior & features) | (throat & (maha < NECK_MAHA))] = cv2.GC_FGD
    colours = _grabcut_colours(small, fast)
    colours[features] = np.round(
        np.median(colours[core], axis=0) if core.any() else colours[features].mean(0)
    )
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
        crop_colours = np.ascontiguousarray(colours[top:bottom, left:right])
        # GrabCut seeds its colour mixtures with k-means on OpenCV's (thread-local) RNG: fix it so
        # that a photo always parses the same way.
        cv2.setRNGSeed(20241211)
        crop_fg = (crop_mask == cv2.GC_FGD) | (crop_mask == cv2.GC_PR_FGD)
        if crop_fg.any() and not crop_fg.all():
            cv2.grabCut(crop_colours, crop_mask, None, bgd_model, fgd_model, iters, cv2.GC_INIT_WITH_MASK)
            mask[top:bottom, left:right] = crop_mask
    face = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    # GrabCut's colour mixtures can leak into similar hair or clothes far from the face: the prior
    # (slightly grown, for ears and loose landmarks) bounds the result.
    allowed = cv2.dilate((head | neck | interior).astype(np.uint8), disk(round(ALLOWED_GROW * iod)))
    # Deep inside the landmark outline is face whatever its colour: face paint, a colour block or a
    # painted heart on a cheek fails the skin test and GrabCut's colour models (seeding it as sure face
    # instead taught GrabCut the paint's colour and let it grow into similar hair).
    face |= deep
    face = _largest_component((face & allowed.astype(bool)).astype(np.uint8))
    radius = max(1, round(0.04 * iod))
    face = cv2.morphologyEx(face, cv2.MORPH_OPEN, disk(radius))
    face = cv2.morphologyEx(face, cv2.MORPH_CLOSE, disk(radius))
    face = _upscale_mask(face, width, height)
    if fast or not (fgd_model.any() and bgd_model.any()):
        return face  # the fast prior, or GrabCut did not run: no colour mixtures to refine with
    return _refine_boundary(rgb, face, frame, (bgd_model, fgd_model))


def _refine_boundary(
    rgb: np.ndarray, face: np.ndarray, frame: Frame, models: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Boolean (H, W) face region with its boundary re-decided at (up to) full resolution.

    rgb: (H, W, 3) uint8; face: boolean (H, W) region from the working scale; models: the working
    scale's GrabCut colour mixtures (surroundings, face), (1, 65) float64 each. Only a band of
    BOUNDARY_BAND interocular distances either side of the boundary is open: one GrabCut iteration
    resumed from those mixtures (refitted to this crop's pixels, without the k-means start: about half
    the cost of a fresh one, for the same in-sample IoU; frozen mixtures cost as much and tie) moves the
    edge onto the image's own edge (hairline strands, the jaw against a bright background) that the
    working scale blurs. Faces larger than BOUNDARY_WORK_INTEROCULAR are refined
    at that scale.
    """
    height, width = face.shape
    scale = min(1.0, BOUNDARY_WORK_INTEROCULAR / frame.iod)
    image, region = rgb, face.astype(np.uint8)
    if scale < 1.0:
        small_size = (max(8, round(width * scale)), max(8, round(height * scale)))
        image = cv2.resize(rgb, small_size, interpolation=cv2.INTER_AREA)
        region = cv2.resize(region, small_size, interpolation=cv2.INTER_NEAREST)
    band = max(1, round(BOUNDARY_BAND * frame.iod * scale))
    inner = cv2.erode(region, disk(band)).astype(bool)
    outer = cv2.dilate(region, disk(band)).astype(bool)
    if not inner.any() or outer.all():
        return face
    mask = np.full(region.shape, cv2.GC_BGD, np.uint8)
    mask[outer] = cv2.GC_PR_BGD
    mask[region.astype(bool)] = cv2.GC_PR_FGD
    mask[inner] = cv2.GC_FGD
    ys, xs = np.nonzero(outer)
    top, bottom = max(0, ys.min() - 1), min(region.shape[0], ys.max() + 2)
    left, right = max(0, xs.min() - 1), min(region.shape[1], xs.max() + 2)
    crop_mask = np.ascontiguousarray(mask[top:bottom, left:right])
    crop_colours = _grabcut_colours(np.ascontiguousarray(image[top:bottom, left:right]), fast=False)
    bgd_model, fgd_model = models[0].copy(), models[1].copy()
    cv2.grabCut(crop_colours, crop_mask, None, bgd_model, fgd_model, 1, cv2.GC_EVAL)
    mask[top:bottom, left:right] = crop_mask
    refined = _largest_component(((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8))
    if scale < 1.0:
        refined = cv2.resize(refined, (width, height), interpolation=cv2.INTER_NEAREST)
    return refined.astype(bool)


def _grabcut_colours(rgb: np.ndarray, fast: bool) -> np.ndarray:
    """(H, W, 3) uint8 colours GrabCut models: 8-bit CIELAB, or BGR for the fast prior.

    GrabCut's colour mixtures and its contrast term measure Euclidean distances: in CIELAB those
    follow perceived colour differences, which separates pale foundation from blonde hair and a
    shadowed neck from dark clothes better than BGR (the 36 dev photos' 256 px align crops, constants
    unchanged: made-up M_face 0.924 -> 0.927, bare unchanged; YCrCb and HLS gave less). The fast prior
    of parsing_net.py stays in BGR, which is what the net was trained on.
    """
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR if fast else cv2.COLOR_RGB2Lab)


def _skin_distance(
    lab: np.ndarray, core: np.ndarray, samples: np.ndarray, frame: Frame, per_side: bool
) -> np.ndarray:
    """(H, W) squared Mahalanobis distance of every pixel's Lab colour to the face's skin colour.

    lab: (H, W, 3) float32 CIELAB; core: boolean (H, W) skin sample area; samples: its (M, 3) colours
    (or another fallback sample when the core is nearly empty); frame: the face frame at this scale.
    per_side: one robust Gaussian per half of the face (image left and right of the nose line), blended
    across the nose over SIDE_SOFT interocular distances: with light from one side the two halves
    differ in brightness, and one Gaussian over both is so wide that background and hair pass for skin.
    Outliers are dropped against the whole face's robust statistics before the split, then again per half.
    A half with too few samples uses the whole face's Gaussian. Otherwise one Gaussian for the face
    (the fast prior of parsing_net.py, which was trained on it).
    """
    shape = lab.shape[:2]
    pixels = lab.reshape(-1, 3)
    # Robust Gaussians: shadows, stray hair and highlights in the sample are dropped first.
    whole = mahalanobis(pixels, trim_outliers(samples, 2.5), 2.0)[0].reshape(shape)
    ys, xs = np.nonzero(core)
    if not per_side or len(ys) < 2 * SIDE_MIN_SAMPLES:
        return whole
    height, width = shape
    grid = np.stack(np.meshgrid(np.arange(width), np.arange(height)), axis=-1).reshape(-1, 2)
    u = ((grid - frame.origin) @ frame.u / frame.iod).reshape(shape)
    core_u = u[ys, xs]
    core_lab = lab[ys, xs]
    # Outliers are judged against the whole face first: hair over one cheek is a minority of the face
    # but can be much of that half's sample.
    typical = inliers(core_lab, 2.5)
    halves = []
    for chosen in (core_u < 0, core_u >= 0):
        half = core_lab[chosen & typical]
        fits = len(half) >= SIDE_MIN_SAMPLES
        halves.append(mahalanobis(pixels, trim_outliers(half, 2.5), 2.0)[0].reshape(shape) if fits else whole)
    left_weight = 0.5 * (1.0 - np.tanh(u / (2.0 * SIDE_SOFT)))  # the logistic of -u / SIDE_SOFT
    return left_weight * halves[0] + (1.0 - left_weight) * halves[1]


def _upscale_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean (height, width) mask from a {0, 1} uint8 mask at the working scale (bilinear, 50 %)."""
    return cv2.resize(mask * 255, (width, height), interpolation=cv2.INTER_LINEAR) >= 128


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if count <= 1:
        return mask.astype(np.uint8)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    out = (labels == best).astype(np.uint8)
    # Fill holes (eyes, mouth) so that part labels drawn later sit inside the face: the components of
    # the rest that do not touch the image border.
    count, labels, stats, _ = cv2.connectedComponentsWithStats(1 - out, connectivity=4)
    h, w = mask.shape
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right, bottom = x + stats[:, cv2.CC_STAT_WIDTH], y + stats[:, cv2.CC_STAT_HEIGHT]
    hole = (x > 0) & (y > 0) & (right < w) & (bottom < h)
    hole[0] = False  # label 0 is the face itself
    return (out | hole[labels]).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# ears and hair


def ear_zones(shape: tuple[int, int], frame: Frame, jaw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
        zones.append(fill_polygon(shape, frame.to_image(polygon)))
    return zones[0], zones[1]


def hair_region(rgb: np.ndarray, face: np.ndarray, frame: Frame) -> np.ndarray:
    """Boolean (H, W) hair: non-face pixels around the head that match the colour found above the forehead.

    rgb: (H, W, 3) uint8 image; face: boolean (H, W) skin region.

    The colour model is fitted to a thin band just outside the face above the eyes (hairline); where
    the head is bald or the band shows background, that is what gets modelled, so this is a coarse
    label (hair is not part of any SHMT mask).
    """
    iod = frame.iod
    grown = cv2.dilate(face.astype(np.uint8), disk(max(1, round(0.12 * iod)))).astype(bool)
    # The rim around the face, kept above the eyes (face-frame v computed for the rim's pixels only).
    ys, xs = np.nonzero(grown & ~face)
    local_v = (np.stack([xs, ys], axis=-1) - frame.origin) @ frame.v / iod
    band = np.zeros_like(face)
    above = local_v < -0.3
    band[ys[above], xs[above]] = True
    if band.sum() < 20:
        return np.zeros_like(face)
    # CIELAB of the band and the candidates only: the float conversion is costly per pixel.
    samples = trim_outliers(rgb_to_lab(rgb[band]), 3.0)
    head = fill_polygon(face.shape, frame.to_image(np.array(HAIR_PRIOR)))
    candidates = head & ~face
    out = np.zeros_like(face)
    out[candidates] = mahalanobis(rgb_to_lab(rgb[candidates]), samples, 4.0)[0] < HAIR_MAHA
    # Keep hair connected to the band above the forehead.
    _, comp = cv2.connectedComponents(out.astype(np.uint8), connectivity=8)
    touching = np.unique(comp[band & out])
    hair = np.isin(comp, touching[touching > 0]).astype(np.uint8)
    # Strands alternate light and dark: close the gaps, without spilling onto the face.
    hair = cv2.morphologyEx(hair, cv2.MORPH_CLOSE, disk(max(1, round(0.05 * iod))))
    return hair.astype(bool) & head & ~face
