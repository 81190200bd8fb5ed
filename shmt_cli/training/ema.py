"""Exponential moving average of the UNet weights, as the official `LitEma` keeps it (spec §4).

After every optimizer step: n ← n + 1, d = min(decay, (1 + n) / (10 + n)) and, per parameter,
shadow ← shadow − (1 − d)·(shadow − p). `decay` stays 0.9999; the warm-up means the first update
uses d = 2/11 and d reaches 0.9999 only after about 90 000 updates. Arithmetic is float32 tensor
arithmetic in this order, which reproduces the official shadows bit for bit.

The shadows live in a plain `{name: tensor}` dict keyed by the UNet's own parameter names; the
official checkpoint names (``model_ema.diffusion_model<name without dots>``) are made by `ema_key`
in `shmt_cli.engines.shmt.unet` when a checkpoint is written.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

DEFAULT_DECAY = 0.9999


class UnetEma:
    """EMA shadows of every trainable parameter of `module` (the UNet), float32, on the module's device."""

    def __init__(self, module: nn.Module, decay: float = DEFAULT_DECAY) -> None:
        self.decay = torch.tensor(decay, dtype=torch.float32)
        self.num_updates = torch.tensor(0, dtype=torch.int32)
        self.shadows: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad
        }

    def current_decay(self) -> torch.Tensor:
        """The decay the next update will use: min(decay, (1 + n) / (10 + n)) with n after increment."""
        n = self.num_updates.float() + 1.0
        return torch.minimum(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """One EMA step towards the current parameters of `module` (after the optimizer step)."""
        one_minus = 1.0 - self.current_decay()
        self.num_updates += 1
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            shadow = self.shadows[name]
            shadow.sub_(one_minus.to(shadow.device) * (shadow - p.detach().to(shadow.dtype)))

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the shadows into `module`'s parameters (e.g. an evaluation copy of the UNet)."""
        for name, p in module.named_parameters():
            if name in self.shadows:
                p.copy_(self.shadows[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"decay", "num_updates", "shadow.<param name>": tensor} (our own names; see `ema_key`)."""
        out = {"decay": self.decay.clone(), "num_updates": self.num_updates.clone()}
        out.update({f"shadow.{name}": t for name, t in self.shadows.items()})
        return out

    @torch.no_grad()
    def load_shadows(
        self, shadows: Mapping[str, torch.Tensor], num_updates: int, decay: float = DEFAULT_DECAY
    ) -> None:
        """Replace every shadow (names as the UNet's parameters) and the counters; shapes must match."""
        missing = sorted(set(self.shadows) - set(shadows))
        if missing:
            raise ValueError(f"EMA: {len(missing)} shadows missing, e.g. {missing[:3]}")
        for name, shadow in self.shadows.items():
            if tuple(shadows[name].shape) != tuple(shadow.shape):
                raise ValueError(
                    f"EMA shadow {name}: shape {tuple(shadows[name].shape)} != {tuple(shadow.shape)}"
                )
            shadow.copy_(shadows[name])
        self.num_updates = torch.tensor(int(num_updates), dtype=torch.int32)
        self.decay = torch.tensor(decay, dtype=torch.float32)
