"""The configuration of a training run, saved with the run as RUN/config.json.

Two kinds of settings:

* identity settings fix what is being trained and in which order (data, model, learning rate, batch,
  processes, accumulation, precision, seed, validation set). Resuming with a different value would
  silently make another run, so it is refused unless forced;
* schedule settings (total steps, how often to checkpoint, validate, keep checkpoints, DDIM steps of
  the sample grids, loader workers) may change from one invocation to the next.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from shmt_cli.atomic import write_json_atomic
from shmt_cli.training.optim import default_lr

CONFIG_NAME = "config.json"
CONFIG_FORMAT = 1
DTYPES = ("fp32", "bf16")
SCHEDULE_FIELDS = frozenset(
    {"max_steps", "checkpoint_every", "validate_every", "keep_checkpoints", "grid_steps", "workers"}
)


class ConfigMismatch(ValueError):
    """RUN/config.json differs from the requested configuration in identity settings."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. `init` is a weights folder (fine-tuning) or None (from scratch,
    then `vq` names the weights folder holding the VQ-f4). `lr` None = the official scaled default."""

    data: tuple[str, ...]
    variant: str = "h4"
    size: str = "full"
    init: str | None = None
    vq: str | None = None
    batch: int = 1
    grad_accum: int = 1
    processes: int = 1
    lr: float | None = None
    dtype: str = "fp32"
    seed: int = 0
    validation_size: int = 8
    max_steps: int = 1000
    checkpoint_every: int = 500
    validate_every: int = 250
    keep_checkpoints: int = 2
    grid_steps: int = 20
    workers: int = 0

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("no training data given")
        if self.variant not in ("h0", "h4"):
            raise ValueError(f"--variant must be h0 or h4, got {self.variant!r}")
        if self.size not in ("full", "tiny"):
            raise ValueError(f"--size must be full or tiny, got {self.size!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("batch", "grad_accum", "processes", "max_steps", "checkpoint_every", "validate_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.keep_checkpoints < 1 or self.grid_steps < 1 or self.workers < 0 or self.validation_size < 0:
            raise ValueError("keep-checkpoints and grid-steps must be >= 1, workers and validation size >= 0")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.init is None and self.vq is None:
            raise ValueError("from scratch, the VQ-f4 must come from a weights folder (--weights-dir)")

    @property
    def learning_rate(self) -> float:
        """`lr`, or the official default 1e-6 × batch × processes × accumulation."""
        return self.lr if self.lr is not None else default_lr(self.batch, self.processes, self.grad_accum)

    @property
    def level(self) -> int:
        return 0 if self.variant == "h0" else 4

    def to_json(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, **asdict(self), "data": list(self.data)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["data"] = tuple(values.get("data", ()))
        return cls(**values)

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Identity settings that differ: {name: (self's value, other's value)}."""
        mine, theirs = self.to_json(), other.to_json()
        return {
            key: (mine[key], theirs[key])
            for key in mine
            if key not in SCHEDULE_FIELDS and mine[key] != theirs.get(key)
        }


def write_config(config: TrainConfig, run_dir: Path) -> Path:
    """Write RUN/config.json atomically."""
    target = run_dir / CONFIG_NAME
    write_json_atomic(target, config.to_json())
    return target


def read_config(run_dir: Path) -> TrainConfig | None:
    """RUN/config.json, or None when the run is new."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        return TrainConfig.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as err:
        raise ConfigMismatch(f"{path}: unreadable run configuration ({err})") from err


def settle_config(requested: TrainConfig, run_dir: Path, force: bool = False) -> TrainConfig:
    """The configuration to run with: the requested one, checked against RUN/config.json if present.

    Identity differences raise `ConfigMismatch` (one line naming the settings) unless `force`; the
    saved file is then (re)written with the requested values.
    """
    saved = read_config(run_dir)
    if saved is not None and not force:
        diff = saved.differences(requested)
        if diff:
            listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ConfigMismatch(
                f"{run_dir / CONFIG_NAME}: the run was started with other settings ({listed}); "
                "use --force-config to continue anyway, or another output folder"
            )
    return requested
