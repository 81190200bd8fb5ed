"""Sample grids of a training run: source | reference | rebuilt, one row per validation self-pair.

"Rebuilt" is what the model makes of the pair at inference: DDIM (`steps` steps, released IDA form, no
texture-detail jitter) from a fixed noise, with the weights given (the EMA weights during training),
decoded by the VQ. The source shown is the ground truth GT, the reference its masked makeup image I_m.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from shmt_cli.engines.shmt import vq as vqmod
from shmt_cli.engines.shmt.engine import to_uint8_images
from shmt_cli.engines.shmt.model import ShmtDenoiser
from shmt_cli.engines.shmt.sampler import ddim_sample
from shmt_cli.previews import contact_sheet
from shmt_cli.training.objective import model_inputs

GRID_NOISE_SEED = 20260101


@torch.no_grad()
def rebuild(
    denoiser: ShmtDenoiser, vq: nn.Module, batch: Mapping[str, torch.Tensor], level: int, steps: int
) -> list[np.ndarray]:
    """The model's reconstruction of each self-pair of `batch`: n × (H, W, 3) uint8 RGB."""
    inputs = model_inputs(vq, batch, level, 1.0).denoiser
    prepared = denoiser.prepare(inputs, "release")
    shape = tuple(inputs.z_bg.shape)
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(GRID_NOISE_SEED))
    result = ddim_sample(
        lambda x_t, t: denoiser.epsilon(x_t, t, prepared), noise.to(inputs.z_bg.device), steps
    )
    return to_uint8_images(vqmod.decode(vq, result.samples.float()))


def sample_grid(
    denoiser: ShmtDenoiser, vq: nn.Module, batch: Mapping[str, torch.Tensor], level: int, steps: int
) -> np.ndarray:
    """The grid picture (rows × [source, reference, rebuilt]) as (H, W, 3) uint8 RGB."""
    rebuilt = rebuild(denoiser, vq, batch, level, steps)
    sources = to_uint8_images(batch["image_GT"])
    references = to_uint8_images(batch["ref_face"])
    size = int(batch["image_GT"].shape[-1])
    return contact_sheet(list(zip(sources, references, rebuilt, strict=True)), cell=max(size, 64))
