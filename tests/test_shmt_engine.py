"""SHMT engine: end-to-end parity with the official goldens, weight choice, steps, IDA forms, padding, seeds.

Everything starts from the golden uint8 inputs and goes through our representations, VQ encoder, IDA,
UNet, DDIM and decoder, at batch 2 (both golden pairs in one batch) with the official noise injected.
Run with ``-s`` to see the achieved maximum errors.

Cost is dominated by the IDA encoders (full width even in the tiny models), so the golden batch is
collated once and its per-pair precompute (the IDA warp, computed once per pair) is reused by every run.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from shmt_cli.decompose import FaceParts
from shmt_cli.engines.base import EngineUnavailable, PairJob
from shmt_cli.engines.shmt import vq as vqmod
from shmt_cli.engines.shmt import weights as W
from shmt_cli.engines.shmt.engine import PairBatch, ShmtEngine, ShmtSettings, latent_noise, to_uint8_images

WARP_ATOL = 5e-4
EPS_ATOL = 2e-4
LATENT_RTOL = 3e-5  # of max |x| of the golden trajectory
DECODED_ATOL = 1e-4
IO_FILES = {"h4": "tiny_h4_io", "h0": "tiny_h0_io", "mix": "tiny_model2_io"}

#: Achieved errors, printed at the end of the module (pytest -s).
ERRORS: dict[str, float] = {}


def _record(name: str, value: float) -> float:
    ERRORS[name] = value
    return value


@pytest.fixture(scope="module", autouse=True)
def _error_table(one_torch_thread):
    yield
    if ERRORS:
        print("\nSHMT engine vs official golden, max errors:")
        for name, value in sorted(ERRORS.items()):
            print(f"  {name:44s} {value:.3g}")


def _hwc(chw: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(chw.permute(1, 2, 0).numpy())


@pytest.fixture(scope="module")
def inputs(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(golden_dir / "tiny_inputs.safetensors")


@pytest.fixture(scope="module")
def golden_io(golden_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {level: load_file(golden_dir / f"{name}.safetensors") for level, name in IO_FILES.items()}


@pytest.fixture(scope="module")
def mix_engine(tiny_weights_dir: Path) -> ShmtEngine:
    """Both tiny models as the official blend loads them (h4 EMA, h0 raw), batch 2, CPU, fp32."""
    settings = ShmtSettings(level="", steps=4, batch_size=2, device="cpu")
    return ShmtEngine.from_weights_dir(tiny_weights_dir, settings)


def _variant_engine(engine: ShmtEngine, level: str, **changes) -> ShmtEngine:
    """An engine sharing `engine`'s loaded models, for one level and other settings."""
    models = engine.models if level == "mix" else {level: engine.models[level]}
    return ShmtEngine(models, engine.vq, replace(engine.config, level=level, **changes), level, engine.device)


@pytest.fixture(scope="module")
def golden_jobs(mix_engine: ShmtEngine, inputs: dict[str, torch.Tensor]) -> list[PairJob]:
    """The two golden pairs prepared from their uint8 images, parsings and renders."""
    jobs = []
    for p in range(2):
        source = FaceParts(
            image=_hwc(inputs["u8.source_image_rgb"][p]),
            landmarks=np.zeros((68, 2)),
            labels=inputs["u8.source_seg"][p, 0].numpy(),
            render=_hwc(inputs["u8.source_depth_bgr"][p]),  # kept BGR, as the official code does
        )
        reference = FaceParts(
            image=_hwc(inputs["u8.ref_image_rgb"][p]),
            landmarks=np.zeros((68, 2)),
            labels=inputs["u8.ref_seg"][p, 0].numpy(),
            render=np.zeros((256, 256, 3), np.uint8),
        )
        jobs.append(
            PairJob(mix_engine.prepare_source(source), mix_engine.prepare_reference(reference), seed=1234 + p)
        )
    return jobs


@pytest.fixture(scope="module")
def golden_batch(mix_engine: ShmtEngine, golden_jobs: list[PairJob], inputs: dict) -> PairBatch:
    """Both golden pairs in one batch with the official x_T; its precompute is shared by the tests."""
    return mix_engine.collate(golden_jobs, x_T=inputs["noise.x_T"])


# ------------------------------------------------------------------------------------------------
# Golden parity


# float32 convolution noise across CPUs; see tests/test_shmt_vq.py.
LATENT_ATOL = 2e-5


def test_prepared_latents_match_official_encoder(golden_jobs: list[PairJob], golden_io: dict) -> None:
    io = golden_io["h4"]
    z_bg = torch.cat([job.source.z_bg for job in golden_jobs])
    z_ref = torch.cat([job.reference.z_ref for job in golden_jobs])
    assert _record("z_bg", (z_bg - io["enc.z_bg"]).abs().max().item()) <= LATENT_ATOL
    assert _record("z_ref", (z_ref - io["enc.z_ref_LF"]).abs().max().item()) <= LATENT_ATOL


@pytest.mark.parametrize("level", ["h4", "h0"])
def test_ida_and_epsilon_match_official(
    mix_engine: ShmtEngine, golden_batch: PairBatch, golden_io: dict, inputs: dict, level: str
) -> None:
    io = golden_io[level]
    engine = _variant_engine(mix_engine, level)
    with torch.inference_mode():
        warped = engine.models[level].denoiser.warped(engine.prepared(golden_batch, level))
        eps = engine.epsilon(golden_batch, level, inputs["noise.unet_x_noisy"], inputs["noise.unet_t"])
    golden_warp = io["unet.corr_all_LF_warp_with_coor"][:, :51]
    warp_error = _record(f"{level} IDA warp", (warped - golden_warp).abs().max().item())
    eps_error = _record(f"{level} UNet epsilon", (eps - io["unet.e_t"]).abs().max().item())
    assert warp_error <= WARP_ATOL, f"IDA warp max error {warp_error:.3g}"
    assert eps_error <= EPS_ATOL, f"epsilon max error {eps_error:.3g}"


@pytest.mark.parametrize("steps", [4, 5])
@pytest.mark.parametrize("level", ["h4", "h0", "mix"])
def test_end_to_end_matches_official(
    mix_engine: ShmtEngine, golden_batch: PairBatch, golden_io: dict, level: str, steps: int
) -> None:
    io = golden_io[level]
    engine = _variant_engine(mix_engine, level, steps=steps)
    decode = steps == 5 and level != "h0"  # decoded goldens: S=5 of h4 and of the blend
    result = engine.sample_batch(golden_batch, record=True, decode=decode)

    assert result.timesteps == io[f"ddim{steps}.timesteps"].flip(0).tolist()
    if level == "mix":
        used_h0 = [choice == "h0" for choice in result.choices]
        assert used_h0 == [bool(u) for u in io[f"ddim{steps}.used_model2_h0"].tolist()]
    golden_inter = io[f"ddim{steps}.x_inter"]
    scale = golden_inter.abs().max().item()
    inter_error = (torch.stack(result.x_inter) - golden_inter).abs().max().item()
    sample_error = (result.samples - io[f"ddim{steps}.samples"]).abs().max().item()
    _record(f"{level} ddim{steps} x_inter (rel. to max|x| {scale:.0f})", inter_error / scale)
    _record(f"{level} ddim{steps} samples (abs)", sample_error)
    assert inter_error <= LATENT_RTOL * scale, f"x_inter {inter_error:.3g} vs max|x| {scale:.3g}"
    assert sample_error <= LATENT_RTOL * scale, f"samples {sample_error:.3g} vs max|x| {scale:.3g}"

    golden_indices = io[f"ddim{steps}.quant_indices"].long()
    assert torch.equal(vqmod.quantize(engine.vq, io[f"ddim{steps}.samples"])[1], golden_indices)
    indices = result.indices if decode else vqmod.quantize(engine.vq, result.samples)[1]
    flips = _index_flips_beyond_near_ties(engine, io[f"ddim{steps}.samples"], golden_indices, indices)
    _record(f"{level} ddim{steps} index mismatches", int((indices != golden_indices).sum()))
    assert flips == 0
    if not decode:
        return
    golden_decoded = io["ddim5.decoded"]
    decoded_error = _record(f"{level} ddim5 decoded", (result.decoded - golden_decoded).abs().max().item())
    assert decoded_error <= DECODED_ATOL
    for ours, official in zip(result.images, to_uint8_images(golden_decoded), strict=True):
        assert ours.shape == (256, 256, 3) and ours.dtype == np.uint8
        assert np.abs(ours.astype(int) - official).max() <= 1


#: Squared-distance gap under which two codes count as tied for a golden latent. The README measured
#: gaps down to 9.2e-5 (h4 ddim4); latents within the allowed tolerance can flip such a tie.
NEAR_TIE = 1e-3


def _index_flips_beyond_near_ties(
    engine: ShmtEngine, golden_samples: torch.Tensor, golden: torch.Tensor, ours: torch.Tensor
) -> int:
    """Positions where our code differs from the official one although the golden latent is not
    within NEAR_TIE of equidistant between the two codes."""
    codebook = engine.vq.quantize.embedding.weight
    vectors = golden_samples.permute(0, 2, 3, 1)  # (B, h, w, 3)
    gap = ((vectors - codebook[ours]) ** 2).sum(-1) - ((vectors - codebook[golden]) ** 2).sum(-1)
    return int(((ours != golden) & (gap.abs() > NEAR_TIE)).sum())


def _perturb(path: Path, prefix: str, seed: int) -> None:
    """Add noise to every tensor of an imported file whose name starts with `prefix`."""
    generator = torch.Generator().manual_seed(seed)
    tensors = load_file(path)
    for key, value in tensors.items():
        if key.startswith(prefix) and value.is_floating_point() and value.ndim:
            tensors[key] = value + 0.05 * torch.randn(value.shape, generator=generator)
    save_file(tensors, path)
    # A deliberate edit: record the new file in the manifest, as a re-import would.
    entries = W.read_manifest(path.parent)
    entries[path.name] = replace(
        entries[path.name], sha256=W.sha256_file(path), bytes=path.stat().st_size, stamp=W.file_stamp(path)
    )
    W.write_manifest(path.parent, entries)


def test_mix_uses_ema_for_h4_and_raw_weights_for_h0(
    tmp_path: Path, tiny_weights_dir: Path, golden_io: dict, inputs: dict
) -> None:
    # Golden weights survive only where the official blend reads: h4's EMA shadows and h0's raw UNet.
    folder = tmp_path / "weights"
    folder.mkdir()
    for item in tiny_weights_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    _perturb(folder / "shmt_h4.safetensors", W.UNET_PREFIX, 1)
    _perturb(folder / "shmt_h0.safetensors", W.EMA_PREFIX, 2)

    # One UNet forward per model on the golden input (the golden warp stands in for our IDA).
    x_t, t = inputs["noise.unet_x_noisy"], inputs["noise.unet_t"]

    def eps_error(engine: ShmtEngine, variant: str) -> float:
        io = golden_io[variant]
        content = torch.cat(
            [
                io["pre.source_HF_detail"],
                torch.nn.functional.pixel_unshuffle(inputs["u8.source_depth_bgr"].float() / 127.5 - 1.0, 4),
            ],
            dim=1,
        )
        x = torch.cat([x_t, io["enc.z_bg"], content, io["unet.corr_all_LF_warp_with_coor"][:, :51]], dim=1)
        with torch.inference_mode():
            eps = engine.models[variant].denoiser.unet(x, t)
        return (eps - io["unet.e_t"]).abs().max().item()

    settings = ShmtSettings(level="mix", steps=4, batch_size=2, device="cpu")
    official = ShmtEngine.from_weights_dir(folder, settings)
    assert official.settings()["unet_weights"] == {"h0": "raw", "h4": "ema"}
    assert _record("mix weight choice, h4 epsilon", eps_error(official, "h4")) <= EPS_ATOL
    assert _record("mix weight choice, h0 epsilon", eps_error(official, "h0")) <= EPS_ATOL

    both = ShmtEngine.from_weights_dir(folder, replace(settings, ema_both=True))
    assert both.settings()["unet_weights"] == {"h0": "ema", "h4": "ema"}
    assert eps_error(both, "h4") <= EPS_ATOL
    assert eps_error(both, "h0") > 100 * EPS_ATOL
    single = ShmtEngine.from_weights_dir(folder, replace(settings, level="h0"))
    assert single.settings()["unet_weights"] == {"h0": "ema"}  # the h0 script runs in ema_scope


# ------------------------------------------------------------------------------------------------
# Behaviour


@pytest.mark.parametrize("steps", [3, 9, 27])
def test_step_counts_run_exactly_that_many_unet_calls(
    mix_engine: ShmtEngine, golden_batch: PairBatch, steps: int
) -> None:
    engine = _variant_engine(mix_engine, "h4", steps=steps)
    calls: list[int] = []
    real = engine.models["h4"].denoiser

    def counting_unet(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(int(t[0]))
        return torch.zeros_like(x[:, :3])  # the loop is under test here, not the UNet

    engine.models = {"h4": replace(engine.models["h4"], denoiser=real.with_unet(runner=counting_unet))}
    result = engine.sample_batch(golden_batch, record=True, decode=False)
    assert engine.models["h4"].denoiser.unet_runner is counting_unet
    assert mix_engine.models["h4"].denoiser.unet_runner is real.unet
    assert len(result.timesteps) == steps == len(set(result.timesteps))
    assert calls == result.timesteps and len(result.x_inter) == steps + 1
    assert max(result.timesteps) < 1000 and min(result.timesteps) >= 1


def test_dpmpp_sampler_walks_its_grid_and_approaches_ddim(
    mix_engine: ShmtEngine, golden_batch: PairBatch
) -> None:
    """--sampler dpmpp runs DPM-Solver++ on its log-SNR grid through the same UNet and conditioning; with
    tiny weights its 20-step latent lies closer to DDIM-50's than DDIM-10's does (same ODE)."""
    from shmt_cli.engines.shmt.sampler import dpmpp_timesteps

    def final(sampler: str, steps: int) -> torch.Tensor:
        engine = _variant_engine(mix_engine, "h4", steps=steps, sampler=sampler)
        result = engine.sample_batch(golden_batch, decode=False)
        assert result.timesteps == (dpmpp_timesteps(steps) if sampler == "dpmpp" else result.timesteps)
        return result.samples

    ddim50 = final("ddim", 50)
    gap_dpmpp = (final("dpmpp", 20) - ddim50).norm()
    gap_ddim = (final("ddim", 10) - ddim50).norm()
    assert gap_dpmpp < gap_ddim
    assert _variant_engine(mix_engine, "h4", sampler="dpmpp").settings()["sampler"] == "dpmpp"
    with pytest.raises(ValueError, match="sampler"):
        ShmtSettings(sampler="euler")


def test_paper_form_blends_the_noisy_latent_warp_each_step(
    mix_engine: ShmtEngine, golden_batch: PairBatch, inputs: dict
) -> None:
    released = _variant_engine(mix_engine, "h4", steps=2)
    paper = _variant_engine(mix_engine, "h4", steps=2, ida="paper")
    z_released = released.sample_batch(golden_batch, decode=False).samples
    z_paper = paper.sample_batch(golden_batch, decode=False).samples
    assert (z_paper - z_released).abs().max().item() > 1e-2 * z_released.abs().max().item()

    # The paper form's warp moves with z_t (and w(t)); the released one does not.
    x_t, t = inputs["noise.unet_x_noisy"], inputs["noise.unet_t"]
    with torch.inference_mode():
        denoiser = paper.models["h4"].denoiser
        fixed = denoiser.warped(released.prepared(golden_batch, "h4"))
        blended = denoiser.warped(paper.prepared(golden_batch, "h4"), x_t, t)
        shifted = denoiser.warped(paper.prepared(golden_batch, "h4"), x_t.flip(0), t)
    assert (blended - fixed).abs().max().item() > 1e-2
    assert (blended - shifted).abs().max().item() > 1e-2


def test_padding_and_position_do_not_change_a_pairs_result(
    mix_engine: ShmtEngine, golden_jobs: list[PairJob]
) -> None:
    alone = _variant_engine(mix_engine, "h4", steps=2, batch_size=1).sample(golden_jobs[:1], decode=False)
    padded_engine = _variant_engine(mix_engine, "h4", steps=2, batch_size=3)
    assert not padded_engine.pad_batches  # eager: no padding by default
    assert padded_engine.collate(golden_jobs[:1]).size == 1
    padded_engine.pad_batches = True  # as with a compiled UNet
    padded_batch = padded_engine.collate([golden_jobs[1], golden_jobs[0]])
    assert padded_batch.size == 3 and padded_batch.count == 2
    padded = padded_engine.sample_batch(padded_batch, decode=False)
    assert padded.samples.shape[0] == 2
    scale = alone.samples.abs().max().item()
    error = _record(
        "batch 1 vs padded batch 3 (rel.)", (padded.samples[1] - alone.samples[0]).abs().max().item()
    )
    assert error <= LATENT_RTOL * scale
    assert not torch.equal(padded.samples[0], padded.samples[1])


def test_transfer_batch_splits_into_engine_batches(
    mix_engine: ShmtEngine, golden_jobs: list[PairJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _variant_engine(mix_engine, "h4", batch_size=2)
    sizes: list[int] = []

    def fake_sample(jobs: list[PairJob], *args, **kwargs) -> SimpleNamespace:
        sizes.append(len(jobs))
        return SimpleNamespace(images=[np.full((1,), job.seed) for job in jobs])

    monkeypatch.setattr(engine, "sample", fake_sample)
    images = engine.transfer_batch([replace(golden_jobs[0], seed=s) for s in range(5)])
    assert sizes == [2, 2, 1]
    assert [int(image[0]) for image in images] == [0, 1, 2, 3, 4]


def test_each_pair_draws_its_own_seeded_noise(mix_engine: ShmtEngine, golden_jobs: list[PairJob]) -> None:
    engine = _variant_engine(mix_engine, "h4", steps=1, batch_size=1)
    batch = engine.collate([replace(golden_jobs[0], seed=7)])
    assert torch.equal(batch.x_T[0], latent_noise(7, (1, 3, 64, 64))[0])
    first = engine.sample_batch(batch, decode=False).samples
    again = engine.sample_batch(engine.collate([replace(golden_jobs[0], seed=7)]), decode=False).samples
    other_batch = replace(batch, x_T=latent_noise(8, (1, 3, 64, 64)))  # same pair, precompute reused
    other = engine.sample_batch(other_batch, decode=False).samples
    assert torch.equal(first, again)
    assert (first - other).abs().max().item() > 0.1


def test_bf16_runs_close_to_fp32(mix_engine: ShmtEngine, golden_batch: PairBatch) -> None:
    fp32 = _variant_engine(mix_engine, "h4", steps=3).sample_batch(golden_batch, decode=False).samples
    scale = fp32.abs().max().item()
    # fp32 weights under bf16 autocast, and the engine's own bf16 path: the UNet's weights in bf16.
    autocast = _variant_engine(mix_engine, "h4", steps=3, dtype="bf16")
    bf16_weights = _variant_engine(mix_engine, "h4", steps=3, dtype="bf16")
    model = bf16_weights.models["h4"]
    unet = copy.deepcopy(model.denoiser.unet).to(torch.bfloat16)
    bf16_weights.models = {"h4": replace(model, denoiser=model.denoiser.with_unet(unet))}
    for name, engine in (("autocast", autocast), ("weights", bf16_weights)):
        samples = engine.sample_batch(golden_batch, decode=False).samples
        drift = _record(
            f"bf16 {name} vs fp32 samples, 3 steps (rel.)", (samples - fp32).abs().max().item() / scale
        )
        assert 0 < drift < 0.05


# ------------------------------------------------------------------------------------------------
# Settings and loading


def test_settings_are_validated() -> None:
    for bad in (
        {"level": "h2"},
        {"mix": 1.5},
        {"steps": 0},
        {"steps": 1001},
        {"ida": "training"},
        {"batch_size": 0},
        {"dtype": "fp64"},
        {"device": "gpu0"},
    ):
        with pytest.raises(ValueError):
            ShmtSettings(**bad)
    assert ShmtSettings().level == ""


def test_default_level_and_missing_weights(random_weights_dir: Path, tmp_path: Path) -> None:
    h4_only = tmp_path / "h4only"
    h4_only.mkdir()
    for name in ("shmt_h4.safetensors", W.VQ_FILE, W.MANIFEST_NAME):
        (h4_only / name).write_bytes((random_weights_dir / name).read_bytes())
    engine = ShmtEngine.from_weights_dir(h4_only, ShmtSettings(device="cpu"))  # h0 listed, file absent
    assert engine.level == "h4" and set(engine.models) == {"h4"}
    assert engine.settings()["unet_weights"] == {"h4": "ema"}
    with pytest.raises(EngineUnavailable, match="SHMT-h0"):
        ShmtEngine.from_weights_dir(h4_only, ShmtSettings(level="mix", device="cpu"))
    with pytest.raises(EngineUnavailable, match="SHMT-h0"):
        ShmtEngine.from_weights_dir(h4_only, ShmtSettings(level="h0", device="cpu"))
    with pytest.raises(EngineUnavailable, match="weights import"):
        ShmtEngine.from_weights_dir(tmp_path / "empty", ShmtSettings(device="cpu"))
    with pytest.raises(ValueError, match="fp16"):
        ShmtEngine.from_weights_dir(h4_only, ShmtSettings(dtype="fp16", device="cpu"))
    bf16 = ShmtEngine.from_weights_dir(h4_only, ShmtSettings(dtype="bf16", device="cpu"))
    assert bf16.models["h4"].denoiser.unet.out[2].weight.dtype == torch.bfloat16
    assert bf16.models["h4"].denoiser.ida.ref_enc[0].model[1].weight.dtype == torch.float32
    assert bf16.settings()["dtype"] == "bf16" and "vq_dtype" not in bf16.settings()
    vq16 = ShmtEngine.from_weights_dir(h4_only, ShmtSettings(vq_dtype="bf16", device="cpu"))
    assert vq16.vq.decoder.conv_in.weight.dtype == torch.bfloat16
    assert vq16.vq.quantize.embedding.weight.dtype == torch.float32
    assert vq16.settings()["vq_dtype"] == "bf16" and vq16.describe().endswith("vq bf16")
    with pytest.raises(ValueError, match="--vq-dtype"):
        ShmtSettings(vq_dtype="fp16")

    mix = ShmtEngine.from_weights_dir(random_weights_dir, ShmtSettings(device="cpu", steps=3))
    settings = mix.settings()
    assert settings["engine"] == "shmt" and settings["level"] == "mix" and settings["mix"] == 0.5
    assert settings["steps"] == 3 and set(settings["weights"]) == {
        "shmt_h0.safetensors",
        "shmt_h4.safetensors",
        W.VQ_FILE,
    }
