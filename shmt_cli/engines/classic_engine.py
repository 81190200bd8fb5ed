"""The weight-free example-based engine (the algorithm is in engines/classic.py) behind `Engine`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shmt_cli.decompose import FaceParts
from shmt_cli.engines.base import Engine, PairJob
from shmt_cli.engines.classic import (
    ClassicParams,
    PreparedReference,
    PreparedSource,
    prepare_reference,
    prepare_source,
    transfer_prepared,
)


class ClassicEngine(Engine[PreparedSource, PreparedReference]):
    """Classic makeup transfer with `ClassicParams` (its settings class in the registry)."""

    name = "classic"
    uses_seed = False  # deterministic: no noise, so --seed stays out of the parameter hash

    def __init__(self, params: ClassicParams) -> None:
        self.params = params

    @classmethod
    def create(cls, settings: ClassicParams, weights_dir: Path | None = None) -> ClassicEngine:
        """Registry factory: the classic engine needs no weights."""
        return cls(settings)

    def settings(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "level": self.params.level,
            "regions": sorted(self.params.regions),
            "strengths": dict(sorted(self.params.strengths.items())),
        }

    def prepare_source(self, face: FaceParts) -> PreparedSource:
        return prepare_source(face.image, face.labels, face.landmarks)

    def prepare_reference(self, face: FaceParts) -> PreparedReference:
        return prepare_reference(face.image, face.labels, face.landmarks)

    def transfer_batch(self, jobs: Sequence[PairJob[PreparedSource, PreparedReference]]) -> list[np.ndarray]:
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
