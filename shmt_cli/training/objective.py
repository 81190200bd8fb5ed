"""SHMT's training objective, as the official `LatentDiffusion.get_input` + `p_losses` compute it (spec §4).

Per batch:

1. `model_inputs`: z0 = E(GT), z_bg = E(I_bg), z_ref = E(I_m) with the frozen VQ (unquantised, scale 1);
   the texture detail s·h_level mapped to 64² (s = the batch's amplitude jitter),
   C = cat[detail, unshuffle4(render)], U_m = unshuffle4(I_m), M64, 64² one-hots, and the L_corr target
   GT ⊙ M_s. (The jitter s is drawn by the caller: `augment.draw_detail_scale`.)
2. `training_losses`: z_t = √ᾱ_t·z0 + √(1−ᾱ_t)·ε, the denoiser in the "train" IDA form, then
   L_simple = mean_b mean_chw (ε̂ − ε)², L_corr = mean_b mean_chw (shuffle4(Â[3:51]) − GT ⊙ M_s)²,
   L = L_simple + L_corr. (The official per-sample division by exp(logvar_t) and the VLB term have
   logvar ≡ 0 and weight 0; the VLB is still reported, as the official logs it.)

t, ε and the jitter draw are arguments: who draws them (and how reproducibly) is the caller's business.
The batch is the official dataset dict, collated: float32 images in [-1, 1] under the official keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from shmt_cli.engines.shmt import vq as vqmod
from shmt_cli.engines.shmt.model import DenoiserInputs, DenoiserOutput, ShmtDenoiser
from shmt_cli.engines.shmt.sampler import ldm_betas, ldm_schedule_buffers
from shmt_cli.representations import LATENT_FACTOR, content_tensor, detail_64, mask_64, onehot_64, unshuffle4

#: The official batch keys the model reads. Images (B, 3, 256, 256) float in [-1, 1] (`source_depth` is
#: the 3D render, BGR as read), gray (B, 1, 256, 256) in [-1, 1], one-hots (B, 19, 256, 256) {0, 1},
#: `source_face_seg` M_s (B, 1, 256, 256) {0, 1} (any numeric dtype).
BATCH_KEYS = (
    "image_GT",
    "source_depth",
    "source_bg",
    "source_face_gray",
    "ref_face",
    "source_seg_onehot",
    "ref_seg_onehot",
    "source_face_seg",
)
NUM_TIMESTEPS = 1000
#: Weights of the two loss terms (official `l_simple_weight` and the correspondence loss weight).
SIMPLE_WEIGHT, CORR_WEIGHT = 1.0, 1.0


@dataclass
class TrainInputs:
    """`model_inputs` output. z0 (B, 3, 64, 64) the target latent; denoiser = the conditioning;
    target_face (B, 3, 256, 256) = GT ⊙ M_s in [-1, 1] with 0 off the face (the L_corr target)."""

    z0: torch.Tensor
    denoiser: DenoiserInputs
    target_face: torch.Tensor


def _require(batch: Mapping[str, torch.Tensor]) -> None:
    missing = [key for key in BATCH_KEYS if key not in batch]
    if missing:
        raise KeyError(f"training batch lacks {missing}")


@torch.no_grad()
def model_inputs(
    vq: torch.nn.Module, batch: Mapping[str, torch.Tensor], level: int, scale: float
) -> TrainInputs:
    """The official `get_input` on a collated batch (see the module docstring); no gradients.

    `level` is the Laplacian level of the variant (0 or 4); `scale` the amplitude jitter s (1 = none),
    applied as float32(s): the official float32 band × Python float rounds exactly like that.
    Tensors are moved to the VQ's device and cast to float32.
    """
    _require(batch)
    device = next(vq.parameters()).device
    b = {key: batch[key].to(device=device, dtype=torch.float32) for key in BATCH_KEYS}
    gt = b["image_GT"]
    z0 = vqmod.encode(vq, gt).float()
    z_bg = vqmod.encode(vq, b["source_bg"]).float()
    z_ref = vqmod.encode(vq, b["ref_face"]).float()
    detail = detail_64(b["source_face_gray"], level, float(np.float32(scale)))
    inputs = DenoiserInputs(
        z_bg=z_bg,
        content=content_tensor(detail, b["source_depth"]),
        z_ref=z_ref,
        ref_pixels=unshuffle4(b["ref_face"]),
        mask64=mask_64(b["source_face_seg"]),
        onehot_src=onehot_64(b["source_seg_onehot"]),
        onehot_ref=onehot_64(b["ref_seg_onehot"]),
    )
    return TrainInputs(z0=z0, denoiser=inputs, target_face=gt * b["source_face_seg"])


class Schedule:
    """The float32 LDM schedule buffers the loss needs, on one device (spec §3.1)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        buffers = ldm_schedule_buffers(NUM_TIMESTEPS)
        self.sqrt_alphas_cumprod = buffers["sqrt_alphas_cumprod"].to(device)
        self.sqrt_one_minus_alphas_cumprod = buffers["sqrt_one_minus_alphas_cumprod"].to(device)
        # Official eps-parameterisation VLB weights, float32 from the float32 buffers; entry 0 copies entry 1.
        betas, cumprod = buffers["betas"], buffers["alphas_cumprod"]
        alphas = torch.tensor(1.0 - ldm_betas(NUM_TIMESTEPS), dtype=torch.float32)
        weights = betas**2 / (2 * buffers["posterior_variance"] * alphas * (1 - cumprod))
        weights[0] = weights[1]
        self.lvlb_weights = weights.to(device)

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z_t = √ᾱ_t·z0 + √(1−ᾱ_t)·ε for z0, ε (B, C, H, W) and t (B,) int64."""
        shape = (-1, *([1] * (z0.dim() - 1)))
        a = self.sqrt_alphas_cumprod.gather(0, t).reshape(shape)
        s = self.sqrt_one_minus_alphas_cumprod.gather(0, t).reshape(shape)
        return a * z0 + s * eps


@dataclass
class LossTerms:
    """total () with gradients = SIMPLE_WEIGHT·simple + CORR_WEIGHT·corr; simple, corr, vlb () detached
    batch means; simple_per_sample, corr_per_sample (B,) detached; z_t (B, 3, 64, 64); out = the
    denoiser's output (ε̂, Â, w, coordinates)."""

    total: torch.Tensor
    simple: torch.Tensor
    corr: torch.Tensor
    vlb: torch.Tensor
    simple_per_sample: torch.Tensor
    corr_per_sample: torch.Tensor
    z_t: torch.Tensor
    out: DenoiserOutput

    def logged(self) -> dict[str, float]:
        """The official logged scalars as Python floats: loss, loss_simple, loss_corr, loss_vlb."""
        return {
            "loss": float(self.total.detach()),
            "loss_simple": float(self.simple),
            "loss_corr": float(self.corr),
            "loss_vlb": float(self.vlb),
        }


def warped_makeup(warped: torch.Tensor) -> torch.Tensor:
    """The warped makeup image (B, 3, 256, 256) from Â (B, 51, 64, 64): shuffle4 of channels 3:51."""
    return F.pixel_shuffle(warped[:, 3:51], LATENT_FACTOR)


def training_losses(
    denoiser: ShmtDenoiser | torch.nn.Module,
    inputs: TrainInputs,
    t: torch.Tensor,
    eps: torch.Tensor,
    schedule: Schedule,
) -> LossTerms:
    """L = L_simple + L_corr for given t (B,) int64 in 0..999 and ε (B, 3, 64, 64) (module docstring).

    Runs the denoiser (a `ShmtDenoiser`, possibly DDP-wrapped) with gradients (if enabled) in the "train"
    IDA form; under an enclosing autocast
    the UNet runs in the autocast dtype and the losses are computed in float32.
    """
    z_t = schedule.q_sample(inputs.z0, t, eps)
    out = denoiser(z_t, t, inputs.denoiser, ida_form="train")
    simple_per = ((out.eps.float() - eps) ** 2).mean(dim=(1, 2, 3))
    corr_per = ((warped_makeup(out.warped.float()) - inputs.target_face) ** 2).mean(dim=(1, 2, 3))
    simple, corr = simple_per.mean(), corr_per.mean()
    total = SIMPLE_WEIGHT * simple + CORR_WEIGHT * corr
    vlb = (schedule.lvlb_weights.gather(0, t) * simple_per).mean()
    return LossTerms(
        total=total,
        simple=simple.detach(),
        corr=corr.detach(),
        vlb=vlb.detach(),
        simple_per_sample=simple_per.detach(),
        corr_per_sample=corr_per.detach(),
        z_t=z_t,
        out=out,
    )
