"""One self-supervised SHMT training sample from one photo (spec §1.5; official `MakeupDataset.__getitem__`
with ``is_train=True``, without the unused random ``real_ref`` image).

Source and reference come from the same photo: A1 colour jitter (shared), Spatial-A on [image ‖ 3D
render] for the source, A2 colour jitter + gray for the content image, Spatial-B (Spatial-A + elastic)
on the A1 image for the reference. The order of operations and the uint8 masking before normalisation
follow the official code, so a sample built from the golden batch's logged parameters is bit-identical.

Inputs: image (H, W, 3) uint8 RGB, labels (h, w) uint8 CelebAMask-HQ ids (any square-ish size: 512² as
the official parsing, 256² from our own pipeline), render (H, W, 3) uint8 3D render pixel-aligned with
the image (channel order kept; renders are gray).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shmt_cli import representations as rep
from shmt_cli.training import augment as aug


@dataclass(frozen=True)
class SampleParams:
    """Every random choice of one sample. a1 None: no shared colour jitter (p 0.5)."""

    a1: aug.JitterParams | None
    spatial_a: aug.SpatialParams
    a2: aug.JitterParams
    spatial_b: aug.SpatialParams


def draw_sample_params(rng: np.random.Generator) -> SampleParams:
    """Draw a sample's parameters in the official order: A1 (p 0.5), Spatial-A (crop 0..30, rotation p 0.5
    within ±45°), A2 (p 1), Spatial-B (Spatial-A's ranges + elastic p 0.8). Every draw consumes a fixed
    number of values whether or not a transform fires, so the reference branch's draws never depend on the
    source branch's outcomes."""
    a1 = aug.draw_maybe_jitter(rng, aug.A1_PROBABILITY)
    spatial_a = aug.draw_spatial_a(rng)
    a2 = aug.draw_jitter(rng)
    spatial_b = aug.draw_spatial_b(rng)
    return SampleParams(a1=a1, spatial_a=spatial_a, a2=a2, spatial_b=spatial_b)


@dataclass(frozen=True)
class SampleStages:
    """The uint8 stages of one sample (numpy, channels-last, 256² except ``a1_image``).

    a1_image (H, W, 3): I′ = A1(image) at native size. gt (3 ch RGB), render (3 ch, input order),
    source_labels (ids): Spatial-A outputs. face_mask ({0, 1}) = M_face(source_labels). a2_face: A2(GT ⊙
    M_s), not re-masked. gray (256, 256): COLOR_BGR2GRAY of a2_face (the official RGB/BGR quirk).
    ref_image (3 ch), ref_labels (ids): Spatial-B outputs; ref_face_mask = M_face(ref_labels).
    """

    a1_image: np.ndarray
    gt: np.ndarray
    render: np.ndarray
    source_labels: np.ndarray
    face_mask: np.ndarray
    a2_face: np.ndarray
    gray: np.ndarray
    ref_image: np.ndarray
    ref_labels: np.ndarray
    ref_face_mask: np.ndarray


def augment_sample(
    image: np.ndarray, labels: np.ndarray, render: np.ndarray, params: SampleParams
) -> SampleStages:
    """Run the training augmentation with fixed parameters (see the module doc for the inputs)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if render.shape != image.shape or render.dtype != np.uint8:
        raise ValueError(f"render {render.shape} {render.dtype} must match the image {image.shape} uint8")
    a1_image = image.copy() if params.a1 is None else aug.color_jitter(image, params.a1)

    stacked = np.concatenate([a1_image, render], axis=2)
    both, source_labels = aug.spatial(stacked, labels, params.spatial_a)
    gt, render_out = np.ascontiguousarray(both[..., :3]), np.ascontiguousarray(both[..., 3:])
    face_mask = rep.face_mask(source_labels)
    a2_face = aug.color_jitter(gt * face_mask[..., None], params.a2)
    gray = rep.gray_bgr_quirk(rep.image_batch(a2_face))[0, 0].numpy()

    ref_image, ref_labels = aug.spatial(a1_image, labels, params.spatial_b)
    return SampleStages(
        a1_image=a1_image,
        gt=gt,
        render=render_out,
        source_labels=source_labels,
        face_mask=face_mask,
        a2_face=a2_face,
        gray=gray,
        ref_image=ref_image,
        ref_labels=ref_labels,
        ref_face_mask=rep.face_mask(ref_labels),
    )


# Keys of a training sample (official `MakeupDataset` names; `source_seg` / `ref_seg` are our additions).
IMAGE_KEYS = ("image_GT", "source_depth", "source_bg", "ref_face")
SAMPLE_KEYS = (
    *IMAGE_KEYS,
    "source_face_gray",
    "source_seg_onehot",
    "ref_seg_onehot",
    "source_face_seg",
    "source_neck_ears_seg",
    "source_seg",
    "ref_seg",
)


def sample_tensors(stages: SampleStages) -> dict[str, torch.Tensor]:
    """The training sample as the model reads it (one item, no batch dimension; S = 256):

    float32 in [-1, 1] (u8 -> (u8/255 − 0.5)/0.5): image_GT, source_depth, source_bg (GT ⊙ (1 − M_s)),
    ref_face (R ⊙ M_face(S_r)): (3, S, S); source_face_gray (1, S, S).
    float32 {0, 1}: source_seg_onehot, ref_seg_onehot (19, S, S); source_face_seg (M_s),
    source_neck_ears_seg (1, S, S).
    uint8 ids 0..18: source_seg, ref_seg (1, S, S).
    """
    gt_u8 = _nchw(stages.gt)
    mask_u8 = rep.label_batch(stages.face_mask)
    source_seg = rep.label_batch(stages.source_labels)
    ref_seg = rep.label_batch(stages.ref_labels)
    ref_face_u8 = rep.makeup_representation(_nchw(stages.ref_image), rep.label_batch(stages.ref_face_mask))
    tensors = {
        "image_GT": rep.to_unit_range(gt_u8),
        "source_depth": rep.to_unit_range(_nchw(stages.render)),
        "source_bg": rep.to_unit_range(rep.background(gt_u8, mask_u8)),
        "ref_face": rep.to_unit_range(ref_face_u8),
        "source_face_gray": rep.to_unit_range(rep.label_batch(stages.gray)),
        "source_seg_onehot": rep.one_hot(source_seg),
        "ref_seg_onehot": rep.one_hot(ref_seg),
        "source_face_seg": mask_u8.to(torch.float32),
        "source_neck_ears_seg": rep.neck_ears_mask(source_seg).to(torch.float32),
        "source_seg": source_seg,
        "ref_seg": ref_seg,
    }
    return {key: tensors[key][0].contiguous() for key in SAMPLE_KEYS}


def _nchw(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> contiguous (1, 3, H, W) uint8 (element-wise ops on a permuted view are slow)."""
    return rep.image_batch(image).contiguous()


def make_sample(
    image: np.ndarray, labels: np.ndarray, render: np.ndarray, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """Draw parameters from ``rng`` and build the sample (see ``sample_tensors`` for the keys)."""
    return sample_tensors(augment_sample(image, labels, render, draw_sample_params(rng)))


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of samples into a batch: tensors get a leading batch dimension (B, ...), any other
    value (a face's name, its index) becomes a list."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch
