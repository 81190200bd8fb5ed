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

Reference pixels near a parsing border are trusted gradually (they mix materials), pixels of another
colour than their region (hair or flowers the parser called skin, teeth called lips) are not trusted
at all, nor are the pixels along a tear of the warp, and specular highlights give no colour. Where the
warped reference lacks a region, its coarser texture bands come from the fill. The foundation fades
down the neck from the jaw, the source's dark nostrils are not lightened by the reference's texture,
a speck of inner mouth between closed lips is painted as lip, and a grayscale source takes the
makeup's lightness only (colour would be made up).

Region masks and reference trust are in classic_regions.py, fills and texture bands in
classic_texture.py.

Eyes, inner mouth, hair, glasses, background and every other non-face label of the source are never
painted: pixels outside the enabled regions are copied from the source bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from shmt_cli.color import lab_to_rgb, rgb_to_lab
from shmt_cli.engines.classic_regions import (
    REGIONS,
    eye_shadow_mask,
    face_width,
    lips_over_mouth_specks,
    nose_area,
    outlier_keep,
    paintable_mask,
    reference_regions,
    region_masks,
    soft_inner,
    specular_highlights,
    untorn,
)
from shmt_cli.engines.classic_skin import (
    canonical_colour,
    chroma_floor,
    fit_shading,
)
from shmt_cli.engines.classic_texture import (
    blur,
    fill_region,
    fine_details,
    guard_dark_detail,
    smooth,
    structure_gate,
)
from shmt_cli.face.labels import EAR_LABELS
from shmt_cli.face.warp import apply_warp, piecewise_affine_map

__all__ = [
    "LEVELS",
    "REGIONS",
    "ClassicParams",
    "PreparedReference",
    "PreparedSource",
    "eye_shadow_mask",
    "fine_details",
    "is_grayscale",
    "lab_to_rgb",
    "prepare_reference",
    "prepare_source",
    "region_masks",
    "rgb_to_lab",
    "specular_highlights",
    "transfer_prepared",
]

LEVELS: tuple[str, ...] = ("h0", "h1", "h2", "h3", "h4")

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
# Bands from this one on (h2: about 4 px and coarser on a 256 crop) are no finer than the fill's blur,
# so the filled-in reference stands for the reference there: where the warped reference lacks the lips
# (a fold of the warp, a drip of lipstick the parser called skin) they come from the fill. The
# finer bands do not (the fill has none; it would flatten the source's own). Without this the source's
# own, lighter lip showed through such holes at h3/h4 as a patch with a seam.
_FILLED_BANDS_FROM = 2
# Regions whose coarser bands come from the fill wherever the warped reference lacks them. Not the eye
# area: filling it moved the reference's relief onto the source's (identity distance up at h4).
_FILLED_REGIONS = frozenset({"lips"})
# Blur (px) that carries the texture's trust across a warp tear (tears are 3-4 px wide with their margin).
_TEAR_BRIDGE = 2.0
# Even those bands carry structure where either face has an edge (the reference's jaw contour, a fold):
# skin texture fades where the lightness difference's smooth gradient reaches this (L units per pixel;
# see classic_texture.structure_gate).
_STRUCTURE_LIMIT = 0.5
# Brightness changes of the skin are split with the source: full foundation lightness on a differently
# lit reference photo would relight the face.
_SKIN_TONE_GAIN = 0.5
# ...and capped (L units): foundation evens and tints skin, it does not turn a dark complexion pale.
_SKIN_TONE_LIMIT = 6.0
# A source whose channels differ by at most this much (8-bit levels) on its face is a grayscale photo.
GRAYSCALE_TOLERANCE = 2
GRAYSCALE_NOTE = "grayscale source: makeup lightness only"


@dataclass(frozen=True)
class ClassicParams:
    """Controls of the classic engine.

    level: 'h0'..'h4', finest Laplacian band the source keeps (h0 light makeup, h4 heavy makeup).
    regions: subset of REGIONS to paint (default all).
    strengths: per-region strength in [0, 1] (missing regions: 1.0); 0 leaves the region untouched.
    """

    level: str = "h0"  # why h0: README, "What the classic engine paints"
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
# Prepared faces


@dataclass(frozen=True)
class PreparedReference:
    """A reference face ready to be paired with many sources.

    stack: (H, W, 3 + 3R + 2) float32: CIELAB, then per entry of `_REFERENCE_CHANNELS` a colour validity
    channel, then per entry a texture validity channel, then per entry a lightness validity channel
    (soft masks in [0, 1]), then the skin's a*/b* without its lighting's steps (classic_skin);
    region_means: region -> (3,) float32 mean reference Lab colour of that region (None when absent).
    """

    landmarks: np.ndarray
    stack: np.ndarray
    region_means: Mapping[str, np.ndarray | None]


@dataclass(frozen=True)
class PreparedSource:
    """A source face: its Lab image, region masks and the window the engine may touch.

    labels: the parsing with inner-mouth specks closed in by the lips counted as lip;
    masks: region -> (H, W) float32 hard region weights; weights: region -> the same feathered and
    faded out toward the unpaintable pixels; box: (top, bottom, left, right) window holding every
    non-zero weight; nose: (H, W) float32 in [0, 1] where dark detail is guarded; grayscale: the
    photo has no colour (the makeup's lightness only is transferred); lightness: region -> the mean L
    (0..100) that a region's tone shift compares with the reference's, None for an empty region.
    """

    rgb: np.ndarray
    lab: np.ndarray
    labels: np.ndarray
    landmarks: np.ndarray
    masks: Mapping[str, np.ndarray]
    weights: Mapping[str, np.ndarray]
    box: tuple[int, int, int, int]
    width: float
    nose: np.ndarray
    grayscale: bool
    lightness: Mapping[str, np.float32 | None]

    @property
    def note(self) -> str:
        """What the engine did differently for this source ('' when nothing), for the item line."""
        return GRAYSCALE_NOTE if self.grayscale else ""


def is_grayscale(rgb: np.ndarray, where: np.ndarray) -> bool:
    """True when the (H, W, 3) uint8 image's channels agree within GRAYSCALE_TOLERANCE on `where`."""
    pixels = rgb[where].astype(np.int16)
    if len(pixels) == 0:
        return False
    spread = pixels.max(axis=1) - pixels.min(axis=1)
    return int(spread.max()) <= GRAYSCALE_TOLERANCE


# Which validity channel of the reference stack serves each region (eyes use the skin channel).
_REFERENCE_CHANNELS = ("skin", "brows", "lips")
_REFERENCE_CHANNEL_OF = {"skin": 0, "eyes": 0, "brows": 1, "lips": 2}


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
    # Per channel: the region as parsed, and the pixels of another colour in it (hair or flowers
    # called skin, teeth called lips), which give neither colour nor lightness: both are filled in
    # from the pixels around. Only a thin margin around them is dropped (not the wide trust ramp of
    # a parsing border), so scattered specks do not cost the region its makeup.
    regions = reference_regions(lab, labels, np.asarray(landmarks, dtype=np.float64), padding)
    parsed = [regions[name][0] for name in _REFERENCE_CHANNELS]
    keep = [outlier_keep(name, *regions[name], width) for name in _REFERENCE_CHANNELS]
    # Colour is not read from specular highlights: they are the photo's lighting, not foundation.
    colour_sources = [mask & ~specular_highlights(lab, mask) for mask in parsed]
    colour_validity = [
        soft_inner(mask, *(width * np.array(_COLOUR_TRUST[name]))) * kept
        for name, mask, kept in zip(_REFERENCE_CHANNELS, colour_sources, keep, strict=True)
    ]
    texture_validity = [
        soft_inner(mask, *(width * np.array(_TEXTURE_TRUST[name])))
        for name, mask in zip(_REFERENCE_CHANNELS, parsed, strict=True)
    ]
    lightness_validity = [valid * kept for valid, kept in zip(texture_validity, keep, strict=True)]
    shadow = eye_shadow_mask(landmarks, labels.shape)
    # The skin's colour as a function of the photo's lighting, fitted on trusted skin off the eye
    # shadow (makeup, not lighting, darkens that).
    shading = fit_shading(lab, colour_sources[0] & regions["skin"][1] & ~shadow, width)
    stack = np.concatenate(
        [
            lab,
            np.stack(colour_validity + texture_validity + lightness_validity, axis=-1),
            canonical_colour(lab, shading, width),
        ],
        axis=-1,
    )
    stack = stack.astype(np.float32)
    means: dict[str, np.ndarray | None] = {}
    for name in REGIONS:
        channel = _REFERENCE_CHANNEL_OF[name]
        inside = colour_sources[channel] & regions[_REFERENCE_CHANNELS[channel]][1]
        if name == "eyes":
            inside = inside & shadow
        means[name] = lab[inside].mean(axis=0) if inside.any() else None
    return PreparedReference(np.asarray(landmarks, dtype=np.float64), stack, MappingProxyType(means))


def prepare_source(rgb: np.ndarray, labels: np.ndarray, landmarks: np.ndarray) -> PreparedSource:
    """Per-source work: Lab image, hard and feathered region masks, working window, face width."""
    _check_face(rgb, labels, landmarks)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    width = face_width(landmarks)
    labels = lips_over_mouth_specks(labels.astype(np.uint8, copy=False), width)
    masks = region_masks(labels, landmarks)
    # Fade to zero at the border of the paintable pixels rather than stopping there: a parser border a
    # pixel off (skin into hair, lid into eye) would otherwise show as a hard painted edge.
    paintable = soft_inner(paintable_mask(labels), 0.0, _PAINTABLE_RAMP * width)
    weights = {name: blur(masks[name], _FEATHER[name] * width) * paintable for name in REGIONS}
    lab = rgb_to_lab(rgb)
    box = _window(np.maximum.reduce(list(weights.values())) > 0, margin=round(0.05 * width))
    return PreparedSource(
        rgb=rgb,
        lab=lab,
        labels=labels,
        landmarks=landmarks,
        masks=MappingProxyType(masks),
        weights=MappingProxyType(weights),
        box=box,
        width=width,
        nose=nose_area(labels, landmarks),
        grayscale=is_grayscale(rgb, paintable > 0),
        lightness=MappingProxyType(_region_lightness(lab[..., 0], labels, masks, box)),
    )


def _region_lightness(
    lightness: np.ndarray, labels: np.ndarray, masks: Mapping[str, np.ndarray], box: tuple[int, int, int, int]
) -> dict[str, np.float32 | None]:
    """Per region: the source's mean L over its mask inside the box (the skin's without the ears,
    which it paints at half weight: often shadowed or under hair, they moved the whole face's tone with
    how much of them the parser found). None where the region is empty."""
    window = (slice(box[0], box[1]), slice(box[2], box[3]))
    inside = lightness[window]
    out: dict[str, np.float32 | None] = {}
    for name in REGIONS:
        region = masks[name][window] > 0
        if name == "skin":
            off_ears = region & ~np.isin(labels[window], EAR_LABELS)
            region = off_ears if off_ears.any() else region
        out[name] = inside[region].mean() if region.any() else None
    return out


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
        and source.lightness[name] is not None
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
    # Where the warp tears, the reference's lightness is filled in from either side (no seam drawn).
    intact = untorn(warp.map_x, warp.map_y)
    warped_lab = warped[..., :3]
    src_lab = source.lab[window]
    src_l = src_lab[..., 0]
    scale = source.width
    channels = len(_REFERENCE_CHANNELS)

    result_lab = src_lab.copy()
    tone = np.zeros(src_l.shape, dtype=np.float32)
    # Texture weights per (texture depth, band range, filled) part (see _TEXTURE_DEPTH and
    # _FILLED_BANDS_FROM), composited like the colours.
    parts = _texture_parts()
    texture_weights = {part: np.zeros(src_l.shape, dtype=np.float32) for part in parts}
    # The reference's lightness as each source pixel's own region sees it (last region painted wins).
    region_lightness = src_l.copy()
    painted = np.zeros(src_l.shape, dtype=bool)
    hole = np.zeros(src_l.shape, dtype=np.float32)
    fills: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for name in active:
        weight = source.weights[name][window] * np.float32(params.strength(name))
        channel = 3 + _REFERENCE_CHANNEL_OF[name]
        valid = np.clip(warped[..., channel], 0.0, 1.0)
        # Across a tear the texture's trust is its neighbours' (the lightness there is filled from
        # either side): a tear left without texture drew the source's own as a light line in the lips.
        texture_valid = fill_region(
            np.clip(warped[..., channel + channels], 0.0, 1.0), intact, 0.0, _TEAR_BRIDGE
        )
        lightness_valid = np.clip(warped[..., channel + 2 * channels], 0.0, 1.0) * intact
        mean = reference.region_means[name]
        # Skin and eye-shadow area read the same reference pixels (its skin): one fill serves both.
        # Colour and lightness are filled from different pixels: colour skips specular highlights,
        # lightness (the texture's source) keeps them, or their outlines would be drawn as texture.
        if channel not in fills:
            sigma = _FILL[name] * scale
            chroma = fill_region(warped_lab[..., 1:], valid, mean[1:], sigma)
            lightness = fill_region(warped_lab[..., 0], lightness_valid, mean[0], sigma)
            fills[channel] = (chroma, lightness)
        filled_ab, filled_l = fills[channel]

        region = source.masks[name][window] > 0
        if _TONE[name] > 0.0:
            # Local shift (an eye shadow darkens toward the lash line): normalised convolution of the
            # lightness difference over the region.
            inside = region.astype(np.float32)
            tone_sigma = _TONE[name] * scale
            difference = (filled_l - src_l) * inside
            region_tone = smooth(difference, tone_sigma) / np.maximum(smooth(inside, tone_sigma), 1e-3)
        else:
            region_tone = np.float32(mean[0] - source.lightness[name])
            if name == "skin":
                limit = np.float32(_SKIN_TONE_LIMIT)
                region_tone = np.clip(region_tone * np.float32(_SKIN_TONE_GAIN), -limit, limit)

        if name == "skin":
            filled_ab = _foundation_colour(warped[..., -2:], valid, mean, src_lab, scale)
        result_lab[..., 1:] += weight[..., None] * (filled_ab - result_lab[..., 1:])
        tone += weight * (region_tone - tone)
        coarse_valid = 1.0 if name in _FILLED_REGIONS else texture_valid
        # Where the reference shows none of a filled region, the source keeps its own fine texture but
        # takes the fill's fine bands over it (the region's shading near its border): without them a
        # hole was a light patch among the reference's texture.
        own_hole = 0.0
        if name in _FILLED_REGIONS:
            inner = soft_inner(region, *(scale * np.array(_TEXTURE_TRUST[name])))
            own_hole = np.clip(inner - texture_valid, 0.0, 1.0)
        hole += weight * (own_hole - hole)
        for (depth, _, _, filled), texture_weight in texture_weights.items():
            own = (coarse_valid if filled else texture_valid) if depth == _TEXTURE_DEPTH[name] else 0.0
            texture_weight += weight * (own - texture_weight)
        region_lightness = np.where(region, filled_l, region_lightness)
        painted |= weight > 0

    # Texture: the reference-minus-source lightness band-limited to the bands finer than the level, the
    # finest ones used only where the warped reference really shows the region (filled-in areas carry
    # no fine texture).
    ends = sorted({end for _, first, last, _ in parts for end in (first, last)})
    below = dict(zip(ends, fine_details(region_lightness - src_l, params.level_index, ends), strict=True))
    # Skin takes texture, not structure (see _STRUCTURE_LIMIT).
    gate = structure_gate(region_lightness - src_l, _STRUCTURE_LIMIT)
    texture = np.zeros(src_l.shape, dtype=np.float32)
    for (depth, first, last, _), texture_weight in texture_weights.items():
        if depth == _TEXTURE_DEPTH["skin"]:
            texture_weight = texture_weight * gate
        texture += texture_weight * (below[last] - below[first])
    if hole.any():
        # Bands finer than the fill's of the region's own lightness: the fill's shading, no texture.
        holes_first, holes_last = fine_details(region_lightness, params.level_index, (0, _FILLED_BANDS_FROM))
        texture += hole * (holes_last - holes_first)
    texture = guard_dark_detail(texture, src_l, source.nose[window], scale)
    result_lab[..., 0] = src_l + tone + texture

    # Bit-exact source wherever no region reaches (eyes, teeth, hair, background, disabled regions).
    result = source.rgb.copy()
    result_window = result[window]
    if source.grayscale:
        # No colour to keep: the makeup's lightness on the photo's own gray (a coloured face would be
        # made up). All three channels take the same value.
        lightness = result_lab[painted].copy()
        lightness[:, 1:] = 0.0
        result_window[painted] = lab_to_rgb(lightness)[:, 1:2]
    else:
        result_window[painted] = lab_to_rgb(result_lab[painted])
    return result


def _texture_parts() -> list[tuple[int, int, int, bool]]:
    """(depth, first band, end band, from the fill) for every texture depth: bands below
    `_FILLED_BANDS_FROM` need the warped reference's own pixels, the coarser ones may come from the fill."""
    parts = []
    for depth in sorted(set(_TEXTURE_DEPTH.values())):
        parts.append((depth, 0, min(depth, _FILLED_BANDS_FROM), False))
        if depth > _FILLED_BANDS_FROM:
            parts.append((depth, _FILLED_BANDS_FROM, depth, True))
    return parts


def _foundation_colour(
    canonical: np.ndarray, valid: np.ndarray, mean: np.ndarray, src_lab: np.ndarray, scale: float
) -> np.ndarray:
    """(h, w, 2) a*/b* the skin takes: the reference's skin colour without its lighting's steps (filled
    where it lacks skin), its chroma kept from falling far below the source's.

    canonical: (h, w, 2) warped `canonical_colour`; valid: (h, w) its colour trust; mean: (3,) the
    reference skin's mean Lab; src_lab: (h, w, 3).
    """
    filled = fill_region(canonical, valid, mean[1:], _FILL["skin"] * scale)
    return chroma_floor(filled, blur(np.ascontiguousarray(src_lab[..., 1:]), _FILL["skin"] * scale))
