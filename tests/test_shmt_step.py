"""The SHMT sampler step as one function (engines/shmt/step.py): its update equals diffusers' schedulers,
compiled it never recompiles across the situations of a real run, and the engine halves a batch that
runs out of memory.

Uses the tiny random-weight models of the `random_weights_dir` fixture (no ../shared needed) and random
prepared faces, so it is quick. The recompile test compiles with dynamo's CompileCounter backend:
recompiles are decided by dynamo's guards, whatever backend turns the graph into code.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter

from shmt_cli.engines.base import DeviceUnavailable, EngineOutOfMemory, PairJob
from shmt_cli.engines.shmt.config import LATENT_CHANNELS, WARPED_REF_CHANNELS
from shmt_cli.engines.shmt.engine import ShmtEngine
from shmt_cli.engines.shmt.pairs import ReferenceState, SourceState
from shmt_cli.engines.shmt.sampler import linear_update, make_dpmpp_scheduler, make_scheduler, step_plan
from shmt_cli.engines.shmt.settings import ShmtSettings, resolve_device
from shmt_cli.face.labels import NUM_LABELS


@pytest.mark.parametrize(
    ("sampler", "steps"), [("ddim", 50), ("ddim", 3), ("ddim", 1000), ("dpmpp", 20), ("dpmpp", 7)]
)
def test_step_plan_reproduces_the_diffusers_schedulers(sampler: str, steps: int) -> None:
    plan = step_plan(sampler, steps)
    scheduler = make_scheduler(steps) if sampler == "ddim" else make_dpmpp_scheduler(steps)
    assert plan.timesteps == scheduler.timesteps.tolist() and plan.coefficients.shape == (steps, 6)
    generator = torch.Generator().manual_seed(steps)
    theirs = ours = torch.randn((2, 3, 8, 8), generator=generator)
    x0 = torch.zeros_like(ours)
    worst = 0.0
    for i, t in enumerate(plan.timesteps):
        eps = torch.randn(ours.shape, generator=generator)
        theirs = scheduler.step(eps, t, theirs).prev_sample
        ours, x0 = linear_update(ours, eps, plan.coefficients[i], x0)
        worst = max(worst, ((ours - theirs).abs().max() / theirs.abs().max()).item())
    if sampler == "ddim":
        assert worst == 0.0  # same operations in the same order
    else:
        assert worst < 2e-6  # the second-order step is regrouped


def _random_job(engine: ShmtEngine, seed: int) -> PairJob:
    """A pair of random prepared faces for every model of `engine` (shapes from the models' configs)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    labels = torch.randint(0, NUM_LABELS, (1, 64, 64), generator=generator)
    onehot = F.one_hot(labels, NUM_LABELS).permute(0, 3, 1, 2).float()
    content = {}
    for variant, model in engine.models.items():
        width = model.denoiser.unet.config.in_channels - 2 * LATENT_CHANNELS - WARPED_REF_CHANNELS
        content[variant] = randn(1, width, 64, 64)
    mask = (torch.rand((1, 1, 64, 64), generator=generator) > 0.3).float()
    source = SourceState(z_bg=randn(1, 3, 64, 64), content=content, mask64=mask, onehot64=onehot)
    z_ref, makeup = randn(1, 3, 64, 64), randn(1, 48, 64, 64)
    with torch.inference_mode():
        ida = {v: m.denoiser.prepare_reference(z_ref, makeup, onehot) for v, m in engine.models.items()}
    return PairJob(source, ReferenceState(z_ref=z_ref, makeup64=makeup, onehot64=onehot, ida=ida), seed)


@pytest.fixture(scope="module")
def counted_engine(random_weights_dir: Path) -> tuple[ShmtEngine, CompileCounter]:
    """Both tiny random models (mix) compiled through a CompileCounter; batch 2, 2 DDIM steps (one each)."""
    counter = CompileCounter()
    settings = ShmtSettings(level="mix", steps=2, batch_size=2, device="cpu", compile=True)
    return ShmtEngine.from_weights_dir(random_weights_dir, settings, {"backend": counter}), counter


@pytest.fixture(scope="module")
def jobs(counted_engine: tuple[ShmtEngine, CompileCounter]) -> list[PairJob]:
    return [_random_job(counted_engine[0], seed) for seed in range(4)]


def _with(engine: ShmtEngine, level: str | None = None, **changes) -> ShmtEngine:
    """An engine sharing `engine`'s loaded models (and their compiled steps), other settings."""
    level = level or engine.level
    models = engine.models if level == "mix" else {level: engine.models[level]}
    return ShmtEngine(models, engine.vq, replace(engine.config, level=level, **changes), level, engine.device)


def test_compiled_steps_never_recompile(
    counted_engine: tuple[ShmtEngine, CompileCounter], jobs: list[PairJob]
) -> None:
    engine, counter = counted_engine
    assert engine.pad_batches and "compile on" in engine.describe()
    with torch._dynamo.config.patch(error_on_recompile=True):
        first = engine.transfer_batch(jobs[:3])  # a full batch, then a short last one (padded)
        assert counter.frame_count == 2  # one graph per model: the h0 and the h4 step
        # Another shard on the same engine (other pairs); its batch is reused below, so its IDA
        # precompute is computed once.
        shard = engine.collate([jobs[3], replace(jobs[0], seed=10)])
        engine.sample_batch(shard, decode=False)
        for level in ("h4", "h0"):  # one level at a time, sharing the loaded models
            _with(engine, level).sample_batch(shard, decode=False)
        _with(engine, sampler="dpmpp").sample_batch(shard, decode=False)  # other coefficients, same graph
        assert counter.frame_count == 2

        # A timestep tensor made outside inference mode (a normal tensor) is copied into the static one.
        step = engine.step(shard, "h4")
        t = torch.full((2,), 1, dtype=torch.long)
        assert not t.is_inference()
        x_next, _ = step(shard.x_T, t, engine.plan.coefficients[-1], torch.zeros_like(shard.x_T))
        assert torch.isfinite(x_next).all()
        assert counter.frame_count == 2

        # The paper IDA form (latent warp inside the step) is a graph of its own per model, built once.
        paper = _with(engine, ida="paper")
        paper.sample_batch(shard, decode=False)
        paper.sample_batch(replace(shard, x_T=shard.x_T.flip(0)), decode=False)
        assert counter.frame_count == 4
    assert len(first) == 3 and all(image.shape == (256, 256, 3) for image in first)


def test_compiled_step_equals_eager(
    counted_engine: tuple[ShmtEngine, CompileCounter], jobs: list[PairJob]
) -> None:
    compiled, _ = counted_engine
    batch = compiled.collate(jobs[:2])
    eager_models = {v: replace(m, compile=None) for v, m in compiled.models.items()}
    for ida in ("released", "paper"):
        settings = replace(compiled.config, ida=ida)
        eager = ShmtEngine(eager_models, compiled.vq, settings, "mix", compiled.device)
        a = eager.sample_batch(batch, decode=False).samples
        b = _with(compiled, ida=ida).sample_batch(batch, decode=False).samples
        assert torch.equal(a, b)  # the counting backend runs the captured graph eagerly: same kernels


def test_out_of_memory_halves_the_batch_then_stops(
    counted_engine: tuple[ShmtEngine, CompileCounter], jobs: list[PairJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled, _ = counted_engine
    models = {v: replace(m, compile=None) for v, m in compiled.models.items()}
    engine = ShmtEngine(models, compiled.vq, replace(compiled.config, batch_size=4), "mix", compiled.device)
    sizes: list[int] = []

    def sample_with_little_memory(chunk, *args, **kwargs) -> SimpleNamespace:
        sizes.append(len(chunk))
        if len(chunk) > 1:  # no batch of 2 or more fits
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return SimpleNamespace(images=[np.full((1,), job.seed) for job in chunk])

    monkeypatch.setattr(engine, "sample", sample_with_little_memory)
    five = [replace(jobs[0], seed=seed) for seed in range(5)]
    images = engine.transfer_batch(five)
    assert sizes == [4, 2, 1, 1, 1, 1, 1]  # halved twice, then the smaller batch is kept
    assert [int(image[0]) for image in images] == [0, 1, 2, 3, 4]

    def no_memory(chunk, *args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(engine, "sample", no_memory)
    with pytest.raises(EngineOutOfMemory, match="--batch-size") as caught:
        engine.transfer_batch(five[:3])
    assert "\n" not in str(caught.value) and "--dtype bf16" in str(caught.value)


def test_cuda_without_cuda_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceUnavailable, match="no CUDA device"):
            resolve_device(name)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
