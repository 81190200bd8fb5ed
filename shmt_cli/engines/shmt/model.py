"""The SHMT denoiser: IDA + UNet, and the one place that assembles the UNet input (spec §2.2).

    x_in = cat[z_t (3), z_bg (3), C (64 | 49), Â[:, :51]]  ->  UNet  ->  ε (B, 3, 64, 64)

Two IDA forms (spec §2.4, §8 #1):
  "train"   = the official training form: Â = (w·A0 + (1−w)·A1)[:, :51] ⊙ M64, A0 driven by z_t ⊙ M64,
              A1 by the content C, w = w(t) from the timestep MLP;
  "release" = the official inference form: Â = A1[:, :51] ⊙ M64 (independent of z_t and t).

Two ways in:
  * `ShmtDenoiser.forward(z_t, t, inputs, ida_form)`: everything from raw inputs, differentiable (training,
    parity checks);
  * `prepare_reference` + `prepare_pair` once per pair, then `epsilon(z_t, t, prepared)` at every DDIM step
    (inference): the reference encoding and the content warp A1 do not depend on z_t, so they are computed
    once; the UNet input's constant channels [z_bg, C (, Â)] live in one channels_last buffer written once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .config import LATENT_CHANNELS, WARPED_REF_CHANNELS, VariantConfig
from .ida import PreparedReference, ShmtIda, blend_warps
from .unet import ShmtUNet

IdaForm = Literal["train", "release"]
IDA_FORMS: tuple[IdaForm, ...] = ("train", "release")
#: Upper bound of one correlation energy buffer (B, M, chunk) float32.
ENERGY_BYTES = 256 << 20


@dataclass
class DenoiserInputs:
    """Everything but z_t and t that conditions the denoiser; float tensors, batch B.

    z_bg (B, 3, 64, 64) VQ latent of the background; content C (B, 64 | 49, 64, 64); z_ref (B, 3, 64, 64)
    VQ latent of the makeup image; ref_pixels (B, 48, 64, 64) = pixel_unshuffle(makeup image in [-1, 1], 4);
    mask64 (B, 1, 64, 64) in [0, 1]; onehot_src, onehot_ref (B, 19, S, S) {0, 1}, S = 64 or 256.
    """

    z_bg: torch.Tensor
    content: torch.Tensor
    z_ref: torch.Tensor
    ref_pixels: torch.Tensor
    mask64: torch.Tensor
    onehot_src: torch.Tensor
    onehot_ref: torch.Tensor


@dataclass
class DenoiserOutput:
    """eps (B, 3, 64, 64); warped Â (B, 51, 64, 64), the IDA part of the UNet input; w (B, 1) the
    training-form blend weight (None unless computed); coords (B, 4, 64, 64) the warped (x, y) coordinate
    channels of A0 then A1, as the official IDA returns them (None unless computed)."""

    eps: torch.Tensor
    warped: torch.Tensor
    w: torch.Tensor | None = None
    coords: torch.Tensor | None = None


@dataclass
class PreparedPair:
    """What one batch of pairs needs at every DDIM step, computed once by `ShmtDenoiser.prepare_pair`.

    content_warp: A1, all 53 channels, unmasked (B, 53, 64, 64) float32. buffer: the UNet input's
    constant channels (B, C_in − 3, 64, 64) float32 channels_last, [z_bg, C, Â] (Â written in the release
    form only; the train form computes it per step).
    """

    form: IdaForm
    reference: PreparedReference
    mask64: torch.Tensor
    onehot_src: torch.Tensor
    content_warp: torch.Tensor
    buffer: torch.Tensor
    query_chunk: int | None

    @property
    def warp_slot(self) -> torch.Tensor:
        return self.buffer[:, -WARPED_REF_CHANNELS:]


def query_chunk(batch: int, positions: int) -> int | None:
    """Query positions per correlation chunk keeping the (B, M, chunk) energy under ENERGY_BYTES."""
    per_query = batch * positions * 4
    if per_query * positions <= ENERGY_BYTES:
        return None
    return max(256, ENERGY_BYTES // per_query)


def _check_form(form: str) -> None:
    if form not in IDA_FORMS:
        raise ValueError(f"ida_form must be 'train' or 'release', got {form!r}")


class ShmtDenoiser(nn.Module):
    """One SHMT variant (h0 or h4): `ida` (ShmtIda) warps the reference, `unet` (ShmtUNet) predicts ε.

    State-dict names are ``unet.<official UNet name>`` and ``ida.<official IDA name>``. `use_unet_runner`
    swaps in another callable for the UNet call (e.g. a torch.compile'd UNet) without registering it as a
    submodule.
    """

    def __init__(self, config: VariantConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = ShmtUNet(config.unet)
        self.ida = ShmtIda(config.ida)
        self.__dict__["_run_unet"] = None

    def use_unet_runner(self, runner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None) -> None:
        """Run the UNet through `runner` (same signature as `unet`) in `epsilon`; None = the module."""
        self.__dict__["_run_unet"] = runner

    def with_unet(
        self,
        unet: ShmtUNet | None = None,
        runner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> ShmtDenoiser:
        """A denoiser sharing this one's IDA (and UNet unless `unet` is given), with its own UNet runner,
        e.g. a bf16 copy of the UNet next to the float32 one."""
        twin = copy.copy(self)
        twin._modules = dict(self._modules)  # the copy's own module table, so `unet` can differ
        twin.__dict__["_run_unet"] = runner
        if unet is not None:
            twin.unet = unet
        return twin

    @property
    def unet_runner(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return self.__dict__["_run_unet"] or self.unet

    @staticmethod
    def unet_input(
        z_t: torch.Tensor, z_bg: torch.Tensor, content: torch.Tensor, warped: torch.Tensor
    ) -> torch.Tensor:
        """cat[z_t, z_bg, C, Â] (B, 121 | 106, 64, 64) float32, the official channel order (spec §2.2)."""
        return torch.cat([z_t.float(), z_bg.float(), content.float(), warped[:, :WARPED_REF_CHANNELS]], dim=1)

    # -- the differentiable whole ------------------------------------------------------------------

    def forward(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        inputs: DenoiserInputs,
        ida_form: IdaForm,
        *,
        official_outputs: bool = False,
    ) -> DenoiserOutput:
        """ε for z_t (B, 3, 64, 64) at t (B,) int64 from raw inputs, with gradients if enabled.

        The train form also returns w (B, 1) and the coordinate channels; the release form returns them
        only with `official_outputs` (they need the latent warp A0 the release form does not use).
        """
        _check_form(ida_form)
        reference = self.ida.prepare_reference(inputs.z_ref, inputs.ref_pixels, inputs.onehot_ref)
        chunk = query_chunk(z_t.shape[0], reference.features.shape[2])
        a1 = self.ida.content_warp_prepared(inputs.content, inputs.onehot_src, reference, chunk)
        w = coords = None
        if ida_form == "train" or official_outputs:
            a0 = self.ida.latent_warp_prepared(z_t, inputs.mask64, inputs.onehot_src, reference, chunk)
            w = self.ida.proportion(t)
            coords = torch.cat([a0[:, WARPED_REF_CHANNELS:], a1[:, WARPED_REF_CHANNELS:]], dim=1)
        if ida_form == "train":
            warped = blend_warps(a0, a1, w, inputs.mask64)
        else:
            warped = a1[:, :WARPED_REF_CHANNELS] * inputs.mask64.float()
        eps = self.unet(self.unet_input(z_t, inputs.z_bg, inputs.content, warped), t)
        return DenoiserOutput(eps=eps, warped=warped, w=w, coords=coords)

    # -- inference: once per pair, then once per step ----------------------------------------------

    def prepare_reference(
        self, z_ref: torch.Tensor, ref_pixels: torch.Tensor, onehot_ref: torch.Tensor
    ) -> PreparedReference:
        """The IDA's reference side (z_ref (B, 3, 64, 64), ref_pixels (B, 48, 64, 64), onehot_ref (B, 19, S,
        S)), reusable for every source paired with these references."""
        return self.ida.prepare_reference(z_ref, ref_pixels, onehot_ref)

    def prepare_pair(
        self,
        z_bg: torch.Tensor,
        content: torch.Tensor,
        mask64: torch.Tensor,
        onehot_src: torch.Tensor,
        reference: PreparedReference,
        ida_form: IdaForm,
    ) -> PreparedPair:
        """Everything of a batch of pairs that does not depend on z_t: the content warp A1 and the UNet
        input buffer with [z_bg, C] (and, in the release form, Â) written. Shapes as in `DenoiserInputs`."""
        _check_form(ida_form)
        chunk = query_chunk(content.shape[0], reference.features.shape[2])
        content_warp = self.ida.content_warp_prepared(content, onehot_src, reference, chunk)
        b, c, height, width = content.shape
        buffer = torch.empty(
            (b, LATENT_CHANNELS + c + WARPED_REF_CHANNELS, height, width), device=content.device
        ).contiguous(memory_format=torch.channels_last)
        buffer[:, :LATENT_CHANNELS] = z_bg
        buffer[:, LATENT_CHANNELS : LATENT_CHANNELS + c] = content
        prepared = PreparedPair(ida_form, reference, mask64, onehot_src, content_warp, buffer, chunk)
        if ida_form == "release":
            prepared.warp_slot.copy_(self.warped(prepared))
        return prepared

    def prepare(self, inputs: DenoiserInputs, ida_form: IdaForm) -> PreparedPair:
        """`prepare_pair` from raw inputs (the reference side encoded here)."""
        reference = self.prepare_reference(inputs.z_ref, inputs.ref_pixels, inputs.onehot_ref)
        return self.prepare_pair(
            inputs.z_bg, inputs.content, inputs.mask64, inputs.onehot_src, reference, ida_form
        )

    def warped(
        self, prepared: PreparedPair, z_t: torch.Tensor | None = None, t: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Â (B, 51, 64, 64) float32 of a prepared pair; the train form needs z_t and t."""
        mask = prepared.mask64
        if prepared.form == "release":
            return prepared.content_warp[:, :WARPED_REF_CHANNELS] * mask
        if z_t is None or t is None:
            raise ValueError("the train IDA form needs the noisy latent and the timestep")
        latent_warp = self.ida.latent_warp_prepared(
            z_t, mask, prepared.onehot_src, prepared.reference, prepared.query_chunk
        )
        return blend_warps(latent_warp, prepared.content_warp, self.ida.proportion(t), mask)

    def step_input(self, z_t: torch.Tensor, t: torch.Tensor, prepared: PreparedPair) -> torch.Tensor:
        """The UNet input cat[z_t, z_bg, C, Â] (B, C_in, 64, 64) float32 channels_last of one step, as a new
        tensor: `prepared` is only read, so one compiled graph can take it from static buffers."""
        constant = prepared.buffer
        if prepared.form == "train":
            warped = self.warped(prepared, z_t, t)
            constant = torch.cat([constant[:, :-WARPED_REF_CHANNELS], warped], dim=1)
        parts = [z_t.to(constant.dtype), constant]
        return torch.cat(parts, dim=1).contiguous(memory_format=torch.channels_last)

    def run_unet(
        self, x_in: torch.Tensor, t: torch.Tensor, autocast: torch.dtype | None = None
    ) -> torch.Tensor:
        """ε (B, 3, 64, 64) float32 of the UNet (or its runner) for the input x_in at t (B,) int64.

        `autocast` runs it under autocast in that dtype, unless its weights are already lower precision
        (a UNet cast to bf16 needs no autocast).
        """
        weights_fp32 = self.unet.time_embed[0].weight.dtype == torch.float32
        enabled = autocast is not None and weights_fp32
        with torch.autocast(x_in.device.type, dtype=autocast or torch.float32, enabled=enabled):
            eps = self.unet_runner(x_in, t)
        return eps.float()

    def epsilon(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        prepared: PreparedPair,
        autocast: torch.dtype | None = None,
    ) -> torch.Tensor:
        """ε (B, 3, 64, 64) float32 for z_t (B, 3, 64, 64) at t (B,) int64 of a prepared pair.

        The IDA always runs in float32; `autocast` as in `run_unet`.
        """
        return self.run_unet(self.step_input(z_t, t, prepared), t, autocast)
