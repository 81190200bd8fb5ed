"""The engine interface: prepare each face once, then transfer makeup for batches of pairs.

The batch runner and the CLI only see this interface, so they never know which engine runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shmt_cli.decompose import FaceParts


@dataclass(frozen=True)
class PairJob:
    """One pair for an engine: prepared source, prepared reference, and the pair's own noise seed."""

    source: Any
    reference: Any
    seed: int


class Engine(ABC):
    """A makeup-transfer engine working on aligned 256x256 faces."""

    name: str = "engine"
    #: Pairs per call of transfer_batch (the SHMT engine pads the last batch to this size).
    batch_size: int = 1
    #: Whether sources need the 3D render (references never do).
    needs_render: bool = False
    #: Whether results depend on the noise seed (else --seed is left out of the parameter hash).
    uses_seed: bool = True

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The parameters that change results (recorded in the manifest, hashed for resume)."""

    @abstractmethod
    def prepare_source(self, face: FaceParts) -> Any:
        """Per-source work, done once per source face."""

    @abstractmethod
    def prepare_reference(self, face: FaceParts) -> Any:
        """Per-reference work, done once per reference face."""

    @abstractmethod
    def transfer_batch(self, jobs: Sequence[PairJob]) -> list[np.ndarray]:
        """Results for a batch of pairs: one (256, 256, 3) uint8 RGB crop per job, in order."""
