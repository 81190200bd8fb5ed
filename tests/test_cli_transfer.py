"""`shmt transfer` end to end with the weight-free classic engine: pairing, paste-back, manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shmt_cli.cli import app
from shmt_cli.engines.registry import create_engine, shmt_weights_installed

runner = CliRunner()


def _json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _made_up(rgb: np.ndarray) -> np.ndarray:
    """The astronaut with strongly recoloured lips and a blue eye-shadow band: an obvious reference."""
    from shmt_cli.face.detect import default_detector

    out = rgb.copy()
    landmarks = default_detector().detect(rgb)[0].landmarks
    import cv2

    lips = np.zeros(rgb.shape[:2], np.uint8)
    cv2.fillPoly(lips, [np.round(landmarks[48:60]).astype(np.int32)], 1)
    out[lips > 0] = (0.4 * out[lips > 0] + 0.6 * np.array([200, 20, 60])).astype(np.uint8)
    for eye in (landmarks[36:42], landmarks[42:48]):
        top = int(eye[:, 1].min())
        x0, x1 = int(eye[:, 0].min()) - 4, int(eye[:, 0].max()) + 4
        band = out[top - 14 : top - 2, x0:x1].astype(float)
        out[top - 14 : top - 2, x0:x1] = (0.5 * band + 0.5 * np.array([40, 60, 200])).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, astronaut_rgb: np.ndarray) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("transfer")
    sources, references = root / "sources", root / "references"
    (sources / "sub").mkdir(parents=True)
    references.mkdir()
    big = np.pad(astronaut_rgb, ((40, 40), (100, 100), (0, 0)), mode="edge")  # not square, face off-centre
    Image.fromarray(big).save(sources / "sub" / "wide.png")
    Image.fromarray(np.ascontiguousarray(astronaut_rgb[:, ::-1])).save(sources / "mirror.jpg", quality=95)
    Image.fromarray(_made_up(astronaut_rgb)).save(references / "madeup.png")
    (references / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return sources, references


def test_auto_picks_classic_without_weights(tmp_path: Path) -> None:
    assert not shmt_weights_installed(tmp_path)
    engine, note = create_engine("auto", {}, tmp_path)
    assert engine.name == "classic" and "no SHMT weights" in note


def test_auto_refuses_a_bad_option_of_the_engine_it_did_not_pick(tmp_path: Path) -> None:
    # auto picks classic here, but --steps 0 would break the day SHMT weights are installed.
    with pytest.raises(ValueError, match="--steps"):
        create_engine("auto", {"steps": 0}, tmp_path)
    # --level is per engine: a classic level is not checked against the shmt engine.
    engine, _ = create_engine("auto", {"level": "h3"}, tmp_path)
    assert engine.name == "classic" and engine.uses_seed is False


def test_shmt_engine_without_weights_is_a_usage_error(folders: tuple[Path, Path], tmp_path: Path) -> None:
    sources, references = folders
    args = ["transfer", str(sources), str(references), "-o", str(tmp_path / "o"), "--engine", "shmt"]
    result = runner.invoke(app, [*args, "--weights-dir", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "shmt weights import" in result.output


def test_transfer_folders_with_paste_back(folders: tuple[Path, Path], tmp_path: Path) -> None:
    sources, references = folders
    out = tmp_path / "out"
    args = [
        "transfer",
        str(sources),
        str(references),
        "-o",
        str(out),
        "--engine",
        "classic",
        "--crop",
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # the broken reference fails its pairs, the rest goes on
    lines = _json_lines(result.output)
    summary = lines[-1]
    assert (summary["done"], summary["failed"]) == (2, 2)
    assert all("broken.png" in f["input"] and "reference" in f["reason"] for f in summary["failures"])

    wide_in = np.asarray(Image.open(sources / "sub" / "wide.png"))
    wide_out = np.asarray(Image.open(out / "sub" / "wide__madeup.png"))
    assert wide_out.shape == wide_in.shape  # the photo's own size
    changed = np.abs(wide_out.astype(int) - wide_in.astype(int)).sum(axis=2) > 0
    assert changed.any()
    # Only the face region changes: the image borders and the corners are byte-identical.
    assert not changed[:, :150].any() and not changed[:, -150:].any() and not changed[:60].any()
    assert (out / "sub" / "wide__madeup_crop.png").is_file()
    assert (out / "mirror__madeup.jpg").is_file()  # a JPEG source gives a JPEG

    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    ok = [r for r in records if r["status"] == "ok"]
    assert {r["engine"] for r in ok} == {"classic"}
    assert all(Path(out / r["source_parts"]).is_file() for r in ok)

    # Re-running resumes: nothing is redone.
    result = runner.invoke(app, args)
    assert _json_lines(result.output)[-1]["skipped"] == 4
    # Asking for an output the first run did not make redoes the pairs that lack it.
    result = runner.invoke(app, [*args, "--grid"])
    assert _json_lines(result.output)[-1]["done"] == 2
    assert (out / "sub" / "wide__madeup_grid.jpg").is_file()


def test_pairs_csv_and_zip(folders: tuple[Path, Path], tmp_path: Path) -> None:
    sources, references = folders
    table = tmp_path / "pairs.csv"
    table.write_text(
        f"source,reference,output\n{sources / 'mirror.jpg'},{references / 'madeup.png'},custom/name\n"
    )
    out = tmp_path / "csv"
    result = runner.invoke(app, ["transfer", "-o", str(out), "--pairs", str(table), "--engine", "classic"])
    assert result.exit_code == 0, result.output
    assert (out / "custom" / "name.jpg").is_file()

    table.write_text(f"{sources / 'mirror.jpg'},{references / 'madeup.png'},../escape\n")
    result = runner.invoke(app, ["transfer", "-o", str(out), "--pairs", str(table), "--engine", "classic"])
    assert result.exit_code == 2 and "without '..'" in result.output

    result = runner.invoke(
        app,
        [
            "transfer",
            str(sources),
            str(references / "madeup.png"),
            "-o",
            str(tmp_path / "z"),
            "--pairs",
            "zip",
        ],
    )
    assert result.exit_code == 2 and "as many sources" in result.output


def test_a_decompose_folder_is_reused_as_sources(folders: tuple[Path, Path], tmp_path: Path) -> None:
    sources, references = folders
    parts = tmp_path / "parts"
    assert runner.invoke(app, ["decompose", str(sources / "mirror.jpg"), "-o", str(parts)]).exit_code == 0
    assert len(list(parts.glob("*.png"))) > 5  # previews beside the parts file
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["transfer", str(parts), str(references / "madeup.png"), "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert _json_lines(result.output)[-1]["done"] == 1  # the parts file only, not its previews
    assert [p.name for p in out.glob("*.png")] == ["mirror__madeup.png"]
