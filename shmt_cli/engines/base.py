"""The engine interface: prepare each face once, then transfer makeup for batches of pairs.

The batch runner and the CLI only see this interface (and the registry that builds engines by name),
so they never know which engine runs. `Engine[S, R]` is generic in what an engine keeps per prepared
source face (S) and per prepared reference face (R).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from shmt_cli.decompose import FaceParts

S = TypeVar("S")
R = TypeVar("R")


class EngineUnavailable(Exception):
    """The chosen engine cannot run here (e.g. no SHMT weights installed, no CUDA device)."""


class DeviceUnavailable(EngineUnavailable):
    """The device asked for is not there (``--device cuda`` without CUDA): a usage error (exit 2)."""


class EngineOutOfMemory(Exception):
    """Out of memory even with one pair per batch (the engine halves the batch before raising this);
    the message is one line suggesting --batch-size/--dtype, the run stops (exit 3)."""


@dataclass(frozen=True)
class PairJob(Generic[S, R]):
    """One pair for an engine: prepared source, prepared reference, and the pair's own noise seed."""

    source: S
    reference: R
    seed: int


class Engine(ABC, Generic[S, R]):
    """A makeup-transfer engine working on aligned 256x256 faces."""

    name: str = "engine"
    #: Pairs per call of transfer_batch (the SHMT engine pads the last batch to this size).
    batch_size: int = 1
    #: Whether sources need the 3D render (references never do).
    needs_render: bool = False
    #: Whether results depend on the noise seed (else --seed is left out of the parameter hash).
    uses_seed: bool = True

    def describe(self) -> str:
        """One line on what runs (engines say more: device, dtype, compile, sampler)."""
        import torch  # imported here: the interface itself needs no torch

        return f"{self.name} on cpu, {torch.get_num_threads()} torch threads"

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The parameters that change results (recorded in the manifest, hashed for resume)."""

    @abstractmethod
    def prepare_source(self, face: FaceParts) -> S:
        """Per-source work, done once per source face."""

    @abstractmethod
    def prepare_reference(self, face: FaceParts) -> R:
        """Per-reference work, done once per reference face."""

    def prepare_sources(self, faces: Sequence[FaceParts]) -> list[S]:
        """`prepare_source` for several faces (engines that batch the work override this)."""
        return [self.prepare_source(face) for face in faces]

    def prepare_references(self, faces: Sequence[FaceParts]) -> list[R]:
        """`prepare_reference` for several faces (engines that batch the work override this)."""
        return [self.prepare_reference(face) for face in faces]

    @abstractmethod
    def transfer_batch(self, jobs: Sequence[PairJob[S, R]]) -> list[np.ndarray]:
        """Results for a batch of pairs: one (256, 256, 3) uint8 RGB crop per job, in order."""
