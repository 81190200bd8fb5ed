"""Seconds per pair of the SHMT engine at FULL size (random weights) on this machine, and bf16 drift.

Builds the full-size SHMT-h4 UNet, IDA and VQ-f4 with random weights (zero-initialised layers
re-initialised and GroupNorm affines perturbed, as the golden README did, so the UNet output is not
identically zero), wraps them in `ShmtEngine` and times each part on synthetic 256² faces:

* VQ encode (one image) and decode (one latent, codebook snapping included), in float32 and with
  `--vq-dtype bf16` (its latent error, changed codes and 8-bit image difference; `--only-vq` stops there);
* per-face preparation (source: VQ encode; reference: VQ encode + IDA reference encoder);
* the released IDA conditioning, once per pair (source encoder + correlation + warp);
* one sampler step (the engine's `WholeStep`: UNet + update) at batch 1 and 4, in fp32 and bf16,
  eager and compiled (torch.compile, inductor; the first call's compile time is reported). Only K
  steps are timed and the 50-step figures are extrapolated from them (said in the output).

Then the bf16 drift: the relative error of the bf16 UNet's ε against fp32 at a spread of the 50-step
timesteps, for x_t = sqrt(ᾱ_t)·z0 + sqrt(1 − ᾱ_t)·noise.

The host is shared, so absolute seconds are noisy: a calibration (an isolated 3×3 convolution at the
UNet's widest 64² shape, GFLOP/s in fp32 and bf16) is measured in the same run, and the UNet's achieved
GFLOP/s (FLOPs counted by torch.utils.flop_counter) is reported as a fraction of it, which is
comparable across runs. A pair costs the same UNet steps with either sampler (the scheduler update is
negligible): s/pair is given for 50-step DDIM and 20-step DPM-Solver++. `--json` also prints every
figure as one JSON object (last line).

Peak RSS of a run: a fresh process loads a full-size SHMT-h4 from a safetensors file the way the engine
does (loading.load_model) in bf16, builds the VQ, prepares a source and a reference, samples 2 steps
at batch 1 and decodes; its peak RSS (VmHWM) is reported (the file, random weights, is written by another
process first).

`--quick`: one timed step per configuration, compiled only at batch 1 (a full-size inductor compile
takes minutes per shape on 2 cores).

Usage: PYTHONPATH=. python tools/bench_shmt.py [--quick] [--steps-timed K] [--batches 1,4]
       [--threads N] [--autocast] [--no-compile] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from shmt_cli.decompose import FaceParts
from shmt_cli.engines.base import PairJob
from shmt_cli.engines.shmt import vq as vqmod
from shmt_cli.engines.shmt import weights as W
from shmt_cli.engines.shmt.config import variant_config
from shmt_cli.engines.shmt.engine import ShmtEngine
from shmt_cli.engines.shmt.loading import ShmtModel, load_model
from shmt_cli.engines.shmt.model import ShmtDenoiser
from shmt_cli.engines.shmt.pairs import to_uint8_images
from shmt_cli.engines.shmt.sampler import ldm_schedule_buffers
from shmt_cli.engines.shmt.settings import ShmtSettings

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


def vq_bf16_figures(vq: nn.Module, image: torch.Tensor) -> dict:
    """`--vq-dtype bf16` against float32 on one image: encode/decode seconds, the relative L2 of the
    latent, the share of codebook indices that change, and the 8-bit image difference of decoding the
    float32 latent (same codes) and of the whole round trip (image -> latent -> image)."""
    half = vqmod.cast_vq(copy.deepcopy(vq), torch.bfloat16)
    with torch.inference_mode():
        vqmod.encode(half, image)
        encode_s = timed(lambda: vqmod.encode(half, image), 2)
        latent32, latent16 = vqmod.encode(vq, image), vqmod.encode(half, image)
        vqmod.decode(half, latent32)
        decode_s = timed(lambda: vqmod.decode(half, latent32), 2)
        image32, codes32 = vqmod.decode_with_indices(vq, latent32)
        same_codes, _ = vqmod.decode_with_indices(half, latent32)
        round_trip, codes16 = vqmod.decode_with_indices(half, latent16)

    def eight_bit(a: torch.Tensor, b: torch.Tensor) -> dict:
        pa, pb = (np.stack(to_uint8_images(x)).astype(np.int16) for x in (a, b))
        diff = np.abs(pa - pb)
        return {
            "mean": float(diff.mean()),
            "max": int(diff.max()),
            "share_differing": float((diff > 0).mean()),
        }

    return {
        "encode_s": encode_s,
        "decode_s": decode_s,
        "latent_rel_l2": float((latent16 - latent32).norm() / latent32.norm()),
        "codes_changed_share": float((codes16 != codes32).float().mean()),
        "decode_8bit_diff": eight_bit(same_codes, image32),
        "round_trip_8bit_diff": eight_bit(round_trip, image32),
    }


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
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, not inherited across fork+exec)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load() -> str:
    with open("/proc/loadavg") as handle:
        return handle.read().split()[0]


def write_random_model_file(path: Path, size: str) -> None:
    """An imported-format SHMT-h4 file (raw UNet + IDA tensors, official names) with random values."""
    generator = torch.Generator().manual_seed(0)
    tensors = {
        key: torch.randn(shape, generator=generator) * 0.02
        for key, shape in W.expected_shapes("h4", size).items()
        if key.startswith((W.UNET_PREFIX, W.IDA_PREFIX))
    }
    save_file(tensors, str(path))


def rss_child(path: Path, size: str, dtype: str, threads: int) -> None:
    """Load SHMT-h4 from `path` as the engine does, run one pair (2 steps, decode), print peak RSS."""
    if threads:
        torch.set_num_threads(threads)
    unet_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    model = load_model(path, "h4", size, False, torch.device("cpu"), unet_dtype=unet_dtype)
    loaded_mib = peak_rss_mib()
    vq = vqmod.build_vq(vqmod.VQ_CONFIGS[size]).eval().requires_grad_(False)
    settings = ShmtSettings(level="h4", steps=2, batch_size=1, device="cpu", dtype=dtype)
    engine = ShmtEngine({"h4": model}, vq, settings, "h4", torch.device("cpu"))
    job = PairJob(engine.prepare_source(synthetic_face(1)), engine.prepare_reference(synthetic_face(2)), 0)
    engine.sample([job])
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "after_load_mib": loaded_mib}))


def run_rss(size: str, dtype: str, threads: int) -> dict:
    """`rss_child` in fresh processes."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "shmt_h4.safetensors"
        subprocess.run(
            [sys.executable, script, "--write-model", str(path), "--size", size], env=env, check=True
        )
        command = [sys.executable, script, "--rss-child", str(path), "--size", size, "--dtype", dtype]
        done = subprocess.run(
            [*command, "--threads", str(threads)], env=env, check=True, capture_output=True, text=True
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_step(engine: ShmtEngine, jobs: list[PairJob], repeat: int) -> tuple[float, float]:
    """(first call incl. any compile, fastest of `repeat` calls) in s of the engine's whole step."""
    pair_batch = engine.collate(jobs)
    step = engine.step(pair_batch, "h4")
    k, x = engine.plan.coefficients[0], pair_batch.x_T
    x0 = torch.zeros_like(x)
    start = time.perf_counter()
    step(x, 981, k, x0)
    first = time.perf_counter() - start
    return first, timed(lambda: step(x, 981, k, x0), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps-timed", type=int, default=2, help="steps timed per configuration")
    parser.add_argument("--batches", default="1,4", help="batch sizes, comma-separated")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--autocast", action="store_true", help="also time bf16 autocast over fp32 weights")
    parser.add_argument("--size", default="full", choices=("full", "tiny"), help="tiny: a quick smoke run")
    parser.add_argument("--quick", action="store_true", help="1 timed step, compiled at batch 1 only")
    parser.add_argument("--no-compile", action="store_true", help="eager timings only")
    parser.add_argument("--json", action="store_true", help="also print all figures as one JSON object")
    parser.add_argument("--only-vq", action="store_true", help="stop after the VQ figures (fp32 and bf16)")
    parser.add_argument("--write-model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="bf16", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_model:
        return write_random_model_file(args.write_model, args.size)
    if args.rss_child:
        return rss_child(args.rss_child, args.size, args.dtype, args.threads)
    report: dict = {"torch": torch.__version__, "threads": 0, "size": args.size, "load_start": load()}
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    k = 1 if args.quick else args.steps_timed
    compiled_batches = [] if args.no_compile else batches[:1] if args.quick else batches
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {load()}"
    )
    print(f"SHMT-h4 {args.size} size, random weights, CPU")
    report["threads"] = torch.get_num_threads()
    report["quick"] = args.quick
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
    vq16 = report["vq_bf16"] = vq_bf16_figures(vq, image)
    print(
        f"VQ in bf16 (--vq-dtype bf16): encode {vq16['encode_s']:.2f} s, decode {vq16['decode_s']:.2f} s; "
        f"latent rel. L2 {vq16['latent_rel_l2']:.1e}, {vq16['codes_changed_share']:.1%} of codes change; "
        f"8-bit difference, decode of the same latent: mean {vq16['decode_8bit_diff']['mean']:.2f} "
        f"max {vq16['decode_8bit_diff']['max']}; round trip: mean {vq16['round_trip_8bit_diff']['mean']:.2f} "
        f"max {vq16['round_trip_8bit_diff']['max']}"
    )
    if args.only_vq:
        print(json.dumps(report) if args.json else "")
        return
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
        first = engine(batch, "fp32", fp32_model)
        with torch.inference_mode():
            # A fresh batch per call: the precompute is cached on its batch.
            ida_s = timed(lambda eng=first, jobs=jobs: eng.prepared(eng.collate(jobs), "h4"), 2)
        modes = ["eager", "compiled"] if batch in compiled_batches else ["eager"]
        for name, model in dtypes:
            for mode in modes:
                options = {"backend": "inductor"} if mode == "compiled" else None
                eng = engine(batch, "fp32" if name == "fp32" else "bf16", replace(model, compile=options))
                first_s, step_s = time_step(eng, jobs, k)
                rows.append((batch, name, mode, ida_s, step_s, first_s))
                achieved = flops[batch] / step_s / 1e9
                fraction = achieved / calibration["fp32" if name == "fp32" else "bf16"]
                compile_note = f" (first call {first_s:5.1f} s)" if mode == "compiled" else ""
                print(
                    f"batch {batch} {name:13s} {mode:8s} IDA {ida_s:6.2f} s per batch | step {step_s:6.2f} s "
                    f"({step_s / batch:5.2f} s per pair), fastest of {k}{compile_note} | "
                    f"{achieved:.1f} GFLOP/s = {fraction:.0%} of calibration | load {load()}"
                )

    print(f"\nPer pair, {STEPS} DDIM / {DPMPP_STEPS} DPM++ steps extrapolated from the timed steps:")
    print("  = (steps·step + IDA) / batch + decode, plus prepare_source + prepare_reference when not reused")
    report["runs"] = []
    for batch, name, mode, ida_s, step_s, first_s in rows:
        pairs = {}
        for sampler, steps in (("ddim", STEPS), ("dpmpp", DPMPP_STEPS)):
            pairs[sampler] = (steps * step_s + ida_s) / batch + decode_s
        alone = pairs["ddim"] + prep_source_s + prep_reference_s
        achieved = flops[batch] / step_s / 1e9
        report["runs"].append(
            {
                "batch": batch,
                "dtype": name,
                "compiled": mode == "compiled",
                "first_call_s": first_s,
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
            f"  batch {batch} {name:13s} {mode:8s} DDIM-50 {pairs['ddim']:6.1f} s per pair ({alone:6.1f} s "
            f"with both faces prepared just for it), DPM++-20 {pairs['dpmpp']:6.1f} s; official ≈ "
            f"{OFFICIAL_PAIR_S:.0f} s ({pairs['ddim'] / OFFICIAL_PAIR_S:.2f}×, "
            f"{pairs['dpmpp'] / OFFICIAL_PAIR_S:.2f}×)"
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
    report["bench_peak_rss_mib"] = peak_rss_mib()
    print(f"bf16 drift, mean over t: {report['bf16_drift_rel_l2']['mean']:.2e} (relative L2 of ε)")
    print(
        f"peak RSS of this benchmark (fp32 and bf16 models together): {report['bench_peak_rss_mib']:.0f} MiB"
    )

    # -- peak RSS of a run ---------------------------------------------------------------------------
    threads = torch.get_num_threads()
    rss = {"bf16": run_rss(args.size, "bf16", threads), "fp32": run_rss(args.size, "fp32", threads)}
    report["run_peak_rss_mib"] = rss
    for name, figures in rss.items():
        print(
            f"peak RSS of a {args.size}-size SHMT-h4 run at batch 1, {name}: "
            f"{figures['peak_rss_mib']:.0f} MiB ({figures['after_load_mib']:.0f} MiB after loading the model)"
        )
    report["load_end"] = load()
    print(f"load at the end {load()}")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
