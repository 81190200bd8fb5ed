"""Shared test fixtures: the CEO's reference material in ../shared (skipped cleanly when absent, a
failure when $SHMT_REQUIRE_SHARED=1, as CI sets it), and random-weight SHMT models built from the
architecture config, for tests that need weights of the right layout but not the golden values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
#: Set to 1 (CI does) to make a missing ../shared fail the tests that need it instead of skipping them.
REQUIRE_SHARED_ENV = "SHMT_REQUIRE_SHARED"


def _require(path: Path) -> Path:
    if not path.exists():
        message = f"reference material not available: {path}"
        if os.environ.get(REQUIRE_SHARED_ENV) == "1":
            pytest.fail(f"{message} (${REQUIRE_SHARED_ENV}=1 forbids skipping)")
        pytest.skip(message)
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


@pytest.fixture(scope="session")
def random_official_state_dicts() -> dict:
    """Official-format state dicts {"h4": ..., "h0": ...} of the tiny architecture with seeded random
    values: every key and shape the config gives (UNet, EMA shadows and bookkeeping, IDA with its dead
    proj_convs, VQ, schedule buffers), no ../shared needed."""
    import torch

    from shmt_cli.engines.shmt import weights as W
    from shmt_cli.engines.shmt.sampler import ldm_schedule_buffers

    schedule = ldm_schedule_buffers()
    out = {}
    for seed, variant in enumerate(("h4", "h0")):
        generator = torch.Generator().manual_seed(seed)
        sd = {}
        for key, shape in W.expected_shapes(variant, "tiny").items():
            if key in schedule:
                sd[key] = schedule[key].clone()
            elif key == "model_ema.num_updates":
                sd[key] = torch.tensor(0, dtype=torch.int32)
            elif key == "model_ema.decay":
                sd[key] = torch.tensor(0.9999)
            else:
                sd[key] = torch.randn(shape, generator=generator) * 0.02
        for key in [k for k in sd if k.startswith(W.UNET_PREFIX)]:
            sd[W.ema_key(key[len(W.UNET_PREFIX) :])] = sd[key].clone()
        if out:  # both variants share one VQ, as the official checkpoints do
            sd.update({k: v for k, v in out["h4"].items() if k.startswith(W.VQ_PREFIX)})
        out[variant] = sd
    return out


@pytest.fixture(scope="session")
def random_weights_dir(tmp_path_factory: pytest.TempPathFactory, random_official_state_dicts: dict) -> Path:
    """A weights folder with both random tiny models imported (h4 first, as a user would)."""
    import torch

    from shmt_cli.engines.shmt.weights import import_checkpoint

    folder = tmp_path_factory.mktemp("random_weights")
    checkpoints = tmp_path_factory.mktemp("random_checkpoints")
    for name in ("h4", "h0"):
        path = checkpoints / f"shmt_{name}.ckpt"
        torch.save({"state_dict": random_official_state_dicts[name], "epoch": 1, "global_step": 10}, path)
        import_checkpoint(path, folder)
    return folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module: the 2 cores are shared with other jobs, and oversubscribed
    OpenMP threads made the models 3-5x slower (and sample building runs single-threaded in a
    DataLoader worker anyway)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def dev_photo_folders(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A function (source names, reference names) -> (sources, references): two fresh temporary folders
    holding copies of those dev photos (`non_makeup/images` and `makeup/images` of ../shared/faces)."""
    import shutil

    def make(sources: tuple[str, ...], references: tuple[str, ...]) -> tuple[Path, Path]:
        root = tmp_path_factory.mktemp("photos")
        for folder, kind, names in (
            (root / "sources", "non_makeup", sources),
            (root / "references", "makeup", references),
        ):
            folder.mkdir()
            for name in names:
                shutil.copyfile(faces_dir / kind / "images" / name, folder / name)
        return root / "sources", root / "references"

    return make
