"""Prepared faces and batches of pairs for the SHMT engine: what is kept per face, how pairs are
stacked into a (padded) batch, the per-pair noise and the uint8 output.

Prepared faces are float32 on CPU; they move to the device per batch, so a large face cache costs host
memory, not device memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from shmt_cli.engines.base import PairJob
from shmt_cli.engines.shmt.ida import PreparedReference
from shmt_cli.engines.shmt.model import PreparedPair, ShmtDenoiser


@dataclass(frozen=True)
class SourceState:
    """One source face: z_bg (1, 3, 64, 64) VQ latent of the background; content {variant: C}
    (1, 64 | 49, 64, 64); mask64 M64 (1, 1, 64, 64) in [0, 1]; onehot64 (1, 19, 64, 64) {0, 1}."""

    z_bg: torch.Tensor
    content: dict[str, torch.Tensor]
    mask64: torch.Tensor
    onehot64: torch.Tensor


@dataclass(frozen=True)
class ReferenceState:
    """One reference face: z_ref (1, 3, 64, 64) VQ latent of the makeup image I_m; makeup64 U_m
    (1, 48, 64, 64); onehot64 (1, 19, 64, 64); ida {variant: the IDA's reference side, batch 1}."""

    z_ref: torch.Tensor
    makeup64: torch.Tensor
    onehot64: torch.Tensor
    ida: dict[str, PreparedReference]


@dataclass
class PairBatch:
    """A padded batch of pairs on the device: `count` real rows, then padding up to `size` rows.

    z_bg (B, 3, 64, 64); mask64 (B, 1, 64, 64); onehot64 (B, 19, 64, 64); content {variant: (B, C, 64,
    64)}; references {variant: PreparedReference with batch B}; x_T (B, 3, 64, 64) initial noise.
    """

    count: int
    z_bg: torch.Tensor
    mask64: torch.Tensor
    onehot64: torch.Tensor
    content: dict[str, torch.Tensor]
    references: dict[str, PreparedReference]
    x_T: torch.Tensor
    #: The denoisers' per-pair precompute per (variant, IDA form), filled on first use;
    #: `dataclasses.replace(batch, x_T=...)` shares it, so sampling the same pairs again (other noise or
    #: step count) skips the IDA.
    prepared: dict[tuple[str, str], tuple[ShmtDenoiser, PreparedPair]] = field(
        default_factory=dict, repr=False
    )

    @property
    def size(self) -> int:
        return int(self.z_bg.shape[0])


@dataclass
class SampleResult:
    """Output of `ShmtEngine.sample` for the real rows (n) of a batch.

    samples (n, 3, 64, 64) final latents; timesteps visited (descending) and the model used at each;
    x_inter [x_T, x after each step] (record=True only); indices (n, 64, 64) codebook indices of the
    decode; decoded (n, 3, 256, 256) float, unclamped; images n × (256, 256, 3) uint8 RGB.
    """

    samples: torch.Tensor
    timesteps: list[int]
    choices: list[str]
    x_inter: list[torch.Tensor] = field(default_factory=list)
    indices: torch.Tensor | None = None
    decoded: torch.Tensor | None = None
    images: list[np.ndarray] = field(default_factory=list)


def latent_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A pair's initial latent noise, float32 on CPU, drawn from its own generator."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def to_uint8_images(decoded: torch.Tensor) -> list[np.ndarray]:
    """(n, 3, H, W) float image in [-1, 1] -> n × (H, W, 3) uint8 RGB, rounded (the official truncates)."""
    unit = ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    pixels = torch.round(unit * 255.0).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(image) for image in pixels]


def collate(
    jobs: Sequence[PairJob],
    rows: int,
    variants: Iterable[str],
    device: torch.device,
    x_T: torch.Tensor | None = None,
) -> PairBatch:
    """Stack prepared pairs into one batch of `rows` >= len(jobs) rows on `device` (padding rows copy
    the last pair and are dropped after sampling).

    `x_T` (len(jobs), 3, 64, 64) replaces the per-seed noise (tests inject the official noise).
    """
    if not jobs:
        raise ValueError("no pairs to transfer")
    if len(jobs) > rows:
        raise ValueError(f"{len(jobs)} pairs do not fit a batch of {rows}")
    padded = list(jobs) + [jobs[-1]] * (rows - len(jobs))
    sources: list[SourceState] = [job.source for job in padded]
    refs: list[ReferenceState] = [job.reference for job in padded]

    def stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(tensors)).to(device)

    latent_shape = tuple(sources[0].z_bg.shape)
    if x_T is None:
        noise = stack([latent_noise(job.seed, latent_shape) for job in padded])
    else:
        if x_T.shape[0] != len(jobs) or tuple(x_T.shape[1:]) != latent_shape[1:]:
            raise ValueError(f"x_T must be ({len(jobs)}, {', '.join(map(str, latent_shape[1:]))})")
        given = list(x_T.float().cpu().split(1))
        noise = stack(given + given[-1:] * (rows - len(jobs)))
    variants = list(variants)
    return PairBatch(
        count=len(jobs),
        z_bg=stack([s.z_bg for s in sources]),
        mask64=stack([s.mask64 for s in sources]),
        onehot64=stack([s.onehot64 for s in sources]),
        content={v: stack([s.content[v] for s in sources]) for v in variants},
        references={
            v: PreparedReference(
                values=stack([r.ida[v].values for r in refs]),
                features=stack([r.ida[v].features for r in refs]),
                labels=stack([r.ida[v].labels for r in refs]),
            )
            for v in variants
        },
        x_T=noise,
    )
