"""Quality table of the built-in face parser against the official parser's maps.

Usage: python tools/parsing_iou.py [FACES_DIR] [--quiet]

FACES_DIR defaults to ../shared/faces (folders */images with the photos and */seg with 512x512 label
PNGs of the official FaceParsing.PyTorch parser). Each photo is parsed as it is (unaligned, at its own
size); the reference map is resized to the photo's size with nearest and both are compared there.
Prints per-image IoUs, the per-class mean over the photos, and the mean of the class means, plus the
parse time per photo.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

from shmt_cli.face.detect import default_detector
from shmt_cli.face.parsing import load_label_map, parse_face

# Regions compared, as sets of CelebAMask ids. "mouth" is scored only where the reference has it.
REGIONS: dict[str, tuple[int, ...]] = {
    "M_face": (1, 2, 6, 7, 8, 9, 11, 12, 17),
    "lips": (11, 12),
    "eyes": (4, 5),
    "brows": (6, 7),
    "nose": (2,),
    "mouth": (10,),
}
OPTIONAL = {"mouth"}


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(pred, ref).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, ref).sum() / union)


def region_ious(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """IoU per region of REGIONS; optional regions are left out when the reference lacks them."""
    out = {}
    for name, ids in REGIONS.items():
        ref_mask = np.isin(ref, ids)
        if name in OPTIONAL and not ref_mask.any():
            continue
        out[name] = iou(np.isin(pred, ids), ref_mask)
    return out


def photo_pairs(faces_dir: Path) -> list[tuple[Path, Path]]:
    """(photo, reference label map) pairs under faces_dir/*/images and faces_dir/*/seg, sorted."""
    pairs = []
    for image in sorted(faces_dir.glob("*/images/*")):
        seg = image.parent.parent / "seg" / (image.stem + ".png")
        if seg.is_file():
            pairs.append((image, seg))
    return pairs


def evaluate(pairs: list[tuple[Path, Path]], verbose: bool = True) -> tuple[dict[str, list[float]], float]:
    """Per-region lists of IoUs over the photos and the mean parse time in seconds."""
    detector = default_detector()
    scores: dict[str, list[float]] = {name: [] for name in REGIONS}
    seconds = []
    for image_path, seg_path in pairs:
        rgb = cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        faces = detector.detect(rgb)
        if not faces:
            print(f"{image_path.name}: no face found", file=sys.stderr)
            continue
        start = time.perf_counter()
        pred = parse_face(rgb, faces[0].landmarks)
        seconds.append(time.perf_counter() - start)
        ref = load_label_map(seg_path, rgb.shape[:2])
        row = region_ious(pred, ref)
        for name, value in row.items():
            scores[name].append(value)
        if verbose:
            cells = "  ".join(f"{name} {value:.3f}" for name, value in row.items())
            print(f"{image_path.parent.parent.name}/{image_path.name:<16} {cells}")
    return scores, float(np.mean(seconds)) if seconds else float("nan")


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    faces_dir = Path(args[0]) if args else Path(__file__).resolve().parents[2] / "shared" / "faces"
    pairs = photo_pairs(faces_dir)
    if not pairs:
        print(f"no photos with reference maps under {faces_dir}", file=sys.stderr)
        return 1
    scores, seconds = evaluate(pairs, verbose="--quiet" not in argv)
    means = {name: float(np.mean(values)) for name, values in scores.items() if values}
    print()
    print(f"{'region':<8} {'mean IoU':>8} {'photos':>6}")
    for name, value in means.items():
        print(f"{name:<8} {value:8.3f} {len(scores[name]):6d}")
    print(f"{'mean':<8} {np.mean(list(means.values())):8.3f}")
    print(f"parse time {seconds * 1000:.1f} ms per photo (mean over {len(pairs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
