"""SHMT's DINO metrics (paper §4.1, following Splice, Tumanyan et al. 2022): CLS and Key-sim.

Both read DINO's ViT-B/8 on inputs resized to 224x224 (bilinear, antialiased when shrinking, like
torchvision's ``Resize``) and normalised with the ImageNet mean and std, at the last layer (block 11):

* **CLS** (makeup fidelity, reference vs result, higher is better): cosine similarity of the [CLS]
  token output by the last block. Splice's appearance loss reads the token there, i.e. before the
  backbone's final LayerNorm, so we do too.
* **Key-sim** (content preservation, source vs result, higher is better): Splice's structure
  descriptor is the self-similarity of the last block's attention keys: per token, the keys of all 12
  heads concatenated (768-d), cosine similarity between every pair of tokens, [CLS] included, giving
  a (785, 785) matrix S(x). Splice's structure *loss* is the mean squared difference of S(source) and
  S(result), a distance. For a similarity we report the cosine similarity of the two matrices seen
  as vectors, <S(a), S(b)>_F / (|S(a)|_F |S(b)|_F): 1.0 for identical structure, it needs no scale
  (S entries lie in [-1, 1]) and equals 1 - d^2 / 2 for the Frobenius distance d between the
  unit-normalised matrices, so it is the "1 - normalised Frobenius distance" family in closed form.
  Splice's own mean squared difference is reported beside it (``keysim_mse``, lower is better).

SHMT published no evaluation code, so these definitions are ours; absolute values are comparable
only with numbers computed the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from shmt_cli.metrics.paper import ImageBatch, image_list, resized_batches
from shmt_cli.metrics.vit import DinoViT, ViTOutput

DINO_INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Norms below this count as zero when normalising keys (Splice uses the same floor).
COSINE_EPS = 1e-8


@dataclass(frozen=True)
class DinoScores:
    """Per-pair scores, each (N,) float64."""

    #: Cosine similarity of the last block's [CLS] tokens, reference vs result, in [-1, 1].
    cls: np.ndarray
    #: Cosine similarity of the key self-similarity matrices, source vs result, in [-1, 1].
    keysim: np.ndarray
    #: Splice's structure distance: mean squared difference of the same matrices, in [0, 4].
    keysim_mse: np.ndarray


def _model_device(model: DinoViT, device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else next(model.parameters()).device


def normalize_imagenet(batch: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float32 in [0, 1] -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std


@torch.no_grad()
def dino_outputs(
    model: DinoViT,
    images: ImageBatch,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    size: int = DINO_INPUT_SIZE,
) -> Iterator[ViTOutput]:
    """Run the ViT on images resized to ``size``, yielding one ViTOutput per batch of <= ``batch_size``.

    A generator, so callers reduce each batch (keys are ~2.4 MB per image) before the next one runs.
    """
    device = _model_device(model, device)
    model = model.to(device)
    for batch in resized_batches(images, size, batch_size, antialias=True, device=device):
        yield model(normalize_imagenet(batch))


def cosine_self_similarity(keys: torch.Tensor, eps: float = COSINE_EPS) -> torch.Tensor:
    """Self-similarity of tokens from per-head keys.

    keys: (B, heads, T, head_dim). Heads are concatenated per token to (B, T, heads * head_dim);
    returns (B, T, T) cosine similarities, symmetric, diagonal 1 for non-zero tokens.
    """
    batch, heads, count, head_dim = keys.shape
    tokens = keys.permute(0, 2, 1, 3).reshape(batch, count, heads * head_dim)
    norms = tokens.norm(dim=2, keepdim=True)
    return (tokens @ tokens.transpose(1, 2)) / (norms @ norms.transpose(1, 2)).clamp_min(eps)


def matrix_cosine(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(B, ...) x (B, ...) -> (B,) float64 cosine similarity of each pair flattened to vectors."""
    return F.cosine_similarity(first.flatten(1).double(), second.flatten(1).double(), dim=1, eps=COSINE_EPS)


def mean_squared_difference(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(B, ...) x (B, ...) -> (B,) float64 mean of squared differences per pair (Splice's structure loss)."""
    return (first.double() - second.double()).pow(2).flatten(1).mean(dim=1)


def _check_pairs(first: ImageBatch, second: ImageBatch, names: str) -> tuple[list, list]:
    first_list, second_list = image_list(first), image_list(second)
    if len(first_list) != len(second_list):
        raise ValueError(f"{names} must pair up: got {len(first_list)} and {len(second_list)} images")
    return first_list, second_list


@torch.no_grad()
def dino_scores(
    model: DinoViT,
    sources: ImageBatch,
    references: ImageBatch,
    results: ImageBatch,
    batch_size: int = 4,
    device: str | torch.device | None = None,
) -> DinoScores:
    """CLS (references vs results) and Key-sim (sources vs results) with one forward pass per image."""
    sources, results = _check_pairs(sources, results, "sources and results")
    references, _ = _check_pairs(references, results, "references and results")
    cls_parts, cos_parts, mse_parts = [], [], []
    for start in range(0, len(results), batch_size):
        window = slice(start, start + batch_size)
        (src,) = list(dino_outputs(model, sources[window], batch_size, device))
        (ref,) = list(dino_outputs(model, references[window], batch_size, device))
        (res,) = list(dino_outputs(model, results[window], batch_size, device))
        src_sim, res_sim = cosine_self_similarity(src.last_keys), cosine_self_similarity(res.last_keys)
        cls_parts.append(matrix_cosine(ref.cls, res.cls).cpu())
        cos_parts.append(matrix_cosine(src_sim, res_sim).cpu())
        mse_parts.append(mean_squared_difference(src_sim, res_sim).cpu())
    if not cls_parts:
        empty = np.zeros(0)
        return DinoScores(empty, empty, empty)
    return DinoScores(
        cls=torch.cat(cls_parts).numpy(),
        keysim=torch.cat(cos_parts).numpy(),
        keysim_mse=torch.cat(mse_parts).numpy(),
    )
