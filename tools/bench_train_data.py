"""Benchmark: cost of the training data path per sample, single process, one torch/OpenCV thread (as in a
DataLoader worker). Prepares the photos into a temporary RUN/ first (reported separately), then times
loading a parts file, drawing + augmenting (spec §1.5) and building the tensors. Prints numbers; not a test.

    python tools/bench_train_data.py [PHOTO_DIR ...] [--samples 40]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from shmt_cli.decompose import load_parts
from shmt_cli.training.dataset import TrainingDataset, item_rng
from shmt_cli.training.sample import augment_sample, draw_sample_params, sample_tensors

SHARED_FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folders", nargs="*", default=[str(SHARED_FACES / "non_makeup" / "images")])
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as run:
        start = time.perf_counter()
        data = TrainingDataset.from_folders(args.folders, Path(run))
        prepare = time.perf_counter() - start
        start = time.perf_counter()
        TrainingDataset.from_folders(args.folders, Path(run))
        cached = time.perf_counter() - start
        failed = len(data.failures())
        print(
            f"prepare {len(data)} faces ({failed} failed): {prepare:.1f} s first pass, {cached:.2f} s cached"
        )
        stages = {"load parts": [], "draw + augment": [], "tensors": []}
        for n in range(args.samples):
            index = n % len(data)
            t0 = time.perf_counter()
            parts = load_parts(data.faces[index].parts_path)
            t1 = time.perf_counter()
            augmented = augment_sample(
                parts.image, parts.labels, parts.render, draw_sample_params(item_rng(0, 0, n))
            )
            t2 = time.perf_counter()
            sample_tensors(augmented)
            t3 = time.perf_counter()
            for name, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                stages[name].append(seconds)
        total = sum(np.median(v) for v in stages.values())
        for name, values in stages.items():
            print(
                f"{name:16s} median {1000 * np.median(values):6.1f} ms   max {1000 * np.max(values):6.1f} ms"
            )
        print(f"{'per sample':16s} median {1000 * total:6.1f} ms  ({1 / total:.1f} samples/s per worker)")


if __name__ == "__main__":
    main()
