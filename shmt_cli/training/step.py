"""One optimizer step of SHMT training: gradients over micro-batches, then AdamW and the EMA update.

Split in two so that callers (and the golden tests) can look at the gradients before they are used:

* `accumulate_gradients`: for each micro-batch, `model_inputs` (frozen VQ) → `training_losses` →
  backward of loss / micro-batches. Under DistributedDataParallel the gradient all-reduce (an average over
  processes) runs only with the last micro-batch.
* `apply_update`: optimizer step, zero the gradients, EMA update of the UNet (the official order:
  Lightning's optimizer step, then `on_train_batch_end`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from shmt_cli.training.ema import UnetEma
from shmt_cli.training.objective import LossTerms, Schedule, model_inputs, training_losses

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Draws:
    """The random quantities of one micro-batch: t (B,) int64 in 0..999, eps (B, 3, 64, 64) float32,
    jitter_scale s (the batch's amplitude jitter, float32-representable)."""

    t: torch.Tensor
    eps: torch.Tensor
    jitter_scale: float


@dataclass
class MicroBatch:
    """A collated official batch dict (see `objective.BATCH_KEYS`) and its draws."""

    batch: Mapping[str, torch.Tensor]
    draws: Draws


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def micro_batch_losses(
    model: nn.Module,
    vq: nn.Module,
    micro: MicroBatch,
    level: int,
    schedule: Schedule,
    autocast: torch.dtype | None = None,
) -> LossTerms:
    """The losses of one micro-batch with the graph kept (no backward). `model` may be DDP-wrapped."""
    inputs = model_inputs(vq, micro.batch, level, micro.draws.jitter_scale)
    device = inputs.z0.device
    t, eps = micro.draws.t.to(device), micro.draws.eps.to(device)
    with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        return training_losses(model, inputs, t, eps, schedule)


def accumulate_gradients(
    model: nn.Module,
    vq: nn.Module,
    micros: Sequence[MicroBatch],
    level: int,
    schedule: Schedule,
    autocast: torch.dtype | None = None,
) -> list[LossTerms]:
    """Backward of Σ_k loss_k / K over the K micro-batches (gradients add to `.grad`); returns the terms.

    The caller zeroes gradients first (`apply_update` leaves them zeroed).
    """
    if not micros:
        raise ValueError("no micro-batches")
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    terms = []
    for k, micro in enumerate(micros):
        last = k == len(micros) - 1
        sync = contextlib.nullcontext() if (last or not ddp) else model.no_sync()
        with sync:
            loss = micro_batch_losses(model, vq, micro, level, schedule, autocast)
            (loss.total / len(micros)).backward()
        loss.total = loss.total.detach()
        loss.out = None  # type: ignore[assignment]  # free Â/ε̂ of earlier micro-batches
        terms.append(loss)
    return terms


def grad_norms(model: nn.Module) -> dict[str, float]:
    """Global L2 norms of the current gradients: UNet, IDA and both (float64 accumulation)."""
    inner = _unwrap(model)
    norms = {}
    for part in ("unet", "ida"):
        grads = [p.grad.double() for p in getattr(inner, part).parameters() if p.grad is not None]
        norms[f"grad_norm_{part}"] = float(torch.sqrt(sum((g**2).sum() for g in grads))) if grads else 0.0
    norms["grad_norm_all"] = (norms["grad_norm_unet"] ** 2 + norms["grad_norm_ida"] ** 2) ** 0.5
    return norms


def apply_update(model: nn.Module, optimizer: torch.optim.Optimizer, ema: UnetEma) -> None:
    """AdamW step, gradients set to None, then the EMA update from the new UNet weights."""
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.update(_unwrap(model).unet)


def mean_logged(terms: Sequence[LossTerms]) -> dict[str, float]:
    """The logged losses averaged over micro-batches (each is already a batch mean)."""
    logged = [t.logged() for t in terms]
    return {key: sum(entry[key] for entry in logged) / len(logged) for key in logged[0]}
