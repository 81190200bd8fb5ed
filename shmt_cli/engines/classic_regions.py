"""Where the classic engine paints and which reference pixels it trusts (engines/classic.py uses these).

Source side: region masks from the parsing labels and landmarks (the eye-shadow area is a landmark
polygon), the neck's share of the foundation fading down from the jaw, the lips closed over small
parsing gaps. Reference side: pixels near a parsing border are trusted gradually, and pixels whose
colour does not belong to their region (hair, flowers or a collar the parser called skin; teeth or the
inner mouth called lips) give neither colour nor texture. Their limits are fitted by
tools/fit_classic_outliers.py into classic_outliers.json beside this module. A warp tear
(neighbouring pixels sampling far-apart reference pixels) is not read either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

import cv2
import numpy as np

from shmt_cli.face.labels import (
    FACE_LABELS,
    L_BROW,
    L_EAR,
    L_LIP,
    MOUTH,
    NECK,
    NOSE,
    R_BROW,
    R_EAR,
    SKIN,
    U_LIP,
)

REGIONS: tuple[str, ...] = ("skin", "eyes", "brows", "lips")
"""Region names, in the order they are painted (later regions cover earlier ones)."""

# Weight of each source label inside each region (rows follow REGIONS; eyes come from landmarks). The
# neck is handled apart (`neck_weight`): the foundation fades down it from the jaw.
_SOURCE_REGION_WEIGHTS: dict[str, dict[int, float]] = {
    "skin": {SKIN: 1.0, NOSE: 1.0, L_EAR: 0.5, R_EAR: 0.5},
    "eyes": {SKIN: 1.0},
    "brows": {L_BROW: 1.0, R_BROW: 1.0},
    "lips": {U_LIP: 1.0, L_LIP: 1.0},
}
# Reference labels whose pixels may give colour and texture to each region.
REFERENCE_REGION_LABELS: dict[str, tuple[int, ...]] = {
    "skin": (SKIN, NOSE),
    "eyes": (SKIN,),
    "brows": (L_BROW, R_BROW),
    "lips": (U_LIP, L_LIP),
}
# The foundation covers the neck fully at the jaw and fades out over this distance (fraction of the face
# width): a step in tone at the jaw line shows, a gradient down the neck does not, and a dark collar the
# parser calls neck, further down, keeps its colour.
_NECK_FADE = 0.3
# Lips: parsing gaps up to this size (fraction of the face width) inside the lips are closed, and
# reference lip pixels this close to the inner mouth are not trusted (teeth and gums bleed into them).
_LIPS_CLOSE = 0.025
_LIPS_MOUTH_MARGIN = 0.012
# A source's inner-mouth blob no larger than this (side of a square, fraction of the face width) that
# closing the lips covers is the parser's slip on the line between closed lips, not an open mouth: it
# is painted as lip (left unpainted it showed as a gray speck in the lipstick).
_MOUTH_SPECK = 0.025
# Reference pixels this close to a pixel of another colour (fraction of the face width) are not read:
# little (scattered specks must not cost a region its makeup). The soft edge of a crack or a tooth in
# the lips is flagged with it (hysteresis, `OutlierLimits.connected`), so the lips need no wider margin
# (0.03 dropped half of some dev photos' lips).
_OUTLIER_MARGIN = {"skin": 0.01, "brows": 0.01, "lips": 0.01}
# A warp tear: neighbouring output pixels that sample the reference more than this many pixels apart
# (a closed reference mouth stretched over an open one, landmarks thrown off by a drip of lipstick).
# Elsewhere neighbours land under 2 px apart (99th percentile 1.8 on a dev pair, tears 7-9).
_TEAR_JUMP = 3.0
# ...and the reference is not read this far around it (px: a tear is a sampling, not a face, scale).
_TEAR_MARGIN = 1.5
# The nostrils' dark detail is guarded this far around the nose (fraction of the face width).
_NOSE_MARGIN = 0.03
# Eye-shadow area: from the brow down past the lower lid by this fraction of the brow-to-eye distance.
_EYE_SHADOW_BELOW = 0.35
# Specular highlight: lighter than the region's median lightness by this much (L units) and below this
# fraction of its median chroma.
_HIGHLIGHT_LIGHTER = 12.0
_HIGHLIGHT_CHROMA = 0.5
# Floor of the robust spread (L, then both chromaticity axes; 0.013 is one a*/b* unit at L = 60) so a
# flat region (a synthetic face) does not flag its noise.
_MIN_SPREAD = np.array([2.0, 0.013, 0.013], dtype=np.float32)
OUTLIERS_FILE = "classic_outliers.json"


def face_width(landmarks: np.ndarray) -> float:
    """Distance between the jaw's two ends (landmarks 0 and 16), px: the scale of every region size."""
    return float(np.linalg.norm(landmarks[16] - landmarks[0]))


# Per eye: brow points left to right in the image, then the eye's inner/outer corner and lower lid from
# right to left, so each polygon is traced without crossing itself.
_EYE_SHADOW_OUTLINES = (
    ((17, 18, 19, 20, 21), (39, 40, 41, 36)),
    ((22, 23, 24, 25, 26), (45, 46, 47, 42)),
)


def eye_shadow_polygons(landmarks: np.ndarray) -> list[np.ndarray]:
    """Two (N, 2) float polygons (image left then right): brow down to a little under each eye."""
    polygons = []
    for brow, lower in _EYE_SHADOW_OUTLINES:
        brow_points = landmarks[list(brow)]
        lower_points = landmarks[list(lower)]
        below = (lower_points.mean(axis=0) - brow_points.mean(axis=0)) * _EYE_SHADOW_BELOW
        polygons.append(np.concatenate([brow_points, lower_points + below]))
    return polygons


def eye_shadow_mask(landmarks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the two eye-shadow polygons of `eye_shadow_polygons` (labels not applied)."""
    mask = np.zeros(size, dtype=np.uint8)
    for polygon in eye_shadow_polygons(landmarks):
        cv2.fillPoly(mask, [np.round(polygon * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _label_table(weights: Mapping[int, float]) -> np.ndarray:
    table = np.zeros(256, dtype=np.float32)
    for label, weight in weights.items():
        table[label] = weight
    return table


def _disk(radius: float) -> np.ndarray:
    size = 2 * max(1, round(radius)) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Clip to [0, 1], then 3x² - 2x³: a ramp without a kink where it starts or ends."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def neck_weight(labels: np.ndarray, width: float) -> np.ndarray:
    """(H, W) float32: the foundation's share on the neck, 1 at the face's skin, 0 `_NECK_FADE` below."""
    neck = labels == NECK
    if not neck.any():
        return np.zeros(labels.shape, dtype=np.float32)
    face_skin = np.isin(labels, (SKIN, NOSE))
    distance = cv2.distanceTransform((~face_skin).astype(np.uint8), cv2.DIST_L2, 3)
    return (neck * (1.0 - smoothstep(distance / np.float32(_NECK_FADE * width)))).astype(np.float32)


def closed_lips(labels: np.ndarray, width: float) -> np.ndarray:
    """(H, W) bool: both lips with parsing gaps up to `_LIPS_CLOSE` face widths closed (not into the
    inner mouth: an open mouth's teeth stay out)."""
    lips = np.isin(labels, (U_LIP, L_LIP)).astype(np.uint8)
    closed = cv2.morphologyEx(lips, cv2.MORPH_CLOSE, _disk(_LIPS_CLOSE * width / 2)) > 0
    return closed & (labels != MOUTH) | (lips > 0)


def lips_over_mouth_specks(labels: np.ndarray, width: float) -> np.ndarray:
    """(H, W) uint8 labels with every inner-mouth component of at most (`_MOUTH_SPECK` x width)² pixels
    that lies inside the lips' `_LIPS_CLOSE` closing relabelled as lower lip (a copy; `labels` is kept).

    A real open mouth (teeth, a parted line along the mouth) is larger or not closed in by the lips.
    """
    mouth = (labels == MOUTH).astype(np.uint8)
    if not mouth.any():
        return labels
    lips = np.isin(labels, (U_LIP, L_LIP)).astype(np.uint8)
    closed = cv2.morphologyEx(lips, cv2.MORPH_CLOSE, _disk(_LIPS_CLOSE * width / 2)) > 0
    count, components, stats, _ = cv2.connectedComponentsWithStats(mouth, connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] <= (_MOUTH_SPECK * width) ** 2
    # A component is closed in when none of its pixels lies outside the closed lips.
    open_parts = np.zeros(count, dtype=bool)
    open_parts[components[(mouth > 0) & ~closed]] = True
    speck = small & ~open_parts
    speck[0] = False
    if not speck.any():
        return labels
    relabelled = labels.copy()
    relabelled[speck[components]] = L_LIP
    return relabelled


def region_masks(labels: np.ndarray, landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Hard region masks of a source crop: name -> (H, W) float32 weights in [0, 1] (before feathering).

    labels: (H, W) uint8 CelebAMask-HQ ids; landmarks: (68, 2) float (x, y).
    """
    width = face_width(np.asarray(landmarks, dtype=np.float64))
    masks = {name: _label_table(_SOURCE_REGION_WEIGHTS[name])[labels] for name in REGIONS}
    masks["skin"] = np.maximum(masks["skin"], neck_weight(labels, width))
    masks["eyes"] = masks["eyes"] * eye_shadow_mask(landmarks, labels.shape[:2])
    masks["lips"] = closed_lips(labels, width).astype(np.float32)
    return masks


def paintable_mask(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: source pixels the engine may change (SHMT's face mask)."""
    return np.isin(labels, FACE_LABELS)


def soft_inner(mask: np.ndarray, start_px: float, ramp_px: float) -> np.ndarray:
    """(H, W) float32 in [0, 1]: 0 within `start_px` of the mask's border, rising to 1 over `ramp_px`.

    Parsing borders are a pixel or two off, and the pixels right at them mix two materials (skin and
    hair, lip and teeth, the black padding of a rotated photo): the reference's colour and texture are
    only trusted well inside its regions.
    """
    depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    return smoothstep((depth - np.float32(start_px)) / np.float32(max(ramp_px, 1e-3)))


def specular_highlights(lab: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of `region` much lighter and much less saturated than the region's median.

    lab: (H, W, 3) float32 CIELAB. Shine on skin or lips is the light's colour, not the makeup's.
    """
    if region.sum() < 50:
        return np.zeros_like(region)
    lightness = lab[..., 0]
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    median_l = np.median(lightness[region])
    median_c = np.median(chroma[region])
    return region & (lightness > median_l + _HIGHLIGHT_LIGHTER) & (chroma < _HIGHLIGHT_CHROMA * median_c)


@dataclass(frozen=True)
class OutlierLimits:
    """How far (in robust standard deviations: 1.4826 x median absolute deviation) a pixel's lightness,
    and its chromaticity, may lie from its region's median before it counts as another material;
    `connected` (<= 1) scales both limits for pixels joined to a flagged one (hysteresis: the soft edge
    of a strand of hair or a tooth is flagged with its core, a lone pixel just past the scaled limits
    is not)."""

    lightness: float
    colour: float
    connected: float = 1.0


def chromaticity(lab: np.ndarray) -> np.ndarray:
    """(..., 2) float32 (a*, b*) / (L + 16) of (..., 3) CIELAB.

    Shading (light scaled by k) scales L + 16, a* and b* alike by k^(1/3) in CIELAB's cube-root range:
    chromaticity stays the material's in shadow, so a shaded cheek is not taken for another material.
    """
    return (lab[..., 1:] / (lab[..., :1] + np.float32(16.0))).astype(np.float32)


def robust_scores(lab: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(|z_L|, z_chroma) per pixel, (H, W) float32 each: robust distances to the median of `region`,
    of the lightness and of the `chromaticity` (per axis, then their norm).

    lab: (H, W, 3) float32 CIELAB; region: (H, W) bool. Zeros when the region is nearly empty.
    """
    if region.sum() < 50:
        zeros = np.zeros(region.shape, dtype=np.float32)
        return zeros, zeros
    features = np.concatenate([lab[..., :1], chromaticity(lab)], axis=-1)
    pixels = features[region]
    median = np.median(pixels, axis=0)
    spread = np.maximum(1.4826 * np.median(np.abs(pixels - median), axis=0), _MIN_SPREAD)
    z = (features - median.astype(np.float32)) / spread.astype(np.float32)
    return np.abs(z[..., 0]), np.hypot(z[..., 1], z[..., 2])


def flag_outliers(
    z_lightness: np.ndarray, z_colour: np.ndarray, region: np.ndarray, limits: OutlierLimits
) -> np.ndarray:
    """(H, W) bool: pixels of `region` past `limits`, and those past the `connected` share of them
    that touch (8-connected, through such pixels) a pixel past the full limits."""
    strong = region & ((z_lightness > limits.lightness) | (z_colour > limits.colour))
    if limits.connected >= 1.0 or not strong.any():
        return strong
    scale = np.float32(limits.connected)
    weak = region & ((z_lightness > scale * limits.lightness) | (z_colour > scale * limits.colour))
    count, components = cv2.connectedComponents(weak.astype(np.uint8), connectivity=8)
    seeded = np.zeros(count, dtype=bool)
    seeded[components[strong]] = True
    seeded[0] = False
    return seeded[components]


def off_colour(lab: np.ndarray, region: np.ndarray, limits: OutlierLimits) -> np.ndarray:
    """(H, W) bool: pixels of `region` whose lightness or colour is beyond `limits` from the region's."""
    return flag_outliers(*robust_scores(lab, region), region, limits)


@cache
def outlier_limits() -> dict[str, OutlierLimits]:
    """Fitted limits per reference region ('skin', 'lips') from classic_outliers.json."""
    text = resources.files("shmt_cli.engines").joinpath(OUTLIERS_FILE).read_text("utf-8")
    return {name: OutlierLimits(**values) for name, values in json.loads(text)["limits"].items()}


def reference_regions(
    lab: np.ndarray, labels: np.ndarray, landmarks: np.ndarray, padding: np.ndarray
) -> dict[str, np.ndarray]:
    """(H, W) bool per reference channel ('skin', 'brows', 'lips'): pixels that may give texture.

    Skin outside the eye-shadow area and lips drop pixels of another colour (`off_colour`); the eye
    shadow itself is makeup of any colour on skin, so it is kept. Lips are closed over parsing gaps
    and kept clear of the inner mouth.
    """
    width = face_width(np.asarray(landmarks, dtype=np.float64))
    limits = outlier_limits()
    skin = np.isin(labels, REFERENCE_REGION_LABELS["skin"]) & ~padding
    shadow = eye_shadow_mask(landmarks, labels.shape)
    mouth = cv2.dilate((labels == MOUTH).astype(np.uint8), _disk(_LIPS_MOUTH_MARGIN * width)) > 0
    lips = closed_lips(labels, width) & ~mouth & ~padding
    brows = np.isin(labels, REFERENCE_REGION_LABELS["brows"]) & ~padding
    return {
        "skin": (skin, skin & ~off_colour(lab, skin & ~shadow, limits["skin"])),
        "brows": (brows, brows),
        "lips": (lips, lips & ~off_colour(lab, lips, limits["lips"])),
    }


def untorn(map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """(h, w) float32 in [0, 1]: 0 on and near the tears of a backward warp map ((h, w) float32 input
    coordinates per output pixel), 1 elsewhere.

    Across a tear the warped reference jumps from one place to another: the pixels along it sample
    whatever lay between (skin in the lips), and its lightness would draw the tear as a seam.
    """
    jump_x = np.hypot(np.diff(map_x, axis=1), np.diff(map_y, axis=1)) > _TEAR_JUMP
    jump_y = np.hypot(np.diff(map_x, axis=0), np.diff(map_y, axis=0)) > _TEAR_JUMP
    torn = np.zeros(map_x.shape, dtype=np.uint8)
    torn[:, 1:] |= jump_x
    torn[:, :-1] |= jump_x
    torn[1:] |= jump_y
    torn[:-1] |= jump_y
    if not torn.any():
        return np.ones(map_x.shape, dtype=np.float32)
    return soft_inner(torn == 0, 0.0, _TEAR_MARGIN)


def nose_area(labels: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(H, W) float32 in [0, 1]: the nose label and the hull of the nose landmarks (27, 31..35, where
    the nostrils are), grown by `_NOSE_MARGIN` face widths and softened at its border."""
    width = face_width(np.asarray(landmarks, dtype=np.float64))
    area = (labels == NOSE).astype(np.uint8)
    hull = cv2.convexHull(np.round(landmarks[[27, 31, 32, 33, 34, 35]] * 16).astype(np.int32))
    cv2.fillConvexPoly(area, hull, 1, lineType=cv2.LINE_8, shift=4)
    area = cv2.dilate(area, _disk(_NOSE_MARGIN * width))
    return cv2.GaussianBlur(area.astype(np.float32), (0, 0), sigmaX=max(_NOSE_MARGIN * width / 2, 0.3))


def outlier_keep(name: str, parsed: np.ndarray, trusted: np.ndarray, width: float) -> np.ndarray:
    """(H, W) float32: 0 on and within the region's `_OUTLIER_MARGIN` (face widths) of the parsed
    pixels that are not trusted (another colour), 1 elsewhere."""
    flagged = (parsed & ~trusted).astype(np.uint8)
    return (cv2.dilate(flagged, _disk(_OUTLIER_MARGIN[name] * width)) == 0).astype(np.float32)
