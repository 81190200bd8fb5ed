"""Sizes of the SHMT denoiser (UNet) and correspondence (IDA) models, and official-checkpoint loading.

The official checkpoint is a flat Lightning ``state_dict``; each component owns a key prefix.
`load_mapped` copies the tensors of one component into a module and returns a `LoadReport`
that accounts for every key of the checkpoint (loaded, ignored with a reason, missing,
unexpected, or belonging to another component).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from shmt_cli.face.labels import NUM_LABELS

# Channels of the SHMT inputs at 64x64 (spec §2.2): latent z, background latent, the
# unshuffled 3D render and the warped reference [z_ref (3), unshuffled makeup pixels (48)].
LATENT_CHANNELS = 3
RENDER_CHANNELS = 48
WARPED_REF_CHANNELS = LATENT_CHANNELS + 48
# Texture-detail channels per Laplacian level once mapped to 64x64 (spec §1.7).
DETAIL_CHANNELS = {0: 16, 1: 4, 2: 1, 3: 1, 4: 1}

Size = Literal["full", "tiny"]


@dataclass(frozen=True)
class UNetConfig:
    """LDM UNet hyper-parameters (spec §2.3). `attention_downsample` lists the downsample factors
    (1 = 64x64 input resolution) whose blocks carry self-attention."""

    in_channels: int
    model_channels: int = 224
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_downsample: tuple[int, ...] = (2, 4, 8)
    num_head_channels: int = 32
    out_channels: int = LATENT_CHANNELS

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels


@dataclass(frozen=True)
class IdaConfig:
    """Correspondence-module hyper-parameters (spec §2.4).

    `in_channels_list` = (sd, source, reference) branch widths as the official config counts them:
    features + 19 parsing channels, without the 2 coordinate channels added on top.
    `model_channels` only sets the width of the timestep-weight MLP; the encoders are `ngf` wide
    at any model size (hard-coded 64 in the official code).
    """

    in_channels_list: tuple[int, int, int]
    model_channels: int = 224
    ngf: int = 64

    @property
    def encoder_in_channels(self) -> tuple[int, int, int]:
        sd, source, ref = self.in_channels_list
        return sd + 2, source + 2, ref + 2


@dataclass(frozen=True)
class VariantConfig:
    """One SHMT variant: Laplacian level of the texture detail and its two model sizes."""

    level: int
    unet: UNetConfig
    ida: IdaConfig

    @property
    def content_channels(self) -> int:
        """Channels of the content tensor C = cat[detail, unshuffled 3D render]: 64 (h0) / 49 (h4)."""
        return DETAIL_CHANNELS[self.level] + RENDER_CHANNELS


def _variant(level: int, model_channels: int, num_head_channels: int) -> VariantConfig:
    content = DETAIL_CHANNELS[level] + RENDER_CHANNELS
    unet_in = 2 * LATENT_CHANNELS + content + WARPED_REF_CHANNELS
    ida_in = (
        LATENT_CHANNELS + NUM_LABELS,
        content + NUM_LABELS,
        WARPED_REF_CHANNELS + NUM_LABELS,
    )
    return VariantConfig(
        level=level,
        unet=UNetConfig(
            in_channels=unet_in, model_channels=model_channels, num_head_channels=num_head_channels
        ),
        ida=IdaConfig(in_channels_list=ida_in, model_channels=model_channels),
    )


#: The released variants: SHMT-h{level}, by the Laplacian level of their texture detail.
VARIANT_LEVELS: dict[str, int] = {"h0": 0, "h4": 4}
#: Model size classes: "full" = the released models, "tiny" = the golden test models.
SIZES: tuple[Size, ...] = ("full", "tiny")


def variant_config(level: int, size: Size = "full") -> VariantConfig:
    """Config of SHMT-h{level}: "full" = the released models (width 224, 32 channels per head),
    "tiny" = the golden test models (width 32, 8 channels per head; IDA encoders unchanged)."""
    if level not in VARIANT_LEVELS.values():
        raise ValueError(f"only SHMT-h0 and SHMT-h4 exist, got level {level}")
    if size == "full":
        return _variant(level, model_channels=224, num_head_channels=32)
    if size == "tiny":
        return _variant(level, model_channels=32, num_head_channels=8)
    raise ValueError(f"size must be 'full' or 'tiny', got {size!r}")


def config_to_json(config: VariantConfig) -> dict[str, Any]:
    """The config as plain JSON data (tuples become lists); `config_from_json` reads it back."""
    return asdict(config)


def config_from_json(data: Mapping[str, Any]) -> VariantConfig:
    """A `VariantConfig` from `config_to_json` data. KeyError/TypeError/ValueError on malformed data."""

    def fields_of(part: Mapping[str, Any]) -> dict[str, Any]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in part.items()}

    config = VariantConfig(
        level=int(data["level"]),
        unet=UNetConfig(**fields_of(data["unet"])),
        ida=IdaConfig(**fields_of(data["ida"])),
    )
    if config.level not in VARIANT_LEVELS.values():
        raise ValueError(f"only SHMT-h0 and SHMT-h4 exist, got level {config.level}")
    return config


# ------------------------------------------------------------------------------------------------
# Official checkpoint keys

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
IDA_PREFIX = "corr_stage_model."


class CheckpointMismatch(ValueError):
    """The checkpoint does not fit the module (missing or unexpected keys); `.report` says which."""

    def __init__(self, report: LoadReport) -> None:
        super().__init__(report.summary())
        self.report = report


@dataclass
class LoadReport:
    """Accounting of one component load. Every checkpoint key appears in exactly one of
    `loaded` (as a value), `ignored`, `unexpected` or `foreign`."""

    component: str
    loaded: dict[str, str] = field(default_factory=dict)  # module key -> checkpoint key
    ignored: dict[str, str] = field(default_factory=dict)  # checkpoint key -> reason
    missing: list[str] = field(default_factory=list)  # module keys absent from the checkpoint
    unexpected: list[str] = field(default_factory=list)  # own-prefix checkpoint keys matching nothing
    foreign: list[str] = field(default_factory=list)  # keys of other components (VQ, schedule, ...)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unexpected

    def summary(self) -> str:
        text = (
            f"{self.component}: {len(self.loaded)} loaded, {len(self.ignored)} ignored, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.foreign)} other"
        )
        if self.missing:
            text += f"; missing e.g. {self.missing[:3]}"
        if self.unexpected:
            text += f"; unexpected e.g. {self.unexpected[:3]}"
        return text


def unwrap_state_dict(checkpoint: Mapping[str, object]) -> Mapping[str, torch.Tensor]:
    """The flat tensor dict of a Lightning checkpoint (its "state_dict"), or the mapping itself."""
    inner = checkpoint.get("state_dict")
    return inner if isinstance(inner, Mapping) else checkpoint  # type: ignore[return-value]


def load_mapped(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    sources: Mapping[str, str],
    classify: Mapping[str, str],
    own_prefixes: Iterable[str],
    component: str,
    *,
    strict: bool = True,
    assign: bool = False,
) -> LoadReport:
    """Copy `state_dict[sources[name]]` into every module tensor `name` and account for all keys.

    `classify` gives the reason for checkpoint keys deliberately left unused. Checkpoint keys under
    `own_prefixes` that are neither sources nor classified are unexpected; other keys are foreign.
    Shapes must match exactly (ValueError before anything is written). Values are cast to the
    module's dtype. With `strict`, missing or unexpected keys raise `CheckpointMismatch` before
    loading. `assign=True` replaces the module tensors (use it for modules built on "meta").
    """
    prefixes = tuple(own_prefixes)
    own = module.state_dict()
    report = LoadReport(component=component)
    used = set()
    for name in own:
        key = sources.get(name)
        if key is not None and key in state_dict:
            report.loaded[name] = key
            used.add(key)
        else:
            report.missing.append(name)
    for key in state_dict:
        if key in used:
            continue
        if key in classify:
            report.ignored[key] = classify[key]
        elif key.startswith(prefixes):
            report.unexpected.append(key)
        else:
            report.foreign.append(key)

    bad_shapes = [
        f"{key} {tuple(state_dict[key].shape)} -> {name} {tuple(own[name].shape)}"
        for name, key in report.loaded.items()
        if tuple(state_dict[key].shape) != tuple(own[name].shape)
    ]
    if bad_shapes:
        raise ValueError(f"{component}: shape mismatch for {len(bad_shapes)} tensors, e.g. {bad_shapes[:3]}")
    if strict and not report.complete:
        raise CheckpointMismatch(report)

    tensors = {name: state_dict[key].to(dtype=own[name].dtype) for name, key in report.loaded.items()}
    module.load_state_dict(tensors, strict=False, assign=assign)
    return report
