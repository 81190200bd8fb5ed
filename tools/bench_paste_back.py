"""Time the per-pair output work of `transfer` on a 12 MP photo: paste-back and encoding.

A 4000x3000 photo is built from scikit-image's astronaut (face enlarged to ~600 px, as in a phone
portrait); its face is detected once, a changed 256² crop is pasted back, and the result is encoded
in each output format. Prints the median of REPEATS runs per step (noisy on a shared machine).
Run: `python tools/bench_paste_back.py`.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shmt_cli.face.align import AlignedFace, crop_face, paste_back
from shmt_cli.face.search import find_faces
from shmt_cli.imageio import PhotoInfo, encode_photo

REPEATS = 5


def timed(step: str, run, repeats: int = REPEATS) -> object:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = run()
        times.append(time.perf_counter() - start)
    print(f"{step:38s} {statistics.median(times) * 1000:8.1f} ms")
    return value


def main() -> None:
    from skimage import data

    face = cv2.resize(data.astronaut(), (1200, 1200), interpolation=cv2.INTER_CUBIC)
    photo = np.full((3000, 4000, 3), 90, np.uint8)
    photo[900:2100, 1400:2600] = face
    found = find_faces(photo)
    landmarks = found.faces[0].landmarks
    aligned = AlignedFace.from_landmarks(landmarks, source_path="bench", source_size=(4000, 3000), score=1.0)
    crop = crop_face(photo, aligned.matrix, 256)
    edited = np.clip(crop.astype(int) + 25, 0, 255).astype(np.uint8)
    mask = np.zeros((256, 256), np.uint8)
    mask[60:220, 50:206] = 1
    print(f"photo 4000x3000 (12 MP), face box {found.faces[0].box}")
    pasted = timed(
        "paste_back (face box only)",
        lambda: paste_back(photo, edited, aligned.matrix, crop_mask=mask, original_crop=crop),
    )
    assert isinstance(pasted, np.ndarray)
    changed = np.argwhere((pasted != photo).any(axis=2))
    (top, left), (bottom, right) = changed.min(axis=0), changed.max(axis=0)
    print(f"changed pixels only inside x {left}..{right}, y {top}..{bottom} (of 4000x3000)")
    info = PhotoInfo(format="JPEG")
    for fmt in ("jpg", "webp", "png"):
        blob = timed(f"encode {fmt}", lambda fmt=fmt: encode_photo(pasted, fmt, info), repeats=3)
        assert isinstance(blob, bytes)
        print(f"{'':38s} {len(blob) / 1e6:8.2f} MB")


if __name__ == "__main__":
    main()
