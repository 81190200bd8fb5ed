"""Seconds per training step and peak memory of `shmt train`'s step, tiny and full size.

For each (size, batch, dtype) a fresh process builds SHMT-h4 with random weights (same shapes and
arithmetic as trained weights) and a random VQ-f4, runs `--warmup` steps, then times `--steps` full
optimizer steps (VQ encode, IDA + UNet forward, backward, AdamW, EMA) on synthetic 256x256 self-pairs,
and reports its peak resident memory (ru_maxrss: the whole process, weights and optimizer included).
Numbers on a shared machine are noisy; run it on an idle one for decisions.

    python tools/bench_train.py [--sizes tiny full] [--batches 1 2] [--dtypes fp32 bf16] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(size: str, batch: int, dtype: str, steps: int, warmup: int, threads: int) -> dict[str, float]:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import torch
    from train_helpers import synthetic_sample

    from shmt_cli.engines.shmt import vq as vqmod
    from shmt_cli.engines.shmt.config import variant_config
    from shmt_cli.engines.shmt.model import ShmtDenoiser
    from shmt_cli.training.ema import UnetEma
    from shmt_cli.training.objective import Schedule
    from shmt_cli.training.optim import make_optimizer
    from shmt_cli.training.randomness import training_draws
    from shmt_cli.training.sample import collate
    from shmt_cli.training.step import AUTOCAST_DTYPES, MicroBatch, accumulate_gradients, apply_update

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ShmtDenoiser(variant_config(4, size)).train()  # type: ignore[arg-type]
    vq = vqmod.build_vq(vqmod.VQ_CONFIGS[size]).eval().requires_grad_(False)
    optimizer, ema, schedule = make_optimizer(model, 1e-6 * batch), UnetEma(model.unet), Schedule()
    times = []
    for step in range(warmup + steps):
        samples = collate([synthetic_sample(0, step, i, size=256) for i in range(batch)])
        positions = list(range(step * batch, (step + 1) * batch))
        micro = MicroBatch(samples, training_draws(0, positions, step, 0, 1, (3, 64, 64)))
        tick = time.perf_counter()
        accumulate_gradients(model, vq, [micro], 4, schedule, AUTOCAST_DTYPES[dtype])
        apply_update(model, optimizer, ema)
        if step >= warmup:
            times.append(time.perf_counter() - tick)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in model.parameters())
    return {"seconds_per_step": sum(times) / len(times), "peak_rss_mb": peak_mb, "parameters": params}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["tiny", "full"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=3, metavar=("SIZE", "BATCH", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        size, batch, dtype = args.one
        print(json.dumps(one(size, int(batch), dtype, args.steps, args.warmup, args.threads)))
        return 0
    print(f"{'size':5} {'batch':>5} {'dtype':5} {'s/step':>8} {'peak RSS MB':>12} {'params':>11}", flush=True)
    for size in args.sizes:
        for batch in args.batches:
            for dtype in args.dtypes:
                command = [sys.executable, __file__, "--one", size, str(batch), dtype]
                command += [
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                    "--threads",
                    str(args.threads),
                ]
                out = subprocess.run(command, capture_output=True, text=True)
                if out.returncode:
                    print(
                        f"{size:5} {batch:5d} {dtype:5} failed: {out.stderr.strip().splitlines()[-1]}",
                        flush=True,
                    )
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    f"{size:5} {batch:5d} {dtype:5} {r['seconds_per_step']:8.2f} {r['peak_rss_mb']:12.0f} "
                    f"{r['parameters']:11d}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
