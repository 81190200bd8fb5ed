"""The weight-free `classic` engine: example-based makeup transfer on aligned face crops.

The reference face is warped onto the source geometry (piecewise affine on the landmarks), then the
result is recombined in CIELAB per facial region:

* colour (a*, b*) comes from the warped reference, region by region (skin/foundation and blush, the
  eye-shadow area, brows, lips). Where the warped reference does not show the same region (its mouth is
  open where the source has lips, hair over its brow...), the region's colour is filled in from the
  nearby reference pixels of that region;
* lightness keeps the source's large-scale structure (shape, shading, identity), shifted by the
  region's tone difference (a lipstick's or eye shadow's darkness);
* the texture level has SHMT's meaning. At level h_k the Laplacian lightness bands finer than h_k
  (h0..h_{k-1}) blend toward the reference's inside the makeup regions, while h_k and everything
  coarser stay the source's: h0 keeps all of the source's fine texture (light makeup), h4 lets the
  reference's texture and painted patterns through (heavy makeup). Skin takes at most the two finest
  bands: its coarser ones are the reference's facial relief, i.e. its identity.

Reference pixels near a parsing border are trusted gradually (they mix materials), and specular
highlights give no colour.

Eyes, inner mouth, hair, glasses, background and every other non-face label of the source are never
painted: pixels outside the enabled regions are copied from the source bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import cv2
import numpy as np
import torch

from shmt_cli.color import lab_to_rgb, rgb_to_lab
from shmt_cli.face.labels import FACE_LABELS, L_BROW, L_EAR, L_LIP, NECK, NOSE, R_BROW, R_EAR, SKIN, U_LIP
from shmt_cli.face.warp import apply_warp, piecewise_affine_map
from shmt_cli.pyramid import laplacian_pyramid, reconstruct_pyramid

REGIONS: tuple[str, ...] = ("skin", "eyes", "brows", "lips")
"""Region names, in the order they are painted (later regions cover earlier ones)."""
LEVELS: tuple[str, ...] = ("h0", "h1", "h2", "h3", "h4")


# Weight of each source label inside each region (rows follow REGIONS; eyes come from landmarks).
# Ears and the neck take some of the foundation so its edge at the jaw does not show (not all of it: a
# dark collar the parser calls neck would turn brown).
_SOURCE_REGION_WEIGHTS: dict[str, dict[int, float]] = {
    "skin": {SKIN: 1.0, NOSE: 1.0, L_EAR: 0.5, R_EAR: 0.5, NECK: 0.25},
    "eyes": {SKIN: 1.0},
    "brows": {L_BROW: 1.0, R_BROW: 1.0},
    "lips": {U_LIP: 1.0, L_LIP: 1.0},
}
# Reference labels whose pixels may give colour and texture to each region.
_REFERENCE_REGION_LABELS: dict[str, tuple[int, ...]] = {
    "skin": (SKIN, NOSE),
    "eyes": (SKIN,),
    "brows": (L_BROW, R_BROW),
    "lips": (U_LIP, L_LIP),
}
# Per region, as fractions of the face width (jaw corner to jaw corner, ~0.55 of a 256 crop):
# feather = Gaussian sigma softening the region's border; fill = sigma of the normalised convolution
# that fills the region where the warped reference lacks it; tone = sigma of the local lightness
# shift (0: one shift for the whole region).
_FEATHER = {"skin": 0.02, "eyes": 0.035, "brows": 0.012, "lips": 0.01}
_FILL = {"skin": 0.06, "eyes": 0.06, "brows": 0.03, "lips": 0.03}  # skin and eyes share one fill
_TONE = {"skin": 0.0, "eyes": 0.06, "brows": 0.0, "lips": 0.0}
# How far inside its parsing border a reference region starts to be trusted, and over what distance
# the trust ramps up to full (fractions of the face width; 0.01 is about 1.4 px on a 256 crop).
_COLOUR_TRUST = {"skin": (0.015, 0.02), "brows": (0.005, 0.01), "lips": (0.007, 0.01)}
# Texture fades in more gently: where the reference's texture stops, the source's takes over, and a
# sharp switch would draw the reference region's outline on the result.
_TEXTURE_TRUST = {"skin": (0.015, 0.06), "brows": (0.005, 0.015), "lips": (0.007, 0.02)}
# Width of the fade-in of paint inside the source's paintable pixels (fraction of the face width).
_PAINTABLE_RAMP = 0.015
# How many of the finest Laplacian bands each region may take from the reference at most. Skin stops
# at h0..h1 (pores, glitter, painted lines): its coarser bands are the reference's facial relief
# (nose and cheek shading, folds), which would carry the reference's identity over.
_TEXTURE_DEPTH = {"skin": 2, "eyes": 5, "brows": 5, "lips": 5}
# Specular highlight: lighter than the region's median lightness by this much (L units) and below this
# fraction of its median chroma.
_HIGHLIGHT_LIGHTER = 12.0
_HIGHLIGHT_CHROMA = 0.5
# Weight of the fallback (the region's mean reference colour) in the normalised convolution, relative
# to a pixel surrounded by valid reference pixels: only matters far from any of them.
_FILL_PRIOR = 1e-3
# Eye-shadow area: from the brow down past the lower lid by this fraction of the brow-to-eye distance.
_EYE_SHADOW_BELOW = 0.35
# Brightness changes of the skin are split with the source: full foundation lightness on a differently
# lit reference photo would relight the face.
_SKIN_TONE_GAIN = 0.5
# ...and capped (L units): foundation evens and tints skin, it does not turn a dark complexion pale.
_SKIN_TONE_LIMIT = 6.0


@dataclass(frozen=True)
class ClassicParams:
    """Controls of the classic engine.

    level: 'h0'..'h4', finest Laplacian band the source keeps (h0 light makeup, h4 heavy makeup).
    regions: subset of REGIONS to paint (default all).
    strengths: per-region strength in [0, 1] (missing regions: 1.0); 0 leaves the region untouched.
    """

    level: str = "h2"
    regions: frozenset[str] = frozenset(REGIONS)
    strengths: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(
                f"--level {self.level!r} is not a classic level (choose from {', '.join(LEVELS)})"
            )
        regions = frozenset(self.regions)
        unknown = (regions | set(self.strengths)) - set(REGIONS)
        if unknown:
            raise ValueError(f"unknown region(s) {sorted(unknown)}; choose from {REGIONS}")
        for name, value in self.strengths.items():
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"strength of {name} must be in [0, 1], got {value}")
        object.__setattr__(self, "regions", regions)
        object.__setattr__(self, "strengths", MappingProxyType(dict(self.strengths)))

    @property
    def level_index(self) -> int:
        return LEVELS.index(self.level)

    def strength(self, region: str) -> float:
        """Effective strength of a region: 0 when the region is not enabled."""
        if region not in self.regions:
            return 0.0
        return float(self.strengths.get(region, 1.0))


# ---------------------------------------------------------------------------------------------------
# Region masks


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


def region_masks(labels: np.ndarray, landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Hard region masks of a source crop: name -> (H, W) float32 weights in [0, 1] (before feathering).

    labels: (H, W) uint8 CelebAMask-HQ ids; landmarks: (68, 2) float (x, y).
    """
    masks = {name: _label_table(_SOURCE_REGION_WEIGHTS[name])[labels] for name in REGIONS}
    masks["eyes"] = masks["eyes"] * eye_shadow_mask(landmarks, labels.shape[:2])
    return masks


def paintable_mask(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: source pixels the engine may change (SHMT's face mask)."""
    return np.isin(labels, FACE_LABELS)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigmaX=max(sigma, 0.3), borderType=cv2.BORDER_REPLICATE)


# ---------------------------------------------------------------------------------------------------
# Prepared faces


@dataclass(frozen=True)
class PreparedReference:
    """A reference face ready to be paired with many sources.

    stack: (H, W, 3 + 2R) float32: CIELAB, then per entry of `_REFERENCE_CHANNELS` a colour validity
    channel, then per entry a texture validity channel (soft masks in [0, 1]);
    region_means: region -> (3,) float32 mean reference Lab colour of that region (None when absent).
    """

    landmarks: np.ndarray
    stack: np.ndarray
    region_means: Mapping[str, np.ndarray | None]


@dataclass(frozen=True)
class PreparedSource:
    """A source face: its Lab image, region masks and the window the engine may touch.

    masks: region -> (H, W) float32 hard region weights; weights: region -> the same feathered and
    faded out toward the unpaintable pixels; box: (top, bottom, left, right) window holding every
    non-zero weight.
    """

    rgb: np.ndarray
    lab: np.ndarray
    labels: np.ndarray
    landmarks: np.ndarray
    masks: Mapping[str, np.ndarray]
    weights: Mapping[str, np.ndarray]
    box: tuple[int, int, int, int]
    width: float


# Which validity channel of the reference stack serves each region (eyes use the skin channel).
_REFERENCE_CHANNELS = ("skin", "brows", "lips")
_REFERENCE_CHANNEL_OF = {"skin": 0, "eyes": 0, "brows": 1, "lips": 2}


def _soft_inner(mask: np.ndarray, start_px: float, ramp_px: float) -> np.ndarray:
    """(H, W) float32 in [0, 1]: 0 within `start_px` of the mask's border, rising to 1 over `ramp_px`.

    Parsing borders are a pixel or two off, and the pixels right at them mix two materials (skin and
    hair, lip and teeth, the black padding of a rotated photo): the reference's colour and texture are
    only trusted well inside its regions.
    """
    depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    ramp = np.clip((depth - np.float32(start_px)) / np.float32(max(ramp_px, 1e-3)), 0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no kink where the ramp starts or ends


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


def _check_face(rgb: np.ndarray, labels: np.ndarray, landmarks: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match the image {rgb.shape[:2]}")
    if np.asarray(landmarks).shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {np.asarray(landmarks).shape}")


def prepare_reference(rgb: np.ndarray, labels: np.ndarray, landmarks: np.ndarray) -> PreparedReference:
    """Per-reference work done once: Lab image, region validity channels and mean region colours.

    rgb: (H, W, 3) uint8; labels: (H, W) uint8 parsing ids; landmarks: (68, 2) float (x, y).
    """
    _check_face(rgb, labels, landmarks)
    labels = labels.astype(np.uint8, copy=False)
    lab = rgb_to_lab(rgb)
    width = face_width(np.asarray(landmarks, dtype=np.float64))
    # Exactly black pixels are the padding of a rotated or letterboxed photo, whatever the parser says.
    padding = ~rgb.any(axis=2)
    validity = [np.isin(labels, _REFERENCE_REGION_LABELS[name]) & ~padding for name in _REFERENCE_CHANNELS]
    # Colour is not read from specular highlights: they are the photo's lighting, not foundation.
    colour_sources = [mask & ~specular_highlights(lab, mask) for mask in validity]
    colour_validity = [
        _soft_inner(mask, *(width * np.array(_COLOUR_TRUST[name])))
        for name, mask in zip(_REFERENCE_CHANNELS, colour_sources, strict=True)
    ]
    texture_validity = [
        _soft_inner(mask, *(width * np.array(_TEXTURE_TRUST[name])))
        for name, mask in zip(_REFERENCE_CHANNELS, validity, strict=True)
    ]
    stack = np.concatenate([lab, np.stack(colour_validity + texture_validity, axis=-1)], axis=-1)
    stack = stack.astype(np.float32)
    means: dict[str, np.ndarray | None] = {}
    for name in REGIONS:
        inside = colour_sources[_REFERENCE_CHANNEL_OF[name]]
        if name == "eyes":
            inside = inside & eye_shadow_mask(landmarks, labels.shape)
        means[name] = lab[inside].mean(axis=0) if inside.any() else None
    return PreparedReference(np.asarray(landmarks, dtype=np.float64), stack, MappingProxyType(means))


def prepare_source(rgb: np.ndarray, labels: np.ndarray, landmarks: np.ndarray) -> PreparedSource:
    """Per-source work: Lab image, hard and feathered region masks, working window, face width."""
    _check_face(rgb, labels, landmarks)
    labels = labels.astype(np.uint8, copy=False)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    width = face_width(landmarks)
    masks = region_masks(labels, landmarks)
    # Fade to zero at the border of the paintable pixels rather than stopping there: a parser border a
    # pixel off (skin into hair, lid into eye) would otherwise show as a hard painted edge.
    paintable = _soft_inner(paintable_mask(labels), 0.0, _PAINTABLE_RAMP * width)
    weights = {name: _blur(masks[name], _FEATHER[name] * width) * paintable for name in REGIONS}
    return PreparedSource(
        rgb=rgb,
        lab=rgb_to_lab(rgb),
        labels=labels,
        landmarks=landmarks,
        masks=MappingProxyType(masks),
        weights=MappingProxyType(weights),
        box=_window(np.maximum.reduce(list(weights.values())) > 0, margin=round(0.05 * width)),
        width=width,
    )


def _window(mask: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the mask's bounding box grown by `margin`, inside the image."""
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return 0, 0, 0, 0
    return (
        max(0, rows[0] - margin),
        min(height, rows[-1] + 1 + margin),
        max(0, cols[0] - margin),
        min(width, cols[-1] + 1 + margin),
    )


# ---------------------------------------------------------------------------------------------------
# Transfer


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (h, w[, C]) float32 image; wide ones run on a 2x or 4x smaller copy.

    The result only feeds smooth fields (fills, tones), where the resampling error is far below a
    level of the output.
    """
    factor = 4 if sigma >= 6.0 else 2 if sigma >= 3.0 else 1
    if factor == 1:
        return _blur(image, sigma)
    height, width = image.shape[:2]
    small = cv2.resize(image, (-(-width // factor), -(-height // factor)), interpolation=cv2.INTER_AREA)
    return cv2.resize(_blur(small, sigma / factor), (width, height), interpolation=cv2.INTER_LINEAR)


def _fill_region(values: np.ndarray, valid: np.ndarray, fallback: np.ndarray, sigma: float) -> np.ndarray:
    """Values where `valid` (soft, (h, w)), elsewhere a normalised convolution of the valid ones.

    values: (h, w) or (h, w, C) float32; fallback: scalar or (C,), used far from any valid pixel.
    """
    weight = valid if values.ndim == 2 else valid[..., None]
    density = _smooth(valid, sigma)
    if values.ndim == 3:
        density = density[..., None]
    prior = np.float32(_FILL_PRIOR)
    filled = (_smooth(values * weight, sigma) + prior * np.float32(fallback)) / (density + prior)
    return filled + weight * (values - filled)


def fine_details(x: np.ndarray, level: int, depths: Iterable[int]) -> list[np.ndarray]:
    """For each depth d, the sum of the Laplacian bands h0..h_{min(d, level)-1} of an (h, w) float32 image.

    One decomposition serves every depth; depth 0 (or level 0) gives zeros.
    """
    depths = [min(depth, level) for depth in depths]
    if max(depths, default=0) == 0:
        return [np.zeros_like(x) for _ in depths]
    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    details = []
    with torch.no_grad():
        bands = laplacian_pyramid(tensor, max(depths))
        for depth in depths:
            if depth == 0:
                details.append(np.zeros_like(x))
                continue
            # Bands h0..h_{depth-1} over a zero residual of level `depth`'s size: no upsampling of zeros.
            kept = [*bands[:depth], torch.zeros_like(bands[depth])]
            details.append(reconstruct_pyramid(kept)[0, 0].numpy())
    return details


def transfer_prepared(
    source: PreparedSource, reference: PreparedReference, params: ClassicParams | None = None
) -> np.ndarray:
    """Makeup of `reference` on `source` (same crop size): (H, W, 3) uint8 RGB."""
    params = params or ClassicParams()
    active = [
        name
        for name in REGIONS
        if params.strength(name) > 0.0
        and reference.region_means[name] is not None
        and source.masks[name].any()
    ]
    top, bottom, left, right = source.box
    if not active or bottom <= top or right <= left:
        return source.rgb.copy()
    size = source.labels.shape
    if reference.stack.shape[:2] != size:
        raise ValueError(f"reference crop {reference.stack.shape[:2]} differs from the source crop {size}")

    # Everything below runs on the window that holds the source's regions.
    window = (slice(top, bottom), slice(left, right))
    warp = piecewise_affine_map(reference.landmarks, source.landmarks, size, box=source.box)
    warped = apply_warp(reference.stack, warp)
    warped_lab = warped[..., :3]
    src_lab = source.lab[window]
    src_l = src_lab[..., 0]
    scale = source.width
    channels = len(_REFERENCE_CHANNELS)

    result_lab = src_lab.copy()
    tone = np.zeros(src_l.shape, dtype=np.float32)
    # Texture weights per texture depth (see _TEXTURE_DEPTH), composited like the colours.
    depths = sorted(set(_TEXTURE_DEPTH.values()))
    texture_weights = {depth: np.zeros(src_l.shape, dtype=np.float32) for depth in depths}
    # The reference's lightness as each source pixel's own region sees it (last region painted wins).
    region_lightness = src_l.copy()
    painted = np.zeros(src_l.shape, dtype=bool)
    fills: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for name in active:
        weight = source.weights[name][window] * np.float32(params.strength(name))
        channel = 3 + _REFERENCE_CHANNEL_OF[name]
        valid = np.clip(warped[..., channel], 0.0, 1.0)
        texture_valid = np.clip(warped[..., channel + channels], 0.0, 1.0)
        mean = reference.region_means[name]
        # Skin and eye-shadow area read the same reference pixels (its skin): one fill serves both.
        # Colour and lightness are filled from different pixels: colour skips specular highlights,
        # lightness (the texture's source) keeps them, or their outlines would be drawn as texture.
        if channel not in fills:
            sigma = _FILL[name] * scale
            chroma = _fill_region(warped_lab[..., 1:], valid, mean[1:], sigma)
            lightness = _fill_region(warped_lab[..., 0], texture_valid, mean[0], sigma)
            fills[channel] = (chroma, lightness)
        filled_ab, filled_l = fills[channel]

        region = source.masks[name][window] > 0
        if _TONE[name] > 0.0:
            # Local shift (an eye shadow darkens toward the lash line): normalised convolution of the
            # lightness difference over the region.
            inside = region.astype(np.float32)
            tone_sigma = _TONE[name] * scale
            difference = (filled_l - src_l) * inside
            region_tone = _smooth(difference, tone_sigma) / np.maximum(_smooth(inside, tone_sigma), 1e-3)
        else:
            region_tone = np.float32(mean[0] - src_l[region].mean())
            if name == "skin":
                limit = np.float32(_SKIN_TONE_LIMIT)
                region_tone = np.clip(region_tone * np.float32(_SKIN_TONE_GAIN), -limit, limit)

        result_lab[..., 1:] += weight[..., None] * (filled_ab - result_lab[..., 1:])
        tone += weight * (region_tone - tone)
        for depth, texture_weight in texture_weights.items():
            own = texture_valid if depth == _TEXTURE_DEPTH[name] else 0.0
            texture_weight += weight * (own - texture_weight)
        region_lightness = np.where(region, filled_l, region_lightness)
        painted |= weight > 0

    # Texture: the reference-minus-source lightness band-limited to the bands finer than the level,
    # used only where the warped reference really shows the region (filled-in areas carry no texture).
    textures = fine_details(region_lightness - src_l, params.level_index, depths)
    texture = sum(texture_weights[depth] * detail for depth, detail in zip(depths, textures, strict=True))
    result_lab[..., 0] = src_l + tone + texture

    # Bit-exact source wherever no region reaches (eyes, teeth, hair, background, disabled regions).
    result = source.rgb.copy()
    result_window = result[window]
    result_window[painted] = lab_to_rgb(result_lab[painted])
    return result
