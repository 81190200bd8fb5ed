"""The SHMT engine: imported weights + the model parts (VQ, IDA, UNet, DDIM) behind the Engine interface.

Work per face is done once (`prepare_source`, `prepare_reference`); `transfer_batch` runs fixed-size
batches of pairs. Inference follows the official scripts (reference §0.1, §3, §6) with these choices:

* The released IDA form does not depend on z_t or t (reference §8 #1), so it is computed once per pair
  before the DDIM loop; the training ("paper") form keeps the content warp A1 fixed too and recomputes
  only the noisy-latent warp A0 and its weight w(t) at every step.
* With a compiled UNet every batch is padded to exactly `batch_size` rows (copies of the last pair,
  dropped at the end) so the compiled graph (and CUDA graphs) see a single shape. Eager runs gain
  nothing from a fixed shape, so they skip the padding and its cost (a lone last pair at batch 4 would
  pay 4×); `pad_batches` overrides. The UNet input is one reused buffer whose constant channels
  [z_bg, C, Â] are written once per batch (once per step for the paper form).
* A pair's initial noise comes from its own seed on a CPU generator, then moves to the device, so its
  result does not depend on the batch size, its position in the batch or the device's RNG.
* The UNet runs channels_last; the VQ does not (see `from_weights_dir`).
* The IDA, the VQ and the correlation softmax always run in float32 (the ×100 softmax amplifies
  rounding ~500×). `dtype` applies to the UNet only: bf16 casts its weights once at load (no per-call
  weight casts, as autocast would do), fp16 (CUDA) runs it under autocast; GroupNorm and the attention
  weights stay float32 either way.
* Output pixels are `round(255 · clamp((x + 1) / 2, 0, 1))`; the official grid truncates instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from shmt_cli.checkpoint import CheckpointError
from shmt_cli.decompose import FaceParts
from shmt_cli.engines.base import Engine, EngineUnavailable, PairJob
from shmt_cli.engines.shmt import vq as vqmod
from shmt_cli.engines.shmt import weights as W
from shmt_cli.engines.shmt.config import variant_config
from shmt_cli.engines.shmt.ida import PreparedReference, load_official_ida
from shmt_cli.engines.shmt.model import IdaForm, PreparedPair, ShmtDenoiser
from shmt_cli.engines.shmt.sampler import ODE_START, SAMPLERS, SampleTrajectory, sample_ode, two_model_chooser
from shmt_cli.engines.shmt.unet import load_official_unet
from shmt_cli.representations import IMAGE_SIZE, reference_parts, source_parts

LEVELS = ("h0", "h4", "mix")
IDA_FORMS = ("released", "paper")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LEVEL_NUMBER = {"h0": 0, "h4": 4}
#: The denoiser's name of each user-facing IDA form.
DENOISER_FORM: dict[str, IdaForm] = {"released": "release", "paper": "train"}
#: The official two-model blend: model 1 (EMA weights) = SHMT-h4, model 2 (raw weights) = SHMT-h0.
MODEL1, MODEL2 = "h4", "h0"


@dataclass(frozen=True)
class ShmtSettings:
    """What the user chose for the SHMT engine.

    level: "h0", "h4", "mix" (official two-model blend) or "" = mix when both models are installed,
    else the installed one. mix: share of the DDIM steps run by h4 (official ``proportionOFmodel1``:
    steps with t >= 1000·mix use h0). steps: DDIM steps 1..1000. ida: "released" (official inference
    form) or "paper" (training form, w-blend with the noisy latent). ema_both: mix with EMA weights for
    h0 too (the official blend runs h0 with raw weights). batch_size: pairs per UNet batch. device:
    "auto" (cuda if available), "cpu", "cuda", "cuda:1", ... dtype: "fp32", "bf16" (UNet weights in
    bf16), "fp16" (UNet under autocast; needs CUDA). compile: torch.compile the UNet (None = on for
    CUDA, off for CPU). sampler: "ddim" (official, default) or "dpmpp" (DPM-Solver++ 2M, same ODE; 20
    steps land closer to its solution than DDIM's 50, see tools/sampler_accuracy.py).
    """

    level: str = ""
    mix: float = 0.5
    steps: int = 50
    ida: str = "released"
    ema_both: bool = False
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "fp32"
    compile: bool | None = None
    sampler: str = "ddim"

    def __post_init__(self) -> None:
        if self.level not in ("", *LEVELS):
            raise ValueError(f"--level for the shmt engine must be h0, h4 or mix, got {self.level!r}")
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"--mix must be in [0, 1] (share of steps run by h4), got {self.mix}")
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"--steps must be in 1..1000, got {self.steps}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.sampler == "dpmpp" and self.steps > ODE_START:
            raise ValueError(f"--steps for --sampler dpmpp must be in 1..{ODE_START}, got {self.steps}")
        if self.ida not in IDA_FORMS:
            raise ValueError(f"--ida must be released or paper, got {self.ida!r}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be fp32, bf16 or fp16, got {self.dtype!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}") from None


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else as torch parses it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------
# Prepared faces (float32, on CPU; moved to the device per batch so a large face cache costs host
# memory, not device memory)


@dataclass(frozen=True)
class SourceState:
    """One source face: z_bg (1, 3, 64, 64) VQ latent of the background; content {variant: C}
    (1, 64 | 49, 64, 64); mask64 M64 (1, 1, 64, 64) in [0, 1]; onehot64 (1, 19, 64, 64) {0, 1}."""

    z_bg: torch.Tensor
    content: dict[str, torch.Tensor]
    mask64: torch.Tensor
    onehot64: torch.Tensor


@dataclass(frozen=True)
class ReferenceState:
    """One reference face: z_ref (1, 3, 64, 64) VQ latent of the makeup image I_m; makeup64 U_m
    (1, 48, 64, 64); onehot64 (1, 19, 64, 64); ida {variant: the IDA's reference side, batch 1}."""

    z_ref: torch.Tensor
    makeup64: torch.Tensor
    onehot64: torch.Tensor
    ida: dict[str, PreparedReference]


@dataclass
class PairBatch:
    """A padded batch of pairs on the device: `count` real rows, then padding up to `size` rows.

    z_bg (B, 3, 64, 64); mask64 (B, 1, 64, 64); onehot64 (B, 19, 64, 64); content {variant: (B, C, 64,
    64)}; references {variant: PreparedReference with batch B}; x_T (B, 3, 64, 64) initial noise.
    """

    count: int
    z_bg: torch.Tensor
    mask64: torch.Tensor
    onehot64: torch.Tensor
    content: dict[str, torch.Tensor]
    references: dict[str, PreparedReference]
    x_T: torch.Tensor
    #: The denoisers' per-pair precompute per (variant, IDA form), filled on first use;
    #: `dataclasses.replace(batch, x_T=...)` shares it, so sampling the same pairs again (other noise or
    #: step count) skips the IDA.
    prepared: dict[tuple[str, str], tuple[ShmtDenoiser, PreparedPair]] = field(
        default_factory=dict, repr=False
    )

    @property
    def size(self) -> int:
        return int(self.z_bg.shape[0])


@dataclass
class SampleResult:
    """Output of `ShmtEngine.sample` for the real rows (n) of a batch.

    samples (n, 3, 64, 64) final latents; timesteps visited (descending) and the model used at each;
    x_inter [x_T, x after each step] (record=True only); indices (n, 64, 64) codebook indices of the
    decode; decoded (n, 3, 256, 256) float, unclamped; images n × (256, 256, 3) uint8 RGB.
    """

    samples: torch.Tensor
    timesteps: list[int]
    choices: list[str]
    x_inter: list[torch.Tensor] = field(default_factory=list)
    indices: torch.Tensor | None = None
    decoded: torch.Tensor | None = None
    images: list[np.ndarray] = field(default_factory=list)


@dataclass
class ShmtModel:
    """One SHMT variant on the device: its denoiser (UNet maybe compiled) and whether the UNet is EMA."""

    variant: str
    denoiser: ShmtDenoiser
    ema: bool
    compiled: bool = False


def latent_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A pair's initial latent noise, float32 on CPU, drawn from its own generator."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def to_uint8_images(decoded: torch.Tensor) -> list[np.ndarray]:
    """(n, 3, H, W) float image in [-1, 1] -> n × (H, W, 3) uint8 RGB, rounded (the official truncates)."""
    unit = ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    pixels = torch.round(unit * 255.0).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(image) for image in pixels]


# ---------------------------------------------------------------------------------------------
# Loading


def _read_model_tensors(path: Path, use_ema: bool) -> tuple[dict[str, torch.Tensor], bool]:
    """The UNet (EMA shadows or raw) and IDA tensors of one imported SHMT file, and whether EMA was used.

    Reads only what is needed: a full checkpoint holds both weight sets (2 × 1.1 GB in float32).
    """
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        take_ema = use_ema and any(k.startswith(W.EMA_PREFIX + "diffusion_model") for k in keys)
        unet_prefix = W.EMA_PREFIX if take_ema else W.UNET_PREFIX
        wanted = [k for k in keys if k.startswith((unet_prefix, W.IDA_PREFIX))]
        return {k: handle.get_tensor(k) for k in wanted}, take_ema


def load_model(
    path: Path,
    variant: str,
    size: str,
    use_ema: bool,
    device: torch.device,
    compile_unet: bool = False,
    unet_dtype: torch.dtype = torch.float32,
) -> ShmtModel:
    """Build SHMT-`variant` of size class `size` ("full"/"tiny") from an imported file, on `device`.

    Modules are built on "meta" and the checkpoint tensors assigned (no random init, no second copy).
    """
    tensors, took_ema = _read_model_tensors(path, use_ema)
    config = variant_config(LEVEL_NUMBER[variant], size)  # type: ignore[arg-type]
    with torch.device("meta"):
        denoiser = ShmtDenoiser(config)
    load_official_unet(denoiser.unet, tensors, prefer_ema=took_ema, assign=True)
    load_official_ida(denoiser.ida, tensors, assign=True)
    denoiser.eval().requires_grad_(False)
    denoiser.unet.to(device=device, dtype=unet_dtype, memory_format=torch.channels_last)
    denoiser.ida.to(device)
    if compile_unet:
        denoiser.use_unet_runner(torch.compile(denoiser.unet, dynamic=False))  # type: ignore[arg-type]
    return ShmtModel(variant=variant, denoiser=denoiser, ema=took_ema, compiled=compile_unet)


def _unavailable(directory: Path, what: str) -> EngineUnavailable:
    return EngineUnavailable(
        f"{what} in {directory}: import the official checkpoint with "
        "`shmt weights import CKPT... [--vq VQ_CKPT]` (or use --engine classic)"
    )


# ---------------------------------------------------------------------------------------------
# The engine


class ShmtEngine(Engine[SourceState, ReferenceState]):
    """SHMT latent-diffusion makeup transfer (see the module docstring)."""

    name = "shmt"
    needs_render = True

    def __init__(
        self,
        models: Mapping[str, ShmtModel],
        vq: Any,
        settings: ShmtSettings,
        level: str,
        device: torch.device,
        weight_hashes: Mapping[str, str] | None = None,
    ) -> None:
        needed = (MODEL1, MODEL2) if level == "mix" else (level,)
        if any(v not in models for v in needed):
            raise ValueError(f"level {level} needs models {needed}, got {sorted(models)}")
        self.models = dict(models)
        self.vq = vq
        self.config = settings
        self.level = level
        self.device = device
        self.batch_size = settings.batch_size
        #: Pad every batch to `batch_size` rows: on when a model is compiled (one graph shape).
        self.pad_batches = any(model.compiled for model in self.models.values())
        self.autocast = None if settings.dtype == "fp32" else DTYPES[settings.dtype]
        self.weight_hashes = dict(weight_hashes or {})
        self._choose_model = two_model_chooser(settings.mix)

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_weights_dir(cls, directory: str | os.PathLike[str] | None, settings: ShmtSettings) -> ShmtEngine:
        """Load the models `settings` need from an imported weights folder (`shmt weights import`).

        Raises EngineUnavailable when a needed file is missing, ValueError for an impossible setting
        (fp16 on CPU, models of different sizes).
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
        needed = (MODEL1, MODEL2) if level == "mix" else (level,)
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
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailable("--device cuda: no CUDA device is available here (use --device cpu)")
        if settings.dtype == "fp16" and device.type != "cuda":
            raise ValueError(f"--dtype fp16 needs a CUDA device; on {device.type} use --dtype bf16 or fp32")
        compile_unet = settings.compile if settings.compile is not None else device.type == "cuda"
        unet_dtype = torch.bfloat16 if settings.dtype == "bf16" else torch.float32

        models = {}
        for variant in needed:
            # The official blend swaps EMA weights into model 1 only; model 2 (h0) runs its raw weights.
            use_ema = not (level == "mix" and variant == MODEL2 and not settings.ema_both)
            entry = installed[variant]
            W.check_weights_file(folder, entry.file)  # size, header, sha256 when the file changed
            models[variant] = load_model(
                folder / entry.file, variant, entry.size, use_ema, device, compile_unet, unet_dtype
            )
        # The VQ stays in contiguous format: torch's CPU GroupNorm on channels_last tensors drifts by up
        # to 0.2 at the encoder's first norm (its large-mean 256² maps), 0.02 on the latents.
        vq = W.load_vq_model(folder).to(device)
        vq.eval().requires_grad_(False)
        hashes = {installed[v].file: installed[v].sha256 for v in needed}
        hashes[W.VQ_FILE] = vq_entry.sha256
        return cls(models, vq, settings, level, device, hashes)

    # -- Engine interface ------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "engine": self.name,
            "level": self.level,
            "steps": self.config.steps,
            "ida": self.config.ida,
            "dtype": self.config.dtype,
            "unet_weights": {v: "ema" if m.ema else "raw" for v, m in sorted(self.models.items())},
            "weights": {name: digest[:16] for name, digest in sorted(self.weight_hashes.items())},
        }
        if self.level == "mix":
            out["mix"] = self.config.mix
        if self.config.sampler != "ddim":  # absent for the default, so earlier runs' settings still match
            out["sampler"] = self.config.sampler
        return out

    @torch.inference_mode()
    def prepare_source(self, face: FaceParts) -> SourceState:
        """z_bg, content C of every loaded variant, M64 and 64² one-hots of a 256² source face."""
        _check_face(face, "source")
        levels = tuple(LEVEL_NUMBER[v] for v in self.models)
        parts = source_parts(face.image, face.labels, face.render, levels=levels)
        z_bg = self._encode(parts.bg)
        return SourceState(
            z_bg=z_bg,
            content={v: parts.content[LEVEL_NUMBER[v]].contiguous() for v in self.models},
            mask64=parts.mask64.contiguous(),
            onehot64=parts.onehot64.contiguous(),
        )

    @torch.inference_mode()
    def prepare_reference(self, face: FaceParts) -> ReferenceState:
        """z_ref, U_m, 64² one-hots and each IDA's encoded reference side of a 256² reference face."""
        _check_face(face, "reference")
        parts = reference_parts(face.image, face.labels)
        z_ref = self._encode(parts.makeup)
        makeup64, onehot64 = parts.makeup64.contiguous(), parts.onehot64.contiguous()
        prepared = {}
        for variant, model in self.models.items():
            side = model.denoiser.prepare_reference(
                z_ref.to(self.device), makeup64.to(self.device), onehot64.to(self.device)
            )
            prepared[variant] = PreparedReference(
                values=side.values.cpu(), features=side.features.cpu(), labels=side.labels.cpu()
            )
        return ReferenceState(z_ref=z_ref, makeup64=makeup64, onehot64=onehot64, ida=prepared)

    def transfer_batch(self, jobs: Sequence[PairJob]) -> list[np.ndarray]:
        images: list[np.ndarray] = []
        for start in range(0, len(jobs), self.batch_size):
            images += self.sample(jobs[start : start + self.batch_size]).images
        return images

    # -- the work ----------------------------------------------------------------------------------

    def _encode(self, image: torch.Tensor) -> torch.Tensor:
        # Contiguous: the representations are permuted numpy arrays (channels_last strides), see above.
        return vqmod.encode(self.vq, image.to(self.device).contiguous()).float().cpu()

    def collate(self, jobs: Sequence[PairJob], x_T: torch.Tensor | None = None) -> PairBatch:
        """Stack prepared pairs into one batch on the device, padded to `batch_size` rows if `pad_batches`.

        `x_T` (len(jobs), 3, 64, 64) replaces the per-seed noise (tests inject the official noise).
        """
        if not jobs:
            raise ValueError("no pairs to transfer")
        if len(jobs) > self.batch_size:
            raise ValueError(f"{len(jobs)} pairs do not fit a batch of {self.batch_size}")
        rows = self.batch_size if self.pad_batches else len(jobs)
        padded = list(jobs) + [jobs[-1]] * (rows - len(jobs))
        sources: list[SourceState] = [job.source for job in padded]
        refs: list[ReferenceState] = [job.reference for job in padded]

        def stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
            return torch.cat(list(tensors)).to(self.device)

        latent_shape = tuple(sources[0].z_bg.shape)
        if x_T is None:
            noise = stack([latent_noise(job.seed, latent_shape) for job in padded])
        else:
            if x_T.shape[0] != len(jobs) or tuple(x_T.shape[1:]) != latent_shape[1:]:
                raise ValueError(f"x_T must be ({len(jobs)}, {', '.join(map(str, latent_shape[1:]))})")
            given = list(x_T.float().cpu().split(1))
            noise = stack(given + given[-1:] * (rows - len(jobs)))
        return PairBatch(
            count=len(jobs),
            z_bg=stack([s.z_bg for s in sources]),
            mask64=stack([s.mask64 for s in sources]),
            onehot64=stack([s.onehot64 for s in sources]),
            content={v: stack([s.content[v] for s in sources]) for v in self.models},
            references={
                v: PreparedReference(
                    values=stack([r.ida[v].values for r in refs]),
                    features=stack([r.ida[v].features for r in refs]),
                    labels=stack([r.ida[v].labels for r in refs]),
                )
                for v in self.models
            },
            x_T=noise,
        )

    @torch.inference_mode()
    def prepared(self, batch: PairBatch, variant: str) -> PreparedPair:
        """Model `variant`'s per-pair precompute for `batch` in this engine's IDA form (cached on it)."""
        form = DENOISER_FORM[self.config.ida]
        denoiser = self.models[variant].denoiser
        owner, prepared = batch.prepared.get((variant, form), (None, None))
        if owner is not denoiser or prepared is None:
            prepared = denoiser.prepare_pair(
                batch.z_bg,
                batch.content[variant],
                batch.mask64,
                batch.onehot64,
                batch.references[variant],
                form,
            )
            batch.prepared[(variant, form)] = (denoiser, prepared)
        return prepared

    @torch.inference_mode()
    def epsilon(self, batch: PairBatch, variant: str, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε-prediction (B, 3, 64, 64) float32 of model `variant` for x_t (B, 3, 64, 64) at t (B,) int64."""
        denoiser = self.models[variant].denoiser
        return denoiser.epsilon(x_t, t, self.prepared(batch, variant), self.autocast)

    def model_for_step(self, t: int) -> str:
        """The variant that runs step t: the level itself, or the official two-model switch for mix."""
        if self.level != "mix":
            return self.level
        return MODEL1 if self._choose_model(t) == 1 else MODEL2

    @torch.inference_mode()
    def sample(
        self,
        jobs: Sequence[PairJob],
        x_T: torch.Tensor | None = None,
        *,
        record: bool = False,
        decode: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> SampleResult:
        """DDIM for up to `batch_size` pairs, then (with `decode`) VQ decode with codebook snapping.

        `x_T` (len(jobs), 3, 64, 64) replaces the per-seed noise (tests inject the official noise).
        """
        return self.sample_batch(self.collate(jobs, x_T), record=record, decode=decode, progress=progress)

    @torch.inference_mode()
    def sample_batch(
        self,
        batch: PairBatch,
        *,
        record: bool = False,
        decode: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> SampleResult:
        """`sample` for an already collated batch (its per-pair precompute is built on first use)."""

        def eps_fn(variant: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
            # Pairs are prepared on first use: a mix whose share idles one model skips its IDA.
            return lambda x_t, t: self.epsilon(batch, variant, x_t, t)

        ddim: SampleTrajectory = sample_ode(
            {v: eps_fn(v) for v in self.models},
            batch.x_T,
            self.config.steps,
            self.config.sampler,
            choose=self.model_for_step,
            record=record,
            progress=progress,
        )
        n = batch.count
        result = SampleResult(
            samples=ddim.samples[:n].float().cpu(),
            timesteps=ddim.timesteps,
            choices=[str(c) for c in ddim.choices],
            x_inter=[x[:n].float().cpu() for x in ddim.x_inter],
        )
        if decode:
            decoded, indices = vqmod.decode_with_indices(self.vq, ddim.samples[:n].float())
            result.indices = indices.cpu()
            result.decoded = decoded.float().cpu()
            result.images = to_uint8_images(decoded)
        return result


def _check_face(face: FaceParts, role: str) -> None:
    if face.image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or face.labels.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"the shmt engine needs {IMAGE_SIZE}x{IMAGE_SIZE} aligned faces; the {role} is "
            f"{face.image.shape[1]}x{face.image.shape[0]}"
        )
    if role == "source" and (face.render is None or face.render.shape != face.image.shape):
        raise ValueError("the shmt engine needs the source's 3D render (same size as the image)")
