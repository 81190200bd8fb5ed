"""`shmt transfer --engine shmt` end to end on dev photos with the tiny golden models (fast, few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from shmt_cli.cli import app
from shmt_cli.imageio import read_image

runner = CliRunner()
SOURCES = ("00305.jpg", "xfsy_0069.png")
REFERENCE = "00012.jpg"
#: Official parsing labels of the scene around a person: background, hat, earring, necklace, cloth. Hair
#: is left out: where the skin meets the hair our built-in parsing may draw the forehead differently.
SCENE_LABELS = (0, 14, 15, 16, 18)
#: Scene pixels this far from the person's face and hair must come out byte-identical.
BACKGROUND_MARGIN = 24


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photos(dev_photo_folders) -> tuple[Path, Path]:
    """Two source photos and one reference photo, copied to a temporary folder for the run."""
    return dev_photo_folders(SOURCES, (REFERENCE,))


@pytest.fixture(scope="module")
def transferred(photos: tuple[Path, Path], tiny_weights_dir: Path, tmp_path_factory) -> Path:
    sources, references = photos
    out = tmp_path_factory.mktemp("out")
    args = ["transfer", str(sources), str(references), "-o", str(out), "--engine", "shmt"]
    args += ["--weights-dir", str(tiny_weights_dir), "--steps", "3", "--batch-size", "2", "--seed", "5"]
    # PNG: the background is compared byte for byte (a JPEG source is written as JPEG by default).
    result = runner.invoke(app, [*args, "--crop", "--format", "png"])
    assert result.exit_code == 0, result.output
    return out


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _far_from_face(seg_path: Path, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: scene pixels at least BACKGROUND_MARGIN px from the official face and hair."""
    labels = cv2.imread(str(seg_path), cv2.IMREAD_GRAYSCALE)
    labels = cv2.resize(labels, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    outside = np.isin(labels, SCENE_LABELS).astype(np.uint8)
    distance = cv2.distanceTransform(outside, cv2.DIST_L2, 5)
    return distance >= BACKGROUND_MARGIN


def test_outputs_keep_the_photo_size_and_background(
    transferred: Path, photos: tuple[Path, Path], faces_dir: Path
) -> None:
    sources, _ = photos
    for name in SOURCES:
        stem = Path(name).stem
        photo = read_image(sources / name)
        result = read_image(transferred / f"{stem}__{Path(REFERENCE).stem}.png")
        assert result.shape == photo.shape
        far = _far_from_face(faces_dir / "non_makeup" / "seg" / f"{stem}.png", photo.shape[:2])
        assert far.sum() > 0.05 * far.size  # a real background region is being checked
        assert np.array_equal(result[far], photo[far]), f"{name}: background changed"
        labels = cv2.imread(str(faces_dir / "non_makeup" / "seg" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        labels = cv2.resize(labels, photo.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        changed = np.abs(result.astype(int) - photo.astype(int)).max(axis=2) > 8
        assert changed[labels == 1].mean() > 0.2  # the skin really is the (random-weight) model's output
        crop = read_image(transferred / f"{stem}__{Path(REFERENCE).stem}_crop.png")
        assert crop.shape == (256, 256, 3)


def test_manifest_records_the_engine_settings(transferred: Path) -> None:
    ok = [r for r in _records(transferred) if r.get("status") == "ok"]
    assert len(ok) == 2
    for record in ok:
        assert record["engine"] == "shmt"
        assert record["level"] == "mix"  # both models installed: the default is the official blend
        assert record["steps"] == 3
        assert isinstance(record["seed"], int)
        assert record["params"]["seed"] == 5 and record["params"]["ida"] == "released"
    assert len({r["seed"] for r in ok}) == 2  # each pair has its own noise seed


@pytest.mark.parametrize("level", ["h0", "h4", "mix"])
def test_each_level_runs(transferred: Path, tiny_weights_dir: Path, tmp_path: Path, level: str) -> None:
    # The first run's prepared faces (parts files) skip detection, parsing and rendering here.
    parts = transferred / "faces"
    source = next((parts / "sources").glob("*.safetensors"))
    reference = next((parts / "references").glob("*.safetensors"))
    out = tmp_path / level
    args = ["transfer", str(source), str(reference), "-o", str(out), "--engine", "shmt", "--level", level]
    result = runner.invoke(
        app, [*args, "--weights-dir", str(tiny_weights_dir), "--steps", "2", "--batch-size", "1"]
    )
    assert result.exit_code == 0, result.output
    (record,) = [r for r in _records(out) if r.get("status") == "ok"]
    assert (record["engine"], record["level"], record["steps"]) == ("shmt", level, 2)
    image = read_image(out / f"{source.stem}__{reference.stem}.png")
    assert image.shape == (256, 256, 3) and image.std() > 1.0
