"""Speed of the classic engine: aligned 256x256 pairs per second, the reference prepared once.

Faces are the dev photos of ../shared/faces (or the scikit-image astronaut and mirrored copies when
that folder is absent), aligned to 256x256 MT-framed crops and parsed with the built-in parser before
timing. Each timed pair includes the per-source preparation (Lab, region masks); the per-reference
preparation is done once per reference, as the batch runner does.

    python tools/bench_classic.py [--pairs 200] [--level h2] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from shmt_cli.engines.classic import ClassicParams, prepare_reference, prepare_source, transfer_prepared
from shmt_cli.face.align import AlignedFace, crop_face
from shmt_cli.face.detect import default_detector
from shmt_cli.face.parsing import parse_face

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"
CROP = 256


def aligned(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(crop, labels, landmarks) of the photo's best face, or None when no face is found."""
    faces = default_detector().detect(rgb)
    if not faces:
        return None
    best = faces[0]
    face = AlignedFace.from_landmarks(
        best.landmarks, source_path="-", source_size=rgb.shape[1::-1], score=best.score, crop_size=CROP
    )
    crop = crop_face(rgb, face.matrix, CROP)
    return crop, parse_face(crop, face.landmarks_crop), face.landmarks_crop


def load_faces(kind: str, limit: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if FACES.is_dir():
        paths = sorted((FACES / kind / "images").iterdir())[:limit]
        photos = [cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for path in paths]
    else:
        from skimage.data import astronaut

        photos = [astronaut(), np.ascontiguousarray(astronaut()[:, ::-1])]
    return [face for face in map(aligned, photos) if face is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200, help="timed pairs per level")
    parser.add_argument("--levels", default="h0,h2,h4", help="comma-separated texture levels")
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    sources = load_faces("non_makeup", 8)
    references = [prepare_reference(*face) for face in load_faces("makeup", 4)]
    print(f"{len(sources)} sources x {len(references)} references, {CROP}x{CROP}, threads={args.threads}")

    for level in args.levels.split(","):
        params = ClassicParams(level=level)
        transfer_prepared(prepare_source(*sources[0]), references[0], params)  # warm-up
        start, start_cpu = time.perf_counter(), time.process_time()
        for index in range(args.pairs):
            source = prepare_source(*sources[index % len(sources)])
            transfer_prepared(source, references[(index // len(sources)) % len(references)], params)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        rate, cost, cpu_cost = args.pairs / elapsed, 1000 * elapsed / args.pairs, 1000 * cpu / args.pairs
        # CPU time per pair says what the engine costs when other processes share the cores.
        print(f"level {level}: {rate:6.1f} pairs/s  ({cost:5.1f} ms/pair wall, {cpu_cost:5.1f} ms CPU)")


if __name__ == "__main__":
    main()
