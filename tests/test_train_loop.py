"""The training loop: exact resume (also after kill -9), refused config changes, checkpoints that are
weights folders, the official export round trip, gradient accumulation and DDP equivalence.

Runs on a random tiny model and synthetic 64x64 self-pairs (tests/train_helpers.py): no ../shared.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import SyntheticTrainSet, SyntheticValidationSet, random_weights_dir
from train_worker import step0_micro_batch, tiny_config

from shmt_cli.engines.shmt import weights as W
from shmt_cli.engines.shmt.export import export_official
from shmt_cli.training import checkpoint as ckpt
from shmt_cli.training.config import ConfigMismatch
from shmt_cli.training.metrics import read_metrics
from shmt_cli.training.objective import Schedule
from shmt_cli.training.starting import from_weights
from shmt_cli.training.step import Draws, MicroBatch, accumulate_gradients
from shmt_cli.training.trainer import Trainer

WORKER = Path(__file__).resolve().parent / "train_worker.py"
STEPS = 3


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_weights_dir(tmp_path_factory.mktemp("random_weights"))


def worker_command(weights: Path, run: Path) -> list[str]:
    """The training command of these tests (a subprocess, one thread: same arithmetic every time)."""
    return [sys.executable, str(WORKER), "train", str(weights), str(run), str(STEPS)]


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Path:
    """A run of STEPS steps with validation and a grid at the end, never interrupted."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(worker_command(weights, run), env=ONE_THREAD, check=True)
    return run


def train_losses(run: Path) -> list[tuple[int, float, float]]:
    return [
        (r["step"], r["loss"], r["grad_norm_all"])
        for r in read_metrics(run / "metrics.jsonl")
        if r["kind"] == "train"
    ]


def test_kill_9_then_same_command_continues_the_run(
    tmp_path: Path, weights: Path, uninterrupted: Path
) -> None:
    run = tmp_path / "run"
    command = worker_command(weights, run)
    process = subprocess.Popen(command, env=ONE_THREAD)
    first = run / ckpt.CHECKPOINTS / ckpt.step_dir_name(1)
    deadline = time.monotonic() + 600
    while not first.is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.is_dir(), "no checkpoint appeared"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = ckpt.latest_checkpoint(run)
    assert done is not None and done[0] < STEPS

    # The same command again: continues from the newest checkpoint, to the end.
    subprocess.run(command, env=ONE_THREAD, check=True)
    resumed = train_losses(run)
    assert [step for step, _, _ in resumed] == list(range(1, STEPS + 1))  # each step once, none lost
    # The loss curve continues exactly where the uninterrupted run's goes (same draws, same state).
    assert resumed == [row for row in train_losses(uninterrupted)]
    a = W.load_weights(run / "weights", "shmt_h4.safetensors")
    b = W.load_weights(uninterrupted / "weights", "shmt_h4.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_changed_configuration_is_refused_unless_forced(uninterrupted: Path, weights: Path) -> None:
    changed = tiny_config(str(weights), STEPS, lr=1e-4)
    with pytest.raises(ConfigMismatch, match="lr"):
        Trainer(changed, uninterrupted, SyntheticTrainSet(), SyntheticValidationSet()).run()
    # Schedule settings may change: more steps continue the same run.
    longer = tiny_config(str(weights), STEPS, checkpoint_every=7)
    result = Trainer(longer, uninterrupted, SyntheticTrainSet(), SyntheticValidationSet()).run()
    assert result.first_step == result.last_step == STEPS  # nothing left to do


def test_run_writes_a_weights_folder_metrics_and_grids(uninterrupted: Path) -> None:
    latest = uninterrupted / ckpt.LATEST_LINK
    assert latest.is_symlink() and latest.resolve().name == ckpt.step_dir_name(STEPS)
    assert all(result.ok for result in W.verify_weights(latest))
    entry = W.read_manifest(latest)["shmt_h4.safetensors"]
    assert (entry.variant, entry.size, entry.global_step, entry.ema) == ("h4", "tiny", STEPS, True)
    records = read_metrics(uninterrupted / "metrics.jsonl")
    val = [r for r in records if r["kind"] == "val"]
    assert len(val) == 1 and val[0]["step"] == STEPS and val[0]["loss_ema"] > 0
    assert (uninterrupted / "samples" / f"{ckpt.step_dir_name(STEPS)}.jpg").stat().st_size > 1000
    config = json.loads((uninterrupted / "config.json").read_text())
    assert config["variant"] == "h4" and config["batch"] == 2
    # Resumable state: the EMA counter equals the step, the optimizer knows every parameter.
    start = from_weights(latest, "h4")
    assert start.ema_updates == STEPS
    state = ckpt.read_trainer_state(latest.resolve())
    assert state.step == STEPS and len(state.optimizer["state"]) == len(list(start.denoiser.parameters()))


def test_official_export_round_trip(uninterrupted: Path, tmp_path: Path) -> None:
    target = tmp_path / "shmt_h4_trained.ckpt"
    count = export_official(uninterrupted / "weights", target)
    loaded = torch.load(target, map_location="cpu", weights_only=True)
    state = loaded["state_dict"]
    assert len(state) == count and loaded["global_step"] == STEPS
    expected = W.expected_shapes("h4", "tiny")
    # Every official key (proj_convs: only if the starting weights had them; these did).
    assert set(state) == set(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert int(state["model_ema.num_updates"]) == STEPS
    # Our importer takes it back unchanged.
    back = tmp_path / "reimported"
    W.import_checkpoint(target, back)
    ours = W.load_weights(uninterrupted / "weights", "shmt_h4.safetensors")
    again = W.load_weights(back, "shmt_h4.safetensors")
    assert ours.keys() == again.keys() and all(torch.equal(ours[k], again[k]) for k in ours)


def _relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    total = torch.sqrt(sum(((a[k] - b[k]).double() ** 2).sum() for k in a))
    scale = torch.sqrt(sum((b[k].double() ** 2).sum() for k in b))
    return float(total / scale)


def test_gradient_accumulation_equals_the_larger_batch(weights: Path) -> None:
    data = SyntheticTrainSet()
    whole = step0_micro_batch(data, 0, 1, 2)
    halves = [
        MicroBatch(
            {k: v[i : i + 1] for k, v in whole.batch.items() if torch.is_tensor(v)},
            Draws(
                t=whole.draws.t[i : i + 1],
                eps=whole.draws.eps[i : i + 1],
                jitter_scale=whole.draws.jitter_scale,
            ),
        )
        for i in range(2)
    ]
    grads = []
    for micros in ([whole], halves):
        start = from_weights(weights, "h4")
        accumulate_gradients(start.denoiser, start.vq, micros, 4, Schedule())
        grads.append({n: p.grad.clone() for n, p in start.denoiser.named_parameters()})
    assert _relative_difference(grads[1], grads[0]) < 1e-4


def test_two_processes_batch_1_equal_one_process_batch_2(weights: Path, tmp_path: Path) -> None:
    """torchrun + DDP (gloo): the averaged gradient of 2 × batch 1 equals 1 × batch 2."""
    out = tmp_path / "ddp_grads.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    subprocess.run([*command, str(WORKER), "grads", str(weights), str(out), "1"], env=ONE_THREAD, check=True)
    ddp = torch.load(out, weights_only=True)
    start = from_weights(weights, "h4")
    accumulate_gradients(
        start.denoiser, start.vq, [step0_micro_batch(SyntheticTrainSet(), 0, 1, 2)], 4, Schedule()
    )
    single = {n: p.grad.clone() for n, p in start.denoiser.named_parameters()}
    assert ddp.keys() == single.keys()
    assert _relative_difference(ddp, single) < 1e-4
