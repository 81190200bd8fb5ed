"""Contact sheet of the face parser on the made-up dev photos: photo | rules alone | ours | official.

    python tools/parsing_sheet.py [--out docs/parsing_makeup_sheet.jpg] [--kind makeup] [--tile 160]

Each row holds two photos of ../shared/faces/<kind>/images, each as four tiles: the photo, the
rule-based parser alone (parse_face method "rules" without the part networks), the default
parser (method "rules" with the part networks of shmt_cli/face/parsing_parts.py) and the
official FaceParsing.PyTorch map, all blended over a grey copy of the photo with one colour per
CelebAMask-HQ class. The shipped networks were trained on these photos, so the sheet shows in-sample
results; tools/parsing_parts_train.py --kfold measures held-out ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from shmt_cli.atomic import write_bytes_atomic
from shmt_cli.face.detect import default_detector
from shmt_cli.face.parsing import load_label_map, parse_face

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"

# One colour (RGB) per CelebAMask-HQ id, in the order of shmt_cli/face/labels.py (background, skin, nose,
# eyeglasses, l/r eye, l/r brow, l/r ear, inner mouth, upper/lower lip, hair, hat, earring, necklace, neck,
# cloth): skin, nose, eyes, brows, lips and mouth kept well apart. Brighter than shmt_cli.previews' palette,
# because here it is blended over a grey copy of the photo.
PALETTE = np.array(
    [
        [0, 0, 0], [230, 180, 150], [255, 120, 0], [120, 120, 120], [0, 200, 255], [0, 90, 255],
        [140, 60, 20], [200, 120, 0], [0, 160, 80], [0, 220, 120], [255, 255, 0], [220, 0, 60],
        [150, 0, 150], [60, 40, 30], [90, 90, 200], [255, 0, 255], [200, 200, 0], [190, 140, 200],
        [40, 120, 160],
    ],
    np.uint8,
)  # fmt: skip


def overlay(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: label colours at 65 % over a grey copy of the photo; background stays grey."""
    grey = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB).astype(np.float32)
    colour = PALETTE[labels].astype(np.float32)
    alpha = np.where(labels[..., None] > 0, 0.65, 0.0)
    return np.round(grey * (1 - alpha) + colour * alpha).astype(np.uint8)


def tiles_for(image_path: Path, tile: int) -> list[np.ndarray] | None:
    """Photo, rules alone, default and official tiles (tile x tile RGB) of one dev photo; None without a
    face."""
    rgb = cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    faces = default_detector().detect(rgb)
    if not faces:
        return None
    landmarks = faces[0].landmarks
    seg = image_path.parent.parent / "seg" / f"{image_path.stem}.png"
    maps = [
        parse_face(rgb, landmarks, method="rules", parts=False),
        parse_face(rgb, landmarks),
        load_label_map(seg, rgb.shape[:2]),
    ]
    out = [rgb] + [overlay(rgb, m) for m in maps]
    return [cv2.resize(t, (tile, tile), interpolation=cv2.INTER_AREA) for t in out]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=FACES)
    parser.add_argument("--kind", default="makeup")
    parser.add_argument("--out", type=Path, default=Path("docs/parsing_makeup_sheet.jpg"))
    parser.add_argument("--tile", type=int, default=160)
    args = parser.parse_args(argv)
    photos = sorted((args.faces / args.kind / "images").iterdir())
    cells = []
    for path in photos:
        tiles = tiles_for(path, args.tile)
        if tiles is None:
            print(f"{path.name}: no face found", file=sys.stderr)
            continue
        cv2.putText(
            tiles[0], path.name, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA
        )
        cells.append(np.hstack(tiles))
    if len(cells) % 2:
        cells.append(np.zeros_like(cells[0]))
    grid = np.vstack([np.hstack(cells[i : i + 2]) for i in range(0, len(cells), 2)])
    caption = np.full((24, grid.shape[1], 3), 255, np.uint8)
    for index, text in enumerate(["photo", "rules alone", "ours (default)", "official"] * 2):
        cv2.putText(
            caption,
            text,
            (index * args.tile + 6, 17),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet = cv2.cvtColor(np.vstack([caption, grid]), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(args.out.suffix or ".jpg", sheet, [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise SystemExit(f"{args.out}: OpenCV cannot write this format")
    write_bytes_atomic(args.out, encoded.tobytes())
    print(f"wrote {args.out} ({len(photos)} photos)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
