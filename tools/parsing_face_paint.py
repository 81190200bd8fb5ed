"""M_face IoU of the built-in parser on dev photos with face paint added over one cheek.

Made-up faces the parser has never seen carry colour blocks, face paint and painted hearts. This
paints a soft ellipse (80 % opaque; 0.32 x 0.24 face widths) of one of six colours over one cheek
(side drawn per photo from a fixed seed) of every dev photo, parses the painted photo with the
landmarks of the unpainted one, and compares M_face with the official map of the unpainted photo
(paint does not change where the face is). Printed: per photo the unpainted IoU and one per colour,
then the means for made-up and bare photos.

    python tools/parsing_face_paint.py [FACES_DIR] [--method rules|net]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from parsing_iou import REGIONS, iou, photo_pairs  # tools/ is on sys.path when this file is run

from shmt_cli.face.detect import default_detector
from shmt_cli.face.parsing import load_label_map, parse_face

PAINTS = {
    "blue": (40, 90, 200),
    "purple": (140, 60, 170),
    "red": (200, 30, 40),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "green": (40, 160, 60),
}
OPACITY = 0.8


def paint_cheek(
    rgb: np.ndarray, landmarks: np.ndarray, side: int, colour: tuple[int, int, int]
) -> np.ndarray:
    """(H, W, 3) uint8: `rgb` with a soft ellipse of `colour` over the cheek (side 0: image left)."""
    width = float(np.linalg.norm(landmarks[16] - landmarks[0]))
    centre = np.round((landmarks[(2, 14)[side]] + landmarks[(31, 35)[side]]) / 2).astype(int)
    mask = np.zeros(rgb.shape[:2], np.float32)
    axes = (round(0.16 * width), round(0.12 * width))
    cv2.ellipse(mask, (int(centre[0]), int(centre[1])), axes, 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.02 * width)[..., None] * OPACITY
    return np.round(rgb * (1 - mask) + np.array(colour, np.float32) * mask).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "faces", nargs="?", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "faces"
    )
    parser.add_argument("--method", choices=("rules", "net"), default="rules")
    args = parser.parse_args()
    detector = default_detector()
    rng = np.random.default_rng(0)
    face_ids = REGIONS["M_face"]
    rows: dict[str, list[np.ndarray]] = {}
    print(f"{'photo':12s} {'plain':>6s} " + " ".join(f"{name:>6s}" for name in PAINTS))
    for image, seg in photo_pairs(args.faces):
        rgb = cv2.cvtColor(cv2.imread(str(image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        detected = detector.detect(rgb)
        if not detected:
            print(f"{image.stem:12s} no face found: skipped")
            continue
        landmarks = detected[0].landmarks
        truth = np.isin(load_label_map(seg, rgb.shape[:2]), face_ids)
        side = int(rng.integers(2))
        scores = [iou(np.isin(parse_face(rgb, landmarks, method=args.method), face_ids), truth)]
        for colour in PAINTS.values():
            painted = paint_cheek(rgb, landmarks, side, colour)
            scores.append(iou(np.isin(parse_face(painted, landmarks, method=args.method), face_ids), truth))
        rows.setdefault(image.parent.parent.name, []).append(np.array(scores))
        print(f"{image.stem:12s} " + " ".join(f"{value:6.3f}" for value in scores), flush=True)
    for kind, values in sorted(rows.items()):
        print(f"mean {kind:7s} " + " ".join(f"{value:6.3f}" for value in np.mean(values, axis=0)))


if __name__ == "__main__":
    main()
