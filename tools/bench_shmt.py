"""Seconds per pair of the SHMT engine at FULL size (random weights) on this machine, and bf16 drift.

Builds the full-size SHMT-h4 UNet, IDA and VQ-f4 with random weights (zero-initialised layers
re-initialised and GroupNorm affines perturbed, as the golden README did, so the UNet output is not
identically zero), wraps them in `ShmtEngine` and times each part on synthetic 256² faces:

* VQ encode (one image) and decode (one latent, codebook snapping included);
* per-face preparation (source: VQ encode; reference: VQ encode + IDA reference encoder);
* the released IDA conditioning, once per pair (source encoder + correlation + warp);
* one DDIM step (UNet + update) at batch 1 and 4, in fp32 and bf16. Only K steps are timed and the
  50-step figures are extrapolated from them (said in the output).

Then the bf16 drift: the relative error of the bf16 UNet's ε against fp32 at a spread of the 50-step
timesteps, for x_t = sqrt(ᾱ_t)·z0 + sqrt(1 − ᾱ_t)·noise.

The host is shared, so absolute seconds are noisy: a calibration (an isolated 3×3 convolution at the
UNet's widest 64² shape, GFLOP/s in fp32 and bf16) is measured in the same run, and the UNet's achieved
GFLOP/s (FLOPs counted by torch.utils.flop_counter) is reported as a fraction of it, which is
comparable across runs. A pair costs the same UNet steps with either sampler (the scheduler update is
negligible): s/pair is given for 50-step DDIM and 20-step DPM-Solver++. `--json` also prints every
figure as one JSON object (last line). Compiled timings are not measured yet (eager only).

Usage: PYTHONPATH=. python tools/bench_shmt.py [--steps-timed K] [--batches 1,4] [--threads N]
       [--autocast] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from shmt_cli.decompose import FaceParts
from shmt_cli.engines.base import PairJob
from shmt_cli.engines.shmt import vq as vqmod
from shmt_cli.engines.shmt.config import variant_config
from shmt_cli.engines.shmt.engine import ShmtEngine, ShmtModel, ShmtSettings
from shmt_cli.engines.shmt.model import ShmtDenoiser
from shmt_cli.engines.shmt.sampler import ldm_schedule_buffers

STEPS = 50
#: The fast sampler's step count in the s/pair figures.
DPMPP_STEPS = 20
#: The official code on this machine (golden README): s per DDIM step (0.63 s of it the IDA) and per pair.
OFFICIAL_STEP_S, OFFICIAL_IDA_S, OFFICIAL_PAIR_S = 1.54, 0.63, 83.0


def perturb_random_init(module: nn.Module, seed: int) -> None:
    """Give a freshly initialised model a non-trivial output (the golden README's recipe)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Linear) and not layer.weight.any():
                layer.reset_parameters()
            if isinstance(layer, nn.GroupNorm) and layer.affine:
                layer.weight.normal_(1.0, 0.1)
                layer.bias.normal_(0.0, 0.1)


def synthetic_face(seed: int) -> FaceParts:
    """A 256² random image with a face-like label map (skin, brows, eyes, nose, lips) and a render."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    labels = np.zeros((256, 256), np.uint8)
    yy, xx = np.mgrid[:256, :256]

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1

    labels[ellipse(128, 135, 80, 100)] = 1
    labels[ellipse(95, 100, 20, 5)], labels[ellipse(161, 100, 20, 5)] = 7, 6
    labels[ellipse(95, 118, 14, 7)], labels[ellipse(161, 118, 14, 7)] = 5, 4
    labels[ellipse(128, 150, 12, 22)] = 2
    labels[ellipse(128, 190, 28, 7)] = 11
    labels[ellipse(128, 202, 26, 7)] = 12
    render = np.where(labels[..., None] > 0, rng.integers(76, 256, (256, 256, 1)), 0).astype(np.uint8)
    return FaceParts(image, np.zeros((68, 2)), labels, np.repeat(render, 3, axis=2))


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Fastest wall time of `repeat` calls of fn (after the caller's own warm-up), in seconds.

    The minimum, not the median: on a shared host the slower calls measure the other jobs.
    """
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def conv_calibration(dtype: torch.dtype, channels: int = 224, batch: int = 1) -> float:
    """GFLOP/s of one isolated 3×3 convolution (B, C, 64, 64) -> (B, C, 64, 64), channels_last, `dtype`."""
    x = torch.randn(batch, channels, 64, 64).to(dtype=dtype, memory_format=torch.channels_last)
    weight = torch.randn(channels, channels, 3, 3).to(dtype=dtype, memory_format=torch.channels_last)
    flops = 2 * batch * channels * channels * 9 * 64 * 64
    with torch.inference_mode():
        F.conv2d(x, weight, padding=1)
        seconds = timed(lambda: F.conv2d(x, weight, padding=1), 5)
    return flops / seconds / 1e9


def unet_flops(unet: nn.Module, batch: int) -> int:
    """FLOPs of one UNet call at `batch` (convolutions, matmuls, attention), counted by torch."""
    x = torch.randn(batch, unet.config.in_channels, 64, 64).contiguous(memory_format=torch.channels_last)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        unet(x, torch.full((batch,), 500))
    return int(counter.get_total_flops())


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load() -> str:
    with open("/proc/loadavg") as handle:
        return handle.read().split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps-timed", type=int, default=2, help="DDIM steps timed per configuration")
    parser.add_argument("--batches", default="1,4", help="batch sizes, comma-separated")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--autocast", action="store_true", help="also time bf16 autocast over fp32 weights")
    parser.add_argument("--size", default="full", choices=("full", "tiny"), help="tiny: a quick smoke run")
    parser.add_argument("--json", action="store_true", help="also print all figures as one JSON object")
    args = parser.parse_args()
    report: dict = {"torch": torch.__version__, "threads": 0, "size": args.size, "load_start": load()}
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    k = args.steps_timed
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {load()}"
    )
    print(f"SHMT-h4 {args.size} size, random weights, CPU")
    report["threads"] = torch.get_num_threads()
    calibration = {
        name: conv_calibration(dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    report["calibration_conv3x3_gflops"] = calibration
    print(
        f"calibration, isolated 3×3 conv 224→224 at 64²: fp32 {calibration['fp32']:.1f} GFLOP/s, "
        f"bf16 {calibration['bf16']:.1f} GFLOP/s"
    )

    config = variant_config(4, args.size)
    torch.manual_seed(0)
    denoiser = ShmtDenoiser(config)
    unet, ida = denoiser.unet, denoiser.ida
    vq = vqmod.build_vq(vqmod.VQ_CONFIGS[args.size])
    perturb_random_init(unet, 1)
    perturb_random_init(vq, 2)
    with torch.no_grad():
        vq.quantize.embedding.weight.normal_(0.0, 1.0)
    for module in (unet, ida, vq):
        module.eval().requires_grad_(False)
    unet.to(memory_format=torch.channels_last)
    unet_bf16 = copy.deepcopy(unet).to(torch.bfloat16)
    fp32_model = ShmtModel("h4", denoiser, ema=True)
    bf16_model = ShmtModel("h4", denoiser.with_unet(unet_bf16), ema=True)

    def engine(batch: int, dtype: str, model: ShmtModel) -> ShmtEngine:
        settings = ShmtSettings(level="h4", steps=STEPS, batch_size=batch, device="cpu", dtype=dtype)
        return ShmtEngine({"h4": model}, vq, settings, "h4", torch.device("cpu"))

    base = engine(1, "fp32", fp32_model)
    source_face, reference_face = synthetic_face(1), synthetic_face(2)

    # -- first stage and per-face work -------------------------------------------------------
    with torch.inference_mode():
        image = torch.rand(1, 3, 256, 256) * 2 - 1
        vqmod.encode(vq, image)
        encode_s = timed(lambda: vqmod.encode(vq, image), 3)
        latent = vqmod.encode(vq, image)
        vqmod.decode(vq, latent)
        decode_s = timed(lambda: vqmod.decode(vq, latent), 3)
    source = base.prepare_source(source_face)
    reference = base.prepare_reference(reference_face)
    prep_source_s = timed(lambda: base.prepare_source(source_face), 2)
    prep_reference_s = timed(lambda: base.prepare_reference(reference_face), 2)
    with torch.inference_mode():
        side = (reference.z_ref, reference.makeup64, reference.onehot64)
        ref_encoder_s = timed(lambda: ida.prepare_reference(*side), 3)
    report["vq_encode_s"], report["vq_decode_s"] = encode_s, decode_s
    report["prepare_source_s"], report["prepare_reference_s"] = prep_source_s, prep_reference_s
    print(f"VQ encode, one 256² image:            {encode_s:6.2f} s")
    print(f"VQ decode, one latent (+ snapping):   {decode_s:6.2f} s")
    print(f"IDA reference encoder, one face:      {ref_encoder_s:6.2f} s")
    print(f"prepare_source  (VQ encode of I_bg):  {prep_source_s:6.2f} s per source face (once per face)")
    print(
        f"prepare_reference (VQ + IDA ref enc): {prep_reference_s:6.2f} s per reference face (once per face)"
    )

    # -- per pair and per step ------------------------------------------------------------------
    dtypes = [("fp32", fp32_model), ("bf16", bf16_model)]
    if args.autocast:
        dtypes.append(("bf16-autocast", fp32_model))
    rows = []
    flops = {batch: unet_flops(unet, batch) for batch in batches}
    for batch in batches:
        jobs = [PairJob(source, reference, seed=i) for i in range(batch)]
        ida_s = None
        shared: dict = {}  # the precompute of the first dtype: same IDA module for every dtype
        for name, model in dtypes:
            eng = engine(batch, "fp32" if name == "fp32" else "bf16", model)
            pair_batch = eng.collate(jobs)
            with torch.inference_mode():
                if ida_s is None:
                    # A fresh batch per call: the precompute is cached on its batch.
                    ida_s = timed(lambda eng=eng, jobs=jobs: eng.prepared(eng.collate(jobs), "h4"), 2)
                    eng.prepared(pair_batch, "h4")
                else:
                    pair_batch.prepared.update({k: (model.denoiser, p) for k, (_, p) in shared.items()})
                t = torch.full((batch,), 981, dtype=torch.long)
                x = pair_batch.x_T
                eng.epsilon(pair_batch, "h4", x, t)  # warm-up
                step_s = timed(lambda eng=eng, pb=pair_batch, x=x, t=t: eng.epsilon(pb, "h4", x, t), k)
            shared.update(pair_batch.prepared)
            rows.append((batch, name, ida_s, step_s))
            achieved = flops[batch] / step_s / 1e9
            fraction = achieved / calibration["fp32" if name == "fp32" else "bf16"]
            print(
                f"batch {batch} {name:13s} IDA {ida_s:6.2f} s per batch | UNet step {step_s:6.2f} s "
                f"({step_s / batch:5.2f} s per pair), fastest of {k} timed steps | "
                f"{achieved:.1f} GFLOP/s = {fraction:.0%} of calibration | load {load()}"
            )

    print(f"\nPer pair, {STEPS} DDIM steps extrapolated from the timed steps (DDIM update is negligible):")
    print("  = (50·step + IDA) / batch + decode, plus prepare_source + prepare_reference when not reused")
    report["runs"] = []
    for batch, name, ida_s, step_s in rows:
        pairs = {}
        for sampler, steps in (("ddim", STEPS), ("dpmpp", DPMPP_STEPS)):
            pairs[sampler] = (steps * step_s + ida_s) / batch + decode_s
        alone = pairs["ddim"] + prep_source_s + prep_reference_s
        achieved = flops[batch] / step_s / 1e9
        report["runs"].append(
            {
                "batch": batch,
                "dtype": name,
                "compiled": False,
                "s_per_step": step_s,
                "ida_s_per_batch": ida_s,
                "s_per_pair_ddim50": pairs["ddim"],
                "s_per_pair_dpmpp20": pairs["dpmpp"],
                "unet_gflop_per_step": flops[batch] / 1e9,
                "unet_gflops": achieved,
                "fraction_of_calibration": achieved / calibration["fp32" if name == "fp32" else "bf16"],
            }
        )
        print(
            f"  batch {batch} {name:13s} DDIM-50 {pairs['ddim']:6.1f} s per pair ({alone:6.1f} s "
            f"with both faces prepared just for it), DPM++-20 {pairs['dpmpp']:6.1f} s; official ≈ "
            f"{OFFICIAL_PAIR_S:.0f} s, {OFFICIAL_STEP_S} s/step of which IDA {OFFICIAL_IDA_S} s"
        )

    # -- bf16 drift ------------------------------------------------------------------------------
    print(f"\nbf16 drift of ε vs fp32 ({args.size} size, random weights), at steps of the 50-step schedule:")
    alphas = ldm_schedule_buffers()["alphas_cumprod"]
    eng32, eng16 = engine(1, "fp32", fp32_model), engine(1, "bf16", bf16_model)
    pair_batch = eng32.collate([PairJob(source, reference, seed=0)])
    generator = torch.Generator().manual_seed(3)
    z0 = source.z_bg
    drift = []
    with torch.inference_mode():
        for t_value in (981, 781, 581, 381, 181, 21):
            a = alphas[t_value]
            x_t = a.sqrt() * z0 + (1 - a).sqrt() * torch.randn(z0.shape, generator=generator)
            t = torch.full((1,), t_value, dtype=torch.long)
            e32 = eng32.epsilon(pair_batch, "h4", x_t, t)
            e16 = eng16.epsilon(pair_batch, "h4", x_t, t)
            rel_l2 = ((e16 - e32).norm() / e32.norm()).item()
            rel_max = ((e16 - e32).abs().max() / e32.abs().max()).item()
            drift.append(rel_l2)
            print(f"  t={t_value:4d}: |Δε|₂/|ε|₂ = {rel_l2:.2e}, max|Δε|/max|ε| = {rel_max:.2e}")
    report["bf16_drift_rel_l2"] = {"per_t": drift, "mean": sum(drift) / len(drift)}
    report["peak_rss_mib"] = peak_rss_mib()
    report["load_end"] = load()
    print(f"bf16 drift, mean over t: {report['bf16_drift_rel_l2']['mean']:.2e} (relative L2 of ε)")
    print(f"peak RSS of this whole run (fp32 and bf16 models together): {report['peak_rss_mib']:.0f} MiB")
    print(f"load at the end {load()}")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
