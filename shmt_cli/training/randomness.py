"""Counter-based randomness of a training run: every draw is a pure function of (seed, what, counters).

Nothing random depends on how many draws happened before, so a run resumed from a checkpoint at step n
draws exactly what an uninterrupted run draws from step n on (no RNG state to save), and the draws of a
sample do not depend on which process or micro-batch handles it, so 2 processes × batch 1 see the same
samples, timesteps and noise as 1 process × batch 2.

The sample stream: optimizer step n consumes the global batch positions q = n·G … n·G + G − 1 with
G = batch × processes × accumulation; q runs through the dataset epoch by epoch, each epoch in its own
seeded permutation. Position k = q − n·G is handled by micro-batch k // (batch × processes) on process
(k // batch) mod processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shmt_cli.training.objective import NUM_TIMESTEPS, jitter_scale
from shmt_cli.training.step import Draws

# Stream tags: independent streams for independent purposes.
ORDER, AUGMENT, NOISE, JITTER, VALIDATION = 1, 2, 3, 4, 5


def derived_seed(*parts: int) -> int:
    """A 63-bit seed mixed from non-negative integers (numpy SeedSequence hashing)."""
    if any(p < 0 for p in parts):
        raise ValueError(f"seed parts must be non-negative, got {parts}")
    words = np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


def generator(*parts: int) -> torch.Generator:
    """A CPU torch generator seeded with `derived_seed(*parts)`."""
    return torch.Generator("cpu").manual_seed(derived_seed(*parts))


@dataclass(frozen=True)
class Stream:
    """The sample stream of a run over a dataset of `size` items (module docstring)."""

    seed: int
    size: int
    batch: int
    processes: int = 1
    grad_accum: int = 1

    @property
    def global_batch(self) -> int:
        return self.batch * self.processes * self.grad_accum

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """(size,) int64 permutation of the dataset for `epoch`."""
        return torch.randperm(self.size, generator=generator(self.seed, ORDER, epoch))

    def item(self, position: int) -> int:
        """Dataset index at stream position `position`."""
        epoch, offset = divmod(position, self.size)
        return int(self.epoch_order(epoch)[offset])

    def positions(self, step: int, micro: int, rank: int) -> list[int]:
        """Stream positions of (optimizer step, micro-batch, process), `batch` of them."""
        if not (0 <= micro < self.grad_accum and 0 <= rank < self.processes):
            raise ValueError(f"micro {micro} / rank {rank} outside {self.grad_accum} / {self.processes}")
        first = step * self.global_batch + (micro * self.processes + rank) * self.batch
        return list(range(first, first + self.batch))

    def augment_seed(self, position: int) -> int:
        """Seed of the augmentation of the sample at stream `position`."""
        return derived_seed(self.seed, AUGMENT, position)


def sample_noise(seed: int, tag: int, index: int, latent_shape: tuple[int, ...]) -> tuple[int, torch.Tensor]:
    """t in 0..999 and ε (latent_shape) float32 of one sample (`index` = stream position or val index)."""
    g = generator(seed, tag, index)
    t = int(torch.randint(0, NUM_TIMESTEPS, (1,), generator=g))
    return t, torch.randn(latent_shape, generator=g)


def batch_jitter(seed: int, tag: int, index: int) -> float:
    """The amplitude jitter s of one micro-batch: u ~ U(−1, 1) → s = 0.6 + 0.4·u (float32)."""
    u = float(torch.rand((), generator=generator(seed, tag, index), dtype=torch.float64)) * 2.0 - 1.0
    return jitter_scale(u)


def training_draws(stream: Stream, step: int, micro: int, rank: int, latent_shape: tuple[int, ...]) -> Draws:
    """t, ε per sample and the batch jitter of one micro-batch; the jitter is shared by all processes
    (one scalar per global micro-batch, as the official one per batch)."""
    pairs = [sample_noise(stream.seed, NOISE, q, latent_shape) for q in stream.positions(step, micro, rank)]
    jitter = batch_jitter(stream.seed, JITTER, step * stream.grad_accum + micro)
    return Draws(
        t=torch.tensor([t for t, _ in pairs], dtype=torch.int64),
        eps=torch.stack([e for _, e in pairs]),
        jitter_scale=jitter,
    )


def validation_draws(seed: int, indices: list[int], latent_shape: tuple[int, ...]) -> Draws:
    """Fixed t, ε and jitter for validation items `indices` (the same at every validation)."""
    pairs = [sample_noise(seed, VALIDATION, i, latent_shape) for i in indices]
    return Draws(
        t=torch.tensor([t for t, _ in pairs], dtype=torch.int64),
        eps=torch.stack([e for _, e in pairs]),
        jitter_scale=batch_jitter(seed, VALIDATION, indices[0]),
    )
