"""The SHMT engine: imported weights + the model parts (VQ, IDA, UNet, DDIM) behind the Engine interface.

Work per face is done once (`prepare_source`, `prepare_reference`); `transfer_batch` runs fixed-size
batches of pairs. Inference follows the official scripts (reference §0.1, §3, §6) with these choices:

* The released IDA form does not depend on z_t or t (reference §8 #1), so it is computed once per pair
  before the DDIM loop; the training ("paper") form keeps the content warp A1 fixed too and recomputes
  only the noisy-latent warp A0 and its weight w(t) at every step.
* Each sampler step (the paper form's z_t-dependent IDA, the UNet, the scheduler update) is one
  `WholeStep` (step.py), compiled as one graph when `compile` is on. Compiled, every batch is padded
  to exactly `batch_size` rows (copies of the last pair, dropped at the end) so each model's graph
  (and CUDA graphs) sees a single shape. Eager runs gain nothing from a fixed shape, so they skip the
  padding and its cost (a lone last pair at batch 4 would pay 4×); `pad_batches` overrides.
* Out of memory inside a batch halves the batch and retries its pairs; at one pair per batch the run
  stops with `EngineOutOfMemory`.
* A pair's initial noise comes from its own seed on a CPU generator, then moves to the device, so its
  result does not depend on the batch size, its position in the batch or the device's RNG.
* The UNet runs channels_last; the VQ does not (see loading.py).
* The IDA, the VQ and the correlation softmax always run in float32 (the ×100 softmax amplifies
  rounding ~500×). `dtype` applies to the UNet only: bf16 casts its weights once at load (no per-call
  weight casts, as autocast would do), fp16 (CUDA) runs it under autocast; GroupNorm and the attention
  weights stay float32 either way.
* Output pixels are `round(255 · clamp((x + 1) / 2, 0, 1))`; the official grid truncates instead.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from shmt_cli.decompose import FaceParts
from shmt_cli.engines.base import Engine, EngineOutOfMemory, PairJob
from shmt_cli.engines.shmt import vq as vqmod
from shmt_cli.engines.shmt.config import VARIANT_LEVELS
from shmt_cli.engines.shmt.ida import PreparedReference
from shmt_cli.engines.shmt.loading import CompileOptions, ShmtModel, load_parts, needed_models
from shmt_cli.engines.shmt.model import PreparedPair
from shmt_cli.engines.shmt.pairs import (
    PairBatch,
    ReferenceState,
    SampleResult,
    SourceState,
    collate,
    latent_noise,
    to_uint8_images,
)
from shmt_cli.engines.shmt.sampler import StepPlan, step_plan, two_model_chooser
from shmt_cli.engines.shmt.settings import DENOISER_FORM, DTYPES, MODEL1, MODEL2, ShmtSettings
from shmt_cli.engines.shmt.step import WholeStep, run_plan
from shmt_cli.representations import IMAGE_SIZE, reference_parts, source_parts

# Importers of the engine's former contents keep working (one home each: settings.py, pairs.py, loading.py).
__all__ = [
    "PairBatch",
    "SampleResult",
    "ShmtEngine",
    "ShmtModel",
    "ShmtSettings",
    "latent_noise",
    "to_uint8_images",
]

#: What an allocation failure raises: torch's for devices, Python's for host memory.
OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)


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
        needed = needed_models(level)
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
        self._plan: StepPlan | None = None

    @classmethod
    def from_weights_dir(
        cls,
        directory: str | os.PathLike[str] | None,
        settings: ShmtSettings,
        compile_options: CompileOptions | None = None,
    ) -> ShmtEngine:
        """Load the models `settings` need from an imported weights folder (see loading.load_parts)."""
        parts = load_parts(directory, settings, compile_options)
        return cls(parts.models, parts.vq, settings, parts.level, parts.device, parts.hashes)

    # -- Engine interface ------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line saying what runs, e.g. "shmt engine: level mix, device cpu, dtype bf16, 2 threads,
        compile off, sampler ddim 50 steps, batch 4"."""
        compiled = any(model.compiled for model in self.models.values())
        return (
            f"shmt engine: level {self.level}, device {self.device}, dtype {self.config.dtype}, "
            f"{torch.get_num_threads()} threads, compile {'on' if compiled else 'off'}, "
            f"sampler {self.config.sampler} {self.config.steps} steps, batch {self.batch_size}"
            + (f", vq {self.config.vq_dtype}" if self.config.vq_dtype != "fp32" else "")
        )

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
        if self.config.vq_dtype != "fp32":  # likewise
            out["vq_dtype"] = self.config.vq_dtype
        return out

    @torch.inference_mode()
    def prepare_source(self, face: FaceParts) -> SourceState:
        """z_bg, content C of every loaded variant, M64 and 64² one-hots of a 256² source face."""
        _check_face(face, "source")
        levels = tuple(VARIANT_LEVELS[v] for v in self.models)
        parts = source_parts(face.image, face.labels, face.render, levels=levels)
        z_bg = self._encode(parts.bg)
        return SourceState(
            z_bg=z_bg,
            content={v: parts.content[VARIANT_LEVELS[v]].contiguous() for v in self.models},
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
        """Results for `jobs` in batches of `batch_size`; out of memory halves the batch and retries its
        pairs (the smaller batch is kept for the rest of the call), at one pair it raises EngineOutOfMemory.
        """
        images: list[np.ndarray] = []
        size, start = self.batch_size, 0
        while start < len(jobs):
            chunk = jobs[start : start + size]
            try:
                images += self.sample(chunk, rows=size if self.pad_batches else None).images
            except OUT_OF_MEMORY as err:
                self._release_memory()
                if size == 1:
                    raise EngineOutOfMemory(self._out_of_memory_message()) from err
                size = max(1, size // 2)
                continue
            start += len(chunk)
        return images

    def _out_of_memory_message(self) -> str:
        dtype = ", or use --dtype bf16" if self.config.dtype == "fp32" else ""
        return (
            f"out of memory on {self.device} even at 1 pair per batch (halved from --batch-size "
            f"{self.batch_size}): free memory{dtype}; --batch-size 1 skips the larger tries"
        )

    def _release_memory(self) -> None:
        # Tensors of the failed attempt are unreachable now; give their memory back before retrying.
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- the work ----------------------------------------------------------------------------------

    def _encode(self, image: torch.Tensor) -> torch.Tensor:
        # Contiguous: the representations are permuted numpy arrays (channels_last strides), see above.
        return vqmod.encode(self.vq, image.to(self.device).contiguous()).cpu()

    def collate(
        self, jobs: Sequence[PairJob], x_T: torch.Tensor | None = None, rows: int | None = None
    ) -> PairBatch:
        """Stack prepared pairs into one batch on the device (pairs.collate), padded to `rows` (default:
        `batch_size` if `pad_batches`, else no padding)."""
        if rows is None:
            rows = self.batch_size if self.pad_batches else len(jobs)
        if len(jobs) > self.batch_size:
            raise ValueError(f"{len(jobs)} pairs do not fit a batch of {self.batch_size}")
        return collate(jobs, rows, self.models, self.device, x_T)

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
        """ε-prediction (B, 3, 64, 64) float32 of model `variant` for x_t (B, 3, 64, 64) at t (B,) int64
        (eager, outside the sampler's step)."""
        denoiser = self.models[variant].denoiser
        return denoiser.epsilon(x_t, t, self.prepared(batch, variant), self.autocast)

    def model_for_step(self, t: int) -> str:
        """The variant that runs step t: the level itself, or the official two-model switch for mix."""
        if self.level != "mix":
            return self.level
        return MODEL1 if self._choose_model(t) == 1 else MODEL2

    def step(self, batch: PairBatch, variant: str) -> WholeStep:
        """Model `variant`'s sampler step, loaded with `batch` (built, and compiled, on first use)."""
        prepared = self.prepared(batch, variant)
        whole = self.models[variant].step_for(prepared, self.autocast)
        whole.load(prepared)
        return whole

    @property
    def plan(self) -> StepPlan:
        """The sampler's timesteps and update coefficients for this engine's settings."""
        if self._plan is None:
            self._plan = step_plan(self.config.sampler, self.config.steps)
        return self._plan

    @torch.inference_mode()
    def sample(
        self,
        jobs: Sequence[PairJob],
        x_T: torch.Tensor | None = None,
        *,
        rows: int | None = None,
        record: bool = False,
        decode: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> SampleResult:
        """Sample up to `batch_size` pairs, then (with `decode`) VQ decode with codebook snapping.

        `x_T` (len(jobs), 3, 64, 64) replaces the per-seed noise (tests inject the official noise);
        `rows` pads the batch (see `collate`).
        """
        batch = self.collate(jobs, x_T, rows)
        return self.sample_batch(batch, record=record, decode=decode, progress=progress)

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
        plan = self.plan
        # Only the models the plan visits are prepared: a mix whose share idles one model skips its IDA.
        used = {self.model_for_step(t) for t in plan.timesteps}
        steps = {variant: self.step(batch, variant) for variant in sorted(used)}
        trajectory = run_plan(plan, steps, batch.x_T, self.model_for_step, record=record, progress=progress)
        n = batch.count
        result = SampleResult(
            samples=trajectory.samples[:n].float().cpu(),
            timesteps=trajectory.timesteps,
            choices=[str(c) for c in trajectory.choices],
            x_inter=[x[:n].float().cpu() for x in trajectory.x_inter],
        )
        if decode:
            decoded, indices = vqmod.decode_with_indices(self.vq, trajectory.samples[:n].float())
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
