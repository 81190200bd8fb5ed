"""Build the SHMT engine's parts from an imported weights folder (`shmt weights import`): the models
the settings need, on their device, in their dtype, and the VQ.

Memory: a model file is read through safetensors' memory-mapped `safe_open`, one tensor at a time, and
each UNet tensor is cast to the UNet dtype as it is read, so a bf16 run never holds the float32 UNet
(peak ≈ the bf16 model plus one mapped slice of the file, see `_read_model_tensors`). Modules are
built on "meta" in their dtype and the tensors assigned: no random init, no second copy.
"""

from __future__ import annotations

import gc
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from shmt_cli.checkpoint import CheckpointError
from shmt_cli.engines.base import EngineUnavailable
from shmt_cli.engines.shmt import vq as vqmod
from shmt_cli.engines.shmt import weights as W
from shmt_cli.engines.shmt.config import VARIANT_LEVELS, VariantConfig, variant_config
from shmt_cli.engines.shmt.ida import load_official_ida
from shmt_cli.engines.shmt.model import PreparedPair, ShmtDenoiser
from shmt_cli.engines.shmt.settings import DTYPES, MODEL1, MODEL2, ShmtSettings, resolve_device
from shmt_cli.engines.shmt.step import CompileOptions, WholeStep
from shmt_cli.engines.shmt.unet import load_official_unet


@dataclass
class ShmtModel:
    """One SHMT variant on the device: its denoiser, whether the UNet is EMA, and how its sampler steps
    run (`compile` options, None = eager). Its `WholeStep`s are cached per batch shape, so engines
    sharing the model (other shards, other settings) reuse their compiled graphs; a `dataclasses.replace`
    copy starts with none."""

    variant: str
    denoiser: ShmtDenoiser
    ema: bool
    compile: CompileOptions | None = None
    steps: dict[tuple[Any, ...], WholeStep] = field(default_factory=dict, init=False, repr=False)

    @property
    def compiled(self) -> bool:
        return self.compile is not None

    def step_for(self, prepared: PreparedPair, autocast: torch.dtype | None) -> WholeStep:
        """This model's `WholeStep` for batches shaped like `prepared`, built on first use."""
        key = (prepared.form, tuple(prepared.buffer.shape), autocast)
        if key not in self.steps:
            name = f"shmt_step_{self.variant}_{prepared.form}_{prepared.buffer.shape[0]}"
            self.steps[key] = WholeStep(self.denoiser, prepared, autocast, self.compile, name)
        return self.steps[key]


#: File bytes read through one memory mapping: touched pages of a mapping count as resident memory
#: until it is closed, so the file is mapped in slices of this size.
READ_SLICE_BYTES = 128 << 20


def _read_model_tensors(
    path: Path, use_ema: bool, unet_dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], bool]:
    """The UNet (EMA shadows or raw, cast to `unet_dtype`) and IDA tensors of one imported SHMT file, and
    whether EMA was used.

    Reads only what is needed: a full checkpoint holds both weight sets (2 × 1.1 GB in float32). Every
    tensor is copied out of the mapping (safetensors' tensors are views of it, which would keep the
    whole mapping resident) and the file is mapped in `READ_SLICE_BYTES` slices.
    """
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        take_ema = use_ema and any(k.startswith(W.EMA_PREFIX + "diffusion_model") for k in keys)
        unet_prefix = W.EMA_PREFIX if take_ema else W.UNET_PREFIX
        wanted = [k for k in keys if k.startswith((unet_prefix, W.IDA_PREFIX))]
        sizes = [math.prod(handle.get_slice(k).get_shape()) * 4 for k in wanted]  # float32 files
    slices: list[list[str]] = [[]]
    total = 0
    for key, size in zip(wanted, sizes, strict=True):
        if slices[-1] and total + size > READ_SLICE_BYTES:
            slices.append([])
            total = 0
        slices[-1].append(key)
        total += size
    tensors = {}
    for group in slices:
        with safe_open(str(path), framework="pt") as handle:
            for key in group:
                dtype = unet_dtype if key.startswith(unet_prefix) else torch.float32
                tensors[key] = handle.get_tensor(key).to(dtype, copy=True)
    return tensors, take_ema


def load_model(
    path: Path,
    variant: str,
    size: str,
    use_ema: bool,
    device: torch.device,
    compile: CompileOptions | None = None,
    unet_dtype: torch.dtype = torch.float32,
    config: VariantConfig | None = None,
) -> ShmtModel:
    """Build SHMT-`variant` from an imported file, on `device`: architecture `config` (the JSON written
    beside the file), else that of size class `size` ("full"/"tiny")."""
    tensors, took_ema = _read_model_tensors(path, use_ema, unet_dtype)
    config = config or variant_config(VARIANT_LEVELS[variant], size)  # type: ignore[arg-type]
    with torch.device("meta"):
        denoiser = ShmtDenoiser(config)
    denoiser.unet.to(dtype=unet_dtype)  # on meta, free: assigning keeps the module's dtype
    load_official_unet(denoiser.unet, tensors, prefer_ema=took_ema, assign=True)
    load_official_ida(denoiser.ida, tensors, assign=True)
    del tensors  # the modules hold the tensors now; the dict would keep replaced ones alive
    denoiser.eval().requires_grad_(False)
    denoiser.unet.to(device=device, dtype=unet_dtype, memory_format=torch.channels_last)
    denoiser.ida.to(device)
    gc.collect()
    return ShmtModel(variant=variant, denoiser=denoiser, ema=took_ema, compile=compile)


def _unavailable(directory: Path, what: str) -> EngineUnavailable:
    return EngineUnavailable(
        f"{what} in {directory}: import the official checkpoint with "
        "`shmt weights import CKPT... [--vq VQ_CKPT]` (or use --engine classic)"
    )


@dataclass
class EngineParts:
    """What `load_parts` builds: the models by variant, the VQ, the level they serve, the device, and
    the sha256 of each weights file used."""

    models: dict[str, ShmtModel]
    vq: Any
    level: str
    device: torch.device
    hashes: dict[str, str]


def needed_models(level: str) -> tuple[str, ...]:
    """The variants a level runs: both for the official blend "mix", else the level itself."""
    return (MODEL1, MODEL2) if level == "mix" else (level,)


def load_parts(
    directory: str | os.PathLike[str] | None,
    settings: ShmtSettings,
    compile_options: CompileOptions | None = None,
) -> EngineParts:
    """Load the models `settings` need from an imported weights folder.

    Raises EngineUnavailable when a needed file is missing, DeviceUnavailable for a CUDA device that is
    not there, ValueError for an impossible setting (fp16 on CPU, models of different sizes).
    `compile_options` overrides the compile backend (tests use a cheap one).
    """
    folder = W.weights_dir(directory)
    try:
        manifest = W.read_manifest(folder)
    except CheckpointError as err:
        raise EngineUnavailable(str(err)) from None
    installed = {
        e.variant: e
        for e in manifest.values()
        if e.kind == "shmt" and e.variant is not None and (folder / e.file).is_file()
    }
    if not installed:
        raise _unavailable(folder, "no SHMT model weights")
    level = settings.level or ("mix" if {MODEL1, MODEL2} <= installed.keys() else sorted(installed)[0])
    needed = needed_models(level)
    for variant in needed:
        if variant not in installed:
            what = f"no SHMT-{variant} weights (shmt_{variant}.safetensors, needed by --level {level})"
            raise _unavailable(folder, what)
    vq_entry = manifest.get(W.VQ_FILE)
    if vq_entry is None or not (folder / W.VQ_FILE).is_file():
        raise _unavailable(folder, f"no VQ-f4 autoencoder ({W.VQ_FILE})")
    sizes = {installed[v].size for v in needed} | {vq_entry.size}
    if len(sizes) != 1:
        raise ValueError(f"the models in {folder} have different size classes {sorted(sizes)}")

    device = resolve_device(settings.device)
    if settings.dtype == "fp16" and device.type != "cuda":
        raise ValueError(f"--dtype fp16 needs a CUDA device; on {device.type} use --dtype bf16 or fp32")
    compile_steps = settings.compile if settings.compile is not None else device.type == "cuda"
    compile = (compile_options or {"backend": "inductor"}) if compile_steps else None
    # fp16 runs under autocast with float32 weights; bf16 casts the weights once.
    unet_dtype = DTYPES["bf16"] if settings.dtype == "bf16" else torch.float32

    models = {}
    for variant in needed:
        # The official blend swaps EMA weights into model 1 only; model 2 (h0) runs its raw weights.
        use_ema = not (level == "mix" and variant == MODEL2 and not settings.ema_both)
        entry = installed[variant]
        W.check_weights_file(folder, entry.file)  # size, header, sha256 when the file changed
        config = W.model_config(folder, entry)
        models[variant] = load_model(
            folder / entry.file, variant, entry.size, use_ema, device, compile, unet_dtype, config
        )
    # The VQ stays in contiguous format: torch's CPU GroupNorm on channels_last tensors drifts by up
    # to 0.2 at the encoder's first norm (its large-mean 256² maps), 0.02 on the latents.
    vq = W.load_vq_model(folder).to(device)
    if settings.vq_dtype != "fp32":
        vqmod.cast_vq(vq, DTYPES[settings.vq_dtype])
    vq.eval().requires_grad_(False)
    hashes = {installed[v].file: installed[v].sha256 for v in needed}
    hashes[W.VQ_FILE] = vq_entry.sha256
    return EngineParts(models, vq, level, device, hashes)
