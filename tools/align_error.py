"""Mean landmark error of face crops against the canonical template, in pixels of the crop.

Two kinds of input, mixable:
  * a folder written by `shmt align` (crops + `<stem>.json` sidecars): each crop is re-detected;
  * photos, or folders of photos without sidecars: detect -> align -> crop -> re-detect, so the
    alignment can be measured before (or without) the CLI.

Columns: `fit` = the sidecar's crop landmarks vs the template (the similarity fit's residual, i.e.
how far this face's shape is from the average one); `redetect` = landmarks re-detected on the crop
vs the template (what a downstream model sees); `consistency` = re-detected vs predicted crop
landmarks (warp + detector noise). All are mean Euclidean distances over the 68 points.

    python tools/align_error.py ../shared/faces/*/images
    python tools/align_error.py out/aligned
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from shmt_cli.face.align import AlignedFace, crop_face, read_sidecar
from shmt_cli.face.detect import default_detector
from shmt_cli.face.template import TEMPLATE_SIZE, template_for_size
from shmt_cli.imageio import IMAGE_EXTENSIONS, read_image


def mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b, axis=1).mean())


def crop_for_sidecar(sidecar: Path) -> Path | None:
    for suffix in IMAGE_EXTENSIONS:
        candidate = sidecar.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def aligned_items(folder: Path) -> Iterator[tuple[str, AlignedFace, np.ndarray]]:
    """(name, sidecar, crop) for each `<stem>.json` + `<stem>.<image>` pair under a `shmt align` folder."""
    for sidecar in sorted(folder.rglob("*.json")):
        crop_path = crop_for_sidecar(sidecar)
        if crop_path is None:
            print(f"# {sidecar.name}: no crop image beside it", file=sys.stderr)
            continue
        try:
            aligned = read_sidecar(sidecar)
        except ValueError as exc:
            print(f"# skipped: {exc}", file=sys.stderr)
            continue
        crop = read_image(crop_path)
        if crop.shape[:2] != (aligned.crop_size, aligned.crop_size):
            print(f"# {crop_path.name}: size {crop.shape[:2]} != sidecar crop_size", file=sys.stderr)
            continue
        yield str(crop_path.relative_to(folder)), aligned, crop


def photo_items(photos: list[Path], size: int) -> Iterator[tuple[str, AlignedFace, np.ndarray]]:
    """(name, alignment, crop) for every face found in each photo."""
    detector = default_detector()
    for photo in photos:
        rgb = read_image(photo)
        faces = detector.detect(rgb)
        if not faces:
            print(f"# {photo.name}: no face detected", file=sys.stderr)
        for index, face in enumerate(faces):
            aligned = AlignedFace.from_landmarks(
                face.landmarks,
                source_path=str(photo),
                source_size=(rgb.shape[1], rgb.shape[0]),
                score=face.score,
                face_index=index,
                crop_size=size,
            )
            name = photo.name if len(faces) == 1 else f"{photo.name}#{index}"
            yield name, aligned, crop_face(rgb, aligned.matrix, size)


def collect(paths: list[Path], size: int) -> Iterator[tuple[str, AlignedFace, np.ndarray]]:
    photos: list[Path] = []
    for path in paths:
        if path.is_dir() and any(path.rglob("*.json")):
            yield from aligned_items(path)
        elif path.is_dir():
            photos += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            photos.append(path)
    yield from photo_items(photos, size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="aligned folders, photos or photo folders")
    parser.add_argument("--size", type=int, default=TEMPLATE_SIZE, help="crop size for photos (default 256)")
    args = parser.parse_args(argv)

    detector = default_detector()
    rows: list[tuple[float, float, float]] = []
    missed = 0
    print(f"{'crop':36s} {'fit':>7s} {'redetect':>9s} {'consistency':>12s}")
    for name, aligned, crop in collect(args.inputs, args.size):
        template = template_for_size(aligned.crop_size)
        fit = mean_distance(aligned.landmarks_crop, template)
        faces = detector.detect(crop)
        if not faces:
            missed += 1
            print(f"{name:36s} {fit:7.2f} {'no face':>9s}")
            continue
        redetected = faces[0].landmarks
        rows.append(
            (fit, mean_distance(redetected, template), mean_distance(redetected, aligned.landmarks_crop))
        )
        print(f"{name:36s} {rows[-1][0]:7.2f} {rows[-1][1]:9.2f} {rows[-1][2]:12.2f}")
    if not rows:
        print("no crops measured", file=sys.stderr)
        return 1
    fit, redetect, consistency = np.mean(rows, axis=0)
    print(f"{'mean over ' + str(len(rows)) + ' crops':36s} {fit:7.2f} {redetect:9.2f} {consistency:12.2f}")
    if missed:
        print(f"# {missed} crop(s) where the face was not re-detected")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
