"""Held-out M_face of the rule-based skin region: its colour constants refitted per fold.

The rules' constants were fitted on all 36 dev photos, so their dev-set M_face is in sample. This
refits the five constants of shmt_cli/face/parsing_skin.py that decide the skin region's extent
(SKIN_MAHA, HEAD_MAHA, NECK_MAHA, CORE_INSET, ALLOWED_GROW) per fold of the k-fold of
tools/parsing_train.py: a coordinate search (two passes over GRID, starting from the shipped values)
that maximises (made-up mean M_face + bare mean M_face) / 2 of `parse_face(method="rules",
parts=False)` on the other folds' photos, then scores the held-out fold with the values found. The
gap between the printed in-sample and held-out means is what fitting these constants on the same
photos adds. The landmark polygons (HEAD_PRIOR, NECK_PRIOR, ...) are not refitted.

    python tools/parsing_rules_kfold.py [--faces DIR] [--kfold 3]

Data: ../shared/faces (CC BY-NC-SA 4.0, see its README) with the official parser's maps.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shmt_cli.face import parsing_skin
from shmt_cli.face.parsing import load_label_map, parse_face

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parsing_iou
from parsing_train import folds

GRID: dict[str, tuple[float, ...]] = {
    "SKIN_MAHA": (15.0, 20.0, 25.0, 32.0, 40.0),
    "HEAD_MAHA": (7.0, 9.5, 12.0, 15.0, 19.0),
    "NECK_MAHA": (64.0, 90.0, 128.0, 180.0, 256.0),
    "CORE_INSET": (0.06, 0.09, 0.12, 0.16, 0.2),
    "ALLOWED_GROW": (0.08, 0.11, 0.15, 0.2, 0.25),
}
PASSES = 2
KINDS = ("makeup", "non_makeup")


@dataclass
class Photo:
    name: str  # "<folder>/<file>", the folder being makeup or non_makeup
    rgb: np.ndarray  # (H, W, 3) uint8
    landmarks: np.ndarray  # (68, 2)
    face: np.ndarray  # (H, W) bool official M_face


def load_photos(faces_dir: Path) -> list[Photo]:
    photos = []
    for name, rgb, landmarks, seg in parsing_iou.detected_photos(faces_dir):
        face = np.isin(load_label_map(seg, rgb.shape[:2]), parsing_iou.REGIONS["M_face"])
        photos.append(Photo(name, rgb, landmarks, face))
    return photos


class Scorer:
    """M_face IoU per photo for a setting of the constants (memoised: the search revisits settings)."""

    def __init__(self, photos: list[Photo]) -> None:
        self.photos = photos
        self.cache: dict[tuple, np.ndarray] = {}

    def __call__(self, setting: dict[str, float]) -> np.ndarray:
        key = tuple(sorted(setting.items()))
        if key not in self.cache:
            shipped = {name: getattr(parsing_skin, name) for name in setting}
            try:
                for name, value in setting.items():
                    setattr(parsing_skin, name, value)
                face_ids = parsing_iou.REGIONS["M_face"]
                self.cache[key] = np.array([self._score(p, face_ids) for p in self.photos])
            finally:
                for name, value in shipped.items():
                    setattr(parsing_skin, name, value)
        return self.cache[key]

    @staticmethod
    def _score(photo: Photo, face_ids: tuple[int, ...]) -> float:
        labels = parse_face(photo.rgb, photo.landmarks, parts=False)
        return parsing_iou.iou(np.isin(labels, face_ids), photo.face)


def balanced(values: np.ndarray, kinds: np.ndarray, selected: np.ndarray) -> float:
    """(mean over the selected made-up photos + mean over the selected bare ones) / 2."""
    return float(np.mean([values[selected & (kinds == k)].mean() for k in KINDS]))


def search(scorer: Scorer, kinds: np.ndarray, train: np.ndarray) -> dict[str, float]:
    """The constants by coordinate search over GRID on the train photos, from the shipped values."""
    current = {name: float(getattr(parsing_skin, name)) for name in GRID}
    best = balanced(scorer(current), kinds, train)
    for _ in range(PASSES):
        for name, values in GRID.items():
            for value in values:
                trial = {**current, name: value}
                score = balanced(scorer(trial), kinds, train)
                if score > best + 1e-4:
                    best, current = score, trial
    return current


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    faces = Path(__file__).resolve().parents[2] / "shared" / "faces"
    parser.add_argument("--faces", type=Path, default=faces)
    parser.add_argument("--kfold", type=int, default=3)
    args = parser.parse_args(argv)
    photos = load_photos(args.faces)
    if not photos:
        print(f"no photos with reference maps under {args.faces}", file=sys.stderr)
        return 1
    kinds = np.array([p.name.split("/")[0] for p in photos])
    fold_of = np.array(folds(photos, args.kfold))
    scorer = Scorer(photos)
    shipped = {name: float(getattr(parsing_skin, name)) for name in GRID}
    in_sample = scorer(shipped)
    held = np.zeros(len(photos))
    for fold in range(args.kfold):
        found = search(scorer, kinds, fold_of != fold)
        held[fold_of == fold] = scorer(found)[fold_of == fold]
        print(f"fold {fold}: {found}", flush=True)
    for photo, a, b in zip(photos, in_sample, held, strict=True):
        print(f"  {photo.name:<28} in sample {a:.3f}  held out {b:.3f}")
    for kind in KINDS:
        chosen = kinds == kind
        print(
            f"M_face {kind:<10} ({chosen.sum()} photos): in sample {in_sample[chosen].mean():.3f}"
            f"  held out {held[chosen].mean():.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
