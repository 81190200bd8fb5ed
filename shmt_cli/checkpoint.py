"""Reading weight files safely: the one checkpoint reader of the package.

``.safetensors`` files go through safetensors; anything else through
``torch.load(map_location="cpu", weights_only=True)`` (memory-mapped for zip-format files), so no
pickled code is ever run. A Lightning ``{"state_dict": ...}`` wrapper is unwrapped (its epoch and
global step kept). Every error is a `CheckpointError` whose message names the file.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A weight file that cannot be used; the message names the file and the reason."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs arbitrary-code unpickling; it was not loaded."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """The weight file does not exist."""


@dataclass
class Checkpoint:
    """A flat state dict read from `path`; `epoch` / `global_step` when it was a Lightning dict."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    epoch: int | None = None
    global_step: int | None = None


def _load(path: Path, what: str) -> object:
    not_readable = f"{path} is not a {what} checkpoint: it cannot be read as a tensor-only state dict"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{not_readable}: refused, it contains pickled objects other than tensors and plain "
            "containers, which could run arbitrary code when loaded. If you trust it, re-save only "
            "its 'state_dict' with torch.save in a separate session and use that."
        ) from err
    except Exception as err:  # corrupt zip, truncated file, not a torch file, ...
        raise CheckpointError(f"{not_readable} ({type(err).__name__}: {err})") from err


def read_checkpoint(path: str | os.PathLike[str], what: str = "PyTorch") -> Checkpoint:
    """Read a state dict (bare, Lightning-wrapped or safetensors) of a `what` model, on the CPU.

    Raises CheckpointNotFound, UnsafeCheckpointError (a file that would need a full unpickler: never
    executed) or CheckpointError for anything else unusable, each naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFound(f"{path}: no such {what} checkpoint file")
    obj = _load(path, what)
    epoch = global_step = None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        epoch, global_step = obj.get("epoch"), obj.get("global_step")
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(
            f"{path} is not a {what} checkpoint: it does not hold a flat name -> tensor dict"
        )
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{path} is not a {what} checkpoint: state dict entries that are not tensors: {not_tensors[:5]}"
        )
    return Checkpoint(
        path=path,
        state_dict=dict(obj),
        epoch=epoch if isinstance(epoch, int) else None,
        global_step=global_step if isinstance(global_step, int) else None,
    )
