"""Shared test fixtures: the CEO's reference material in ../shared (skipped cleanly when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference material not available: {path}")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout."""
    return _require(SHARED)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """../shared/golden: tensors from the official implementation with tiny random weights."""
    return _require(SHARED / "golden")


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """../shared/faces: dev photos with reference parsing maps and 3D renders."""
    return _require(SHARED / "faces")


@pytest.fixture(scope="session")
def astronaut_rgb():
    """The public-domain astronaut photo bundled with scikit-image, (512, 512, 3) uint8 RGB."""
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()
