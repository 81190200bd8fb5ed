"""The optimizer of SHMT training (spec §4): one AdamW over the UNet and IDA parameters.

torch's AdamW with its defaults (betas 0.9/0.999, eps 1e-8, weight decay 0.01), constant learning rate,
no clipping, as the official `configure_optimizers`. On CPU torch runs its single-tensor implementation,
which reproduces the official first step bit for bit.
"""

from __future__ import annotations

import torch

from shmt_cli.engines.shmt.model import ShmtDenoiser

#: Official `base_learning_rate`; main.py scales it by accumulation × devices × batch (`--scale_lr`).
BASE_LR = 1e-6


def default_lr(batch: int, devices: int = 1, grad_accum: int = 1) -> float:
    """Official scaled learning rate: 1e-6 × batch per device × devices × gradient-accumulation steps."""
    if min(batch, devices, grad_accum) < 1:
        raise ValueError("batch, devices and grad_accum must be positive")
    return BASE_LR * batch * devices * grad_accum


def trainable_parameters(denoiser: ShmtDenoiser) -> list[torch.nn.Parameter]:
    """UNet then IDA parameters, the official order (`model.model` then `corr_stage_model`)."""
    return list(denoiser.unet.parameters()) + list(denoiser.ida.parameters())


def make_optimizer(denoiser: ShmtDenoiser, lr: float) -> torch.optim.AdamW:
    """torch AdamW with its default hyper-parameters over `trainable_parameters`."""
    if not lr > 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    return torch.optim.AdamW(trainable_parameters(denoiser), lr=lr)
