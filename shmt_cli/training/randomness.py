"""The model-side random draws of a training run, each a pure function of (seed, stream, counters).

The data side (order of the samples, their augmentation) is `dataset.SampleStream` / `item_rng`: global
stream position p is read by process p mod W, and process r's j-th sample is position r + W·j. The
draws here follow the same positions, so nothing random depends on how many draws came before: a run
resumed at step n draws exactly what an uninterrupted run draws from step n on (no RNG state to save),
and 2 processes × batch 1 see the same samples, timesteps and noise as 1 process × batch 2.

* t ~ U{0..999} and ε ~ N(0, I) per sample, from (seed, NOISE, global position);
* the amplitude jitter s, one per global micro-batch as the official one per batch, from
  (seed, JITTER, step·accumulation + micro-batch), shared by every process;
* validation: fixed t, ε per validation item and a fixed s.
"""

from __future__ import annotations

import numpy as np
import torch

from shmt_cli.training.augment import draw_detail_scale
from shmt_cli.training.objective import NUM_TIMESTEPS
from shmt_cli.training.step import Draws

# Stream ids, distinct from the data streams of `dataset` (0..2).
NOISE, JITTER, VALIDATION_NOISE = 10, 11, 12


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(list(parts))


def _torch_generator(*parts: int) -> torch.Generator:
    seed = int(_rng(*parts).integers(0, 2**63 - 1))
    return torch.Generator("cpu").manual_seed(seed)


def sample_noise(
    seed: int, stream: int, index: int, latent_shape: tuple[int, ...]
) -> tuple[int, torch.Tensor]:
    """t in 0..999 and ε (latent_shape) float32 of one sample (`index`: global position or val item)."""
    g = _torch_generator(stream, seed, index)
    t = int(torch.randint(0, NUM_TIMESTEPS, (1,), generator=g))
    return t, torch.randn(latent_shape, generator=g)


def stream_positions(
    step: int, micro: int, rank: int, batch: int, processes: int, grad_accum: int
) -> list[int]:
    """Global stream positions of the `batch` samples process `rank` trains on in (step, micro-batch)."""
    if not (0 <= micro < grad_accum and 0 <= rank < processes):
        raise ValueError(f"micro-batch {micro} / rank {rank} outside {grad_accum} / {processes}")
    first = (step * grad_accum + micro) * batch
    return [rank + processes * (first + i) for i in range(batch)]


def training_draws(
    seed: int, positions: list[int], step: int, micro: int, grad_accum: int, latent_shape: tuple[int, ...]
) -> Draws:
    """t, ε of the samples at `positions` and the jitter of global micro-batch (step, micro)."""
    pairs = [sample_noise(seed, NOISE, p, latent_shape) for p in positions]
    jitter = draw_detail_scale(_rng(JITTER, seed, step * grad_accum + micro))
    return Draws(
        t=torch.tensor([t for t, _ in pairs], dtype=torch.int64),
        eps=torch.stack([e for _, e in pairs]),
        jitter_scale=jitter,
    )


def validation_draws(seed: int, items: list[int], latent_shape: tuple[int, ...]) -> Draws:
    """Fixed t, ε for validation items `items` and a fixed jitter (the same at every validation)."""
    pairs = [sample_noise(seed, VALIDATION_NOISE, i, latent_shape) for i in items]
    return Draws(
        t=torch.tensor([t for t, _ in pairs], dtype=torch.int64),
        eps=torch.stack([e for _, e in pairs]),
        jitter_scale=draw_detail_scale(_rng(VALIDATION_NOISE, seed)),
    )
