"""Held-out M_face of the rule-based skin region: its colour constants refitted per fold.

The rules' constants were fitted on all 36 dev photos, so their dev-set M_face is in sample. This refits
the seven constants of shmt_cli/face/parsing_skin.py that decide the skin region's extent (SKIN_MAHA,
HEAD_MAHA, NECK_MAHA, CORE_INSET, ALLOWED_GROW, SIDE_SOFT, BOUNDARY_BAND) per fold of the k-fold of
tools/parsing_train.py: a coordinate search (two passes over GRID, starting from each row's middle value)
that maximises (made-up mean M_face + bare mean M_face) / 2 of `parse_face(method="rules", parts=False)`
on the other folds' photos, then scores the held-out fold with the values found. The gap between the
printed in-sample and held-out means is what fitting these constants on the same photos adds. The
landmark polygons (HEAD_PRIOR, NECK_PRIOR, ...) are not refitted. --aligned N scores the photos' N px
`shmt align` crops (where the pipeline parses) instead of the photos; --fit-all also runs the search on
all photos and prints the values found (the in-sample fit); --write (with --fit-all) writes them, with
the in-sample and held-out means, into the "skin" section of shmt_cli/face/parsing_rules.json, where
parsing_skin.py reads them. --repeats R also deals the photos into folds R-1 other ways (each kind's
photos in a seeded random order, round-robin) and prints the held-out mean of every split and their
mean: with 36 photos one split's figure depends on which photos share a fold.

    python tools/parsing_rules_kfold.py [--faces DIR] [--kfold 3] [--aligned 256] [--repeats R]
        [--fit-all [--write]]

Data: ../shared/faces (CC BY-NC-SA 4.0, see its README) with the official parser's maps.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shmt_cli.atomic import atomic_path
from shmt_cli.face import parsing_skin
from shmt_cli.face.parsing import load_label_map, parse_face
from shmt_cli.face.parsing_params import ParsingParams, source_path, write_params

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parsing_iou
from parsing_train import folds

GRID: dict[str, tuple[float, ...]] = {
    "SKIN_MAHA": (15.0, 20.0, 25.0, 32.0, 40.0),
    "HEAD_MAHA": (7.0, 9.5, 12.0, 15.0, 19.0),
    "NECK_MAHA": (64.0, 90.0, 128.0, 180.0, 256.0),
    "CORE_INSET": (0.06, 0.09, 0.12, 0.16, 0.2),
    "ALLOWED_GROW": (0.08, 0.11, 0.15, 0.2, 0.25),
    "SIDE_SOFT": (0.03, 0.05, 0.08, 0.15, 0.3),
    "BOUNDARY_BAND": (0.03, 0.045, 0.06, 0.09, 0.12),
}
PASSES = 2
KINDS = ("makeup", "non_makeup")


@dataclass
class Photo:
    name: str  # "<folder>/<file>", the folder being makeup or non_makeup
    rgb: np.ndarray  # (H, W, 3) uint8
    landmarks: np.ndarray  # (68, 2)
    face: np.ndarray  # (H, W) bool official M_face


def load_photos(faces_dir: Path, aligned: int | None = None) -> list[Photo]:
    """The dev photos with a detected face; aligned: their `shmt align` crops of that size instead."""
    photos = []
    for name, rgb, landmarks, seg in parsing_iou.detected_photos(faces_dir):
        ref = load_label_map(seg, rgb.shape[:2])
        if aligned is not None:
            rgb, ref, landmarks = parsing_iou.aligned_view(rgb, ref, landmarks, aligned)
        photos.append(Photo(name, rgb, landmarks, np.isin(ref, parsing_iou.REGIONS["M_face"])))
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


def search_start() -> dict[str, float]:
    """The search's starting point: the middle value of each constant's GRID row. Not the shipped
    values: those were fitted on all photos, and a fold's search started there would carry what the
    held-out photos taught them."""
    return {name: float(values[len(values) // 2]) for name, values in GRID.items()}


def search(scorer: Scorer, kinds: np.ndarray, train: np.ndarray) -> dict[str, float]:
    """The constants by coordinate search over GRID on the train photos, from search_start()."""
    current = search_start()
    best = balanced(scorer(current), kinds, train)
    for _ in range(PASSES):
        for name, values in GRID.items():
            for value in values:
                trial = {**current, name: value}
                score = balanced(scorer(trial), kinds, train)
                if score > best + 1e-4:
                    best, current = score, trial
    return current


def shuffled_folds(kinds: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per photo: each kind's photos in a seeded random order, dealt round-robin (another
    stratified split than tools/parsing_train.py's, for a less split-dependent held-out estimate)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(kinds), int)
    for kind in KINDS:
        members = rng.permutation(np.flatnonzero(kinds == kind))
        out[members] = np.arange(len(members)) % k
    return out


def write_skin_section(values: dict[str, float], figures: dict[str, object]) -> None:
    """Replace the values and figures of the "skin" section of the package's parameters file (its
    statements "fitted" and "written_by" are kept)."""
    target = source_path()
    document = ParsingParams.from_path(target).document
    section = {k: v for k, v in document.get("skin", {}).items() if k in ("fitted", "written_by")}
    section.update(figures)
    section["values"] = {name: float(value) for name, value in values.items()}
    document["skin"] = section
    write_params(document, target)
    print(f"written to {target}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    faces = Path(__file__).resolve().parents[2] / "shared" / "faces"
    parser.add_argument("--faces", type=Path, default=faces)
    parser.add_argument("--kfold", type=int, default=3)
    parser.add_argument(
        "--aligned", type=int, default=None, metavar="N", help="score the photos' N px shmt align crops"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="also deal the photos into folds R-1 more ways (seeded)"
    )
    parser.add_argument("--fit-all", action="store_true", help="also fit on all photos and print it")
    parser.add_argument("--write", action="store_true", help="with --fit-all: write the skin section")
    parser.add_argument(
        "--fold-params",
        type=Path,
        help="write the standard split's per-fold values and held-out photos to this JSON (for tests)",
    )
    args = parser.parse_args(argv)
    if args.write and not args.fit_all:
        parser.error("--write needs --fit-all (it writes the values fitted on all photos)")
    photos = load_photos(args.faces, args.aligned)
    if not photos:
        print(f"no photos with reference maps under {args.faces}", file=sys.stderr)
        return 1
    kinds = np.array([p.name.split("/")[0] for p in photos])
    scorer = Scorer(photos)
    shipped = {name: float(getattr(parsing_skin, name)) for name in GRID}
    in_sample = scorer(shipped)
    repeats = []
    fold_values: list[dict[str, object]] = []
    for repeat in range(args.repeats):
        fold_of = (
            np.array(folds(photos, args.kfold)) if repeat == 0 else shuffled_folds(kinds, args.kfold, repeat)
        )
        held_here = np.zeros(len(photos))
        for fold in range(args.kfold):
            found = search(scorer, kinds, fold_of != fold)
            held_here[fold_of == fold] = scorer(found)[fold_of == fold]
            print(f"split {repeat} fold {fold}: {found}", flush=True)
            if repeat == 0:
                held_names = [p.name for p, f in zip(photos, fold_of, strict=True) if f == fold]
                fold_values.append({"values": found, "held_out": held_names})
        repeats.append(held_here)
        means = "  ".join(f"{k} {held_here[kinds == k].mean():.3f}" for k in KINDS)
        print(f"split {repeat} held out: {means}", flush=True)
    held = repeats[0]
    if args.fold_params is not None:
        document = {
            "fitted": f"tools/parsing_rules_kfold.py --kfold {args.kfold}"
            + (f" --aligned {args.aligned}" if args.aligned else "")
            + ": the skin constants found per fold of tools/parsing_train.py's split on the other folds'"
            " photos (so the fold's held_out photos did not fit them)",
            "folds": fold_values,
        }
        with atomic_path(args.fold_params) as tmp:
            tmp.write_text(json.dumps(document, indent=2) + "\n")
        print(f"per-fold values written to {args.fold_params}")
    if args.fit_all:
        found = search(scorer, kinds, np.ones(len(photos), bool))
        fitted = scorer(found)
        means = "  ".join(f"{k} {fitted[kinds == k].mean():.3f}" for k in KINDS)
        print(f"all photos: {found}  ({means})", flush=True)
        if args.write:
            figures = {
                "in_sample_m_face": {k: round(float(fitted[kinds == k].mean()), 3) for k in KINDS},
                "held_out_m_face": {k: round(float(held[kinds == k].mean()), 3) for k in KINDS},
                "held_out_splits": len(repeats),
                "held_out_m_face_mean_of_splits": {
                    k: round(float(np.mean([r[kinds == k].mean() for r in repeats])), 3) for k in KINDS
                },
                "scored_on": f"{args.aligned} px align crops" if args.aligned else "own size",
            }
            write_skin_section(found, figures)
    for photo, a, b in zip(photos, in_sample, held, strict=True):
        print(f"  {photo.name:<28} in sample {a:.3f}  held out {b:.3f}")
    for kind in KINDS:
        chosen = kinds == kind
        print(
            f"M_face {kind:<10} ({chosen.sum()} photos): in sample {in_sample[chosen].mean():.3f}"
            f"  held out {held[chosen].mean():.3f}"
            + (
                f" (mean of {len(repeats)} splits {np.mean([r[chosen].mean() for r in repeats]):.3f})"
                if len(repeats) > 1
                else ""
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
