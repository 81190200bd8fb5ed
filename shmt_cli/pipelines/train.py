"""`shmt train`: from command-line choices to a running (or resumed) training run.

Builds the `TrainConfig` (a config file's values, overridden by the options given), prepares the data
(`dataset.TrainingDataset.from_folders`, cached under RUN/), joins the torchrun world, runs the
`Trainer` with a progress bar and writes the loss plot. Exit status: 0, or 1 when some inputs were
reported and skipped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from shmt_cli.training import distributed as D
from shmt_cli.training.config import TrainConfig, read_config
from shmt_cli.training.dataset import DataFailure, TrainingDataset, ValidationSet
from shmt_cli.training.plot import write_loss_plot
from shmt_cli.training.starting import model_entry
from shmt_cli.training.trainer import Trainer, TrainResult, run_records

PLOT_NAME = "loss.png"


@dataclass
class TrainRequest:
    """The command line. None = not given (the config file's value, else the default)."""

    data: list[str]
    run_dir: Path
    init: Path | None = None
    weights_dir: Path | None = None
    config_file: Path | None = None
    variant: str | None = None
    size: str | None = None
    batch: int | None = None
    grad_accum: int | None = None
    lr: float | None = None
    dtype: str | None = None
    seed: int | None = None
    steps: int | None = None
    checkpoint_every: int | None = None
    validate_every: int | None = None
    validation_size: int | None = None
    keep_checkpoints: int | None = None
    grid_steps: int | None = None
    workers: int | None = None
    device: str = "auto"
    force_config: bool = False
    plot: bool = False
    quiet: bool = False


def _config_file_values(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the training config ({err})") from err
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a training config is a JSON object")
    known = {f.name for f in fields(TrainConfig)} | {"format"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}")
    values.pop("format", None)
    return values


def build_config(request: TrainRequest, processes: int) -> TrainConfig:
    """The run's configuration: defaults < config file < options; the model variant and size of
    `--init` weights come from their manifest."""
    values: dict[str, Any] = {}
    if request.config_file is not None:
        values.update(_config_file_values(request.config_file))
    given = {
        "variant": request.variant,
        "size": request.size,
        "batch": request.batch,
        "grad_accum": request.grad_accum,
        "lr": request.lr,
        "dtype": request.dtype,
        "seed": request.seed,
        "max_steps": request.steps,
        "checkpoint_every": request.checkpoint_every,
        "validate_every": request.validate_every,
        "validation_size": request.validation_size,
        "keep_checkpoints": request.keep_checkpoints,
        "grid_steps": request.grid_steps,
        "workers": request.workers,
    }
    values.update({k: v for k, v in given.items() if v is not None})
    data = request.data or values.get("data") or []
    values["data"] = tuple(str(Path(p).expanduser().resolve()) for p in data)
    values["processes"] = processes
    init = request.init or values.get("init")
    if init is not None:
        init_dir = Path(init).expanduser().resolve()
        entry = model_entry(init_dir, values.get("variant"))
        values.update(init=str(init_dir), variant=entry.variant, size=entry.size, vq=None)
    else:
        from shmt_cli.engines.shmt.weights import weights_dir as resolve

        values["vq"] = str(resolve(request.weights_dir or values.get("vq")).resolve())
    return TrainConfig(**values)


class StepProgress:
    """A rich progress bar with the loss and steps/s (rank 0, unless quiet)."""

    def __init__(self, console: Console, total: int, enabled: bool) -> None:
        self.console, self.enabled = console, enabled
        self.first: int | None = None  # the step the run continues from, known at its first record
        self.started = time.perf_counter()
        self.bar = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[rate]} steps/s"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self.task = self.bar.add_task("train", total=total, completed=0, loss="-", rate="-")

    def step(self, record: dict[str, Any]) -> None:
        if self.first is None:
            self.first = record["step"] - 1
            self.started = time.perf_counter() - record["seconds"]
        done = record["step"] - self.first
        rate = done / max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(self.task, completed=record["step"], loss=f"{record['loss']:.4f}", rate=f"{rate:.3g}")

    def event(self, text: str) -> None:
        if self.enabled:
            self.bar.console.print(escape(text))


def run_train(request: TrainRequest, console: Console) -> tuple[TrainResult, list[DataFailure]]:
    """Prepare, train, plot (see the module docstring). Raises ValueError / CheckpointError / ConfigMismatch
    for unusable settings before any step runs, `lock.LockBusy` when another run holds RUN/."""
    world = D.join(request.device)
    try:
        config = build_config(request, world.size)
        if world.main and read_config(request.run_dir) is not None and not request.quiet:
            console.print(f"run folder {escape(str(request.run_dir))} exists: continuing it")
        failures: list[DataFailure] = []
        report = (
            (lambda f: console.print(f"[yellow]skipped[/yellow] {escape(f.line())}")) if world.main else None
        )
        # Rank 0 prepares (and caches) the faces first; the others then read the cache.
        if not world.main:
            D.barrier(world)
        train = TrainingDataset.from_folders(config.data, request.run_dir, config.seed, report=report)
        if world.main:
            D.barrier(world)
        failures = train.failures()
        validation = (
            ValidationSet(train.faces, config.validation_size, config.seed)
            if config.validation_size
            else None
        )
        progress = StepProgress(console, config.max_steps, enabled=world.main and not request.quiet)
        trainer = Trainer(
            config,
            request.run_dir,
            train,
            validation,
            world=world,
            force_config=request.force_config,
            on_step=progress.step,
            on_event=progress.event,
        )
        with progress.bar:
            result = trainer.run()
        if world.main and request.plot:
            write_loss_plot(
                run_records(request.run_dir),
                request.run_dir / PLOT_NAME,
                title=os.fspath(request.run_dir.name),
            )
        return result, failures
    finally:
        D.leave(world)
