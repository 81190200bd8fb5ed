"""Write the README quick-start photos: a source and a made-up reference, both reproducible.

The source is the public-domain astronaut photo (Eileen Collins, NASA) that scikit-image ships.
The reference is the same photo mirrored, with makeup painted on by this script from the face's
landmarks: deep red lips, a plum eye shadow fading up to the brows, and rose blush. Same inputs,
same output, on any machine.

    python tools/make_quickstart_photos.py quickstart/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from shmt_cli.face.detect import default_detector
from shmt_cli.imageio import write_image_atomic


def _soft_polygon(shape: tuple[int, int], points: np.ndarray, blur: float) -> np.ndarray:
    mask = np.zeros(shape, np.float32)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1.0)
    return cv2.GaussianBlur(mask, (0, 0), blur)


def paint_makeup(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Lips, eye shadow and blush painted over an (H, W, 3) uint8 face with 68 landmarks."""
    shape = rgb.shape[:2]
    image = rgb.astype(np.float32)
    eye_distance = float(np.linalg.norm(landmarks[36:42].mean(0) - landmarks[42:48].mean(0)))

    def tint(mask: np.ndarray, colour: tuple[int, int, int], amount: float) -> None:
        nonlocal image
        weight = (amount * mask)[..., None]
        image = (1 - weight) * image + weight * np.array(colour, np.float32)

    outer, inner = landmarks[48:60], landmarks[60:68]
    lips = _soft_polygon(shape, outer, 1.5) - _soft_polygon(shape, inner, 1.0)
    tint(np.clip(lips, 0, 1), (150, 10, 40), 0.75)
    for eye, brow in ((landmarks[36:42], landmarks[17:22]), (landmarks[42:48], landmarks[22:27])):
        above = brow[[4, 3, 1, 0]] * 0.45 + eye[[3, 2, 1, 0]] * 0.55  # part-way up to the brow
        lid = np.vstack([eye[[0, 1, 2, 3]], above])
        shadow = _soft_polygon(shape, lid, 0.08 * eye_distance) - _soft_polygon(shape, eye, 1.0)
        tint(np.clip(shadow, 0, 1), (95, 40, 110), 0.6)
    for cheek in (landmarks[[1, 2, 3, 31, 39]].mean(0), landmarks[[15, 14, 13, 35, 42]].mean(0)):
        blush = np.zeros(shape, np.float32)
        cv2.circle(blush, tuple(int(v) for v in np.round(cheek)), int(0.35 * eye_distance), 1.0, -1)
        tint(cv2.GaussianBlur(blush, (0, 0), 0.25 * eye_distance), (220, 90, 110), 0.35)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    from skimage import data

    source = data.astronaut()
    mirrored = np.ascontiguousarray(source[:, ::-1])
    landmarks = default_detector().detect(mirrored)[0].landmarks
    write_image_atomic(args.folder / "source.png", source)
    write_image_atomic(args.folder / "reference.png", paint_makeup(mirrored, landmarks))
    print(f"wrote {args.folder / 'source.png'} and {args.folder / 'reference.png'}")


if __name__ == "__main__":
    main()
