"""Starting points of a training run: imported/trained weights (fine-tuning) or a fresh model.

* `from_weights(folder, variant)`: a weights folder as `shmt weights import` or a training run writes it
  (``shmt_<variant>.safetensors`` + ``vq_f4.safetensors`` + ``manifest.json``). The UNet starts from the
  raw ``model.diffusion_model.*`` weights, the IDA from ``corr_stage_model.*``; the EMA continues from the
  file's ``model_ema.*`` shadows and update counter when present (what the official code does when it
  loads a checkpoint), else it starts as a copy of the raw UNet with counter 0.
* `from_scratch(variant, size, vq_folder, seed)`: torch's default initialisation under `seed`, with the
  layers LDM zero-initialises set to zero (each ResBlock's last conv, each attention `proj_out`, the final
  conv; spec §2.3), and the imported VQ-f4 of the same size class.

The VQ is returned frozen (eval, no gradients); the denoiser in train mode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from shmt_cli.engines.shmt import weights as W
from shmt_cli.engines.shmt.config import VARIANT_LEVELS, variant_config
from shmt_cli.engines.shmt.ida import load_official_ida
from shmt_cli.engines.shmt.model import ShmtDenoiser
from shmt_cli.engines.shmt.unet import AttentionBlock, ResBlock, ShmtUNet, ema_key, load_official_unet


@dataclass
class StartPoint:
    """A model ready to train. ema_shadows: {UNet parameter name: tensor} or None (= copy of the raw
    UNet); ema_updates: the official `num_updates` counter; extra: official-named tensors that are not
    trained but travel with the model (the dead `proj_convs` of an imported checkpoint)."""

    variant: str
    size: str
    denoiser: ShmtDenoiser
    vq: nn.Module
    ema_shadows: dict[str, torch.Tensor] | None = None
    ema_updates: int = 0
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    source: str = "scratch"


def _frozen(vq: nn.Module) -> nn.Module:
    vq.eval().requires_grad_(False)
    return vq


def load_vq(folder: str | os.PathLike[str], size: str) -> nn.Module:
    """The imported VQ-f4 of `folder`, frozen; it must be of size class `size`."""
    folder = Path(folder)
    entry = W.read_manifest(folder).get(W.VQ_FILE)
    if entry is None or not (folder / W.VQ_FILE).is_file():
        raise W.CheckpointError(
            f"{folder}: no VQ-f4 ({W.VQ_FILE}); import it with `shmt weights import --vq`"
        )
    if entry.size != size:
        raise W.CheckpointError(f"{folder / W.VQ_FILE}: a {entry.size} VQ, the model is {size}")
    return _frozen(W.load_vq_model(folder))


def model_entry(folder: str | os.PathLike[str], variant: str | None) -> W.WeightsEntry:
    """The manifest row of SHMT-`variant` in `folder` (None: the only SHMT model there)."""
    folder = Path(folder)
    models = {e.variant: e for e in W.read_manifest(folder).values() if e.kind == "shmt" and e.variant}
    if not models:
        raise W.CheckpointError(f"{folder}: no SHMT model weights (manifest.json lists none)")
    if variant is None:
        if len(models) > 1:
            raise W.CheckpointError(f"{folder}: holds {sorted(models)}; choose one with --variant")
        return next(iter(models.values()))
    if variant not in models:
        raise W.CheckpointError(f"{folder}: no SHMT-{variant} weights (has {sorted(models)})")
    return models[variant]


def from_weights(folder: str | os.PathLike[str], variant: str | None = None) -> StartPoint:
    """Fine-tuning start from a weights folder (module docstring)."""
    folder = Path(folder)
    entry = model_entry(folder, variant)
    assert entry.variant is not None
    tensors = load_file(str(folder / entry.file))
    denoiser = ShmtDenoiser(W.model_config(folder, entry))
    load_official_unet(denoiser.unet, tensors, prefer_ema=False)
    report = load_official_ida(denoiser.ida, tensors)
    names = [name for name, _ in denoiser.unet.named_parameters()]
    shadows = None
    updates = 0
    if all(ema_key(name) in tensors for name in names):
        shadows = {name: tensors[ema_key(name)].float() for name in names}
        counter = tensors.get(W.EMA_PREFIX + "num_updates")
        updates = int(counter) if counter is not None else 0
    extra = {key: tensors[key] for key in report.ignored}
    return StartPoint(
        variant=entry.variant,
        size=entry.size,
        denoiser=denoiser.train(),
        vq=load_vq(folder, entry.size),
        ema_shadows=shadows,
        ema_updates=updates,
        extra=extra,
        source=str(folder / entry.file),
    )


def zero_init_ldm_layers(unet: ShmtUNet) -> None:
    """Zero the layers LDM's `zero_module` initialises to 0: ResBlock out_layers conv, attention
    proj_out, and the final output conv (so a fresh UNet predicts ε̂ = 0)."""
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, ResBlock):
                targets: list[nn.Module] = [module.out_layers[-1]]
            elif isinstance(module, AttentionBlock):
                targets = [module.proj_out]
            else:
                continue
            for target in targets:
                for p in target.parameters():
                    p.zero_()
        for p in unet.out[-1].parameters():
            p.zero_()


def from_scratch(variant: str, size: str, vq_folder: str | os.PathLike[str], seed: int = 0) -> StartPoint:
    """A freshly initialised SHMT-`variant` of size class `size` with the VQ imported in `vq_folder`."""
    if variant not in VARIANT_LEVELS:
        raise ValueError(f"variant must be h0 or h4, got {variant!r}")
    vq = load_vq(vq_folder, size)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        denoiser = ShmtDenoiser(variant_config(VARIANT_LEVELS[variant], size))  # type: ignore[arg-type]
    finally:
        torch.random.set_rng_state(generator_state)
    zero_init_ldm_layers(denoiser.unet)
    return StartPoint(variant=variant, size=size, denoiser=denoiser.train(), vq=vq, source="scratch")
