"""Contact sheet of the classic engine at 100 %: forehead/brow, lips, nose and jaw crops of dev pairs.

Pairs come from ../shared/faces as tools/classic_quality.py makes them (256x256, dlib landmarks,
built-in parser). Each source is paired with one reference (source k with reference 3k mod 21, so the
sheet spans many references). Per pair and region one row of crops, never rescaled: the source, the
reference warped onto the source, then the classic result at each level. Written as a JPEG (quality
88) so it can be committed (a few hundred KB).

    python tools/classic_sheet.py [--out docs/classic_levels_sheet.jpg] [--pairs 10] [--levels h0,...,h4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from classic_quality import load_faces  # tools/ is on sys.path when this file is run

from shmt_cli.atomic import write_bytes_atomic
from shmt_cli.engines.classic import ClassicParams, prepare_reference, prepare_source, transfer_prepared
from shmt_cli.metrics.weight_free import warp_reference

TILE_W, TILE_H = 112, 72
LABEL_W = 92
# Region name -> landmark indices whose centre the crop is centred on, and a vertical shift of that
# centre in face widths (the forehead crop sits above the brows, the jaw crop straddles the jaw line).
CROPS: dict[str, tuple[tuple[int, ...], float]] = {
    "brow": (tuple(range(17, 27)), -0.12),
    "lips": (tuple(range(48, 60)), 0.0),
    "nose": (tuple(range(30, 36)), -0.03),
    "jaw": ((6, 7, 8, 9, 10), 0.06),
}


def crop(image: np.ndarray, landmarks: np.ndarray, region: str) -> np.ndarray:
    """(TILE_H, TILE_W, 3) window of `image` centred on the region (edge-padded near the border)."""
    indices, shift = CROPS[region]
    width = float(np.linalg.norm(landmarks[16] - landmarks[0]))
    cx, cy = landmarks[list(indices)].mean(axis=0)
    cy += shift * width
    left, top = round(cx - TILE_W / 2), round(cy - TILE_H / 2)
    pad = max(TILE_W, TILE_H)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return padded[top + pad : top + pad + TILE_H, left + pad : left + pad + TILE_W]


def caption(text: str, width: int, height: int) -> np.ndarray:
    tile = np.full((height, width, 3), 255, dtype=np.uint8)
    for line, part in enumerate(text.split("\n")):
        cv2.putText(tile, part, (4, 14 + 14 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def build_sheet(pairs: int, levels: list[str]) -> np.ndarray:
    sources = load_faces("non_makeup", "builtin")
    references = load_faces("makeup", "builtin")
    rows = [
        np.hstack(
            [caption("", LABEL_W, 20)]
            + [caption(name, TILE_W, 20) for name in ("source", "reference", *levels)]
        )
    ]
    for index in range(min(pairs, len(sources))):
        src_stem, source = sources[index]
        ref_stem, reference = references[(3 * index) % len(references)]
        warped, _ = warp_reference(*reference, source[2])
        prepared_source, prepared_reference = prepare_source(*source), prepare_reference(*reference)
        results = [
            transfer_prepared(prepared_source, prepared_reference, ClassicParams(level=level))
            for level in levels
        ]
        for region in CROPS:
            label = caption(f"{src_stem}\n{ref_stem}\n{region}", LABEL_W, TILE_H)
            tiles = [crop(image, source[2], region) for image in (source[0], warped, *results)]
            rows.append(np.hstack([label, *tiles]))
        rows.append(np.full((3, rows[0].shape[1], 3), 255, dtype=np.uint8))
    return np.vstack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/classic_levels_sheet.jpg"))
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--levels", default="h0,h1,h2,h3,h4")
    args = parser.parse_args()
    sheet = build_sheet(args.pairs, args.levels.split(","))
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise SystemExit("JPEG encoding failed")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out, encoded.tobytes())
    print(f"{args.out}: {sheet.shape[1]}x{sheet.shape[0]}, {len(encoded) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
