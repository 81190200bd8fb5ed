"""Export a weights folder as an official SHMT checkpoint (the inverse of `weights.import_checkpoint`).

The result is a Lightning-style dict ``{"state_dict": ..., "global_step": n, "epoch": None}`` saved with
`torch.save`, which ``torch.load(weights_only=True)`` and the official inference/training scripts read
(``ckpt["state_dict"]``, `load_state_dict(strict=False)`). Keys are the official names (spec §5):
``model.diffusion_model.*``, ``model_ema.*`` (when the folder has EMA shadows), ``corr_stage_model.*``,
``first_stage_model.*`` (the VQ-f4 of the folder) and the 12 schedule buffers. ``proj_convs`` are exported
only if the folder has them (an imported official checkpoint); a model trained here never had them, and
the official loader leaves missing keys at their random initialisation, which is what they always were.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from shmt_cli.atomic import atomic_write
from shmt_cli.engines.shmt import weights as W
from shmt_cli.engines.shmt.sampler import ldm_schedule_buffers


def official_state_dict(
    weights_dir: str | os.PathLike[str], variant: str | None = None
) -> dict[str, torch.Tensor]:
    """The official-named state dict of SHMT-`variant` in `weights_dir` (None: its only model)."""
    folder = Path(weights_dir)
    manifest = W.read_manifest(folder)
    models = {e.variant: e for e in manifest.values() if e.kind == "shmt" and e.variant}
    if not models:
        raise W.CheckpointError(f"{folder}: no SHMT model weights to export")
    if variant is None:
        if len(models) > 1:
            raise W.CheckpointError(f"{folder}: holds {sorted(models)}; choose one with --variant")
        variant = next(iter(models))
    if variant not in models:
        raise W.CheckpointError(f"{folder}: no SHMT-{variant} weights (has {sorted(models)})")
    state = dict(W.load_weights(folder, models[variant].file))
    if W.VQ_FILE not in manifest:
        raise W.CheckpointError(f"{folder}: no VQ-f4 ({W.VQ_FILE}); the official checkpoint needs it")
    state.update({W.VQ_PREFIX + k: v for k, v in W.load_weights(folder, W.VQ_FILE).items()})
    state.update(ldm_schedule_buffers())
    return state


def export_official(
    weights_dir: str | os.PathLike[str], target: str | os.PathLike[str], variant: str | None = None
) -> int:
    """Write the official checkpoint of `weights_dir` to `target` atomically; returns the tensor count."""
    folder = Path(weights_dir)
    state = official_state_dict(folder, variant)
    models = [e for e in W.read_manifest(folder).values() if e.kind == "shmt" and e.variant]
    step = next((e.global_step for e in models if variant in (None, e.variant)), None)
    checkpoint = {"state_dict": state, "global_step": step, "epoch": None}
    # Streamed into the temporary file (a full model is GBs; no in-memory copy of the bytes).
    atomic_write(target, lambda handle: torch.save(checkpoint, handle))
    return len(state)
