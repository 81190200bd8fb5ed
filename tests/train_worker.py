"""Subprocess entry for the training tests (not a test module).

python tests/train_worker.py train WEIGHTS RUN MAX_STEPS
    a tiny synthetic run (see train_helpers), checkpoint every step; the kill -9 test kills it.
torchrun --nproc_per_node N tests/train_worker.py grads WEIGHTS OUT BATCH
    one DDP gradient computation for step 0 (no optimizer step); rank 0 saves the gradients.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import torch  # noqa: E402
from train_helpers import SyntheticTrainSet, SyntheticValidationSet  # noqa: E402

from shmt_cli.training import distributed as D  # noqa: E402
from shmt_cli.training.config import TrainConfig  # noqa: E402
from shmt_cli.training.dataset import SampleStream  # noqa: E402
from shmt_cli.training.objective import Schedule  # noqa: E402
from shmt_cli.training.randomness import stream_positions, training_draws  # noqa: E402
from shmt_cli.training.sample import collate  # noqa: E402
from shmt_cli.training.starting import from_weights  # noqa: E402
from shmt_cli.training.step import MicroBatch, accumulate_gradients  # noqa: E402
from shmt_cli.training.trainer import Trainer  # noqa: E402


def tiny_config(weights: str, max_steps: int, **changes: object) -> TrainConfig:
    """The configuration every training test uses (changes override)."""
    values: dict[str, object] = {
        "data": ("synthetic",),
        "variant": "h4",
        "size": "tiny",
        "init": weights,
        "batch": 2,
        "max_steps": max_steps,
        "checkpoint_every": 1,
        "validate_every": max_steps,  # validation loss and a grid at the end
        "validation_size": 2,
        "keep_checkpoints": 5,
        "grid_steps": 2,
    }
    values.update(changes)
    return TrainConfig(**values)  # type: ignore[arg-type]


def train(weights: str, run: str, max_steps: int) -> None:
    torch.set_num_threads(1)
    Trainer(tiny_config(weights, max_steps), Path(run), SyntheticTrainSet(), SyntheticValidationSet()).run()


def step0_micro_batch(data: SyntheticTrainSet, rank: int, processes: int, batch: int) -> MicroBatch:
    """Process `rank`'s micro-batch of step 0: its stream positions, their samples and draws."""
    positions = stream_positions(0, 0, rank, batch, processes, 1)
    stream = SampleStream(len(data), 0, rank=rank, world_size=processes)
    samples = collate([data[stream.key(p)] for p in positions])
    return MicroBatch(samples, training_draws(0, positions, 0, 0, 1, (3, 16, 16)))


def data_parallel_grads(weights: str, out: str, batch: int) -> None:
    """Gradients of step 0 with `batch` samples per process, averaged by DDP over the processes."""
    torch.set_num_threads(1)
    world = D.join("cpu")
    start = from_weights(weights, "h4")
    model = D.wrap(start.denoiser, world)
    data = SyntheticTrainSet()
    micro = step0_micro_batch(data, world.rank, world.size, batch)
    accumulate_gradients(model, start.vq, [micro], 4, Schedule())
    if world.main:
        grads = {n: p.grad.detach().clone() for n, p in start.denoiser.named_parameters()}
        torch.save(grads, out)
    D.leave(world)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "train":
        train(args[0], args[1], int(args[2]))
    elif mode == "grads":
        data_parallel_grads(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")
