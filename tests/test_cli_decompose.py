"""`shmt decompose` end to end on aligned crops: parts files, previews, external maps, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from shmt_cli.cli import app
from shmt_cli.decompose import load_parts
from shmt_cli.face.labels import FACE_LABELS

runner = CliRunner()


def _json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory, astronaut_rgb: np.ndarray) -> Path:
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(astronaut_rgb).save(root / "astronaut.png")
    out = root / "aligned"
    result = runner.invoke(app, ["align", str(root / "astronaut.png"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_decompose_writes_parts_and_previews(aligned: Path, tmp_path: Path) -> None:
    out = tmp_path / "parts"
    result = runner.invoke(app, ["decompose", str(aligned), "-o", str(out)])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    expected = {
        "astronaut.safetensors",
        "astronaut_parsing.png",
        "astronaut_parsing_color.png",
        "astronaut_3d.png",
    }
    expected |= {f"astronaut_{kind}.png" for kind in ("bg", "makeup", "gray", "h0", "h1", "h2", "h3", "h4")}
    assert expected <= names
    assert "contact_sheet.png" in names

    parts = load_parts(out / "astronaut.safetensors")
    crop = np.asarray(Image.open(aligned / "astronaut.png"))
    assert np.array_equal(parts.image, crop)
    assert np.array_equal(parts.labels, np.asarray(Image.open(out / "astronaut_parsing.png")))
    assert np.isin(parts.labels, FACE_LABELS).mean() > 0.2  # a real face region was found
    assert parts.render.max() > 200 and parts.render[0, 0].tolist() == [0, 0, 0]
    with safe_open(str(out / "astronaut.safetensors"), framework="pt") as handle:
        shapes = {key: tuple(handle.get_tensor(key).shape) for key in handle.keys()}  # noqa: SIM118
        meta = handle.metadata()
    assert shapes["content_h0"] == (64, 64, 64) and shapes["content_h4"] == (49, 64, 64)
    assert shapes["background"] == (3, 256, 256) and shapes["mask64"] == (1, 64, 64)
    assert json.loads(meta["levels"]) == [0, 4] and meta["parsing"] == "builtin"


def test_external_parsing_maps_and_their_errors(aligned: Path, tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    # A BiSeNet-order map at another size: 1 = skin, 10 = nose in BiSeNet's order.
    bisenet = np.zeros((512, 512), np.uint8)
    bisenet[100:400, 100:400] = 1
    bisenet[200:300, 230:280] = 10
    Image.fromarray(bisenet).save(maps / "astronaut.png")
    out = tmp_path / "parts"
    args = ["decompose", str(aligned), "-o", str(out), "--parsing", str(maps), "--parsing-order", "bisenet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    parts = load_parts(out / "astronaut.safetensors")
    assert set(np.unique(parts.labels)) == {0, 1, 2}  # BiSeNet nose 10 became CelebAMask nose 2
    assert parts.labels[125, 127] == 2

    Image.fromarray(np.full((64, 64), 40, np.uint8)).save(maps / "astronaut.png")
    result = runner.invoke(app, [*args[:3], str(tmp_path / "bad"), *args[4:], "--json"])
    assert result.exit_code == 1
    failure = _json_lines(result.output)[-1]["failures"][0]
    assert "astronaut" in failure["input"] and "40" in failure["reason"]

    result = runner.invoke(app, ["decompose", str(aligned), "-o", str(out), "--parsing-order", "nope"])
    assert result.exit_code == 2


def test_malformed_sidecar_and_parts_files_give_one_clear_line(aligned: Path, tmp_path: Path) -> None:
    from shmt_cli.imageio import InputError

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "face.png").write_bytes((aligned / "astronaut.png").read_bytes())
    (broken / "face.json").write_text('{"format": "shmt-aligned-face/1", "matrix": [[1, 0]]}')
    result = runner.invoke(app, ["decompose", str(broken), "-o", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 1
    failure = _json_lines(result.output)[-1]["failures"][0]
    assert "face.json" in failure["reason"] and "\n" not in failure["reason"]

    garbage = tmp_path / "x.safetensors"
    garbage.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(InputError, match=r"x\.safetensors"):
        load_parts(garbage)
