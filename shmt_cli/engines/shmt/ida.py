"""The SHMT correspondence module "IDA" (spec §2.4): warps the reference makeup onto the source.

State-dict names equal the official ones after stripping ``corr_stage_model.``; the dead
``proj_convs`` (spec §2.5) are not built and their checkpoint keys are ignored.

Shapes (64x64 latent grid, N = 64·64 positions):
  content C        (B, 64 | 49, 64, 64)  cat[texture detail, unshuffle4(3D render)]
  z_ref            (B, 3, 64, 64)        VQ encoding of the makeup image
  ref_pixels U_m   (B, 48, 64, 64)       unshuffle4(makeup image in [-1, 1])
  mask64 M64       (B, 1, 64, 64)        soft face mask of the source, values in [0, 1]
  onehot_*         (B, 19, S, S) float   parsing one-hots at any S multiple of 64 (256 in SHMT)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import IDA_PREFIX, WARPED_REF_CHANNELS, IdaConfig, LoadReport, load_mapped, unwrap_state_dict
from .unet import timestep_embedding

# Softmax sharpness of the correlation and the norm guard, as in the official code (spec §8 #4).
CORRELATION_SCALE = 100.0
NORM_EPS = 1e-5

IGNORED_IDA_KEYS = {
    "proj_convs.": "computed but never reach the UNet (spec §2.5); left at random init in checkpoints",
}


class ConvBlock(nn.Module):
    """Reflection pad 1 -> conv3x3 -> InstanceNorm (no affine) -> optional SiLU, stride 1."""

    def __init__(self, in_channels: int, out_channels: int, activate: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(in_channels, out_channels, 3),
            nn.InstanceNorm2d(out_channels),
        ]
        if activate:
            layers.append(nn.SiLU())
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ResidualBlock(nn.Module):
    """x + ConvBlock(ConvBlock(x), no activation), width unchanged."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBlock(channels, channels)
        self.conv2 = ConvBlock(channels, channels, activate=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


def feature_encoder(in_channels: int, ngf: int) -> nn.Sequential:
    """(B, in, H, W) -> (B, 4·ngf, H, W) feature extractor, all stride 1 (official layer indices 0-10)."""
    return nn.Sequential(
        ConvBlock(in_channels, ngf),
        ConvBlock(ngf, ngf),
        ResidualBlock(ngf),
        ResidualBlock(ngf),
        ConvBlock(ngf, 2 * ngf),
        ResidualBlock(2 * ngf),
        ResidualBlock(2 * ngf),
        ConvBlock(2 * ngf, 4 * ngf),
        ResidualBlock(4 * ngf),
        ResidualBlock(4 * ngf),
        nn.Conv2d(4 * ngf, 4 * ngf, 1),
    )


def coordinate_channels(like: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) float32 grid in [-1, 1] on the grid of `like`: channel 0 = x, channel 1 = y."""
    b, _, height, width = like.shape
    ys = torch.linspace(-1.0, 1.0, height, device=like.device)
    xs = torch.linspace(-1.0, 1.0, width, device=like.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y]).expand(b, 2, height, width)


def parsing_at(onehot: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Nearest resize of one-hots (B, K, S, S) to the grid of `like`, float32 (256->64 picks (4y, 4x))."""
    return F.interpolate(onehot.float(), size=like.shape[-2:], mode="nearest")


def label_ids(onehot: torch.Tensor, unlabelled: int) -> torch.Tensor:
    """One-hots (B, K, H, W) -> (B, H·W) int64 label index, `unlabelled` where no class is set.

    Equal ids reproduce the official label term Σ_k P_a,k·P_b,k of one-hot maps without a K-deep
    (B, N, N) product; callers pick different `unlabelled` values for the two sides so that
    unlabelled positions match nothing, as in the official product.
    """
    present, index = onehot.flatten(2).max(dim=1)
    return torch.where(present > 0, index, torch.full_like(index, unlabelled))


def normalized_positions(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H·W) float32: minus the per-channel spatial mean, each position divided
    by (its L2 norm over channels + 1e-5)."""
    flat = features.float().flatten(2)
    flat = flat - flat.mean(dim=2, keepdim=True)
    return flat / (torch.linalg.vector_norm(flat, dim=1, keepdim=True) + NORM_EPS)


def _softmax_over_reference(energy: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1 of (B, M, n), in place on CPU when no gradient is needed.

    Same kernel as `F.softmax(energy, dim=1)`, so the result is bit-identical to it; the in-place
    form only saves a second (B, M, n) buffer. (Aliased output is verified on the CPU kernel only.)
    """
    aliasing = torch.is_grad_enabled() and energy.requires_grad
    if aliasing or energy.device.type != "cpu" or torch.compiler.is_compiling():  # compiled: fused anyway
        return F.softmax(energy, dim=1)
    return torch.ops.aten._softmax.out(energy, 1, False, out=energy)


def correspondence_warp(
    query: torch.Tensor,
    reference: torch.Tensor,
    query_labels: torch.Tensor,
    reference_labels: torch.Tensor,
    values: torch.Tensor,
    query_chunk: int | None = None,
) -> torch.Tensor:
    """Warp reference `values` onto the query grid through a same-label-masked softmax correlation.

    query (B, C, N) and reference (B, C, M) are `normalized_positions` outputs; labels (B, N)/(B, M)
    int64; values (B, V, M). Returns (B, V, N) float32 with, for each query position p,
    out[:, p] = Σ_q values[:, q]·softmax_q(E[q, p]) and E[q, p] = 100·<reference_q, query_p> where
    labels agree, else exactly 0 (mismatched pairs keep softmax mass, as in the official code).

    The energy keeps the official (B, M, N) layout and softmax over dim 1: the ×100 logits amplify
    rounding differences about 500×, and this order reproduces the official warp bit for bit on
    CPU. Computed in float32 even under autocast for the same reason. `query_chunk` bounds the
    (B, M, chunk) energy buffer (64 MiB per pair and 4096 query positions).
    """
    n = query.shape[2]
    step = n if query_chunk is None else max(1, query_chunk)
    values = values.float()
    pieces = []
    with torch.autocast(device_type=query.device.type, enabled=False):
        for start in range(0, n, step):
            stop = min(n, start + step)
            energy = torch.bmm(reference.transpose(1, 2), query[:, :, start:stop])  # (B, M, n)
            energy.mul_(CORRELATION_SCALE)
            energy.masked_fill_(reference_labels[:, :, None] != query_labels[:, None, start:stop], 0.0)
            pieces.append(torch.bmm(values, _softmax_over_reference(energy)))  # (B, V, n)
            del energy
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)


@dataclass(frozen=True)
class PreparedReference:
    """Per-reference IDA state, reusable for every source paired with the reference.

    values (B, 53, M): [z_ref, U_m, coord_x, coord_y] flattened, the tensor that gets warped;
    features (B, 256, M): normalised reference-encoder features; labels (B, M) int64 parsing ids.
    """

    values: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor


def blend_warps(
    warp_latent: torch.Tensor, warp_content: torch.Tensor, w: torch.Tensor, mask64: torch.Tensor
) -> torch.Tensor:
    """Training-form IDA output (w·A0 + (1−w)·A1)[:, :51] ⊙ M64 -> (B, 51, H, W) float32; w (B, 1)."""
    c = WARPED_REF_CHANNELS
    wf = w.float()[:, :, None, None]
    return (wf * warp_latent[:, :c] + (1.0 - wf) * warp_content[:, :c]) * mask64.float()


# Sentinels for positions without a parsing label: different on each side so they never match.
_UNLABELLED_SOURCE = -1
_UNLABELLED_REFERENCE = -2


class ShmtIda(nn.Module):
    """The official `Correspondence` module without its dead projection convs.

    The encoders ignore an enclosing autocast unless `autocast_encoders`: the ×100 correlation turns
    bf16 feature rounding into visible warp changes (max |Δ| 0.26 against the float32 golden on the
    tiny model), and the released form runs once per pair, so float32 costs little.
    """

    def __init__(self, config: IdaConfig, autocast_encoders: bool = False) -> None:
        super().__init__()
        self.config = config
        self.autocast_encoders = autocast_encoders
        mc = config.model_channels
        sd_in, source_in, ref_in = config.encoder_in_channels
        self.proportion_prediction = nn.Sequential(
            nn.Linear(mc, mc), nn.SiLU(), nn.Linear(mc, 1), nn.Sigmoid()
        )
        self.sd_enc = feature_encoder(sd_in, config.ngf)
        self.source_enc = feature_encoder(source_in, config.ngf)
        self.ref_enc = feature_encoder(ref_in, config.ngf)

    # -- building blocks ---------------------------------------------------------------------

    def _encode(self, encoder: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        x = x.to(encoder[-1].weight.dtype)
        if self.autocast_encoders:
            return encoder(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return encoder(x)

    def proportion(self, t: torch.Tensor) -> torch.Tensor:
        """Timestep weight w(t) (B, 1) in (0, 1) of the training-form blend, from t (B,)."""
        head = self.proportion_prediction[0]
        return self.proportion_prediction(timestep_embedding(t, head.in_features).to(head.weight.dtype))

    def prepare_reference(
        self, z_ref: torch.Tensor, ref_pixels: torch.Tensor, onehot_ref: torch.Tensor
    ) -> PreparedReference:
        """Encode the makeup side once.

        z_ref (B, 3, H, W), ref_pixels (B, 48, H, W), onehot_ref (B, 19, S, S) -> `PreparedReference`.
        """
        values = torch.cat([z_ref.float(), ref_pixels.float(), coordinate_channels(z_ref)], dim=1)
        parsing = parsing_at(onehot_ref, z_ref)
        features = self._encode(self.ref_enc, torch.cat([values, parsing], dim=1))
        return PreparedReference(
            values=values.flatten(2),
            features=normalized_positions(features),
            labels=label_ids(parsing, _UNLABELLED_REFERENCE),
        )

    def _warp_from(
        self,
        encoder: nn.Sequential,
        branch_input: torch.Tensor,
        source_parsing: torch.Tensor,
        reference: PreparedReference,
        query_chunk: int | None,
    ) -> torch.Tensor:
        """All 53 warped channels (B, 53, H, W) for one query branch (not masked)."""
        b, _, height, width = branch_input.shape
        x = torch.cat([branch_input.float(), coordinate_channels(branch_input), source_parsing], dim=1)
        query = normalized_positions(self._encode(encoder, x))
        warped = correspondence_warp(
            query,
            reference.features,
            label_ids(source_parsing, _UNLABELLED_SOURCE),
            reference.labels,
            reference.values,
            query_chunk,
        )
        return warped.view(b, -1, height, width)

    # -- entry points --------------------------------------------------------------------------

    def content_warp_prepared(
        self,
        content: torch.Tensor,
        onehot_src: torch.Tensor,
        reference: PreparedReference,
        query_chunk: int | None = None,
    ) -> torch.Tensor:
        """A1, all 53 channels unmasked (B, 53, H, W) float32: the warp driven by the content C.

        Constant over DDIM steps, so callers compute it once per pair (both IDA forms use it).
        """
        parsing = parsing_at(onehot_src, content)
        return self._warp_from(self.source_enc, content, parsing, reference, query_chunk)

    def latent_warp_prepared(
        self,
        z_t: torch.Tensor,
        mask64: torch.Tensor,
        onehot_src: torch.Tensor,
        reference: PreparedReference,
        query_chunk: int | None = None,
    ) -> torch.Tensor:
        """A0, all 53 channels unmasked (B, 53, H, W) float32: the warp driven by z_t ⊙ M64.

        Changes with z_t, so the training form needs it at every step.
        """
        parsing = parsing_at(onehot_src, z_t)
        return self._warp_from(self.sd_enc, z_t.float() * mask64.float(), parsing, reference, query_chunk)


def load_official_ida(
    module: ShmtIda, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True, assign: bool = False
) -> LoadReport:
    """Load the IDA from a flat official state dict (or a Lightning checkpoint dict).

    ``corr_stage_model.<name>`` -> ``<name>``; keys matching `IGNORED_IDA_KEYS` are ignored with
    their reason. Returns the key accounting; see `load_mapped` for `strict`/`assign`.
    """
    state_dict = unwrap_state_dict(state_dict)
    sources = {name: IDA_PREFIX + name for name in module.state_dict()}
    classify = {
        key: reason
        for key in state_dict
        for pattern, reason in IGNORED_IDA_KEYS.items()
        if key.startswith(IDA_PREFIX + pattern)
    }
    return load_mapped(
        module, state_dict, sources, classify, (IDA_PREFIX,), "ida", strict=strict, assign=assign
    )
