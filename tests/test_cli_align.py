"""`shmt align` end to end: real faces, several faces, rotation, bad files, skip-existing, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shmt_cli.cli import app
from shmt_cli.face.align import read_sidecar, transform_points
from shmt_cli.face.detect import default_detector
from shmt_cli.face.template import template_for_size

runner = CliRunner()


def _save(path: Path, rgb: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, **kwargs)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, astronaut_rgb: np.ndarray) -> Path:
    """A folder of test inputs: a real face, two faces side by side, a rotated photo and bad files."""
    root = tmp_path_factory.mktemp("photos")
    _save(root / "astronaut.png", astronaut_rgb)
    face = astronaut_rgb[0:300, 90:390]
    mirrored = np.ascontiguousarray(face[:, ::-1])
    _save(root / "group" / "two.jpg", np.hstack([face, mirrored]), quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90° counter-clockwise; viewers turn it upright
    _save(
        root / "rotated.jpg",
        np.ascontiguousarray(np.rot90(astronaut_rgb, 1)),
        quality=95,
        exif=exif.tobytes(),
    )
    _save(root / "noface.png", np.tile(np.linspace(0, 255, 200, dtype=np.uint8)[None, :, None], (200, 1, 3)))
    _save(root / "corrupt.jpg", astronaut_rgb, quality=90)
    (root / "corrupt.jpg").write_bytes((root / "corrupt.jpg").read_bytes()[:2000])  # cut short
    (root / "notes.jpg").write_text("not an image")
    return root


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_align_folder_with_bad_files(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "aligned"
    code, output = _run("align", str(photos), "-o", str(out), "--json")
    assert code == 1, output
    lines = _json_lines(output)
    items = {Path(line["key"]).name: line for line in lines if line["type"] == "item"}
    summary = next(line for line in lines if line["type"] == "summary")
    assert (summary["done"], summary["failed"]) == (3, 3)
    assert items["noface.png"]["reason"].startswith("no face found")
    assert "corrupt or truncated" in items["corrupt.jpg"]["reason"]
    assert items["notes.jpg"]["reason"] == "not a recognised image format"
    for name in ("astronaut", "rotated", "group/two"):
        assert (out / f"{name}.png").is_file() and (out / f"{name}.json").is_file()
    assert not list(out.rglob("*.tmp"))

    # The crop is framed like the template: re-detected landmarks lie close to it.
    crop = np.asarray(Image.open(out / "astronaut.png"))
    assert crop.shape == (256, 256, 3)
    found = default_detector().detect(crop)[0].landmarks
    assert np.abs(found - template_for_size(256)).mean() < 4.0

    # The sidecar maps source landmarks to crop landmarks and back within half a pixel.
    sidecar = read_sidecar(out / "astronaut.json")
    assert sidecar.source_size == (512, 512)
    back = transform_points(sidecar.landmarks_crop, np.linalg.inv(np.vstack([sidecar.matrix, [0, 0, 1]]))[:2])
    assert np.abs(back - sidecar.landmarks_source).max() < 0.5

    # EXIF rotation was applied: the rotated photo gives the same upright crop as the original.
    rotated = np.asarray(Image.open(out / "rotated.png")).astype(float)
    assert np.abs(rotated - crop.astype(float)).mean() < 8

    # Second run: everything done is skipped, failures are not retried without --retry-failed.
    code, output = _run("align", str(photos), "-o", str(out), "--json")
    summary = _json_lines(output)[-1]
    assert (summary["done"], summary["skipped"], summary["failed"]) == (0, 6, 0)
    assert summary["failed_before"] == 3 and code == 1  # the bad inputs are still reported


def test_two_faces_best_only_and_all_faces(photos: Path, tmp_path: Path) -> None:
    two = photos / "group" / "two.jpg"
    code, _ = _run("align", str(two), "-o", str(tmp_path / "best"))
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "best").glob("*.png")) == ["two.png"]
    code, _ = _run("align", str(two), "-o", str(tmp_path / "all"), "--all-faces")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "all").glob("*.png")) == ["two_face1.png", "two_face2.png"]
    centres = [
        read_sidecar(tmp_path / "all" / f"two_face{k}.json").landmarks_source[:, 0].mean() for k in (1, 2)
    ]
    assert min(centres) < 300 < max(centres)  # one face on each half of the composite


def test_overwrite_and_usage_errors(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert _run("align", str(photos / "astronaut.png"), "-o", str(out))[0] == 0
    before = (out / "astronaut.png").stat().st_mtime_ns
    assert _run("align", str(photos / "astronaut.png"), "-o", str(out), "--overwrite")[0] == 0
    assert (out / "astronaut.png").stat().st_mtime_ns != before
    code, output = _run("align", str(photos / "missing.jpg"), "-o", str(out))
    assert code == 2 and "input not found" in output
    code, output = _run("align", str(photos / "astronaut.png"), "-o", str(out), "--size", "512")
    assert code == 2 and "other parameters" in output
    assert _run("align", "-o", str(out))[0] == 2  # no inputs at all
    code, output = _run("align", str(photos), "-o", str(photos))
    assert code == 2 and "also an input folder" in output


def test_files_from_and_shards(photos: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"{photos / 'astronaut.png'}\n\n# comment\n{photos / 'rotated.jpg'}\n")
    out = tmp_path / "sharded"
    names = []
    for k in (1, 2):
        code, output = _run(
            "align", "-o", str(out), "--files-from", str(listing), "--shard", f"{k}/2", "--json"
        )
        assert code == 0
        names += [line["key"] for line in _json_lines(output) if line["type"] == "item"]
    assert sorted(Path(n).name for n in names) == ["astronaut.png", "rotated.jpg"]
    code, output = _run("manifest-merge", str(out), "--expect", "2")
    assert code == 0 and "2 items, 2 ok" in output


def test_a_missing_file_in_a_list_fails_alone(photos: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"{photos / 'astronaut.png'}\n{photos / 'gone.jpg'}\n")
    code, output = _run("align", "-o", str(tmp_path / "out"), "--files-from", str(listing), "--json")
    summary = _json_lines(output)[-1]
    assert code == 1 and (summary["done"], summary["failed"]) == (1, 1)
    assert "gone.jpg" in summary["failures"][0]["input"]
    assert "No such file" in summary["failures"][0]["reason"]
    # On the command line itself a missing path is still a usage error.
    assert _run("align", str(photos / "gone.jpg"), "-o", str(tmp_path / "out2"))[0] == 2
