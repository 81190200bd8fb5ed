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


@pytest.fixture(scope="session")
def tiny_official_state_dicts(golden_dir: Path) -> dict:
    """Official-format tiny state dicts {"h4": ..., "h0": ...} (float32) rebuilt from the golden files,
    with the `model_ema.*` shadows, decay and update counter the golden README describes."""
    import torch
    from safetensors.torch import load_file

    from shmt_cli.engines.shmt import weights as W

    h4 = {k: v.float() for k, v in load_file(golden_dir / "tiny_h4.safetensors").items()}
    h0 = {**h4, **{k: v.float() for k, v in load_file(golden_dir / "tiny_h0.safetensors").items()}}
    out = {}
    for name, sd in (("h4", h4), ("h0", h0)):
        sd = dict(sd)
        for key in [k for k in sd if k.startswith(W.UNET_PREFIX)]:
            sd[W.ema_key(key[len(W.UNET_PREFIX) :])] = sd[key].clone()
        sd["model_ema.decay"] = torch.tensor(0.9999, dtype=torch.float32)
        sd["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
        out[name] = sd
    return out


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory, tiny_official_state_dicts: dict) -> dict:
    """Lightning-style checkpoint files of the tiny golden models: {"h4": path, "h0": path}."""
    import torch

    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for name, epoch in (("h4", 700), ("h0", 800)):
        path = folder / f"shmt_{name}_epoch={epoch:06d}.ckpt"
        state = {"state_dict": tiny_official_state_dicts[name], "epoch": epoch, "global_step": 1000 * epoch}
        torch.save(state, path)
        paths[name] = path
    return paths


@pytest.fixture(scope="session")
def tiny_weights_dir(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: dict) -> Path:
    """A weights folder with both tiny golden models imported by `shmt weights import`'s library call."""
    from shmt_cli.engines.shmt.weights import import_checkpoint

    folder = tmp_path_factory.mktemp("weights")
    for name in ("h4", "h0"):
        import_checkpoint(tiny_checkpoints[name], folder)
    return folder
