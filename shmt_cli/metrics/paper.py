"""Plumbing shared by the paper's metrics (FID, CLS, Key-sim): weight files and image batches.

The networks behind these metrics are never downloaded. The user gives the files their authors
publish (``--inception-weights`` / ``--dino-weights``) or drops them under ``weights/metrics/``.
Files are read without unpickling code (``torch.load(..., weights_only=True)`` or safetensors) and
checked key by key against the architecture before use, so a wrong file fails with a message that
names it instead of producing meaningless numbers.

This module knows nothing about the networks themselves; ``inception.py`` and ``vit.py`` pass the
expected key names and shapes in. Images arrive as an (N, H, W, 3) uint8 RGB array or a sequence of
(H, W, 3) uint8 arrays (sizes may differ) and leave as resized NCHW float32 tensors in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from shmt_cli.checkpoint import CheckpointError, CheckpointNotFound, read_checkpoint

#: (N, H, W, 3) uint8 RGB array, or a sequence of (H, W, 3) uint8 RGB arrays.
ImageBatch = np.ndarray | Sequence[np.ndarray]

#: Folder searched when no explicit weight file is given (relative to the working directory).
DEFAULT_METRICS_WEIGHTS_DIR = Path("weights") / "metrics"

#: The DINO release file (facebookresearch/dino, ViT-B/8 backbone, plain state dict).
DINO_VITB8_FILENAME = "dino_vitbase8_pretrain.pth"

#: The FID Inception weights as published by pytorch-fid (TF 2015-12-05 graph ported to PyTorch).
FID_INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"

#: torch-fidelity publishes the same network under this name with identical parameter names.
FID_INCEPTION_ALT_FILENAMES = ("weights-inception-2015-12-05-6726825d.pth",)


class WeightsNotFoundError(FileNotFoundError):
    """A metric needs a weight file that is not there."""


def locate_weights(
    explicit: str | Path | None,
    filenames: Iterable[str],
    what: str,
    option: str,
    search_dir: str | Path = DEFAULT_METRICS_WEIGHTS_DIR,
) -> Path:
    """Return the weight file to use: ``explicit`` if given, else the first of ``filenames`` (or their
    ``.safetensors`` twins) found in ``search_dir``.

    Raises WeightsNotFoundError naming the file(s) and the command-line option when nothing is found.
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise WeightsNotFoundError(f"{what} weights not found: {option} {path} does not exist")
        return path
    names = list(filenames)
    candidates: list[Path] = []
    for name in names:
        candidates.append(Path(search_dir) / name)
        candidates.append(Path(search_dir) / (Path(name).stem + ".safetensors"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise WeightsNotFoundError(
        f"{what} weights not found: pass {option} FILE or put {names[0]} in {search_dir}/ "
        f"(looked for {looked}); weights are never downloaded"
    )


def locate_dino_weights(
    explicit: str | Path | None = None, search_dir: str | Path = DEFAULT_METRICS_WEIGHTS_DIR
) -> Path:
    """The DINO ViT-B/8 file for CLS / Key-sim: ``--dino-weights`` or ``weights/metrics/``."""
    return locate_weights(explicit, [DINO_VITB8_FILENAME], "DINO ViT-B/8", "--dino-weights", search_dir)


def locate_fid_inception_weights(
    explicit: str | Path | None = None, search_dir: str | Path = DEFAULT_METRICS_WEIGHTS_DIR
) -> Path:
    """The FID Inception file: ``--inception-weights`` or ``weights/metrics/`` (either published name)."""
    names = [FID_INCEPTION_FILENAME, *FID_INCEPTION_ALT_FILENAMES]
    return locate_weights(explicit, names, "FID Inception", "--inception-weights", search_dir)


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` state dict of the `what` weights at `path` (see shmt_cli.checkpoint);
    WeightsNotFoundError when the file is missing, CheckpointError naming it when unusable."""
    try:
        return read_checkpoint(path, what).state_dict
    except CheckpointNotFound as error:
        raise WeightsNotFoundError(f"{what} weights file not found: {path}") from error


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    expected_shapes: Mapping[str, tuple[int, ...]],
    path: str | Path,
    what: str,
    optional: Iterable[str] = (),
) -> None:
    """Raise CheckpointError unless ``state`` has exactly the expected keys with the expected shapes.

    Keys in ``optional`` may be absent (e.g. BatchNorm counters older files lack) but must have the
    expected shape when present.
    """
    optional_keys = set(optional)
    required = [k for k in expected_shapes if k not in optional_keys]
    missing = [k for k in required if k not in state]
    unexpected = sorted(k for k in state if k not in expected_shapes)
    wrong = [
        f"{k} has shape {tuple(state[k].shape)}, expected {expected_shapes[k]}"
        for k in expected_shapes
        if k in state and tuple(state[k].shape) != tuple(expected_shapes[k])
    ]
    problems: list[str] = []
    if missing:
        problems.append(f"missing key{'s' if len(missing) > 1 else ''} {_first(missing)}")
    if wrong:
        problems.append(f"shape mismatch: {_first(wrong)}")
    if unexpected:
        problems.append(f"unexpected key{'s' if len(unexpected) > 1 else ''} {_first(unexpected)}")
    if problems:
        raise CheckpointError(f"{path} is not a {what} checkpoint: " + "; ".join(problems))


def _first(items: list[str], shown: int = 3) -> str:
    head = ", ".join(items[:shown])
    return head if len(items) <= shown else f"{head} (and {len(items) - shown} more)"


def image_list(images: ImageBatch) -> list[np.ndarray]:
    """Split a batch into (H, W, 3) uint8 images, checking dtype and shape."""
    listed = list(images)
    for index, image in enumerate(listed):
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
        ):
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise ValueError(f"image {index} must be an (H, W, 3) uint8 RGB array, got {shape} {dtype}")
    return listed


def resized_batches(
    images: ImageBatch, size: int, batch_size: int, antialias: bool, device: torch.device
) -> Iterator[torch.Tensor]:
    """Yield (B, 3, size, size) float32 tensors in [0, 1] on ``device``, bilinear-resized, B <= batch_size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    listed = image_list(images)
    for start in range(0, len(listed), batch_size):
        resized = []
        for image in listed[start : start + batch_size]:
            tensor = (
                torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float()
                / 255.0
            )
            if tensor.shape[-2:] != (size, size):
                tensor = F.interpolate(
                    tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias
                )
            resized.append(tensor)
        yield torch.cat(resized)
