"""Helpers for the training tests: a random tiny weights folder and a synthetic 64x64 dataset.

No ../shared needed: the model is the tiny SHMT layout with random weights imported through
`import_checkpoint` (the `shmt weights import` path), and the samples are random self-pairs of 64x64
images (latents 16x16), which keeps a training step well under a second on a CPU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from shmt_cli.engines.shmt import weights as W
from shmt_cli.engines.shmt.sampler import ldm_schedule_buffers
from shmt_cli.representations import FACE_LABELS, NUM_LABELS, one_hot, to_unit_range

SIZE = 64


def random_official_state_dict(variant: str = "h4", seed: int = 0) -> dict[str, torch.Tensor]:
    """Every key of a tiny official SHMT checkpoint with random values (fan-in scaled weights, unit norm
    weights, zero biases, EMA = raw), schedule buffers exact."""
    g = torch.Generator().manual_seed(seed)
    schedule = ldm_schedule_buffers()
    state: dict[str, torch.Tensor] = {}
    for key, shape in W.expected_shapes(variant, "tiny").items():  # type: ignore[arg-type]
        if key in schedule:
            state[key] = schedule[key]
        elif key == "model_ema.decay":
            state[key] = torch.tensor(0.9999, dtype=torch.float32)
        elif key == "model_ema.num_updates":
            state[key] = torch.tensor(0, dtype=torch.int32)
        elif key.endswith("bias"):
            state[key] = torch.zeros(shape)
        elif len(shape) == 1:
            state[key] = torch.ones(shape)
        else:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    for key in [k for k in state if k.startswith(W.UNET_PREFIX)]:
        state[W.ema_key(key[len(W.UNET_PREFIX) :])] = state[key].clone()
    return state


def random_weights_dir(folder: Path, variant: str = "h4", seed: int = 0) -> Path:
    """A weights folder holding a random tiny SHMT-`variant` and VQ, imported like official weights."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / f"random_{variant}.ckpt"
    torch.save({"state_dict": random_official_state_dict(variant, seed)}, checkpoint)
    W.import_checkpoint(checkpoint, folder)
    checkpoint.unlink()
    return folder


def synthetic_sample(seed: int, epoch: int, index: int, size: int = SIZE) -> dict[str, torch.Tensor]:
    """One random self-pair in the official sample layout (see `training.sample.sample_tensors`):
    a blocky label map with a face region, random colours, the reference a shifted copy."""
    rng = np.random.default_rng([seed, epoch, index])
    blocks = rng.integers(0, NUM_LABELS, (size // 8, size // 8)).astype(np.uint8)
    labels = np.kron(blocks, np.ones((8, 8), np.uint8))
    labels[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1  # skin in the middle
    image = rng.integers(0, 256, (3, size, size), dtype=np.uint8)
    shift = int(rng.integers(-4, 5))
    ref_labels, ref_image = np.roll(labels, shift, axis=1), np.roll(image, shift, axis=2)
    render = rng.integers(0, 256, (3, size, size), dtype=np.uint8)

    def u8(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    seg, ref_seg = u8(labels)[None], u8(ref_labels)[None]
    mask = torch.isin(seg, torch.tensor(FACE_LABELS, dtype=torch.uint8)).to(torch.uint8)
    ref_mask = torch.isin(ref_seg, torch.tensor(FACE_LABELS, dtype=torch.uint8)).to(torch.uint8)
    gt = u8(image)
    gray = (gt.float().mean(0, keepdim=True) * mask).round().to(torch.uint8)
    return {
        "image_GT": to_unit_range(gt),
        "source_depth": to_unit_range(u8(render)),
        "source_bg": to_unit_range(gt * (1 - mask)),
        "ref_face": to_unit_range(u8(ref_image) * ref_mask),
        "source_face_gray": to_unit_range(gray),
        "source_seg_onehot": one_hot(seg[None])[0],
        "ref_seg_onehot": one_hot(ref_seg[None])[0],
        "source_face_seg": mask.float(),
    }


class SyntheticTrainSet(Dataset):
    """`count` synthetic faces keyed like `dataset.TrainingDataset`: (epoch, index) -> sample."""

    def __init__(self, count: int = 6, seed: int = 0) -> None:
        self.count, self.seed = count, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        return {**synthetic_sample(self.seed, epoch, index), "index": index}


class SyntheticValidationSet(Dataset):
    def __init__(self, count: int = 2, seed: int = 99) -> None:
        self.count, self.seed = count, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, position: int) -> dict[str, Any]:
        return {**synthetic_sample(self.seed, 0, position), "index": position}


def golden_batch(train_dir: Path) -> dict[str, torch.Tensor]:
    """The official training batch rebuilt from its stored uint8 tensors (README "Model tests")."""
    u8 = load_file(train_dir / "train_batch.safetensors")
    return {
        "image_GT": to_unit_range(u8["batch.u8.image_GT_rgb"]),
        "source_depth": to_unit_range(u8["batch.u8.source_depth_bgr"]),
        "source_bg": to_unit_range(u8["batch.u8.source_bg_rgb"]),
        "source_face_gray": to_unit_range(u8["batch.u8.source_face_gray"]),
        "ref_face": to_unit_range(u8["batch.u8.ref_face_rgb"]),
        "source_seg_onehot": one_hot(u8["batch.u8.source_seg"]),
        "ref_seg_onehot": one_hot(u8["batch.u8.ref_seg"]),
        "source_face_seg": u8["batch.source_face_seg"],
    }
