"""Benchmark: faces per second of `shmt align`'s per-photo work on the dev photos (decode, detect,
landmarks, align, crop, encode), single process. Prints numbers; not a test.

    python tools/bench_align.py [PHOTO_DIR ...] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from shmt_cli.face.detect import default_detector
from shmt_cli.imageio import encode_image, read_image
from shmt_cli.inputs import collect_inputs
from shmt_cli.pipelines.align import AlignSettings, align_photo

SHARED_FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default = [str(SHARED_FACES / kind / "images") for kind in ("non_makeup", "makeup")]
    parser.add_argument("folders", nargs="*", default=default)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    files = [f.path for f in collect_inputs(args.folders)]
    detector = default_detector()
    settings = AlignSettings()
    times = []
    faces = 0
    for _ in range(args.repeat):
        start = time.perf_counter()
        faces = 0
        for path in files:
            rgb = read_image(path)
            for crop, _record in align_photo(rgb, str(path), settings, detector):
                encode_image(crop)
                faces += 1
        times.append(time.perf_counter() - start)
    best = min(times)
    print(f"photos: {len(files)}  faces: {faces}  best of {args.repeat}: {best:.3f} s")
    print(f"align throughput: {faces / best:.1f} faces/s ({1000 * best / max(faces, 1):.1f} ms per face)")


if __name__ == "__main__":
    main()
