"""Derive the canonical 68-point template (TEMPLATE_256 in shmt_cli/face/template.py).

Reads the dev photos (../shared/faces/*/images by default), detects 68 landmarks on each photo at
its own resolution, maps them to the photo's plain 256x256 resize (SHMT's test-time geometry),
rotates each face about its landmark centroid so the line between the eye centres is level, and
averages the positions. The mean is then made left-right symmetric about the crop's vertical
centre line (averaged with its mirror image): the dev photos sit ~4.5 px left of centre on average
and that bias is not worth baking into every crop; the shape itself is symmetric to < 1 px.
Prints the array as Python source plus per-photo statistics.

    python tools/derive_template.py [PHOTO_OR_FOLDER ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from shmt_cli.face.align import similarity_transform, transform_points
from shmt_cli.face.detect import default_detector
from shmt_cli.face.template import MIRROR_INDEX
from shmt_cli.imageio import IMAGE_EXTENSIONS, read_image

SIZE = 256
DEFAULT_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "faces"
LEFT_EYE = slice(36, 42)  # the image's left eye (the subject's right)
RIGHT_EYE = slice(42, 48)


def photo_paths(args: list[str]) -> list[Path]:
    """Image files named on the command line, folders searched recursively under any `images` folder."""
    roots = [Path(a) for a in args] or [DEFAULT_PHOTOS]
    paths: list[Path] = []
    for root in roots:
        if root.is_dir():
            found = root.rglob("*")
            paths += sorted(
                p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and p.parent.name == "images"
            )
        else:
            paths.append(root)
    return paths


def to_resized_frame(landmarks: np.ndarray, width: int, height: int, size: int = SIZE) -> np.ndarray:
    """Landmarks (68, 2) in a photo -> the same points in its size x size resize (pixel centres)."""
    scale = np.array([size / width, size / height])
    return (landmarks + 0.5) * scale - 0.5


def eye_angle(landmarks: np.ndarray) -> float:
    """Angle (radians) of the line from the image-left eye centre to the image-right eye centre."""
    dx, dy = landmarks[RIGHT_EYE].mean(axis=0) - landmarks[LEFT_EYE].mean(axis=0)
    return float(np.arctan2(dy, dx))


def level_eyes(landmarks: np.ndarray) -> np.ndarray:
    """Rotate landmarks about their centroid so the eye line is horizontal."""
    angle = -eye_angle(landmarks)
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    centroid = landmarks.mean(axis=0)
    return (landmarks - centroid) @ rotation.T + centroid


def symmetrize(points: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Average (68, 2) points with their mirror image about the vertical centre line of the crop."""
    mirrored = points[MIRROR_INDEX].copy()
    mirrored[:, 0] = (size - 1) - mirrored[:, 0]
    return (points + mirrored) / 2


def inter_ocular(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[RIGHT_EYE].mean(axis=0) - landmarks[LEFT_EYE].mean(axis=0)))


def rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).sum(axis=1).mean()))


def format_template(template: np.ndarray) -> str:
    rows = [f"        [{x:.2f}, {y:.2f}]," for x, y in template]
    return "TEMPLATE_256 = np.array(\n    [\n" + "\n".join(rows) + "\n    ],\n    dtype=np.float64,\n)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("photos", nargs="*", help="photos or folders (default: ../shared/faces)")
    args = parser.parse_args(argv)

    detector = default_detector()
    names: list[str] = []
    raw: list[np.ndarray] = []
    for path in photo_paths(args.photos):
        rgb = read_image(path)
        faces = detector.detect(rgb)
        if not faces:
            print(f"# no face: {path}", file=sys.stderr)
            continue
        height, width = rgb.shape[:2]
        names.append(f"{path.parent.parent.name}/{path.name}")
        raw.append(to_resized_frame(faces[0].landmarks, width, height))
    if not raw:
        print("no faces found", file=sys.stderr)
        return 1

    levelled = np.stack([level_eyes(points) for points in raw])
    mean = levelled.mean(axis=0)
    template = symmetrize(mean)

    print(format_template(template))
    print()
    print(f"# {len(raw)} faces; per-photo distances to the template in px of the 256x256 resize")
    print(f"# {'photo':32s} {'tilt_deg':>8s} {'iod':>6s} {'rms_levelled':>12s} {'rms_similarity':>14s}")
    rms_levelled, rms_similarity, iods, tilts = [], [], [], []
    for name, points, flat in zip(names, raw, levelled, strict=True):
        fitted = transform_points(points, similarity_transform(points, template))
        rms_levelled.append(rms(flat, template))
        rms_similarity.append(rms(fitted, template))
        iods.append(inter_ocular(points))
        tilts.append(np.degrees(eye_angle(points)))
        row = f"{tilts[-1]:8.2f} {iods[-1]:6.1f} {rms_levelled[-1]:12.2f} {rms_similarity[-1]:14.2f}"
        print(f"# {name:32s} {row}")
    print(
        f"# mean rms_levelled {np.mean(rms_levelled):.2f} px, rms_similarity {np.mean(rms_similarity):.2f} px"
    )
    print(f"# inter-ocular distance: mean {np.mean(iods):.1f} px, sd {np.std(iods):.1f}")
    print(f"# eye tilt: mean {np.mean(tilts):.2f} deg, sd {np.std(tilts):.2f}")
    print(
        f"# symmetrization moved points by {rms(mean, template):.2f} px rms "
        f"(horizontal shift {template[:, 0].mean() - mean[:, 0].mean():+.2f} px)"
    )
    left, top = template.min(axis=0)
    right, bottom = template.max(axis=0)
    eyes = (template[LEFT_EYE].mean(axis=0) + template[RIGHT_EYE].mean(axis=0)) / 2
    print(
        f"# template bbox x {left:.1f}..{right:.1f}, y {top:.1f}..{bottom:.1f}; eye midpoint {eyes.round(1)}"
    )
    print(f"# template inter-ocular distance {inter_ocular(template):.1f} px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
