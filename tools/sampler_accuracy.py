"""How close each sampler gets to the exact ODE solution: final latent vs a fine DDIM reference.

Objective: show the fast sampler (DPM-Solver++ 2M) is right without trained weights. Every sampler
solves the probability-flow ODE of the default official sampler: x_T (one seeded N(0, I) draw) is the
sample at t = 981 and the solution is taken at ᾱ_0. The reference walks that ODE with closed-form
DDIM over every integer timestep 981, 980, ..., 1 (981 model calls); DDIM's error shrinks with the
step size, so this is the "1000-step DDIM" solution of the same ODE (DDIM-1000 on the official grid
starts at 999 instead, which is a different initial condition; add it with --rows to see it).

Models: SHMT-h4 with the tiny golden weights (conditioning from the golden pair's photos) and/or at
full size with random weights (tools/bench_shmt.py's recipe, synthetic faces). Same x_T and the same
conditioning for every row; fp32; batch 1.

Columns: model calls; relative L2 and max |Δ| of the final latent vs the reference; after VQ decode
with codebook snapping, the share of latent positions whose code differs and the mean / max 8-bit
pixel difference. Before the table, how smooth ε is in t for a fixed x: the ratio of its second to
its first differences over 8 consecutive timesteps (near 0 for a smooth ε, near 1 or above when ε
changes like a random walk from one timestep to the next, as with random weights: then no solver
keeps its order, and the grid decides; see sampler.dpmpp_timesteps).

Usage: python tools/sampler_accuracy.py [--size tiny|full|both] [--rows ddim:50,dpmpp:20,...]
                                        [--seed N] [--reference-cache DIR]
Cost: the reference is 981 UNet calls; at full size that is ~15-30 min of one CPU core. With
--reference-cache the reference latent is kept and reused (named by x_T and the model's first ε).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from shmt_cli.atomic import atomic_path
from shmt_cli.decompose import FaceParts
from shmt_cli.engines.base import PairJob
from shmt_cli.engines.shmt import vq as vqmod
from shmt_cli.engines.shmt.config import variant_config
from shmt_cli.engines.shmt.engine import ShmtEngine, ShmtModel, ShmtSettings, latent_noise, to_uint8_images
from shmt_cli.engines.shmt.ida import load_official_ida
from shmt_cli.engines.shmt.model import ShmtDenoiser
from shmt_cli.engines.shmt.sampler import ODE_START, EpsFn, ddim_update, ldm_schedule_buffers, sample_ode
from shmt_cli.engines.shmt.unet import load_official_unet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_shmt import perturb_random_init, synthetic_face

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
DEFAULT_ROWS = "ddim:50,dpmpp:20,ddim:20,dpmpp:10,dpmpp:50"
WIDTHS = (12, 5, 9, 9, 7, 8, 6)


def tiny_engine(golden: Path, seed: int) -> tuple[ShmtEngine, PairJob]:
    """SHMT-h4 with the tiny golden weights and golden pair 0, prepared from its uint8 photos."""
    state = load_file(golden / "tiny_h4.safetensors")
    denoiser = ShmtDenoiser(variant_config(4, "tiny"))
    load_official_unet(denoiser.unet, state, prefer_ema=False)
    load_official_ida(denoiser.ida, state)
    engine = _engine(denoiser, vqmod.load_vq(state))
    inputs = load_file(golden / "tiny_inputs.safetensors")

    def hwc(chw: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(chw.permute(1, 2, 0).numpy())

    source = FaceParts(
        hwc(inputs["u8.source_image_rgb"][0]),
        np.zeros((68, 2)),
        inputs["u8.source_seg"][0, 0].numpy(),
        hwc(inputs["u8.source_depth_bgr"][0]),
    )
    reference = FaceParts(
        hwc(inputs["u8.ref_image_rgb"][0]),
        np.zeros((68, 2)),
        inputs["u8.ref_seg"][0, 0].numpy(),
        np.zeros((256, 256, 3), np.uint8),
    )
    return engine, PairJob(engine.prepare_source(source), engine.prepare_reference(reference), seed=seed)


def full_engine(seed: int) -> tuple[ShmtEngine, PairJob]:
    """Full-size SHMT-h4 with random weights (bench_shmt's recipe) and two synthetic faces."""
    torch.manual_seed(0)
    denoiser = ShmtDenoiser(variant_config(4, "full"))
    vq = vqmod.build_vq(vqmod.VQ_CONFIGS["full"])
    perturb_random_init(denoiser.unet, 1)
    perturb_random_init(vq, 2)
    with torch.no_grad():
        vq.quantize.embedding.weight.normal_(0.0, 1.0)
    engine = _engine(denoiser, vq)
    return engine, PairJob(
        engine.prepare_source(synthetic_face(1)), engine.prepare_reference(synthetic_face(2)), seed=seed
    )


def _engine(denoiser: ShmtDenoiser, vq: torch.nn.Module) -> ShmtEngine:
    for module in (denoiser, vq):
        module.eval().requires_grad_(False)
    denoiser.unet.to(memory_format=torch.channels_last)
    settings = ShmtSettings(level="h4", batch_size=1, device="cpu")
    return ShmtEngine({"h4": ShmtModel("h4", denoiser, ema=True)}, vq, settings, "h4", torch.device("cpu"))


def reference_solution(eps_fn: EpsFn, x_T: torch.Tensor, progress: bool) -> torch.Tensor:
    """Closed-form DDIM (eta 0) over every integer timestep ODE_START..1, ending at ᾱ_0."""
    alphas = ldm_schedule_buffers()["alphas_cumprod"].double()
    x = x_T.double()
    for t in range(ODE_START, 0, -1):
        eps = eps_fn(x.float(), torch.full((x.shape[0],), t, dtype=torch.long)).double()
        x, _ = ddim_update(x, eps, alphas[t].item(), alphas[t - 1].item())
        if progress and t % 100 == 1:
            print(f"    reference at t={t - 1}", flush=True)
    return x.float()


def cached_reference(
    eps_fn: EpsFn, x_T: torch.Tensor, cache: Path | None, name: str
) -> tuple[torch.Tensor, str]:
    """`reference_solution`, read from / written to ``cache`` when given. Returns (latent, how obtained).

    The cache file is named by a hash of x_T and of ε(x_T, ODE_START): one model call that changes with
    the weights and the conditioning, so a changed model never reads an old reference.
    """
    path = None
    if cache is not None:
        first_eps = eps_fn(x_T, torch.full((x_T.shape[0],), ODE_START, dtype=torch.long))
        key = hashlib.sha256(x_T.contiguous().numpy().tobytes() + first_eps.contiguous().numpy().tobytes())
        path = cache / f"{name}_{key.hexdigest()[:16]}_reference.safetensors"
        if path.is_file():
            return load_file(path)["reference"], f"read from {path}"
    start = time.perf_counter()
    reference = reference_solution(eps_fn, x_T, progress=name == "full")
    how = f"{time.perf_counter() - start:.0f} s"
    if path is not None:
        with atomic_path(path) as tmp:
            save_file({"reference": reference.contiguous()}, str(tmp))
    return reference, how


def epsilon_roughness(eps_fn: EpsFn, x: torch.Tensor, starts: tuple[int, ...] = (900, 500, 100)) -> str:
    """Mean |Δ²ε| / mean |Δε| over t = start..start+8 for a fixed x, per start, as text."""
    cells = []
    for start in starts:
        eps = [eps_fn(x, torch.full((x.shape[0],), t, dtype=torch.long)) for t in range(start, start + 9)]
        first = np.mean([(eps[i + 1] - eps[i]).norm().item() for i in range(8)])
        second = np.mean([(eps[i + 2] - 2 * eps[i + 1] + eps[i]).norm().item() for i in range(7)])
        cells.append(f"t≈{start}: {second / first:.2f}")
    return ", ".join(cells)


def run(name: str, engine: ShmtEngine, job: PairJob, rows: list[tuple[str, int]], cache: Path | None) -> None:
    batch = engine.collate([job])
    x_T = latent_noise(job.seed, tuple(batch.x_T.shape))

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return engine.epsilon(batch, "h4", x_t, t)

    with torch.inference_mode():
        reference, how = cached_reference(eps_fn, x_T, cache, name)
        ref_image, ref_codes = vqmod.decode_with_indices(engine.vq, reference)
        ref_pixels = to_uint8_images(ref_image)[0].astype(np.int16)
        head = f"{name}, x_T seed {job.seed}: reference = DDIM over t = {ODE_START}..1"
        print(f"\n{head} ({ODE_START} calls, {how})")
        print(f"  ε(t) roughness |Δ²ε|/|Δε| at x = x_T: {epsilon_roughness(eps_fn, x_T)}")
        header = ("sampler", "calls", "rel L2", "max|Δ|", "codes≠", "mean Δ8", "max Δ8")
        print("  " + " ".join(f"{h:>{w}s}" for h, w in zip(header, WIDTHS, strict=True)))
        for sampler, steps in rows:
            result = sample_ode(eps_fn, x_T, steps, sampler)
            final = result.samples.float()
            rel = ((final - reference).norm() / reference.norm()).item()
            worst = (final - reference).abs().max().item()
            image, codes = vqmod.decode_with_indices(engine.vq, final)
            pixels = to_uint8_images(image)[0].astype(np.int16)
            changed = (codes != ref_codes).float().mean().item()
            diff = np.abs(pixels - ref_pixels)
            cells = (
                f"{sampler}-{steps}",
                f"{steps}",
                f"{rel:.2e}",
                f"{worst:.2e}",
                f"{changed:.2%}",
                f"{diff.mean():.3f}",
                f"{diff.max()}",
            )
            print("  " + " ".join(f"{c:>{w}s}" for c, w in zip(cells, WIDTHS, strict=True)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="tiny", choices=("tiny", "full", "both"))
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="sampler:steps, comma-separated")
    parser.add_argument("--golden", type=Path, default=GOLDEN, help="the golden folder (tiny weights)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of x_T")
    parser.add_argument("--reference-cache", type=Path, default=None, help="keep/reuse references here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [(name, int(steps)) for name, steps in (row.split(":") for row in args.rows.split(","))]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32, batch 1, SHMT-h4")
    if args.size in ("tiny", "both"):
        run("tiny", *tiny_engine(args.golden, args.seed), rows, args.reference_cache)
    if args.size in ("full", "both"):
        run("full", *full_engine(args.seed), rows, args.reference_cache)


if __name__ == "__main__":
    main()
