"""The VQ-f4 first stage: diffusers' ``VQModel`` configured as the LDM "vq-f4" autoencoder.

SHMT encodes images to *unquantised* 3x64x64 latents and snaps only the final DDIM sample to the
codebook before decoding (reference §2.1). This module builds the model, converts official LDM weight
names to diffusers' names (our own table, every key accounted for) and exposes ``encode``,
``quantize`` and ``decode`` as plain functions.

Checked against diffusers (0.42) while writing the conversion:

* diffusers' ``Downsample2D`` with ``padding=0`` pads (0, 1, 0, 1) with zeros and then runs the
  3x3 stride-2 conv, exactly like LDM's ``Downsample``; its ``Encoder`` uses ``downsample_padding=0``.
* LDM builds the decoder's ``up`` list with ``insert(0, ...)`` so ``up.0`` is the *full-resolution*
  level and the forward pass walks it backwards; diffusers' ``up_blocks.0`` is the *lowest*
  resolution level. Hence ``decoder.up.{i}`` -> ``decoder.up_blocks.{levels - 1 - i}``.
* LDM's mid-block attention uses 1x1 ``Conv2d`` q/k/v/proj_out; diffusers' ``Attention`` uses
  ``Linear``. A (C, C, 1, 1) conv kernel is reshaped to the (C, C) linear weight.
* All GroupNorms are 32 groups with eps 1e-6 in both; attention is single-head with scale C^-1/2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

if TYPE_CHECKING:  # diffusers takes seconds to import: only when a VQ is built (not for the classic engine)
    from diffusers import VQModel

SizeClass = Literal["full", "tiny"]

#: Prefix of the VQ inside an official SHMT (LatentDiffusion) state dict.
SHMT_PREFIX = "first_stage_model."


@dataclass(frozen=True)
class VqF4Config:
    """Hyper-parameters of the LDM vq-f4 autoencoder (``ddconfig`` + quantiser)."""

    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    latent_channels: int = 3
    num_codes: int = 8192
    norm_groups: int = 32

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)


#: The released LDM vq-f4 (used by both SHMT checkpoints).
VQ_F4_FULL = VqF4Config()
#: The golden "tiny" variant: ``ch`` 128 -> 32, ``n_embed`` 8192 -> 256.
VQ_F4_TINY = VqF4Config(base_channels=32, num_codes=256)

VQ_CONFIGS: dict[str, VqF4Config] = {"full": VQ_F4_FULL, "tiny": VQ_F4_TINY}


class LdmSwish(nn.Module):
    """x·sigmoid(x) computed as LDM's ``nonlinearity`` does, not with the fused ``F.silu``.

    The two round differently; through the encoder that moved z_ref by 3.6e-6, which the IDA's ×100
    correlation amplified into 2.8e-4 on the warp. The LDM form halves the encoder difference.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def _use_ldm_swish(model: nn.Module) -> None:
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.SiLU):
                setattr(module, name, LdmSwish())


def build_vq(config: VqF4Config = VQ_F4_FULL) -> VQModel:
    """A randomly initialised diffusers ``VQModel`` with the vq-f4 layout, in eval mode."""
    from diffusers import VQModel

    levels = len(config.channel_mult)
    model = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.num_res_blocks,
        act_fn="silu",
        latent_channels=config.latent_channels,
        num_vq_embeddings=config.num_codes,
        norm_num_groups=config.norm_groups,
        vq_embed_dim=config.latent_channels,
        scaling_factor=1.0,
        norm_type="group",
        mid_block_add_attention=True,
    )
    _use_ldm_swish(model)
    model.requires_grad_(False)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Official key layout and conversion


def official_vq_shapes(config: VqF4Config = VQ_F4_FULL) -> dict[str, tuple[int, ...]]:
    """Every key of an LDM ``VQModelInterface`` state dict (no prefix) with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    chans = config.block_out_channels
    z = config.latent_channels

    def conv(name: str, c_out: int, c_in: int, k: int) -> None:
        shapes[f"{name}.weight"] = (c_out, c_in, k, k)
        shapes[f"{name}.bias"] = (c_out,)

    def norm(name: str, c: int) -> None:
        shapes[f"{name}.weight"] = (c,)
        shapes[f"{name}.bias"] = (c,)

    def resnet(name: str, c_in: int, c_out: int) -> None:
        norm(f"{name}.norm1", c_in)
        conv(f"{name}.conv1", c_out, c_in, 3)
        norm(f"{name}.norm2", c_out)
        conv(f"{name}.conv2", c_out, c_out, 3)
        if c_in != c_out:
            conv(f"{name}.nin_shortcut", c_out, c_in, 1)

    def mid(name: str, c: int) -> None:
        resnet(f"{name}.block_1", c, c)
        norm(f"{name}.attn_1.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            conv(f"{name}.attn_1.{proj}", c, c, 1)
        resnet(f"{name}.block_2", c, c)

    conv("encoder.conv_in", chans[0], 3, 3)
    c_prev = chans[0]
    for level, c in enumerate(chans):
        for j in range(config.num_res_blocks):
            resnet(f"encoder.down.{level}.block.{j}", c_prev, c)
            c_prev = c
        if level != len(chans) - 1:
            conv(f"encoder.down.{level}.downsample.conv", c, c, 3)
    mid("encoder.mid", chans[-1])
    norm("encoder.norm_out", chans[-1])
    conv("encoder.conv_out", z, chans[-1], 3)

    conv("decoder.conv_in", chans[-1], z, 3)
    mid("decoder.mid", chans[-1])
    c_prev = chans[-1]
    for level in reversed(range(len(chans))):
        c = chans[level]
        for j in range(config.num_res_blocks + 1):
            resnet(f"decoder.up.{level}.block.{j}", c_prev, c)
            c_prev = c
        if level != 0:
            conv(f"decoder.up.{level}.upsample.conv", c, c, 3)
    norm("decoder.norm_out", chans[0])
    conv("decoder.conv_out", 3, chans[0], 3)

    shapes["quantize.embedding.weight"] = (config.num_codes, z)
    conv("quant_conv", z, z, 1)
    conv("post_quant_conv", z, z, 1)
    return shapes


_RESNET_PARTS = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "nin_shortcut": "conv_shortcut",
}
_ATTN_PARTS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_MID_RESNETS = {"block_1": "0", "block_2": "1"}

_RE_DOWN_BLOCK = re.compile(r"encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)")
_RE_DOWN_SAMPLE = re.compile(r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)")
_RE_UP_BLOCK = re.compile(r"decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)")
_RE_UP_SAMPLE = re.compile(r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)")
_RE_MID_RESNET = re.compile(r"(encoder|decoder)\.mid\.(block_1|block_2)\.(\w+)\.(weight|bias)")
_RE_MID_ATTN = re.compile(r"(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)")
_RE_ENDS = re.compile(r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.(weight|bias)")
_SAME_NAME = {
    "quantize.embedding.weight",
    "quant_conv.weight",
    "quant_conv.bias",
    "post_quant_conv.weight",
    "post_quant_conv.bias",
}


def diffusers_vq_key(official: str, num_levels: int = 3) -> str:
    """Map one official vq-f4 key (no prefix) to the diffusers ``VQModel`` key.

    Raises ``KeyError`` for a name that is not part of the autoencoder.
    """
    if official in _SAME_NAME:
        return official
    if m := _RE_DOWN_BLOCK.fullmatch(official):
        level, j, part, kind = m.groups()
        return f"encoder.down_blocks.{level}.resnets.{j}.{_RESNET_PARTS[part]}.{kind}"
    if m := _RE_DOWN_SAMPLE.fullmatch(official):
        level, kind = m.groups()
        return f"encoder.down_blocks.{level}.downsamplers.0.conv.{kind}"
    if m := _RE_UP_BLOCK.fullmatch(official):
        level, j, part, kind = m.groups()
        return f"decoder.up_blocks.{num_levels - 1 - int(level)}.resnets.{j}.{_RESNET_PARTS[part]}.{kind}"
    if m := _RE_UP_SAMPLE.fullmatch(official):
        level, kind = m.groups()
        return f"decoder.up_blocks.{num_levels - 1 - int(level)}.upsamplers.0.conv.{kind}"
    if m := _RE_MID_RESNET.fullmatch(official):
        side, block, part, kind = m.groups()
        return f"{side}.mid_block.resnets.{_MID_RESNETS[block]}.{_RESNET_PARTS[part]}.{kind}"
    if m := _RE_MID_ATTN.fullmatch(official):
        side, part, kind = m.groups()
        return f"{side}.mid_block.attentions.0.{_ATTN_PARTS[part]}.{kind}"
    if m := _RE_ENDS.fullmatch(official):
        side, part, kind = m.groups()
        return f"{side}.{'conv_norm_out' if part == 'norm_out' else part}.{kind}"
    raise KeyError(official)


@dataclass
class VqConversion:
    """Result of converting an official state dict: diffusers tensors plus a per-key account."""

    state_dict: dict[str, torch.Tensor]
    config: VqF4Config
    loaded: dict[str, str] = field(default_factory=dict)  # official key -> diffusers key
    ignored: dict[str, str] = field(default_factory=dict)  # official key -> reason


def _ignore_reason(key: str, prefixed: bool) -> str | None:
    if prefixed and not key.startswith(SHMT_PREFIX):
        return "not part of the first stage (UNet, EMA, IDA or schedule)"
    bare = key[len(SHMT_PREFIX) :] if prefixed else key
    if bare.startswith("loss."):
        return "training loss module (LPIPS / discriminator), unused at inference"
    return None


def convert_vq_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: VqF4Config | None = None
) -> VqConversion:
    """Convert official VQ weights to diffusers ``VQModel`` names.

    Accepts a whole SHMT state dict (keys ``first_stage_model.*``; the rest is ignored) or a
    standalone LDM vq-f4 state dict (no prefix, ``loss.*`` ignored). Attention 1x1 conv kernels
    are reshaped to linear weights. Raises ``ValueError`` listing unknown, missing or mis-shaped keys.
    """
    prefixed = any(k.startswith(SHMT_PREFIX) for k in state_dict)
    vq_keys = {}
    ignored: dict[str, str] = {}
    for key, tensor in state_dict.items():
        reason = _ignore_reason(key, prefixed)
        if reason is not None:
            ignored[key] = reason
        else:
            vq_keys[key[len(SHMT_PREFIX) :] if prefixed else key] = (key, tensor)

    if config is None:
        config = infer_vq_config({k: t for k, (_, t) in vq_keys.items()})
    expected = official_vq_shapes(config)
    unknown = sorted(k for k in vq_keys if k not in expected)
    missing = sorted(k for k in expected if k not in vq_keys)
    wrong = sorted(
        f"{k}: {tuple(t.shape)} != {expected[k]}"
        for k, (_, t) in vq_keys.items()
        if k in expected and tuple(t.shape) != expected[k]
    )
    if unknown or missing or wrong:
        raise ValueError(
            "VQ-f4 weights do not match the expected layout: "
            f"unknown {unknown[:5]}{'...' if len(unknown) > 5 else ''} ({len(unknown)}), "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"wrong shape {wrong[:5]} ({len(wrong)})"
        )

    conversion = VqConversion(state_dict={}, config=config, ignored=ignored)
    levels = len(config.channel_mult)
    for bare, (key, tensor) in vq_keys.items():
        target = diffusers_vq_key(bare, levels)
        if ".attentions.0.to_" in target and target.endswith(".weight"):
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])
        conversion.state_dict[target] = tensor
        conversion.loaded[key] = target
    return conversion


def infer_vq_config(official: Mapping[str, torch.Tensor]) -> VqF4Config:
    """Read base width and codebook size from official (unprefixed) VQ tensors."""
    try:
        base = int(official["encoder.conv_in.weight"].shape[0])
        codes = int(official["quantize.embedding.weight"].shape[0])
    except KeyError as err:
        raise ValueError(f"not a VQ-f4 state dict: {err.args[0]} is missing") from None
    for candidate in VQ_CONFIGS.values():
        if candidate.base_channels == base and candidate.num_codes == codes:
            return candidate
    return VqF4Config(base_channels=base, num_codes=codes)


def load_vq(state_dict: Mapping[str, torch.Tensor], config: VqF4Config | None = None) -> VQModel:
    """Build a ``VQModel`` and load official weights into it (strict: every parameter is set).

    Tensors are cast to float32; ``.to(device)`` the result as needed.
    """
    conversion = convert_vq_state_dict(state_dict, config)
    model = build_vq(conversion.config)
    model.load_state_dict({k: v.float() for k, v in conversion.state_dict.items()}, strict=True)
    return model


# ---------------------------------------------------------------------------------------------
# The three operations SHMT uses


def _resnet(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """diffusers' ``ResnetBlock2D`` (no time embedding, eval) without its ``/ output_scale_factor`` pass
    (the factor is 1.0 here, checked) and with the residual added in place: one full-size pass and
    buffer fewer per block, bit-identical output (x + h == h + x, and /1.0 is exact)."""
    if block.output_scale_factor != 1.0:
        raise ValueError("the lean VQ path assumes output_scale_factor 1.0")
    act = block.nonlinearity
    h = block.conv1(act(block.norm1(x)))
    h = block.conv2(act(block.norm2(h)))  # dropout is the identity in eval mode
    h += x if block.conv_shortcut is None else block.conv_shortcut(x)
    return h


def _mid_block(mid: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = _resnet(mid.resnets[0], x)
    for attention, block in zip(mid.attentions, mid.resnets[1:], strict=True):
        x = _resnet(block, attention(x))
    return x


def run_encoder(encoder: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """diffusers' ``Encoder.forward`` with the lean resnet blocks (same output, see `_resnet`)."""
    x = encoder.conv_in(image)
    for down in encoder.down_blocks:
        for block in down.resnets:
            x = _resnet(block, x)
        for sampler in down.downsamplers or ():
            x = sampler(x)
    x = _mid_block(encoder.mid_block, x)
    return encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(x)))


def run_decoder(decoder: nn.Module, latent: torch.Tensor) -> torch.Tensor:
    """diffusers' ``Decoder.forward`` (no latent embeddings) with the lean resnet blocks."""
    x = _mid_block(decoder.mid_block, decoder.conv_in(latent))
    for up in decoder.up_blocks:
        for block in up.resnets:
            x = _resnet(block, x)
        for sampler in up.upsamplers or ():
            x = sampler(x)
    return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(x)))


def cast_vq(vq: VQModel, dtype: torch.dtype) -> VQModel:
    """Cast the encoder, decoder and their 1x1 convolutions to `dtype` (in place; returns `vq`).

    The codebook stays float32: snapping compares squared distances that bf16 would round into
    ties, so the codes would change far more than the convolutions' rounding changes the images.
    """
    for part in (vq.encoder, vq.quant_conv, vq.post_quant_conv, vq.decoder):
        part.to(dtype=dtype)
    return vq


def vq_dtype(vq: VQModel) -> torch.dtype:
    """The dtype the VQ's convolutions run in (see `cast_vq`)."""
    return vq.quant_conv.weight.dtype


@torch.no_grad()
def encode(vq: VQModel, image: torch.Tensor) -> torch.Tensor:
    """Image (B, 3, H, W) float in [-1, 1] -> unquantised latent (B, 3, H/4, W/4) float32.

    ``quant_conv(encoder(x))``, scale factor 1 (SHMT never rescales its latents). A VQ cast with
    `cast_vq` runs in its dtype; the latent is returned in float32 either way.
    """
    return vq.quant_conv(run_encoder(vq.encoder, image.to(vq_dtype(vq)))).float()


def _nearest_code(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index (N,) of the codebook row (K, C) nearest to each of ``vectors`` (N, C), squared L2."""
    distance = (
        torch.sum(vectors**2, dim=1, keepdim=True)
        + torch.sum(codebook**2, dim=1)
        - 2 * torch.einsum("bd,dn->bn", vectors, codebook.T)
    )
    return torch.argmin(distance, dim=1)


@torch.no_grad()
def quantize(vq: VQModel, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Snap every 3-vector of ``latent`` (B, C, h, w) to its nearest codebook entry.

    Returns ``(z_q, indices)``: z_q (B, C, h, w) float, indices (B, h, w) int64. The distance is the
    legacy taming ``VectorQuantizer2`` expansion |z|^2 + |e|^2 - 2 z.e (not ``cdist``), computed one
    batch item at a time as the official batch-1 scripts did, so near-ties resolve the same way.
    """
    codebook = vq.quantize.embedding.weight
    b, c, h, w = latent.shape
    rows = latent.permute(0, 2, 3, 1).reshape(b, h * w, c)
    indices = torch.stack([_nearest_code(item, codebook) for item in rows])
    snapped = codebook[indices].reshape(b, h, w, c).permute(0, 3, 1, 2)
    # The official quantiser returns z + (z_q - z) (straight-through form); reproduce its rounding.
    z_q = latent + (snapped - latent)
    return z_q.contiguous(), indices.reshape(b, h, w)


@torch.no_grad()
def decode_with_indices(vq: VQModel, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode`` that also returns the codebook indices (B, h, w) int64 it snapped to."""
    z_q, indices = quantize(vq, latent.float())
    image = run_decoder(vq.decoder, vq.post_quant_conv(z_q.to(vq_dtype(vq))))
    return image.float(), indices


@torch.no_grad()
def decode(vq: VQModel, latent: torch.Tensor) -> torch.Tensor:
    """Latent (B, 3, h, w) -> image (B, 3, 4h, 4w) float32, nominally [-1, 1], NOT clamped.

    Quantise, then ``post_quant_conv``, then the decoder, as LDM's ``decode_first_stage``.
    """
    return decode_with_indices(vq, latent)[0]
