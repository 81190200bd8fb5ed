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

Usage: python tools/bench_shmt.py [--steps-timed K] [--batches 1,4] [--threads N] [--autocast]
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from shmt_cli.decompose import FaceParts
from shmt_cli.engines.base import PairJob
from shmt_cli.engines.shmt import vq as vqmod
from shmt_cli.engines.shmt.config import variant_config
from shmt_cli.engines.shmt.engine import ShmtEngine, ShmtModel, ShmtSettings
from shmt_cli.engines.shmt.model import ShmtDenoiser
from shmt_cli.engines.shmt.sampler import ldm_schedule_buffers

STEPS = 50
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    k = args.steps_timed
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {load()}"
    )
    print(f"SHMT-h4 {args.size} size, random weights, CPU")

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
            print(
                f"batch {batch} {name:13s} IDA {ida_s:6.2f} s per batch | UNet step {step_s:6.2f} s "
                f"({step_s / batch:5.2f} s per pair), fastest of {k} timed steps | load {load()}"
            )

    print(f"\nPer pair, {STEPS} DDIM steps extrapolated from the timed steps (DDIM update is negligible):")
    print("  = (50·step + IDA) / batch + decode, plus prepare_source + prepare_reference when not reused")
    for batch, name, ida_s, step_s in rows:
        sampling = (STEPS * step_s + ida_s) / batch
        pair = sampling + decode_s
        alone = pair + prep_source_s + prep_reference_s
        print(
            f"  batch {batch} {name:13s} {pair:6.1f} s per pair ({alone:6.1f} s "
            f"with both faces prepared just for it); official ≈ {OFFICIAL_PAIR_S:.0f} s, "
            f"{OFFICIAL_STEP_S} s/step of which IDA {OFFICIAL_IDA_S} s"
        )

    # -- bf16 drift ------------------------------------------------------------------------------
    print(f"\nbf16 drift of ε vs fp32 ({args.size} size, random weights), at steps of the 50-step schedule:")
    alphas = ldm_schedule_buffers()["alphas_cumprod"]
    eng32, eng16 = engine(1, "fp32", fp32_model), engine(1, "bf16", bf16_model)
    pair_batch = eng32.collate([PairJob(source, reference, seed=0)])
    generator = torch.Generator().manual_seed(3)
    z0 = source.z_bg
    with torch.inference_mode():
        for t_value in (981, 781, 581, 381, 181, 21):
            a = alphas[t_value]
            x_t = a.sqrt() * z0 + (1 - a).sqrt() * torch.randn(z0.shape, generator=generator)
            t = torch.full((1,), t_value, dtype=torch.long)
            e32 = eng32.epsilon(pair_batch, "h4", x_t, t)
            e16 = eng16.epsilon(pair_batch, "h4", x_t, t)
            rel_l2 = ((e16 - e32).norm() / e32.norm()).item()
            rel_max = ((e16 - e32).abs().max() / e32.abs().max()).item()
            print(f"  t={t_value:4d}: |Δε|₂/|ε|₂ = {rel_l2:.2e}, max|Δε|/max|ε| = {rel_max:.2e}")
    print(f"load at the end {load()}")


if __name__ == "__main__":
    main()
