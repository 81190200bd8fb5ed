"""Fit the face-plausibility thresholds (shmt_cli/face/plausibility.json) on the dev photos.

Objective: accept every real face, reject as many false detections as possible. Data: the 36 dev
photos in ../shared/faces, each enlarged to a phone-photo size (long side LONG_SIDE px, where HOG
false hits inside eyes appear) and varied six ways (as is, mirrored, cropped around the face, tilted
by 10-25°, shrunk onto a larger noisy canvas to 40% and to 15% as in group photos), each variant
searched in its four quarter turns exactly as `shmt_cli.face.search.find_faces` searches a photo. A
detection is *real* when, mapped back to the upright photo, its eye midpoint and mouth centre lie
within 0.25 eye distances of the upright photo's own detection (the face, the right way up), else
*false*.

Photos are split by name: every other photo (sorted) fits, the rest measure. For each measure the
threshold keeps every real face of the fit half with a margin of MARGIN of the real faces' range
toward the false side; the held-out half reports how many real faces each rule and all rules
together keep and how many false detections they reject.

Run: `python tools/fit_face_plausibility.py [SAMPLES.json]` (10-20 minutes on a busy 2-core
machine; the detections are kept in SAMPLES.json when given, so a refit takes a second); it prints
the tables and rewrites the JSON file.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shmt_cli.face.detect import FaceDetector  # noqa: E402
from shmt_cli.face.plausibility import (  # noqa: E402
    LEFT_EYE,
    MOUTH,
    RIGHT_EYE,
    THRESHOLDS_FILE,
    Confident,
    FaceMeasures,
    Thresholds,
    implausible_reasons,
    measure_face,
    rank_value,
)
from shmt_cli.face.rotation import rotate_image, unrotate_points  # noqa: E402
from shmt_cli.imageio import read_image  # noqa: E402

FACES = REPO.parent / "shared" / "faces"
LONG_SIDE = 1000
MARGIN = 0.15
OUT = REPO / "shmt_cli" / "face" / THRESHOLDS_FILE


@dataclass
class Sample:
    photo: str
    variant: str
    rotation: int
    real: bool
    measures: FaceMeasures


def variants(rgb: np.ndarray, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (image, 2x3 matrix from the upright photo to the variant)}."""
    height, width = rgb.shape[:2]
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {"as_is": (rgb, np.array([[1.0, 0, 0], [0, 1.0, 0]]))}
    out["mirrored"] = (rgb[:, ::-1].copy(), np.array([[-1.0, 0, width - 1], [0, 1.0, 0]]))
    x0, y0 = int(width * rng.uniform(0.05, 0.15)), int(height * rng.uniform(0.0, 0.12))
    x1, y1 = int(width * rng.uniform(0.85, 0.95)), int(height * rng.uniform(0.88, 1.0))
    out["cropped"] = (rgb[y0:y1, x0:x1].copy(), np.array([[1.0, 0, -x0], [0, 1.0, -y0]]))
    # A tilted head: HOG finds faces up to about ±30° of roll, so real faces have some.
    angle = float(rng.choice([-1, 1]) * rng.uniform(10, 25))
    tilt = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
    out["tilted"] = (cv2.warpAffine(rgb, tilt, (width, height), flags=cv2.INTER_LINEAR), tilt)
    # Small faces, as in group photos: the photo at 40% and at 15% of its size on a noisy canvas.
    for name, factor in (("shrunk", 0.4), ("tiny", 0.15)):
        small = cv2.resize(rgb, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA)
        canvas = rng.normal(128, 30, size=(height, width, 3)).clip(0, 255).astype(np.uint8)
        canvas = cv2.GaussianBlur(canvas, (0, 0), 3)
        ox, oy = int(width * 0.1), int(height * 0.3)
        canvas[oy : oy + small.shape[0], ox : ox + small.shape[1]] = small
        out[name] = (canvas, np.array([[factor, 0, ox], [0, factor, oy]]))
    return out


def key_points(points: np.ndarray) -> np.ndarray:
    """Midpoint of the eyes and centre of the mouth (the same for a mirrored face)."""
    eyes = (points[LEFT_EYE].mean(axis=0) + points[RIGHT_EYE].mean(axis=0)) / 2
    return np.stack([eyes, points[MOUTH].mean(axis=0)])


def is_same_face(found: np.ndarray, truth: np.ndarray) -> bool:
    """Eye midpoint and mouth within 0.25 eye distances of the truth's: the face, the right way up."""
    distance = float(np.linalg.norm(truth[LEFT_EYE].mean(axis=0) - truth[RIGHT_EYE].mean(axis=0)))
    return float(np.linalg.norm(key_points(found) - key_points(truth), axis=1).max()) < 0.25 * distance


def collect(detector: FaceDetector) -> list[Sample]:
    rng = np.random.default_rng(13)
    samples: list[Sample] = []
    photos = sorted(p for p in FACES.glob("*/images/*") if p.suffix.lower() in (".jpg", ".png"))
    for path in photos:
        photo = read_image(path)
        scale = LONG_SIDE / max(photo.shape[:2])
        photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        upright = detector.detect(photo)
        if not upright:
            print(f"skip {path.name}: no upright face", file=sys.stderr)
            continue
        truth = upright[0].landmarks
        for name, (image, to_variant) in variants(photo, rng).items():
            back = cv2.invertAffineTransform(to_variant)
            for rotation in (0, 90, 180, 270):
                turned = rotate_image(image, rotation)
                for face in detector.detect(turned):
                    in_variant = unrotate_points(face.landmarks, rotation, image.shape[:2])
                    in_photo = in_variant @ back[:, :2].T + back[:, 2]
                    measures = measure_face(face.landmarks, face.score, (turned.shape[1], turned.shape[0]))
                    real = is_same_face(in_photo, truth)
                    samples.append(Sample(path.name, name, rotation, real, measures))
        print(f"{path.name}: {len(samples)} detections so far", file=sys.stderr)
    return samples


def fit(samples: list[Sample]) -> Thresholds:
    real = [s.measures for s in samples if s.real]

    def low(values: list[float]) -> float:
        return min(values) - MARGIN * (max(values) - min(values))

    def high(values: list[float]) -> float:
        return max(values) + MARGIN * (max(values) - min(values))

    return Thresholds(
        min_score=low([m.score for m in real]),
        min_relative_size=max(0.0, low([m.relative_size for m in real])),
        max_shape_error=high([m.shape_error for m in real]),
        max_abs_roll_degrees=high([abs(m.roll_degrees) for m in real]),
    )


RULES = ("score", "size", "shape", "roll")


def rule_rejects(measures: FaceMeasures, limits: Thresholds) -> dict[str, bool]:
    reasons = implausible_reasons(measures, limits)
    return {
        "score": any(r.startswith("detector score") for r in reasons),
        "size": any(r.startswith("face size") for r in reasons),
        "shape": any(r.startswith("landmark shape") for r in reasons),
        "roll": any(r.startswith("roll") for r in reasons),
        "all": bool(reasons),
    }


def report(samples: list[Sample], limits: Thresholds, title: str) -> dict[str, dict[str, float]]:
    real = [s for s in samples if s.real]
    false = [s for s in samples if not s.real]
    table: dict[str, dict[str, float]] = {}
    print(f"\n{title}: {len(real)} real faces, {len(false)} false detections")
    print(f"{'rule':8s} {'real kept':>10s} {'false rejected':>15s}")
    for rule in (*RULES, "all"):
        kept = sum(not rule_rejects(s.measures, limits)[rule] for s in real)
        rejected = sum(rule_rejects(s.measures, limits)[rule] for s in false)
        table[rule] = {
            "real_kept": round(kept / max(1, len(real)), 4),
            "false_rejected": round(rejected / max(1, len(false)), 4),
        }
        print(f"{rule:8s} {kept:>5d}/{len(real):<4d} {rejected:>9d}/{len(false):<5d}")
    return table


CONFIDENT_MARGIN = 1.15


def fit_confident(samples: list[Sample], limits: Thresholds) -> Confident:
    """The region (score and size both at least) where an upright face is taken without searching the
    other turns: no false detection of the fit half within CONFIDENT_MARGIN of it, as many real ones
    as possible inside it (each one inside saves three more searches)."""
    plausible = [s for s in samples if not implausible_reasons(s.measures, limits)]
    false = [s.measures for s in plausible if not s.real]
    real = [s.measures for s in plausible if s.real]
    best = (-1, Confident(math.inf, math.inf))
    for score in sorted({m.score for m in real}):
        for size in sorted({m.relative_size for m in real}):
            if any(
                f.score * CONFIDENT_MARGIN >= score and f.relative_size * CONFIDENT_MARGIN >= size
                for f in false
            ):
                continue
            inside = sum(m.score >= score and m.relative_size >= size for m in real)
            if inside > best[0]:
                best = (inside, Confident(score, size))
    return best[1]


def simulate(samples: list[Sample], limits: Thresholds | None, confident: Confident | None) -> dict[str, int]:
    """What the search does on every variant in each of its four stored turns: the real face chosen,
    a false one chosen, or nothing found although the real face was found in some turn.

    limits None: no plausibility rules (every detection trusted, as before); confident None: the first
    turn with a plausible detection wins (no comparison across turns)."""
    by_image: dict[tuple[str, str], dict[int, list[Sample]]] = {}
    for sample in samples:
        by_image.setdefault((sample.photo, sample.variant), {}).setdefault(sample.rotation, []).append(sample)
    counts = {"real": 0, "false": 0, "missed": 0, "none": 0, "searches": 0}
    for turns in by_image.values():
        for stored in (0, 90, 180, 270):
            steps = [turns.get((stored + k) % 360, []) for k in (0, 90, 180, 270)]

            def keep(found: list[Sample]) -> list[Sample]:
                if limits is None:
                    return found
                return [f for f in found if not implausible_reasons(f.measures, limits)]

            chosen = None
            searched = 0
            if limits is None:
                searched, chosen = 1, max(steps[0], key=_rank, default=None)
            elif confident is None:
                for step in steps:
                    searched += 1
                    if keep(step):
                        chosen = max(keep(step), key=_rank)
                        break
            else:
                upright = keep(steps[0])
                searched = 1
                sure = [f for f in upright if confident.holds(f.measures)]
                if sure:
                    chosen = max(sure, key=_rank)
                else:
                    searched = 4
                    pool = [f for step in steps for f in keep(step)]
                    chosen = max(pool, key=_rank, default=None)
            counts["searches"] += searched
            any_real = any(f.real for step in steps for f in step)
            if chosen is None:
                counts["missed" if any_real else "none"] += 1
            else:
                counts["real" if chosen.real else "false"] += 1
    return counts


def _rank(sample: Sample) -> float:
    return rank_value(sample.measures)


def load_or_collect(cache: Path | None) -> list[Sample]:
    """The detections of every variant (cached in `cache` as JSON when given: detection takes minutes)."""
    if cache is not None and cache.is_file():
        rows = json.loads(cache.read_text("utf-8"))
        return [
            Sample(r["photo"], r["variant"], r["rotation"], r["real"], FaceMeasures(**r["measures"]))
            for r in rows
        ]
    samples = collect(FaceDetector())
    if cache is not None:
        rows = [{**s.__dict__, "measures": s.measures.__dict__} for s in samples]
        cache.write_text(json.dumps(rows), "utf-8")
    return samples


def main() -> None:
    cache = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    samples = load_or_collect(cache)
    photos = sorted({s.photo for s in samples})
    fit_photos = set(photos[::2])
    fit_set = [s for s in samples if s.photo in fit_photos]
    held_out = [s for s in samples if s.photo not in fit_photos]
    limits = fit(fit_set)
    confident = fit_confident(fit_set, limits)
    print(json.dumps({**limits.__dict__, "confident": confident.__dict__}, indent=2))
    fit_table = report(fit_set, limits, "fit half")
    held_table = report(held_out, limits, "held-out half")
    policies = {
        "every detection trusted (before)": (None, None),
        "plausible, first turn with one": (limits, None),
        "plausible, turns compared unless confident": (limits, confident),
    }
    outcomes = {}
    print("\nsearch outcome on the held-out half (each variant in its 4 stored turns):")
    print(f"{'policy':44s} {'real':>5s} {'false':>6s} {'missed':>7s} {'none':>5s} {'searches':>9s}")
    for name, (rule, sure) in policies.items():
        counts = simulate(held_out, rule, sure)
        outcomes[name] = counts
        print(
            f"{name:44s} {counts['real']:5d} {counts['false']:6d} {counts['missed']:7d} {counts['none']:5d} "
            f"{counts['searches']:9d}"
        )
    for s in held_out:
        if s.real and implausible_reasons(s.measures, limits):
            print("held-out real face rejected:", s.photo, s.variant, s.rotation, s.measures)
    payload = {
        "written_by": "tools/fit_face_plausibility.py",
        "objective": "keep every real face of the fit half (margin "
        f"{MARGIN} of the real range), reject as many false detections as possible",
        "data": f"36 dev photos at {LONG_SIDE} px; as is, mirrored, cropped, tilted, shrunk 40%/15%; 4 turns",
        "thresholds": {key: round(value, 4) for key, value in limits.__dict__.items()},
        "confident": {key: round(value, 4) for key, value in confident.__dict__.items()},
        "held_out_search": outcomes,
        "fit_half": fit_table,
        "held_out_half": held_table,
    }
    OUT.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
