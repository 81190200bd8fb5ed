"""Fit the classic engine's off-colour limits (shmt_cli/engines/classic_outliers.json) on the dev photos.

The classic engine trusts a reference's skin and lip pixels for colour and texture. The built-in parser
sometimes calls hair, flowers, a collar or the background skin, and teeth or the inner mouth lips; those
pixels painted streaks and gray slivers. A pixel is dropped when its robust distance to its region's
median (`classic_regions.robust_scores`: |z_L| and the chromaticity distance z_c, in units of 1.4826
MAD) exceeds a limit, or when it exceeds the `connected` share of the limits and touches such a pixel
(`classic_regions.flag_outliers`).

Data: the 21 made-up dev photos (../shared/faces/makeup) at 256x256 as tools/classic_quality.py makes
them. Truth: the official FaceParsing maps (seg/) — a pixel the built-in parser puts in the region is
*wrong* when the official map says it is another material (skin: anything but skin, nose, neck, ears;
lips: anything but lips). Objective per region: flag as many wrong pixels as possible while flagging at
most MAX_RIGHT_FLAGGED of the right ones (pooled over photos); ties go to fewer right pixels flagged.
Grid: both limits in 2.0..16.0 by 0.5, `connected` in CONNECTED. Measured by 3-fold cross-validation
over the photos (sorted by name, every third photo held out); hysteresis is used for a region only when
it catches more held-out wrong pixels than the same feature without it; the limits written are fitted
on all 21.

For comparison the held-out rates of the previous feature (robust distance in a*/b* units instead of
chromaticity, no hysteresis) and of chromaticity without hysteresis are printed and kept in the JSON.

Skin candidates (kept under "skin_candidates", not used by the engine): most wrong skin pixels lie at
the parsing border, where the engine's colour trust ramp already reads little of them; counted plainly,
a rule looks good by flagging those. So the candidates are also measured with every pixel weighted by
that trust (`trust-weighted`: the share of the wrong pixels' colour the engine would otherwise read,
and of the right pixels' colour it loses). Held out: the chosen limits; limits fitted to the
trust-weighted objective (better on that measure, but on the 315 dev pairs of classic_quality.py they
changed nothing visible and cost a little skin fidelity, so not adopted); and a linear score
(class-balanced logistic regression, threshold set on the training folds) on CANDIDATE_FEATURES: the
robust distances to the region's median and to the skin around the pixel (normalised convolution at
LOCAL_SIGMA face widths), and nearness to the parsing border, which held out catches fewer of the
trusted wrong pixels than the limits.

    python tools/fit_classic_outliers.py
"""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
from classic_quality import load_faces  # tools/ is on sys.path when this file is run

from shmt_cli.atomic import write_json_atomic
from shmt_cli.color import rgb_to_lab
from shmt_cli.engines import classic_regions as R
from shmt_cli.engines.classic import _COLOUR_TRUST
from shmt_cli.engines.classic_texture import blur
from shmt_cli.face.labels import L_EAR, L_LIP, NECK, NOSE, R_EAR, SKIN, U_LIP

OUT = Path(__file__).resolve().parents[1] / "shmt_cli" / "engines" / R.OUTLIERS_FILE
MAX_RIGHT_FLAGGED = 0.02
GRID = np.arange(2.0, 16.01, 0.5)
CONNECTED = (1.0, 0.8, 0.7, 0.6, 0.5)
FOLDS = 3
RIGHT_LABELS = {"skin": (SKIN, NOSE, NECK, L_EAR, R_EAR), "lips": (U_LIP, L_LIP)}
# The previous feature's spread floor (L, a*, b*), for the comparison only.
_PREVIOUS_MIN_SPREAD = np.array([2.0, 1.0, 1.0], dtype=np.float32)
# Skin candidates: the local distances' scale, the border nearness's reach (face widths), and the
# logistic regression's Newton steps and L2 penalty (on the weights, not the bias).
LOCAL_SIGMA = 0.08
BORDER_NEAR = 0.06
CANDIDATE_FEATURES = (
    "log1p |z_L|",
    "log1p z_c",
    "log1p local |z_L|",
    "log1p local z_c",
    "border nearness",
    "border nearness x log1p local z",
)
NEWTON_STEPS = 30
L2 = 1e-3


def candidates(rgb, labels, landmarks) -> dict[str, np.ndarray]:
    """The pixels each region's limits judge: `reference_regions`' parsed regions (skin outside the
    eye-shadow area)."""
    regions = R.reference_regions(rgb_to_lab(rgb), labels, landmarks, ~rgb.any(axis=2))
    skin = regions["skin"][0] & ~R.eye_shadow_mask(landmarks, labels.shape)
    return {"skin": skin, "lips": regions["lips"][0]}


def previous_scores(lab: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The previous feature: (|z_L|, z_ab) with a* and b* in their own units."""
    pixels = lab[region]
    median = np.median(pixels, axis=0)
    spread = np.maximum(1.4826 * np.median(np.abs(pixels - median), axis=0), _PREVIOUS_MIN_SPREAD)
    z = (lab - median) / spread
    return np.abs(z[..., 0]), np.hypot(z[..., 1], z[..., 2])


def samples(region: str, builtin: dict, official: dict, scores) -> list[tuple[str, np.ndarray, ...]]:
    """Per photo: (stem, z_L, z_c, candidate mask, wrong mask), full (H, W) maps."""
    rows = []
    for stem, (rgb, labels, landmarks) in sorted(builtin.items()):
        mask = candidates(rgb, labels, landmarks)[region]
        z_l, z_c = scores(rgb_to_lab(rgb), mask)
        wrong = ~np.isin(official[stem][1], RIGHT_LABELS[region]) & mask
        rows.append((stem, z_l, z_c, mask, wrong))
    return rows


def counts(rows, combos) -> np.ndarray:
    """(combos, photos, 4) int64: flagged wrong, flagged right, wrong, right per photo and limits."""
    table = np.zeros((len(combos), len(rows), 4), dtype=np.int64)
    for j, (_, z_l, z_c, mask, wrong) in enumerate(rows):
        # Work on the candidates' bounding box: everything else is outside the region.
        ys, xs = np.nonzero(mask)
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        z_l, z_c, mask, wrong = z_l[box], z_c[box], mask[box], wrong[box]
        right = mask & ~wrong
        table[:, j, 2] = wrong.sum()
        table[:, j, 3] = right.sum()
        for i, (limit_l, limit_c, connected) in enumerate(combos):
            flagged = R.flag_outliers(z_l, z_c, mask, R.OutlierLimits(limit_l, limit_c, connected))
            table[i, j, 0] = (flagged & wrong).sum()
            table[i, j, 1] = (flagged & right).sum()
    return table


def rates(table: np.ndarray, photos) -> np.ndarray:
    """(combos, 2): share of wrong pixels flagged, share of right pixels flagged, pooled over `photos`."""
    total = table[:, list(photos)].sum(axis=1).astype(np.float64)
    return np.stack([total[:, 0] / np.maximum(total[:, 2], 1), total[:, 1] / np.maximum(total[:, 3], 1)], 1)


def fit(table: np.ndarray, photos) -> int:
    """Index of the best combination on `photos` (see the objective in the module docstring)."""
    caught, false = rates(table, photos).T
    allowed = false <= MAX_RIGHT_FLAGGED
    assert allowed.any(), "no limits keep the right pixels"
    order = np.lexsort((false, -caught))  # most caught first, then fewest right flagged
    return int(next(i for i in order if allowed[i]))


def evaluate(name: str, table: np.ndarray, combos, photo_count: int) -> tuple[list[dict], tuple]:
    """Held-out rates per fold and the combination fitted on all photos."""
    held = []
    for fold in range(FOLDS):
        train = [i for i in range(photo_count) if i % FOLDS != fold]
        test = [i for i in range(photo_count) if i % FOLDS == fold]
        best = fit(table, train)
        caught, false = rates(table, test)[best]
        held.append(
            {
                "limits": list(combos[best]),
                "wrong_flagged": round(float(caught), 4),
                "right_flagged": round(float(false), 4),
            }
        )
    mean_caught = _mean_caught(held)
    mean_false = np.mean([fold["right_flagged"] for fold in held])
    print(f"  {name:<24} held out: {mean_caught:.1%} wrong, {mean_false:.2%} right flagged (fold mean)")
    return held, combos[fit(table, range(photo_count))]


def _mean_caught(held: list[dict]) -> float:
    return float(np.mean([fold["wrong_flagged"] for fold in held]))


# ---------------------------------------------------------------------------------------------------
# Skin candidates


def candidate_features(lab: np.ndarray, region: np.ndarray, parsed: np.ndarray, width: float) -> np.ndarray:
    """(H, W, K) float32 CANDIDATE_FEATURES of (H, W, 3) CIELAB over `region` (judged skin); `parsed`
    is the skin as parsed, whose border the nearness is taken to."""
    z_lightness, z_colour = R.robust_scores(lab, region)
    values = np.concatenate([lab[..., :1], R.chromaticity(lab)], axis=-1)
    inside = region.astype(np.float32)
    sigma = LOCAL_SIGMA * width
    local = blur(values * inside[..., None], sigma) / np.maximum(blur(inside, sigma), 1e-3)[..., None]
    residual = values - local
    spread = np.maximum(1.4826 * np.median(np.abs(residual[region]), axis=0), R._MIN_SPREAD)
    z_local = residual / spread.astype(np.float32)
    local_lightness = np.abs(z_local[..., 0])
    local_colour = np.hypot(z_local[..., 1], z_local[..., 2])
    depth = cv2.distanceTransform(parsed.astype(np.uint8), cv2.DIST_L2, 3)
    nearness = 1.0 - np.clip(depth / np.float32(BORDER_NEAR * width), 0.0, 1.0)
    local_z = np.log1p(np.maximum(local_lightness, local_colour))
    columns = [z_lightness, z_colour, local_lightness, local_colour]
    return np.stack([*np.log1p(columns), nearness, nearness * local_z], axis=-1).astype(np.float32)


def skin_samples(builtin: dict, official: dict) -> list[tuple]:
    """Per photo over the skin candidates: (features (N, K), z (N, 2) as the engine scores them,
    wrong (N,) bool, colour trust (N,) in [0, 1])."""
    rows = []
    for stem, (rgb, labels, landmarks) in sorted(builtin.items()):
        lab = rgb_to_lab(rgb)
        regions = R.reference_regions(lab, labels, landmarks, ~rgb.any(axis=2))
        parsed = regions["skin"][0]
        judged = parsed & ~R.eye_shadow_mask(landmarks, labels.shape)
        width = R.face_width(landmarks)
        features = candidate_features(lab, judged, parsed, width)[judged]
        z = np.stack(R.robust_scores(lab, judged), axis=-1)[judged]
        wrong = ~np.isin(official[stem][1], RIGHT_LABELS["skin"])[judged]
        trust = R.soft_inner(parsed, *(width * np.array(_COLOUR_TRUST["skin"])))[judged]
        rows.append((features, z, wrong, trust))
    return rows


def skin_rates(rows, photos, flag) -> dict[str, float]:
    """Pooled shares of the wrong and right pixels of `photos` that `flag(row) -> (N,) bool` flags,
    plain and trust-weighted."""
    totals = np.zeros(8)
    for i in photos:
        _, _, wrong, trust = rows[i]
        flagged = flag(rows[i])
        for k, weight in enumerate((np.ones_like(trust), trust)):
            totals[4 * k : 4 * k + 4] += [
                (weight * (flagged & wrong)).sum(),
                (weight * wrong).sum(),
                (weight * (flagged & ~wrong)).sum(),
                (weight * ~wrong).sum(),
            ]
    share = [round(float(totals[i] / max(totals[i + 1], 1e-9)), 4) for i in (0, 2, 4, 6)]
    return dict(
        zip(
            ("wrong_flagged", "right_flagged", "wrong_flagged_weighted", "right_flagged_weighted"),
            share,
            strict=True,
        )
    )


def _limit_flags(row, limits) -> np.ndarray:
    return (row[1][:, 0] > limits[0]) | (row[1][:, 1] > limits[1])


def _best_limits(rows, photos, weighted: bool) -> tuple[float, float]:
    """Limits (lightness, colour) flagging most wrong pixels of `photos` with at most MAX_RIGHT_FLAGGED
    of the right ones, plain or trust-weighted."""
    suffix = "_weighted" if weighted else ""
    best, best_key = None, None
    for limits in itertools.product(GRID, GRID):
        rates = skin_rates(rows, photos, lambda row, lim=limits: _limit_flags(row, lim))
        if rates["right_flagged" + suffix] > MAX_RIGHT_FLAGGED:
            continue
        key = (rates["wrong_flagged" + suffix], -rates["right_flagged" + suffix])
        if best_key is None or key > best_key:
            best, best_key = (float(limits[0]), float(limits[1])), key
    return best


def _logistic(features: np.ndarray, wrong: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Class-balanced, `weight`-weighted L2 logistic regression by Newton steps: (K,) weights."""
    x = np.concatenate([features.astype(np.float64), np.ones((len(features), 1))], axis=1)
    weight = weight.astype(np.float64)
    sample = weight * np.where(wrong, 0.5 / weight[wrong].sum(), 0.5 / weight[~wrong].sum())
    penalty = np.full(x.shape[1], L2)
    penalty[-1] = 0.0
    theta = np.zeros(x.shape[1])
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(x @ theta)))
        hessian = (x * (sample * p * (1 - p))[:, None]).T @ x + np.diag(penalty)
        theta -= np.linalg.solve(hessian, x.T @ (sample * (p - wrong)) + penalty * theta)
    return theta[:-1]


def _linear_score(rows, photos, weighted: bool) -> tuple[np.ndarray, float]:
    """Weights and threshold: MAX_RIGHT_FLAGGED of the right pixels of `photos` score above it."""
    features, _, wrong, trust = (np.concatenate([rows[i][k] for i in photos]) for k in range(4))
    weight = trust if weighted else np.ones_like(trust)
    weights = _logistic(features, wrong, weight)
    scores = features[~wrong] @ weights
    order = np.argsort(scores)
    cumulative = np.cumsum(weight[~wrong][order])
    threshold = scores[order][np.searchsorted(cumulative, (1.0 - MAX_RIGHT_FLAGGED) * cumulative[-1])]
    return weights, float(threshold)


def skin_candidates(builtin: dict, official: dict, chosen: list[dict]) -> dict:
    """Held-out rates per fold of the plain-objective limits (`chosen`: per fold) and of the candidates,
    and the trust-weighted objective's limits fitted on all photos (under "fitted on all photos")."""
    rows = skin_samples(builtin, official)

    def weighted_limits(train, fold):
        limits = _best_limits(rows, train, True)
        return (lambda row: _limit_flags(row, limits)), {"limits": list(limits)}

    methods = {
        "limits, plain objective": lambda train, fold: (
            (lambda row: _limit_flags(row, chosen[fold]["limits"])),
            {"limits": chosen[fold]["limits"][:2]},
        ),
        "limits, trust-weighted objective": weighted_limits,
        "linear score": lambda train, fold: (_score_flags(*_linear_score(rows, train, False)), {}),
        "linear score, trust-weighted objective": lambda train, fold: (
            _score_flags(*_linear_score(rows, train, True)),
            {},
        ),
    }
    result: dict = {"features": list(CANDIDATE_FEATURES)}
    print("skin (held out, fold means; trust-weighted in brackets):")
    for name, make in methods.items():
        held = []
        for fold in range(FOLDS):
            train = [i for i in range(len(rows)) if i % FOLDS != fold]
            test = [i for i in range(len(rows)) if i % FOLDS == fold]
            flag, info = make(train, fold)
            held.append(info | skin_rates(rows, test, flag))
        mean = {key: float(np.mean([fold[key] for fold in held])) for key in held[0] if key != "limits"}
        print(
            f"  {name:<40} wrong {mean['wrong_flagged']:.1%} ({mean['wrong_flagged_weighted']:.1%}), "
            f"right {mean['right_flagged']:.2%} ({mean['right_flagged_weighted']:.2%})"
        )
        result[name] = held
    result["fitted on all photos"] = _best_limits(rows, range(len(rows)), True)
    return result


def _score_flags(weights: np.ndarray, threshold: float):
    return lambda row: row[0] @ weights > threshold


def main() -> None:
    result = {
        "written_by": "tools/fit_classic_outliers.py",
        "objective": f"flag most wrong pixels with at most {MAX_RIGHT_FLAGGED:.0%} of right ones flagged",
        "data": "21 made-up dev photos, 256x256, built-in parser judged by the official maps",
        "feature": "|z| of L and of chromaticity (a*, b*) / (L + 16); hysteresis where it helps held out",
        "limits": {},
        "held_out": {},
        "held_out_without_hysteresis": {},
        "held_out_previous_feature": {},
        "skin_candidates": {},
    }
    builtin = dict(load_faces("makeup", "builtin"))
    official = dict(load_faces("makeup", "official"))
    plain = [(float(a), float(b), 1.0) for a, b in itertools.product(GRID, GRID)]
    with_hysteresis = [(float(a), float(b), c) for a, b in itertools.product(GRID, GRID) for c in CONNECTED]
    for region in ("skin", "lips"):
        previous = samples(region, builtin, official, previous_scores)
        rows = samples(region, builtin, official, R.robust_scores)
        wrong = sum(int(r[4].sum()) for r in rows)
        total = sum(int(r[3].sum()) for r in rows)
        print(f"{region}: {wrong} of {total} candidate pixels are another material by the official maps")
        result["held_out_previous_feature"][region], _ = evaluate(
            "a*/b* (previous)", counts(previous, plain), plain, len(rows)
        )
        plain_table = counts(rows, plain)
        plain_held, plain_best = evaluate("chromaticity", plain_table, plain, len(rows))
        table = counts(rows, with_hysteresis)
        held, best = evaluate("chromaticity, hysteresis", table, with_hysteresis, len(rows))
        # Hysteresis only where it catches more held-out wrong pixels (model choice by the same folds).
        if _mean_caught(held) <= _mean_caught(plain_held):
            held, best, table, combos = plain_held, plain_best, plain_table, plain
        else:
            combos = with_hysteresis
        result["held_out_without_hysteresis"][region] = plain_held
        result["held_out"][region] = held
        caught, false = rates(table, range(len(rows)))[combos.index(best)]
        print(f"  chosen, all photos: limits {best}: {caught:.1%} wrong flagged, {false:.2%} right")
        result["limits"][region] = dict(zip(("lightness", "colour", "connected"), best, strict=True))
    # Skin candidates: measured and kept, not used (see the module docstring).
    candidates = skin_candidates(builtin, official, result["held_out"]["skin"])
    lightness, colour = candidates.pop("fitted on all photos")
    candidates["limits, trust-weighted objective, all photos"] = [lightness, colour]
    result["skin_candidates"] = candidates
    write_json_atomic(OUT, result)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
