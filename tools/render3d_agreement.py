"""Agreement of the built-in 3D face render with the 3DDFA_V2 renders SHMT ships.

For every photo in <faces>/{non_makeup,makeup}/images, detects dlib landmarks, renders the face with
`shmt_cli.face.render3d.render_face` and compares it with <faces>/*/3d/<stem>_3d.jpg:
silhouette IoU of non-black pixels (> 10, to ignore JPEG noise) and the Pearson correlation of the
gray values inside the intersection of both silhouettes. Prints one line per photo and the means.

    python tools/render3d_agreement.py [--faces ../shared/faces] [--save-dir /tmp/render3d]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from shmt_cli.face.detect import default_detector
from shmt_cli.face.render3d import render_face

REPO = Path(__file__).resolve().parents[1]
BLACK_THRESHOLD = 10


def silhouette_iou(ours: np.ndarray, reference: np.ndarray, threshold: int = BLACK_THRESHOLD) -> float:
    """IoU of the non-black pixels of two (H, W) uint8 gray images."""
    a, b = ours > threshold, reference > threshold
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def gray_correlation(ours: np.ndarray, reference: np.ndarray, threshold: int = BLACK_THRESHOLD) -> float:
    """Pearson correlation of two (H, W) uint8 gray images over their common non-black pixels."""
    both = (ours > threshold) & (reference > threshold)
    if both.sum() < 2:
        return 0.0
    return float(np.corrcoef(ours[both].astype(np.float64), reference[both].astype(np.float64))[0, 1])


def photo_pairs(faces: Path) -> list[tuple[Path, Path]]:
    """(photo, reference render) pairs under a faces folder laid out like ../shared/faces."""
    pairs = []
    for images in sorted(faces.glob("*/images")):
        for photo in sorted(images.iterdir()):
            render = images.parent / "3d" / f"{photo.stem}_3d.jpg"
            if render.is_file():
                pairs.append((photo, render))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faces", type=Path, default=REPO.parent / "shared" / "faces")
    parser.add_argument(
        "--save-dir", type=Path, default=None, help="write photo | reference | ours strips here"
    )
    args = parser.parse_args()

    detector = default_detector()
    rows = []
    print(f"{'photo':<28} {'IoU':>6} {'corr':>6} {'ms':>6}")
    for photo, render in photo_pairs(args.faces):
        bgr = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        reference = cv2.imread(str(render), cv2.IMREAD_GRAYSCALE)
        faces = detector.detect(np.ascontiguousarray(bgr[..., ::-1]))
        if not faces:
            print(f"{photo.parent.parent.name + '/' + photo.stem:<28} no face")
            continue
        start = time.perf_counter()
        ours = render_face(faces[0].landmarks, reference.shape[:2])[..., 0]
        elapsed = (time.perf_counter() - start) * 1000.0
        iou, corr = silhouette_iou(ours, reference), gray_correlation(ours, reference)
        rows.append((iou, corr, elapsed))
        name = f"{photo.parent.parent.name}/{photo.stem}"
        print(f"{name:<28} {iou:6.3f} {corr:6.3f} {elapsed:6.1f}")
        if args.save_dir is not None:
            args.save_dir.mkdir(parents=True, exist_ok=True)
            strip = np.hstack(
                [bgr, cv2.cvtColor(reference, cv2.COLOR_GRAY2BGR), cv2.cvtColor(ours, cv2.COLOR_GRAY2BGR)]
            )
            cv2.imwrite(str(args.save_dir / f"{photo.stem}.png"), strip)
    if rows:
        table = np.array(rows)
        print(f"{'mean over ' + str(len(rows)):<28} {table[:, 0].mean():6.3f} {table[:, 1].mean():6.3f} "
              f"{table[:, 2].mean():6.1f}")  # fmt: skip
        print(f"{'min':<28} {table[:, 0].min():6.3f} {table[:, 1].min():6.3f}")


if __name__ == "__main__":
    main()
