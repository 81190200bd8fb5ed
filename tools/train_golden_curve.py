"""The whole 21-entry golden loss curve of ../shared/golden/train (the suite checks entries 0..2).

Objective: our training step, repeated 20 times on the stored batch with the stored t, ε and jitter
(the golden README's "20-step curve"), reproduces curve.loss / loss_simple / loss_corr (rtol 2e-5),
curve.grad_norm_* (rtol 1e-4) and, after 20 steps, stat.delta20_l2 (rtol 1e-3, parameters with a real
gradient) and stat.ema20_delta_l2. Prints every entry and the worst relative errors; exit 1 on a miss.
About 21 × (10–40) s on 2 cores per variant.

    python tools/train_golden_curve.py [--variant h4|h0|both] [--golden ../shared/golden]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from train_helpers import golden_batch

from shmt_cli.engines.shmt import weights as W
from shmt_cli.training.ema import UnetEma
from shmt_cli.training.objective import Schedule
from shmt_cli.training.optim import make_optimizer
from shmt_cli.training.starting import from_weights
from shmt_cli.training.step import Draws, MicroBatch, accumulate_gradients, apply_update, grad_norms

UNET = W.UNET_PREFIX


def import_tiny(golden: Path, folder: Path) -> None:
    """Import the tiny golden weights (with LitEma-initialised shadows) through our importer."""
    h4 = {k: v.float() for k, v in load_file(golden / "tiny_h4.safetensors").items()}
    h0 = {**h4, **{k: v.float() for k, v in load_file(golden / "tiny_h0.safetensors").items()}}
    for name, state in (("h4", h4), ("h0", h0)):
        state = dict(state)
        for key in [k for k in state if k.startswith(UNET)]:
            state[W.ema_key(key[len(UNET) :])] = state[key].clone()
        state["model_ema.decay"] = torch.tensor(0.9999, dtype=torch.float32)
        state["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
        path = folder / f"tiny_{name}.ckpt"
        torch.save({"state_dict": state}, path)
        W.import_checkpoint(path, folder)


def run_curve(golden: Path, weights: Path, variant: str) -> bool:
    train_dir = golden / "train"
    path = train_dir / f"train_{variant}_io.safetensors"
    io = load_file(path)
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    names, unet_names = json.loads(meta["param_names"]), json.loads(meta["unet_param_names"])
    true_zero = {n for i, n in enumerate(names) if io["stat.true_zero_grad"][i]}
    start = from_weights(weights, variant)
    model = start.denoiser
    ema = UnetEma(model.unet)
    optimizer = make_optimizer(model, lr=float(meta["lr"]))
    micro = MicroBatch(
        golden_batch(train_dir), Draws(io["step.t"], io["step.eps"], float(io["in.jitter_scale"]))
    )
    level = 4 if variant == "h4" else 0
    p0 = {UNET + n: p.detach().clone() for n, p in model.unet.named_parameters()}
    p0.update({W.IDA_PREFIX + n: p.detach().clone() for n, p in model.ida.named_parameters()})
    worst = {"loss": 0.0, "grad_norm": 0.0, "delta20": 0.0, "ema20": 0.0}
    schedule = Schedule()
    for k in range(21):
        logged = accumulate_gradients(model, start.vq, [micro], level, schedule)[0].logged()
        norms = grad_norms(model)
        for key, name in (("loss", "loss"), ("loss_simple", "loss_simple"), ("loss_corr", "loss_corr")):
            golden_value = float(io[f"curve.{name}"][k])
            worst["loss"] = max(worst["loss"], abs(logged[key] - golden_value) / golden_value)
        for part in ("unet", "ida", "all"):
            golden_value = float(io[f"curve.grad_norm_{part}"][k])
            worst["grad_norm"] = max(
                worst["grad_norm"], abs(norms[f"grad_norm_{part}"] - golden_value) / golden_value
            )
        print(
            f"{variant} k={k:2d} loss {logged['loss']:.8f} golden {float(io['curve.loss'][k]):.8f}",
            flush=True,
        )
        if k < 20:
            apply_update(model, optimizer, ema)
        else:
            optimizer.zero_grad(set_to_none=True)
    now = {UNET + n: p.detach() for n, p in model.unet.named_parameters()}
    now.update({W.IDA_PREFIX + n: p.detach() for n, p in model.ida.named_parameters()})
    for i, name in enumerate(names):
        if name not in now or name in true_zero:
            continue
        golden_value = float(io["stat.delta20_l2"][i])
        ours = float((now[name] - p0[name]).double().norm())
        worst["delta20"] = max(worst["delta20"], abs(ours - golden_value) / golden_value)
    for i, name in enumerate(unet_names):
        if name in true_zero:
            continue
        golden_value = float(io["stat.ema20_delta_l2"][i])
        ours = float((ema.shadows[name[len(UNET) :]] - p0[name]).double().norm())
        worst["ema20"] = max(worst["ema20"], abs(ours - golden_value) / golden_value)
    limits = {"loss": 2e-5, "grad_norm": 1e-4, "delta20": 1e-3, "ema20": 1e-3}
    ok = all(worst[k] <= limits[k] for k in limits)
    print(f"{variant}: worst relative errors {worst} (limits {limits}) -> {'OK' if ok else 'MISS'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", choices=("h4", "h0", "both"), default="both")
    parser.add_argument(
        "--golden", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "golden"
    )
    args = parser.parse_args()
    variants = ("h4", "h0") if args.variant == "both" else (args.variant,)
    with tempfile.TemporaryDirectory() as tmp:
        import_tiny(args.golden, Path(tmp))
        results = [run_curve(args.golden, Path(tmp), v) for v in variants]
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
