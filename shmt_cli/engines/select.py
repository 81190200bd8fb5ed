"""Engines by name: `classic` (weight-free), `shmt` (latent diffusion), `auto` (shmt when installed)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shmt_cli.decompose import FaceParts
from shmt_cli.engines.base import Engine, PairJob
from shmt_cli.engines.classic import ClassicParams, prepare_reference, prepare_source, transfer_prepared

ENGINE_NAMES = ("auto", "shmt", "classic")
CLASSIC_LEVELS = ("h0", "h1", "h2", "h3", "h4")


class EngineUnavailable(Exception):
    """The chosen engine cannot run here (e.g. no SHMT weights installed)."""


class ClassicEngine(Engine):
    """The weight-free example-based engine (engines/classic.py) behind the Engine interface."""

    name = "classic"
    uses_seed = False  # deterministic: no noise

    def __init__(self, params: ClassicParams) -> None:
        self.params = params

    def settings(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "level": self.params.level,
            "regions": sorted(self.params.regions),
            "strengths": dict(sorted(self.params.strengths.items())),
        }

    def prepare_source(self, face: FaceParts) -> Any:
        return prepare_source(face.image, face.labels, face.landmarks)

    def prepare_reference(self, face: FaceParts) -> Any:
        return prepare_reference(face.image, face.labels, face.landmarks)

    def transfer_batch(self, jobs: Sequence[PairJob]) -> list[np.ndarray]:
        with _single_torch_thread():
            return [transfer_prepared(job.source, job.reference, self.params) for job in jobs]


@contextlib.contextmanager
def _single_torch_thread() -> Iterator[None]:
    """The pyramid's small convolutions run several times slower with more than one torch thread
    (thread hand-off dominates such small work), so the classic engine runs them on one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class EngineRequest:
    """What the user asked for on the command line."""

    engine: str = "auto"
    level: str = "h4"
    mix: float = 0.5
    steps: int = 50
    ida: str = "released"
    ema_both: bool = False
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "fp32"
    compile: bool | None = None
    weights_dir: Path | None = None
    regions: frozenset[str] = frozenset({"lips", "eyes", "skin", "brows"})
    strengths: dict[str, float] = field(default_factory=dict)


def shmt_weights_installed(weights_dir: Path | None) -> bool:
    """Whether SHMT weights are installed (a manifest with at least one model and the VQ)."""
    from shmt_cli.engines.shmt.weights import list_weights
    from shmt_cli.engines.shmt.weights import weights_dir as resolve_weights_dir

    try:
        entries = list_weights(resolve_weights_dir(weights_dir))
    except (OSError, ValueError):
        return False
    kinds = {entry.kind for entry in entries}
    return {"vq", "shmt"} <= kinds


def _check_other_engine_options(request: EngineRequest) -> None:
    """ValueError for a bad option value of either engine, whichever will run: `auto` may pick the
    other one today and this one tomorrow, and a typo must not wait for the day it matters."""
    from shmt_cli.engines.shmt.engine import ShmtSettings

    # --level is checked by the engine that runs (its values differ per engine).
    ShmtSettings(
        mix=request.mix,
        steps=request.steps,
        ida=request.ida,
        batch_size=request.batch_size,
        device=request.device,
        dtype=request.dtype,
        compile=request.compile,
    )
    ClassicParams(regions=request.regions, strengths=request.strengths)


def create_engine(request: EngineRequest) -> tuple[Engine, str]:
    """The engine for a request, and one line saying which engine runs and why."""
    name = request.engine
    if name not in ENGINE_NAMES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINE_NAMES)}")
    _check_other_engine_options(request)
    if name == "auto":
        name = "shmt" if shmt_weights_installed(request.weights_dir) else "classic"
        why = "SHMT weights found" if name == "shmt" else "no SHMT weights installed"
        note = f"engine: {name} ({why}; choose with --engine)"
    else:
        note = f"engine: {name}"
    if name == "classic":
        # An empty level means "the engine's default"; anything else not in h0..h4 (a typo, or shmt's
        # `mix` when auto fell back to classic) must be refused, not silently replaced by h2.
        level = request.level or "h2"
        if level not in CLASSIC_LEVELS:
            raise ValueError(
                f"--level {level!r} is not a classic level (choose from {', '.join(CLASSIC_LEVELS)})"
                + (
                    "; auto chose classic because no SHMT weights are installed"
                    if request.engine == "auto"
                    else ""
                )
            )
        params = ClassicParams(level=level, regions=request.regions, strengths=request.strengths)
        return ClassicEngine(params), note
    if not shmt_weights_installed(request.weights_dir):
        from shmt_cli.engines.shmt.weights import weights_dir as resolve_weights_dir

        raise EngineUnavailable(
            f"no SHMT weights in {resolve_weights_dir(request.weights_dir)}: import the official checkpoints "
            "with `shmt weights import CKPT... [--vq VQ_CKPT]` (or use --engine classic)"
        )
    from shmt_cli.engines.shmt.engine import ShmtEngine, ShmtSettings

    settings = ShmtSettings(
        level=request.level,
        mix=request.mix,
        steps=request.steps,
        ida=request.ida,
        ema_both=request.ema_both,
        batch_size=request.batch_size,
        device=request.device,
        dtype=request.dtype,
        compile=request.compile,
    )
    return ShmtEngine.from_weights_dir(request.weights_dir, settings), note
