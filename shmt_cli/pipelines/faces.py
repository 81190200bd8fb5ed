"""Reading faces for later stages: aligned crops with their sidecars, or plain face photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shmt_cli.decompose import to_model_size
from shmt_cli.face.align import read_sidecar
from shmt_cli.face.rotation import rotate_image, rotate_points
from shmt_cli.face.search import find_faces
from shmt_cli.imageio import InputError, read_image
from shmt_cli.inputs import display_path
from shmt_cli.representations import IMAGE_SIZE


def sidecar_for(image_path: Path) -> Path:
    """The `shmt align` sidecar that belongs to an aligned crop (`x.png` → `x.json`)."""
    return image_path.with_name(f"{image_path.stem}.json")


def has_sidecar(image_path: Path) -> bool:
    """Whether `image_path` has an `shmt align` sidecar beside it."""
    try:
        return sidecar_for(image_path).is_file()
    except OSError:
        # A 255-byte `x.jpg` gives a 256-byte `x.json`, which stat() refuses (ENAMETOOLONG) on
        # Python < 3.12: no such sidecar can exist, so the image is a plain photo.
        return False


def read_aligned_face(path: Path, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray, str]:
    """(image (size, size, 3) uint8 RGB, landmarks (68, 2) float64 in it, source description).

    Landmarks come from the `shmt align` sidecar when there is one; otherwise the best plausible face
    is detected (any face photo works; it is square-resized to `size` as SHMT does). A photo whose face
    was only found turned by a quarter turn is turned with it, so the face is upright.
    """
    image = read_image(path)
    sidecar = sidecar_for(path)
    if has_sidecar(path):
        try:
            record = read_sidecar(sidecar)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        if record.crop_size != image.shape[0] or image.shape[0] != image.shape[1]:
            raise InputError(
                f"sidecar {display_path(sidecar)} is for a {record.crop_size}px crop, image is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        landmarks, source = record.landmarks_crop, record.source_path
    else:
        search = find_faces(image)
        if not search.faces:
            raise InputError(search.failure())
        landmarks, source = search.faces[0].landmarks, display_path(path)
        if search.rotation:
            landmarks = rotate_points(landmarks, search.rotation, image.shape)
            image = rotate_image(image, search.rotation)
    image, landmarks = to_model_size(image, landmarks, size)
    return image, landmarks, source
