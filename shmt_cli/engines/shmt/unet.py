"""The SHMT denoiser: an LDM-style UNet (spec §2.3) whose state_dict names equal the official
ones after stripping ``model.diffusion_model.``.

Runs in float32, under bf16/fp16 autocast, or with bf16 weights (``module.to(torch.bfloat16)``,
which spares autocast's per-call weight casts), with contiguous or ``torch.channels_last`` tensors.
GroupNorm statistics and the attention logits/softmax are always float32, as in the official code,
but a half-precision UNet makes no float32 copies for them: GroupNorm uses torch's mixed-precision
kernel and attention the fused `scaled_dot_product_attention` kernel on half q, k, v (it accumulates
in float32; the official q·d^-1/4, k·d^-1/4 scaling is the usual 1/sqrt(d)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .config import EMA_PREFIX, UNET_PREFIX, LoadReport, UNetConfig, load_mapped, unwrap_state_dict

GROUPS = 32


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps t (B,) or scalar (any numeric dtype) -> (B | 1, dim) float32.

    Layout [cos(t·f_0..f_{h-1}), sin(t·f_0..f_{h-1})] with h = dim // 2, f_k = max_period^(-k/h).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.reshape(-1).to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 statistics whatever the input dtype or autocast state; returns the input
    dtype and memory format.

    float32 input: the statistics are computed on a contiguous copy, because torch's CPU kernel for
    channels_last tensors takes the variance in one pass (E[x²] − E[x]²) and loses precision on maps
    with a large mean (error ~4e-4 at mean 5, std 0.5; 1e-6 contiguous). That is the parity path.

    bf16/fp16 input: torch's mixed-precision kernel (half input, float32 affine) accumulates in float32
    and writes the half output directly, in the input's layout: no float32 copy, no layout round trip
    (the previous float → contiguous → channels_last → bf16 path made 4 copies per call, 61 calls per
    step). Its one-pass variance error is below the bf16 rounding of the output (max error 2.0e-2 vs
    1.6e-2 at mean/std = 10, equal at mean 0), and the ε drift vs float32 is measured by
    tools/bench_shmt.py.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x.dtype != torch.float32:
                return F.group_norm(x, self.num_groups, self.weight.float(), self.bias.float(), self.eps)
            channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
            out = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out


class ResBlock(nn.Module):
    """x (B, C_in, H, W), emb (B, E) -> (B, C_out, H, W): two GN-SiLU-conv3x3 stages, the timestep
    projection added in between, plus a 1x1-conv (or identity) skip."""

    def __init__(self, in_channels: int, emb_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(GROUPS, in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        # Index 2 is the (p=0) dropout of the official layout; kept so the conv stays at index 3.
        self.out_layers = nn.Sequential(
            GroupNorm32(GROUPS, out_channels),
            nn.SiLU(),
            nn.Identity(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        # In-place adds on fresh conv outputs: no extra (B, C, H, W) buffers, autograd-safe.
        h += self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        h = self.out_layers(h)
        h += self.skip_connection(x)
        return h


class AttentionBlock(nn.Module):
    """Self-attention over the H·W positions, x (B, C, H, W) -> same shape, residual.

    Official legacy head layout: the 3C qkv channels are split into heads first (each head owns a
    contiguous block of 3·d channels) and each block into q, k, v. `qkv`/`proj_out` keep the
    official 1-D conv parameter shapes (3C, C, 1)/(C, C, 1) but run as linear maps on (B, H·W, C)
    tokens, which are a free view of a channels_last tensor.
    """

    #: Run the attention core on bf16/fp16 q, k, v (True) or on float32 copies, as the official code
    #: does (False). See tools/bench_shmt.py for the ε drift of each choice.
    half_core = True

    def __init__(self, channels: int, num_head_channels: int) -> None:
        super().__init__()
        if channels % num_head_channels:
            raise ValueError(f"{channels} channels do not split into heads of {num_head_channels}")
        self.num_heads = channels // num_head_channels
        self.norm = GroupNorm32(GROUPS, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        n = height * width
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
        qkv = F.linear(tokens, self.qkv.weight[:, :, 0], self.qkv.bias)  # (B, N, 3C)
        q, k, v = qkv.view(b, n, self.num_heads, 3, c // self.num_heads).permute(3, 0, 2, 1, 4).unbind(0)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if self.half_core or qkv.dtype == torch.float32:
                # The fused kernel keeps the logits and the softmax in float32 for half inputs.
                attended = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
            else:
                attended = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(qkv.dtype)
        attended = attended.transpose(1, 2).reshape(b, n, c)
        h = F.linear(attended, self.proj_out.weight[:, :, 0], self.proj_out.bias)  # (B, N, C)
        # (B, N, C) -> (B, C, H, W) as a channels_last view, no copy.
        return x + h.transpose(1, 2).reshape(b, c, height, width)


class Downsample(nn.Module):
    """Stride-2 3x3 conv, (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv, (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNetStage(nn.Sequential):
    """A sequence of layers where ResBlocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ShmtUNet(nn.Module):
    """ε-predictor: x (B, C_in, 64, 64) with C_in = 121 (h0) / 106 (h4), t (B,) or scalar -> ε (B, 3, 64, 64).

    The output has the input's dtype; the body runs in the parameters' dtype (or autocast's).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        mc, emb_dim = config.model_channels, config.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, config.num_head_channels)

        self.input_blocks = nn.ModuleList([UNetStage(nn.Conv2d(config.in_channels, mc, 3, padding=1))])
        skip_widths = [mc]
        ch, factor = mc, 1
        last_level = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc)]
                ch = mult * mc
                if factor in config.attention_downsample:
                    layers.append(attention(ch))
                self.input_blocks.append(UNetStage(*layers))
                skip_widths.append(ch)
            if level != last_level:
                self.input_blocks.append(UNetStage(Downsample(ch)))
                skip_widths.append(ch)
                factor *= 2

        self.middle_block = UNetStage(ResBlock(ch, emb_dim, ch), attention(ch), ResBlock(ch, emb_dim, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_widths.pop(), emb_dim, mult * mc)]
                ch = mult * mc
                if factor in config.attention_downsample:
                    layers.append(attention(ch))
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                    factor //= 2
                self.output_blocks.append(UNetStage(*layers))

        self.out = nn.Sequential(
            GroupNorm32(GROUPS, ch), nn.SiLU(), nn.Conv2d(ch, config.out_channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:  # one timestep for the whole batch, as a DDIM loop has
            t = t.expand(x.shape[0])
        dtype = self.time_embed[0].weight.dtype
        t_emb = timestep_embedding(t, self.config.model_channels).to(dtype)
        emb = self.time_embed(t_emb)
        h = x.to(dtype)
        skips = []
        for stage in self.input_blocks:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)


# ------------------------------------------------------------------------------------------------
# Official checkpoint


def ema_key(name: str) -> str:
    """Official EMA shadow key of UNet tensor `name`: "model_ema.diffusion_model" + name without dots."""
    return EMA_PREFIX + "diffusion_model" + name.replace(".", "")


EMA_BOOKKEEPING = {
    EMA_PREFIX + "decay": "EMA decay factor (training bookkeeping)",
    EMA_PREFIX + "num_updates": "EMA update counter (training bookkeeping)",
}


def load_official_unet(
    module: ShmtUNet,
    state_dict: Mapping[str, torch.Tensor],
    prefer_ema: bool = True,
    *,
    strict: bool = True,
    assign: bool = False,
) -> LoadReport:
    """Load the UNet from a flat official state dict (or a Lightning checkpoint dict).

    With `prefer_ema` and EMA shadows present (``model_ema.diffusion_model*``), every tensor comes
    from its shadow, as in the official `ema_scope` inference; a tensor without shadow is then
    reported missing rather than silently taken from the raw weights. Otherwise the raw
    ``model.diffusion_model.*`` weights are used (also the official choice for the second model of
    the two-model blend). Returns the key accounting; see `load_mapped` for `strict`/`assign`.
    """
    state_dict = unwrap_state_dict(state_dict)
    names = list(module.state_dict())
    shadows = {ema_key(name): name for name in names}
    if len(shadows) != len(names):
        raise RuntimeError("EMA key flattening is ambiguous for this module")
    use_ema = prefer_ema and any(key.startswith(EMA_PREFIX + "diffusion_model") for key in state_dict)

    raw_sources = {name: UNET_PREFIX + name for name in names}
    sources = {name: ema_key(name) for name in names} if use_ema else raw_sources
    classify = dict(EMA_BOOKKEEPING)
    if use_ema:
        reason = "raw UNet weight; its EMA shadow was loaded (official inference runs in ema_scope)"
        classify.update({key: reason for key in raw_sources.values()})
    else:
        classify.update({key: "EMA shadow not used (prefer_ema=False)" for key in shadows})
    return load_mapped(
        module,
        state_dict,
        sources,
        classify,
        (UNET_PREFIX, EMA_PREFIX),
        "unet" + (" (EMA)" if use_ema else " (raw)"),
        strict=strict,
        assign=assign,
    )
