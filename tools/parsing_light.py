"""M_face IoU of the built-in parser on dev photos relit: light from one side, a shadowed neck, dim, warm.

Photos people take are lit from one side, under the chin, dimly or warmly; the dev photos are mostly
evenly lit studio shots. This relights every dev photo's 256 px `shmt align` crop (where the pipeline
parses; --own-size: the photo itself) in five ways, parses it with the landmarks of the unlit crop and
compares M_face with the official map warped the same way (light does not move the face):

- left / right: brightness falling linearly from 100 % at the nose line (landmark 27) to 45 % a
  quarter of the face's width (landmarks 0-16) towards that side of the image, and 45 % beyond;
- neck: 50 % from a little above the chin downwards (the chin's shadow on the neck);
- dim: gamma 1.8 (an underexposed photo);
- warm: red x 1.15, blue x 0.75 (tungsten light).

Printed: per photo the unlit IoU and one per lighting, then the means for made-up and bare photos.

    python tools/parsing_light.py [FACES_DIR] [--method rules|net] [--own-size] [--parts]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from parsing_iou import REGIONS, aligned_view, detected_photos, iou  # tools/ is on sys.path when run

from shmt_cli.face.parsing import load_label_map, parse_face


def _face_width(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[16] - landmarks[0]))


def _scaled(rgb: np.ndarray, gain: np.ndarray) -> np.ndarray:
    return np.clip(np.round(rgb * gain), 0, 255).astype(np.uint8)


def side_light(rgb: np.ndarray, landmarks: np.ndarray, towards: float) -> np.ndarray:
    """(H, W, 3) uint8: the image darkened towards image-left (towards -1) or image-right (+1)."""
    offset = (np.arange(rgb.shape[1], dtype=np.float32) - landmarks[27, 0]) / (0.25 * _face_width(landmarks))
    gain = 1.0 - 0.55 * np.clip(towards * offset, 0.0, 1.0)
    return _scaled(rgb, gain[None, :, None])


def neck_shadow(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the image at half brightness from just above the chin down."""
    width = _face_width(landmarks)
    rows = np.arange(rgb.shape[0], dtype=np.float32)
    fall = np.clip((rows - landmarks[8, 1] + 0.05 * width) / (0.15 * width), 0.0, 1.0)
    return _scaled(rgb, (1.0 - 0.5 * fall)[:, None, None])


LIGHTS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "left": lambda rgb, lm: side_light(rgb, lm, -1.0),
    "right": lambda rgb, lm: side_light(rgb, lm, 1.0),
    "neck": neck_shadow,
    "dim": lambda rgb, lm: _scaled(255.0 * (rgb / 255.0) ** 1.8, np.ones(1, np.float32)),
    "warm": lambda rgb, lm: _scaled(rgb, np.array([1.15, 1.0, 0.75], np.float32)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "faces", nargs="?", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "faces"
    )
    parser.add_argument("--method", choices=("rules", "net"), default="rules")
    parser.add_argument("--own-size", action="store_true", help="relight the photos, not their align crops")
    parser.add_argument("--parts", action="store_true", help="with the part networks (the ears move M_face)")
    args = parser.parse_args()
    face_ids = REGIONS["M_face"]
    rows: dict[str, list[np.ndarray]] = {}
    print(f"{'photo':12s} {'unlit':>6s} " + " ".join(f"{name:>6s}" for name in LIGHTS))
    for name, rgb, landmarks, seg in detected_photos(args.faces):
        ref = load_label_map(seg, rgb.shape[:2])
        if not args.own_size:
            rgb, ref, landmarks = aligned_view(rgb, ref, landmarks)
        truth = np.isin(ref, face_ids)
        scores = []
        for image in [rgb] + [relight(rgb, landmarks) for relight in LIGHTS.values()]:
            labels = parse_face(image, landmarks, method=args.method, parts=args.parts)
            scores.append(iou(np.isin(labels, face_ids), truth))
        rows.setdefault(name.split("/")[0], []).append(np.array(scores))
        print(f"{Path(name).stem:12s} " + " ".join(f"{value:6.3f}" for value in scores), flush=True)
    if not rows:
        raise SystemExit(f"no photos with reference maps and a detected face under {args.faces}")
    for kind, values in sorted(rows.items()):
        print(f"mean {kind:7s} " + " ".join(f"{value:6.3f}" for value in np.mean(values, axis=0)))


if __name__ == "__main__":
    main()
