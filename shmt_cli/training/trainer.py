"""The training loop of `shmt train`: resumable, data-parallel, with validation, grids and metrics.

One call of `Trainer.run` continues the run in RUN/ from its newest checkpoint (or starts it from
`config.init` / from scratch) up to `config.max_steps` optimizer steps:

* each step: `accumulate_gradients` over `grad_accum` micro-batches of `batch` samples per process,
  DDP-averaged, then AdamW and the EMA update (`step`);
* every `validate_every` steps and at the end: validation loss of the raw and the EMA weights on the fixed
  validation set, and a sample grid (RUN/samples/step-N.jpg);
* every `checkpoint_every` steps and at the end: a checkpoint (`checkpoint`), RUN/weights pointing at it;
* every step: a line in RUN/metrics.jsonl.

Resume is exact: the samples, t, ε and jitter of step n depend only on (seed, n) (`randomness`,
`dataset.SampleStream`), and weights, EMA and optimizer state come from the checkpoint, so a run killed
and restarted produces the same losses as an uninterrupted one. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from shmt_cli.atomic import atomic_path
from shmt_cli.engines.shmt import weights as W
from shmt_cli.imageio import write_image_atomic
from shmt_cli.lock import OutputLock
from shmt_cli.training import checkpoint as ckpt
from shmt_cli.training import distributed as D
from shmt_cli.training.config import TrainConfig, settle_config, write_config
from shmt_cli.training.dataset import SampleStream, worker_init
from shmt_cli.training.ema import UnetEma
from shmt_cli.training.grid import sample_grid
from shmt_cli.training.metrics import METRICS_NAME, MetricsLog, read_metrics
from shmt_cli.training.objective import Schedule
from shmt_cli.training.optim import make_optimizer
from shmt_cli.training.randomness import stream_positions, training_draws, validation_draws
from shmt_cli.training.sample import collate
from shmt_cli.training.starting import StartPoint, from_scratch, from_weights
from shmt_cli.training.step import (
    AUTOCAST_DTYPES,
    MicroBatch,
    accumulate_gradients,
    apply_update,
    grad_norms,
    mean_logged,
    micro_batch_losses,
)

SAMPLES = "samples"
LOCK_NAME = ".shmt-train.lock"
GRID_ROWS = 4


@dataclass
class TrainResult:
    """What a `run` did: steps first_step -> last_step, the newest checkpoint, the last train record."""

    first_step: int
    last_step: int
    checkpoint: Path | None
    last: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False


def _latent_shape(batch: dict[str, Any]) -> tuple[int, ...]:
    height, width = batch["image_GT"].shape[-2:]
    return (3, height // 4, width // 4)


class Trainer:
    """Runs `config` in `run_dir` (see the module docstring).

    `train_data` is keyed by (epoch, index) (`dataset.TrainingDataset`), `validation` by position
    (`dataset.ValidationSet`) or None. `on_step(record)` gets every train record, `on_event(text)` one
    line about checkpoints/validation; both on rank 0 only.
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        train_data: Dataset,
        validation: Dataset | None = None,
        *,
        world: D.World | None = None,
        force_config: bool = False,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.train_data = train_data
        self.validation = validation
        self.world = world or D.World()
        self.force_config = force_config
        self.on_step = on_step or (lambda record: None)
        self.on_event = on_event or (lambda text: None)
        if self.world.size != config.processes:
            raise ValueError(f"config says {config.processes} processes, running with {self.world.size}")
        if len(train_data) == 0:  # type: ignore[arg-type]
            raise ValueError("no usable training faces")

    # -- set-up ------------------------------------------------------------------------------------

    def _start_point(self) -> tuple[StartPoint, int, dict[str, Any] | None, Path]:
        """(model, first step, optimizer state or None, VQ file for checkpoints)."""
        latest = ckpt.latest_checkpoint(self.run_dir)
        if latest is not None:
            _, folder = latest
            start = from_weights(folder, self.config.variant)
            state = ckpt.read_trainer_state(folder)
            run_vq = self.run_dir / ckpt.RUN_VQ
            return start, state.step, state.optimizer, run_vq if run_vq.is_file() else folder / W.VQ_FILE
        if self.config.init is not None:
            start = from_weights(self.config.init, self.config.variant)
            vq_file = Path(self.config.init) / W.VQ_FILE
        else:
            assert self.config.vq is not None
            start = from_scratch(self.config.variant, self.config.size, self.config.vq, self.config.seed)
            vq_file = Path(self.config.vq) / W.VQ_FILE
        if (start.variant, start.size) != (self.config.variant, self.config.size):
            raise ValueError(
                f"{start.source}: SHMT-{start.variant} {start.size}, the config asks for "
                f"{self.config.variant} {self.config.size}"
            )
        return start, 0, None, vq_file

    def _keep_vq(self, source: Path) -> Path:
        """RUN/vq_f4.safetensors (copied once from the starting point), which checkpoints hard-link."""
        target = self.run_dir / ckpt.RUN_VQ
        if not target.is_file():
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
        return target

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train up to `config.max_steps` (or `stop_after` more steps); returns what happened."""
        main = self.world.main
        lock = OutputLock(self.run_dir, name=LOCK_NAME, command="shmt train") if main else None
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            settle_config(self.config, self.run_dir, self.force_config)
            lock.acquire()  # type: ignore[union-attr]
        try:
            if main:
                write_config(self.config, self.run_dir)
            D.barrier(self.world)
            return self._run(stop_after)
        finally:
            if lock is not None:
                lock.release()

    def _run(self, stop_after: int | None) -> TrainResult:
        config, world, device = self.config, self.world, self.world.device
        start, first_step, optimizer_state, vq_source = self._start_point()
        if world.main and first_step == 0:
            vq_source = self._keep_vq(vq_source)
        model = start.denoiser.to(device)
        vq = start.vq.to(device)
        ema = UnetEma(model.unet)
        if start.ema_shadows is not None:
            ema.load_shadows(start.ema_shadows, start.ema_updates)
        optimizer = make_optimizer(model, config.learning_rate)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        wrapped = D.wrap(model, world)
        schedule = Schedule(device)
        autocast = AUTOCAST_DTYPES[config.dtype]
        metrics = MetricsLog(self.run_dir)
        if world.main:
            metrics.truncate_after(first_step)
            if first_step:
                self.on_event(f"resuming from step {first_step} ({ckpt.step_dir_name(first_step)})")

        per_step = config.batch * config.grad_accum * world.size
        stream = SampleStream(
            len(self.train_data),  # type: ignore[arg-type]
            config.seed,
            start=first_step * per_step,
            rank=world.rank,
            world_size=world.size,
        )
        loader = DataLoader(
            self.train_data,
            batch_size=config.batch,
            sampler=stream,
            num_workers=config.workers,
            collate_fn=collate,
            worker_init_fn=worker_init if config.workers else None,
            persistent_workers=False,
        )
        batches = iter(loader)
        last_step = config.max_steps if stop_after is None else min(config.max_steps, first_step + stop_after)
        step = first_step
        last_record: dict[str, Any] = {}
        latest = ckpt.latest_checkpoint(self.run_dir)
        checkpoint_path = latest[1] if latest else None
        started = time.perf_counter()
        try:
            while step < last_step:
                tick = time.perf_counter()
                micros = []
                for micro in range(config.grad_accum):
                    batch = next(batches)
                    positions = stream_positions(
                        step, micro, world.rank, config.batch, world.size, config.grad_accum
                    )
                    draws = training_draws(
                        config.seed, positions, step, micro, config.grad_accum, _latent_shape(batch)
                    )
                    micros.append(MicroBatch(batch, draws))
                terms = accumulate_gradients(wrapped, vq, micros, config.level, schedule, autocast)
                norms = grad_norms(wrapped)
                apply_update(wrapped, optimizer, ema)
                step += 1
                losses = self._global_mean(mean_logged(terms))
                elapsed = time.perf_counter() - tick
                last_record = {
                    "step": step,
                    "kind": "train",
                    **losses,
                    **norms,
                    "lr": config.learning_rate,
                    "seconds": round(elapsed, 4),
                    "samples": step * per_step,
                }
                if world.main:
                    metrics.append(last_record)
                    self.on_step(last_record)
                final = step == last_step
                if step % config.validate_every == 0 or (final and step == config.max_steps):
                    self._validate(model, vq, ema, schedule, autocast, step, metrics)
                if step % config.checkpoint_every == 0 or final:
                    checkpoint_path = self._checkpoint(model, ema, optimizer, start, step, vq_source)
        finally:
            del batches
        rate = (step - first_step) / max(time.perf_counter() - started, 1e-9)
        last_record["steps_per_second"] = rate
        return TrainResult(first_step, step, checkpoint_path, last_record, resumed=first_step > 0)

    def _global_mean(self, values: dict[str, float]) -> dict[str, float]:
        """The logged losses averaged over processes (each process logs its own batch's means)."""
        if not self.world.distributed:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(tensor)
        return {k: float(v) / self.world.size for k, v in zip(keys, tensor, strict=True)}

    def _checkpoint(
        self,
        model: torch.nn.Module,
        ema: UnetEma,
        optimizer: torch.optim.Optimizer,
        start: StartPoint,
        step: int,
        vq_source: Path,
    ) -> Path | None:
        path = None
        if self.world.main:
            path = ckpt.write_checkpoint(
                self.run_dir,
                step,
                variant=self.config.variant,
                size=self.config.size,
                tensors=ckpt.official_tensors(model, ema, start.extra),  # type: ignore[arg-type]
                optimizer=optimizer,
                vq_source=vq_source,
                keep=self.config.keep_checkpoints,
                config=start.denoiser.config,
            )
            self.on_event(f"checkpoint {path.relative_to(self.run_dir)}")
        D.barrier(self.world)
        return path

    # -- validation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def _validation_losses(self, model, vq, schedule, autocast) -> dict[str, float]:  # type: ignore[no-untyped-def]
        assert self.validation is not None
        count = len(self.validation)  # type: ignore[arg-type]
        totals: dict[str, float] = {}
        for first in range(0, count, self.config.batch):
            items = list(range(first, min(count, first + self.config.batch)))
            batch = collate([self.validation[i] for i in items])
            draws = validation_draws(self.config.seed, items, _latent_shape(batch))
            logged = micro_batch_losses(
                model, vq, MicroBatch(batch, draws), self.config.level, schedule, autocast
            )
            for key, value in logged.logged().items():
                totals[key] = totals.get(key, 0.0) + value * len(items)
        return {key: value / count for key, value in totals.items()}

    def _validate(self, model, vq, ema, schedule, autocast, step: int, metrics: MetricsLog) -> None:  # type: ignore[no-untyped-def]
        if self.world.main and self.validation is not None and len(self.validation) > 0:  # type: ignore[arg-type]
            raw = self._validation_losses(model, vq, schedule, autocast)
            with ema_weights(model.unet, ema):
                smooth = self._validation_losses(model, vq, schedule, autocast)
                rows = [self.validation[i] for i in range(min(GRID_ROWS, len(self.validation)))]  # type: ignore[arg-type]
                grid = sample_grid(model, vq, collate(rows), self.config.level, self.config.grid_steps)
            grid_path = self.run_dir / SAMPLES / f"{ckpt.step_dir_name(step)}.jpg"
            write_image_atomic(grid_path, grid)
            record = {"step": step, "kind": "val", **raw, **{f"{k}_ema": v for k, v in smooth.items()}}
            metrics.append(record)
            self.on_event(
                f"step {step}: validation loss {raw['loss']:.5f} (EMA {smooth['loss']:.5f}), "
                f"grid {grid_path.relative_to(self.run_dir)}"
            )
        D.barrier(self.world)


@contextlib.contextmanager
def ema_weights(unet: torch.nn.Module, ema: UnetEma) -> Iterator[None]:
    """Within the block the UNet holds the EMA shadows; its own weights are restored after."""
    saved = {n: p.detach().clone() for n, p in unet.named_parameters()}
    ema.copy_to(unet)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in unet.named_parameters():
                p.copy_(saved[name])


def run_records(run_dir: Path) -> list[dict[str, Any]]:
    """The records of RUN/metrics.jsonl (for plots and reports)."""
    return read_metrics(Path(run_dir) / METRICS_NAME)


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """First/last training loss and the last validation losses of a run."""
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    out: dict[str, Any] = {"steps": train[-1]["step"] if train else 0}
    if train:
        out["first_loss"], out["last_loss"] = train[0]["loss"], train[-1]["loss"]
    if val:
        out["val_loss"], out["val_loss_ema"] = val[-1]["loss"], val[-1].get("loss_ema")
    return out
