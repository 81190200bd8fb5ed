"""The foundation's colour apart from the reference photo's lighting (engines/classic.py uses these).

In a photo the skin's a*/b* follow its lighting: on a half-lit face the shaded side is far more
saturated than the lit side (e.g. chroma 34 at L 66 against 14 at L 90 on one dev reference). Copied
as is onto a source lit otherwise, that draws the reference's light and shadow as a colour step (down
the nose). So the reference's skin colour is modelled as a function of its smoothed lightness
(binned medians, no extrapolation), and the sharp steps of that prediction are taken out of the
reference's colour (`canonical_colour`); its smooth colour stays.

A very pale foundation on a darker complexion keeps the source's lightness (the tone shift is capped)
but would take the pale skin's low chroma: the face turns gray. `chroma_floor` limits how far the
foundation may lower the skin's chroma.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from shmt_cli.engines.classic_texture import blur

# Lightness is smoothed at this scale (face widths) before colour is related to it: lighting is smooth,
# pores are not.
_SHADING_SIGMA = 0.02
# Lighting steps are what the colour predicted from the lightness does within this scale (face widths):
# a shadow's edge down the nose, not the slow change across the face.
_STEP_SIGMA = 0.3
# The colour is the median a*/b* of this many equally filled lightness bins, linear in between: the
# relation is not a line (on one dev reference b* peaks in the midtones and falls toward both ends).
_BINS = 8
# The bins span these percentiles of the reference skin's smoothed lightness; outside, the end bins'
# colour holds (no extrapolation).
_RANGE_PERCENTILES = (2.0, 98.0)
# Fewer trusted skin pixels than this: no model (the colour is used as it is).
_MIN_PIXELS = 400
# The foundation may lower the skin's chroma (a*/b* units) by at most this much, like the tone
# shift's cap on lightness (classic._SKIN_TONE_LIMIT): it tints the skin, it does not gray it.
_CHROMA_DROP_LIMIT = 6.0


@dataclass(frozen=True)
class SkinShading:
    """The reference skin's a*/b* as a function of its smoothed lightness.

    lightness: (K,) float64 increasing bin lightness; colour: (K, 2) float64 median a*/b* per bin.
    """

    lightness: np.ndarray
    colour: np.ndarray

    def at(self, lightness: np.ndarray) -> np.ndarray:
        """(..., 2) float32 a*/b* at (...) smoothed lightness, end values held outside the bins."""
        flat = np.asarray(lightness, dtype=np.float64).ravel()
        ab = [np.interp(flat, self.lightness, self.colour[:, channel]) for channel in range(2)]
        return np.stack(ab, axis=-1).reshape(*np.shape(lightness), 2).astype(np.float32)


def smoothed_lightness(lab: np.ndarray, width: float) -> np.ndarray:
    """(H, W) float32: the L channel of (H, W, 3) CIELAB blurred at `_SHADING_SIGMA` face widths."""
    return blur(np.ascontiguousarray(lab[..., 0]), _SHADING_SIGMA * width)


def fit_shading(lab: np.ndarray, where: np.ndarray, width: float) -> SkinShading | None:
    """Binned median a*/b* against the smoothed lightness over `where` ((H, W) bool trusted skin)."""
    if where.sum() < _MIN_PIXELS:
        return None
    lightness = smoothed_lightness(lab, width)[where].astype(np.float64)
    colour = lab[where][:, 1:].astype(np.float64)
    edges = np.percentile(lightness, np.linspace(*_RANGE_PERCENTILES, _BINS + 1))
    centres, values = [], []
    for low, high in itertools.pairwise(edges):
        inside = (lightness >= low) & (lightness <= high)
        centre = float(np.median(lightness[inside]))
        if inside.sum() < _MIN_PIXELS // (2 * _BINS) or (centres and centre <= centres[-1]):
            continue
        centres.append(centre)
        values.append(np.median(colour[inside], axis=0))
    if len(centres) < 2:
        return None
    return SkinShading(np.array(centres), np.array(values))


def canonical_colour(lab: np.ndarray, shading: SkinShading | None, width: float) -> np.ndarray:
    """(H, W, 2) float32: a*/b* of the reference with the local steps its lighting put in them taken
    out (the colour the lighting predicts, minus its smooth version at `_STEP_SIGMA` face widths).

    Only the steps: the reference's smooth, large-scale colour (its blush, a tan that darkens toward the
    jaw) stays, and on an evenly lit reference almost nothing changes.
    """
    ab = lab[..., 1:].astype(np.float32)
    if shading is None:
        return ab
    predicted = shading.at(smoothed_lightness(lab, width))
    return ab - (predicted - blur(predicted, _STEP_SIGMA * width))


def chroma_floor(reference_ab: np.ndarray, source_ab: np.ndarray) -> np.ndarray:
    """(..., 2) float32: the reference skin's a*/b* moved toward the source's just enough that their
    chroma is at least the source's minus `_CHROMA_DROP_LIMIT` (a sheer foundation: the skin beneath
    shows through).

    reference_ab, source_ab: (..., 2) a*/b* of the same pixels (the source's smoothed: its pores'
    chroma is no floor).
    """
    reference = np.linalg.norm(reference_ab, axis=-1)
    source = np.linalg.norm(source_ab, axis=-1)
    shortfall = source - np.float32(_CHROMA_DROP_LIMIT) - reference
    # Share of the way to the source's colour; chroma grows about linearly along it (skin hues are close).
    share = np.clip(shortfall / np.maximum(source - reference, np.float32(1e-3)), 0.0, 1.0)
    return (reference_ab + share[..., None] * (source_ab - reference_ab)).astype(np.float32)
