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
together keep and how many false detections they reject. Run: `python tools/fit_face_plausibility.py`
(10-20 minutes on a busy 2-core machine); it prints the table and rewrites the JSON file.
"""

from __future__ import annotations

import json
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
    FaceMeasures,
    Thresholds,
    implausible_reasons,
    measure_face,
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


def main() -> None:
    detector = FaceDetector()
    samples = collect(detector)
    photos = sorted({s.photo for s in samples})
    fit_photos = set(photos[::2])
    fit_set = [s for s in samples if s.photo in fit_photos]
    held_out = [s for s in samples if s.photo not in fit_photos]
    limits = fit(fit_set)
    print(json.dumps(limits.__dict__, indent=2))
    fit_table = report(fit_set, limits, "fit half")
    held_table = report(held_out, limits, "held-out half")
    for s in held_out:
        if s.real and implausible_reasons(s.measures, limits):
            print("held-out real face rejected:", s.photo, s.variant, s.rotation, s.measures)
    payload = {
        "written_by": "tools/fit_face_plausibility.py",
        "objective": "keep every real face of the fit half (margin "
        f"{MARGIN} of the real range), reject as many false detections as possible",
        "data": f"36 dev photos at {LONG_SIDE} px; as is, mirrored, cropped, tilted, shrunk 40%/15%; 4 turns",
        "thresholds": {key: round(value, 4) for key, value in limits.__dict__.items()},
        "fit_half": fit_table,
        "held_out_half": held_table,
    }
    OUT.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
