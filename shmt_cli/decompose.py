"""A face's decomposition: aligned image + landmarks → parsing, 3D render and SHMT's tensors.

`FaceParts` is what every later stage needs to know about one aligned face; it is written as one
safetensors file (`save_parts` / `load_parts`) that `transfer` reuses instead of recomputing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors_bytes

from shmt_cli import __version__
from shmt_cli.atomic import write_bytes_atomic
from shmt_cli.face.parsing import parse_face
from shmt_cli.face.render3d import render_face
from shmt_cli.imageio import InputError
from shmt_cli.representations import IMAGE_SIZE, SourceParts, reference_parts, source_parts

PARTS_FORMAT = "shmt-face-parts/1"


@dataclass
class FaceParts:
    """One aligned face and its decomposition.

    image: (S, S, 3) uint8 RGB; landmarks: (68, 2) float64 (x, y) in the image; labels: (S, S) uint8
    CelebAMask-HQ ids; render: (S, S, 3) uint8 gray 3D render (0 off the face); source: where it came
    from; parsing_from / render_from: "builtin" or the external file used.
    """

    image: np.ndarray
    landmarks: np.ndarray
    labels: np.ndarray
    render: np.ndarray
    source: str = ""
    parsing_from: str = "builtin"
    render_from: str = "builtin"
    meta: dict[str, str] = field(default_factory=dict)


def analyse_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    labels: np.ndarray | None = None,
    render: np.ndarray | None = None,
    source: str = "",
) -> FaceParts:
    """Parse and render a face where no external map is given. Shapes as in FaceParts."""
    parsing_from = "builtin" if labels is None else "external"
    render_from = "builtin" if render is None else "external"
    if labels is None:
        labels = parse_face(image, landmarks)
    if render is None:
        render = render_face(landmarks, image.shape[:2])
    if labels.shape != image.shape[:2]:
        raise InputError(
            f"parsing map is {labels.shape[1]}x{labels.shape[0]}, image is {image.shape[1]}x{image.shape[0]}"
        )
    if render.shape[:2] != image.shape[:2]:
        render = cv2.resize(render, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return FaceParts(
        image=image,
        landmarks=np.asarray(landmarks, np.float64),
        labels=labels.astype(np.uint8),
        render=render.astype(np.uint8),
        source=source,
        parsing_from=parsing_from,
        render_from=render_from,
    )


def to_model_size(
    image: np.ndarray, landmarks: np.ndarray, size: int = IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Square-resize an image (as SHMT does) and scale its landmarks accordingly."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image, np.asarray(landmarks, np.float64)
    resized = cv2.resize(
        image, (size, size), interpolation=cv2.INTER_AREA if height > size else cv2.INTER_LINEAR
    )
    scale = np.array([size / width, size / height])
    # Pixel centres: x' + 0.5 = (x + 0.5) * scale.
    return resized, (np.asarray(landmarks, np.float64) + 0.5) * scale - 0.5


def parts_tensors(
    parts: FaceParts, levels: tuple[int, ...] = (0, 4), src: SourceParts | None = None
) -> dict[str, torch.Tensor]:
    """The tensors written to `<stem>.safetensors`: the inputs plus SHMT's model-ready tensors.

    uint8: image (3,S,S) RGB, labels (S,S), render (3,S,S), face_mask (S,S) {0,1}; float64: landmarks
    (68,2); float32 in [-1,1]: background (3,S,S), makeup (3,S,S) (this face used as a reference),
    gray (1,S,S); mask64 (1,S/4,S/4) in [0,1]; content_h{L} (C,S/4,S/4) per level (C 64 for h0, 49 for h4).
    `src`: the face's source parts when already built with at least these levels (saves recomputing).
    """
    if src is None or not set(levels) <= set(src.content):
        src = source_parts(parts.image, parts.labels, parts.render, levels=levels)
    ref = reference_parts(parts.image, parts.labels)
    tensors = {
        "image": src.image_u8[0],
        "labels": src.labels[0, 0],
        "render": src.render_u8[0],
        "face_mask": src.face_mask_u8[0, 0],
        "landmarks": torch.from_numpy(np.asarray(parts.landmarks, np.float64)),
        "background": src.bg[0],
        "makeup": ref.makeup[0],
        "gray": src.gray[0],
        "mask64": src.mask64[0],
    }
    for level in levels:
        tensors[f"content_h{level}"] = src.content[level][0]
    return {key: value.contiguous() for key, value in tensors.items()}


def face_tensors(parts: FaceParts) -> dict[str, torch.Tensor]:
    """The compact parts file: only what load_parts reads (image, labels, render, landmarks), about
    0.45 MB for a 256² face instead of 4.2 MB with the model-ready tensors (which are recomputed)."""
    return {
        "image": torch.from_numpy(np.ascontiguousarray(parts.image.transpose(2, 0, 1))),
        "labels": torch.from_numpy(np.ascontiguousarray(parts.labels)),
        "render": torch.from_numpy(np.ascontiguousarray(parts.render.transpose(2, 0, 1))),
        "landmarks": torch.from_numpy(np.asarray(parts.landmarks, np.float64)),
    }


def save_parts(
    path: str | os.PathLike[str],
    parts: FaceParts,
    levels: tuple[int, ...] = (0, 4),
    src: SourceParts | None = None,
    compact: bool = False,
) -> None:
    """Write the parts file atomically, with metadata (format, levels, source, versions). `compact`:
    the face only (face_tensors), as the transfer cache keeps it for `shmt evaluate`."""
    if compact:
        levels = ()
    metadata = {
        "format": PARTS_FORMAT,
        "source": parts.source,
        "levels": json.dumps(list(levels)),
        "parsing": parts.parsing_from,
        "render3d": parts.render_from,
        "shmt_version": __version__,
        "torch_version": torch.__version__,
        **parts.meta,
    }
    tensors = face_tensors(parts) if compact else parts_tensors(parts, levels, src)
    write_bytes_atomic(path, save_safetensors_bytes(tensors, metadata=metadata))


def load_parts(path: str | os.PathLike[str]) -> FaceParts:
    """Read a parts file written by save_parts; InputError names the file and the problem."""
    path = Path(path)
    wanted = ("image", "labels", "render", "landmarks")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in wanted if key in handle.keys()}  # noqa: SIM118
    except (OSError, SafetensorError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable parts file ({reason})") from exc
    if metadata.get("format") != PARTS_FORMAT:
        raise InputError(f"{path}: not a shmt parts file (format {metadata.get('format')!r})")
    missing = [key for key in wanted if key not in tensors]
    if missing:
        raise InputError(f"{path}: parts file lacks {', '.join(missing)}")
    image = tensors["image"].numpy().transpose(1, 2, 0)
    labels = tensors["labels"].numpy()
    render = tensors["render"].numpy().transpose(1, 2, 0)
    landmarks = tensors["landmarks"].numpy().astype(np.float64)
    if (
        image.dtype != np.uint8
        or image.shape[2] != 3
        or labels.shape != image.shape[:2]
        or landmarks.shape != (68, 2)
    ):
        raise InputError(f"{path}: parts file has inconsistent shapes")
    return FaceParts(
        image=np.ascontiguousarray(image),
        landmarks=landmarks,
        labels=np.ascontiguousarray(labels),
        render=np.ascontiguousarray(render),
        source=metadata.get("source", ""),
        parsing_from=metadata.get("parsing", ""),
        render_from=metadata.get("render3d", ""),
    )
