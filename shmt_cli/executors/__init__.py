"""Where `shmt transfer` runs its pairs: `local` (this process, the default) or `ray` (a Ray cluster).

Both read the same inputs and write the same outputs and manifest; only the chosen executor's module is
imported, so the core install never imports ray.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shmt_cli.inputs import UsageError

if TYPE_CHECKING:
    from shmt_cli.engines.base import Engine
    from shmt_cli.pipelines.transfer import PairExecutor

EXECUTORS = ("local", "ray")
RAY_EXTRA_HINT = "install the extra: pip install 'shmt[ray]'"


@dataclass(frozen=True)
class ExecutorOptions:
    """The executor the user chose and its options (the ray ones are refused with `local`)."""

    name: str = "local"
    ray_address: str | None = None
    gpus_per_worker: float = 0.0
    workers: int | None = None


def engine_by_name(name: str, options: Mapping[str, Any], weights_dir: Path | None) -> Engine:
    """The engine `name` with `options` (see engines.registry): what each worker builds for itself
    (with functools.partial, so it pickles)."""
    from shmt_cli.engines.registry import create_engine

    return create_engine(name, options, weights_dir)[0]


def check_executor_options(options: ExecutorOptions) -> None:
    """UsageError for an unknown executor, bad numbers, ray options without ray, or ray not installed."""
    if options.name not in EXECUTORS:
        raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}, got {options.name!r}")
    if options.gpus_per_worker < 0:
        raise UsageError(f"--gpus-per-worker must be >= 0, got {options.gpus_per_worker}")
    if options.workers is not None and options.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {options.workers}")
    if options.name == "local":
        given = [
            flag
            for flag, value in (
                ("--ray-address", options.ray_address),
                ("--gpus-per-worker", options.gpus_per_worker or None),
                ("--workers", options.workers),
            )
            if value is not None
        ]
        if given:
            raise UsageError(f"{', '.join(given)} only apply to --executor ray")
    elif importlib.util.find_spec("ray") is None:
        raise UsageError(f"--executor ray needs Ray, which is not installed: {RAY_EXTRA_HINT}")


def make_executor(options: ExecutorOptions, engine_factory: Callable[[], Engine]) -> PairExecutor | None:
    """The executor for `options` (None: the local runner). `engine_factory` builds the engine in each
    worker; it is pickled and shipped, so it must be a module-level callable (e.g. a partial)."""
    check_executor_options(options)
    if options.name == "local":
        return None
    from shmt_cli.executors.ray import RayExecutor

    return RayExecutor(
        engine_factory=engine_factory,
        address=options.ray_address,
        gpus_per_worker=options.gpus_per_worker,
        workers=options.workers,
    )
