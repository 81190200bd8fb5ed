"""The key layout of an official SHMT checkpoint, derived from our modules built on the meta device.

An official Lightning ``state_dict`` holds, under their official names: the raw UNet
(``model.diffusion_model.*``), its EMA shadows (``model_ema.*`` plus ``decay`` and ``num_updates``),
the VQ-f4 (``first_stage_model.*``), the IDA (``corr_stage_model.*``, including the dead
``proj_convs``) and the 12 schedule buffers. The UNet and IDA shapes are read from `ShmtUNet` and
`ShmtIda` built from `engines/shmt/config.py` on "meta" (no memory, no init), so the architecture
is stated once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from shmt_cli.checkpoint import CheckpointError
from shmt_cli.engines.shmt import vq as vqmod
from shmt_cli.engines.shmt.config import (
    EMA_PREFIX,
    IDA_PREFIX,
    SIZES,
    UNET_PREFIX,
    VARIANT_LEVELS,
    WARPED_REF_CHANNELS,
    Size,
    VariantConfig,
    variant_config,
)
from shmt_cli.engines.shmt.ida import ShmtIda
from shmt_cli.engines.shmt.sampler import ldm_schedule_buffers
from shmt_cli.engines.shmt.unet import ShmtUNet, ema_key

Variant = Literal["h0", "h4"]
SizeClass = Size

VQ_PREFIX = vqmod.SHMT_PREFIX
EMA_SCALARS = (EMA_PREFIX + "decay", EMA_PREFIX + "num_updates")
FIRST_CONV = UNET_PREFIX + "input_blocks.0.0.weight"

Shapes = dict[str, tuple[int, ...]]


def _shapes(module: nn.Module) -> Shapes:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def skip_widths(unet: ShmtUNet) -> list[int]:
    """Channels of each UNet input block's output (the skip connections): its last 2-D conv's width."""
    widths = []
    for stage in unet.input_blocks:
        convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
        widths.append(convs[-1].out_channels)
    return widths


def model_shapes(config: VariantConfig) -> tuple[Shapes, Shapes]:
    """(UNet, IDA) keys without prefix and shapes, IDA with the official dead ``proj_convs``.

    The official IDA has one 1x1 ``proj_convs`` entry per UNet skip width, each reading the source
    features and the warped reference; ours does not build them (spec §2.5), so they are added here.
    """
    with torch.device("meta"):
        unet, ida = ShmtUNet(config.unet), ShmtIda(config.ida)
    ida_shapes = _shapes(ida)
    proj_in = config.ida.in_channels_list[1] + WARPED_REF_CHANNELS
    for i, width in enumerate(skip_widths(unet)):
        ida_shapes[f"proj_convs.{i}.weight"] = (width, proj_in, 1, 1)
        ida_shapes[f"proj_convs.{i}.bias"] = (width,)
    return _shapes(unet), ida_shapes


def checkpoint_shapes(config: VariantConfig, size: SizeClass) -> Shapes:
    """Every key of an official SHMT ``state_dict`` of `config` (VQ of size class `size`), with its shape."""
    unet, ida = model_shapes(config)
    shapes = {UNET_PREFIX + k: s for k, s in unet.items()}
    shapes.update({ema_key(k): s for k, s in unet.items()})
    shapes.update({name: () for name in EMA_SCALARS})
    shapes.update({VQ_PREFIX + k: s for k, s in vqmod.official_vq_shapes(vqmod.VQ_CONFIGS[size]).items()})
    shapes.update({IDA_PREFIX + k: s for k, s in ida.items()})
    shapes.update({name: tuple(t.shape) for name, t in ldm_schedule_buffers().items()})
    return shapes


def expected_shapes(variant: Variant, size: SizeClass) -> Shapes:
    """Every key of an official SHMT-`variant` ``state_dict`` of size class `size`, with its shape."""
    return checkpoint_shapes(variant_config(VARIANT_LEVELS[variant], size), size)


def _first_conv(state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    first = state_dict.get(FIRST_CONV)
    if first is None:
        first = state_dict.get(ema_key(FIRST_CONV.removeprefix(UNET_PREFIX)))
    return first


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> Variant:
    """h0 / h4 from the input channels of the UNet's first conv (121 / 106)."""
    first = _first_conv(state_dict)
    if first is None or first.ndim != 4:
        raise CheckpointError(f"no UNet first conv ({FIRST_CONV}); not an SHMT checkpoint")
    by_width = {variant_config(level).unet.in_channels: name for name, level in VARIANT_LEVELS.items()}
    in_channels = int(first.shape[1])
    if in_channels not in by_width:
        known = " or ".join(f"{width} ({name})" for width, name in sorted(by_width.items(), reverse=True))
        raise CheckpointError(f"UNet has {in_channels} input channels; expected {known}")
    return by_width[in_channels]  # type: ignore[return-value]


def detect_size(state_dict: Mapping[str, torch.Tensor]) -> SizeClass:
    """full / tiny from the UNet width (224 / 32 ``model_channels``)."""
    first = _first_conv(state_dict)
    width = int(first.shape[0]) if first is not None else -1
    by_width = {variant_config(0, size).unet.model_channels: size for size in SIZES}
    if width not in by_width:
        raise CheckpointError(
            f"UNet width {width} is neither the full ({variant_config(0, 'full').unet.model_channels}) "
            f"nor the tiny ({variant_config(0, 'tiny').unet.model_channels}) config"
        )
    return by_width[width]
