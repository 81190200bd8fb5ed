"""Checkpoints of a training run, in the project's weights format, written atomically.

    RUN/checkpoints/step-00000500/
        shmt_<variant>.safetensors   raw UNet, EMA shadows (+ decay, num_updates) and IDA, official names
        vq_f4.safetensors            the frozen VQ-f4 (a hard link to RUN/vq_f4.safetensors when possible)
        shmt_<variant>.config.json   its architecture, as `shmt weights import` writes it
        manifest.json                the `shmt weights` manifest (global_step recorded)
        trainer.pt                   optimizer state and step; torch.load(weights_only=True) reads it
    RUN/weights -> checkpoints/step-00000500   (symlink to the newest checkpoint)

A checkpoint folder is filled under a temporary name and renamed into place when complete, so a folder
named ``step-*`` is always whole, whatever moment the process was killed at; ``RUN/weights`` is switched
with an atomic rename of a new symlink. Each checkpoint folder is a weights folder on its own:
``shmt transfer --weights-dir RUN/weights`` uses the newest one (EMA weights, as for official checkpoints).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from shmt_cli.engines.shmt import weights as W
from shmt_cli.engines.shmt.config import VARIANT_LEVELS, VariantConfig, variant_config
from shmt_cli.engines.shmt.model import ShmtDenoiser
from shmt_cli.engines.shmt.unet import ema_key
from shmt_cli.training.ema import UnetEma

CHECKPOINTS = "checkpoints"
LATEST_LINK = "weights"
TRAINER_FILE = "trainer.pt"
RUN_VQ = "vq_f4.safetensors"
TRAINER_FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def official_tensors(
    denoiser: ShmtDenoiser, ema: UnetEma, extra: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The model under official state-dict names: ``model.diffusion_model.*`` (raw UNet), ``model_ema.*``
    (shadows, ``decay``, ``num_updates``), ``corr_stage_model.*`` (IDA, plus `extra` such as the dead
    ``proj_convs`` of an imported checkpoint). CPU, float32 as trained."""
    out = {W.UNET_PREFIX + n: t.detach().cpu() for n, t in denoiser.unet.state_dict().items()}
    out.update({ema_key(n): t.detach().cpu() for n, t in ema.shadows.items()})
    out[W.EMA_PREFIX + "decay"] = ema.decay.clone()
    out[W.EMA_PREFIX + "num_updates"] = ema.num_updates.clone()
    out.update({W.IDA_PREFIX + n: t.detach().cpu() for n, t in denoiser.ida.state_dict().items()})
    out.update(extra or {})
    return out


@dataclass(frozen=True)
class TrainerState:
    """What besides the weights a resume needs: the optimizer step count `step` (= EMA updates done) and
    the optimizer's state dict."""

    step: int
    optimizer: dict[str, Any]


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint folders of a run, (step, path), oldest first."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and (path / TRAINER_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def write_checkpoint(
    run_dir: Path,
    step: int,
    *,
    variant: str,
    size: str,
    tensors: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    vq_source: Path,
    keep: int = 2,
    config: VariantConfig | None = None,
) -> Path:
    """Write checkpoint `step` (module docstring), point RUN/weights at it, keep the newest `keep`.

    `config`: the model's architecture (default: the config of `variant` and `size`)."""
    folder = run_dir / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / step_dir_name(step)
    tmp = folder / f".{step_dir_name(step)}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        model_file = W.model_file(variant)
        digest = W.write_safetensors(tensors, tmp / model_file, {"kind": "shmt", "variant": variant})
        W.write_model_config(tmp, model_file, config or variant_config(VARIANT_LEVELS[variant], size))  # type: ignore[arg-type]
        try:
            os.link(vq_source, tmp / W.VQ_FILE)
        except OSError:  # another file system, or no hard links there
            shutil.copy2(vq_source, tmp / W.VQ_FILE)
        torch.save(
            {"format": TRAINER_FORMAT, "step": step, "optimizer": optimizer.state_dict()}, tmp / TRAINER_FILE
        )
        entries = {
            model_file: W.WeightsEntry(
                file=model_file,
                kind="shmt",
                variant=variant,  # type: ignore[arg-type]
                size=size,  # type: ignore[arg-type]
                source=f"shmt train, step {step}",
                sha256=digest,
                tensors=len(tensors),
                bytes=(tmp / model_file).stat().st_size,
                stamp=W.file_stamp(tmp / model_file),
                ema=True,
                global_step=step,
            ),
            W.VQ_FILE: _vq_entry(vq_source, tmp / W.VQ_FILE, size),
        }
        W.write_manifest(tmp, entries)
        for path in (tmp / model_file, tmp / TRAINER_FILE):
            _fsync_file(path)
        _fsync_dir(tmp)
        if final.exists():  # a checkpoint of the same step from an earlier attempt: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    point_latest(run_dir, final)
    prune(run_dir, keep)
    return final


def _vq_entry(source: Path, written: Path, size: str) -> W.WeightsEntry:
    """The VQ manifest row: the source folder's row when it has one (provenance kept), else a new one."""
    row = (
        W.read_manifest(source.parent).get(source.name)
        if (source.parent / W.MANIFEST_NAME).is_file()
        else None
    )
    if row is not None and row.kind == "vq":
        return row
    try:
        with safe_open(str(written), "pt") as handle:
            count = len(list(handle.keys()))
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise W.CheckpointError(f"{source}: not a readable safetensors file ({err})") from None
    return W.WeightsEntry(
        file=W.VQ_FILE,
        kind="vq",
        variant=None,
        size=size,  # type: ignore[arg-type]
        source=source.name,
        sha256=W.sha256_file(written),
        tensors=count,
        bytes=written.stat().st_size,
    )


def point_latest(run_dir: Path, checkpoint: Path) -> None:
    """Make RUN/weights a symlink to `checkpoint`, replacing the old link atomically."""
    link = run_dir / LATEST_LINK
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link}: exists and is not the run's symlink; move it away")
    tmp = run_dir / f".{LATEST_LINK}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(os.path.relpath(checkpoint, run_dir), tmp)
    os.replace(tmp, link)
    _fsync_dir(run_dir)


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints and leftovers of killed writers (temporary folders)."""
    checkpoints = list_checkpoints(run_dir)
    for _, path in checkpoints[: max(0, len(checkpoints) - keep)]:
        shutil.rmtree(path, ignore_errors=True)
    folder = run_dir / CHECKPOINTS
    for path in folder.glob(".step-*.tmp"):
        pid = path.name.rsplit(".", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid():
            shutil.rmtree(path, ignore_errors=True)


def read_trainer_state(checkpoint: Path) -> TrainerState:
    """The step and optimizer state of a checkpoint folder (safe load: tensors and plain containers)."""
    path = checkpoint / TRAINER_FILE
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise W.CheckpointError(f"{path}: cannot be read ({err})") from err
    if not isinstance(data, dict) or data.get("format") != TRAINER_FORMAT:
        raise W.CheckpointError(f"{path}: not a shmt trainer state (format {TRAINER_FORMAT})")
    return TrainerState(step=int(data["step"]), optimizer=data["optimizer"])
