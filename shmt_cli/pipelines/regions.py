"""`--regions` and `--strength` for every engine: which face regions of a result are kept, and how much.

The classic engine paints regions itself. For any other engine (SHMT's diffusion result changes the
whole face at once) the same choice is a post-step on the 256² result crop, before it is pasted back:
a blend of result and source per region, with the classic engine's region masks and feathering (taken
from `engines.classic.prepare_source`, so both engines mean the same pixels by "lips").
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shmt_cli.decompose import FaceParts
from shmt_cli.engines.classic import REGIONS, prepare_source
from shmt_cli.inputs import UsageError


def parse_regions(text: str | None) -> frozenset[str] | None:
    """`lips,eyes` -> the regions to paint (None: the engine's default, all); UsageError when the text
    names none (nothing would change)."""
    if text is None:
        return None
    wanted = frozenset(r.strip() for r in text.split(",") if r.strip())
    if not wanted:
        raise UsageError(f"--regions names no region (got {text!r}), e.g. {','.join(REGIONS)}")
    return wanted


def parse_strengths(text: str | None) -> dict[str, float]:
    """`0.5` (every region) or `lips=1,skin=0.5` -> per-region strengths."""
    if not text:
        return {}
    try:
        if "=" not in text:
            return dict.fromkeys(REGIONS, float(text))
        pairs = (part.split("=", 1) for part in text.split(",") if part.strip())
        return {name.strip(): float(value) for name, value in pairs}
    except ValueError:
        raise UsageError(f"--strength takes a number or region=number pairs, got {text!r}") from None


def region_strengths(regions: frozenset[str] | None, strengths: Mapping[str, float]) -> dict[str, float]:
    """Each region's effective strength in [0, 1] (0: not chosen; 1 unless `strengths` says otherwise)."""
    chosen = REGIONS if regions is None else regions
    return {name: float(strengths.get(name, 1.0)) if name in chosen else 0.0 for name in REGIONS}


def keeps_everything(regions: frozenset[str] | None, strengths: Mapping[str, float]) -> bool:
    """Whether the choice is every region at full strength: the engine's result is then kept as it is."""
    return all(value == 1.0 for value in region_strengths(regions, strengths).values())


def region_alpha(source: FaceParts, strengths: Mapping[str, float]) -> np.ndarray:
    """(S, S) float32 in [0, 1]: how much of the result each crop pixel takes.

    Regions are composited in the classic engine's paint order (a later region covers an earlier one),
    each with its feathered classic weight times its strength; 0 exactly wherever no chosen region
    reaches.
    """
    weights = prepare_source(source.image, source.labels, source.landmarks).weights
    alpha = np.zeros(source.labels.shape, dtype=np.float32)
    for name in REGIONS:
        strength = np.float32(strengths.get(name, 0.0))
        if strength > 0:
            alpha += weights[name] * strength * (1.0 - alpha)
    return alpha


def keep_regions(result: np.ndarray, source: FaceParts, strengths: Mapping[str, float]) -> np.ndarray:
    """(S, S, 3) uint8: `result` inside the chosen regions, `source.image` outside, blended by
    `region_alpha` (pixels no region reaches are the source's bytes)."""
    alpha = region_alpha(source, strengths)[..., None]
    original = source.image.astype(np.float32)
    blended = original + alpha * (result.astype(np.float32) - original)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
