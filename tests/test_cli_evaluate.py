"""`shmt evaluate` over classic-engine results: weight-free metrics, CSV/JSON/plot, comparisons."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shmt_cli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, astronaut_rgb: np.ndarray) -> tuple[Path, Path]:
    """Two results folders of the same pairs: classic h0 and classic h4."""
    root = tmp_path_factory.mktemp("evaluate")
    (root / "src").mkdir()
    (root / "ref").mkdir()
    Image.fromarray(np.pad(astronaut_rgb, ((30, 30), (60, 60), (0, 0)), mode="edge")).save(
        root / "src" / "a.png"
    )
    made_up = astronaut_rgb.copy()
    made_up[..., 0] = np.clip(made_up[..., 0].astype(int) + 40, 0, 255).astype(np.uint8)
    Image.fromarray(made_up).save(root / "ref" / "r.png")
    folders = []
    for level in ("h0", "h4"):
        out = root / f"classic_{level}"
        args = ["transfer", str(root / "src"), str(root / "ref"), "-o", str(out), "--engine", "classic"]
        result = runner.invoke(app, [*args, "--level", level, "--crop"])
        assert result.exit_code == 0, result.output
        folders.append(out)
    return folders[0], folders[1]


def test_evaluate_writes_metrics(results: tuple[Path, Path], tmp_path: Path) -> None:
    h0, _ = results
    csv_path, plot = tmp_path / "m.csv", tmp_path / "m.png"
    result = runner.invoke(app, ["evaluate", str(h0), "--json", "--csv", str(csv_path), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    report = json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))
    folder = report["folders"][0]
    pair = folder["pairs"][0]
    # Paste-back leaves the photo untouched away from the face: an infinite PSNR, null in JSON (not "inf").
    assert pair["background_psnr"] is None
    assert pair["identity"] < 0.6 and pair["landmark_px"] < 3.0
    assert pair["same_person"] == 1.0 and folder["summary"]["same_person"]["mean"] == 1.0
    assert 0.0 < pair["content_ssim"] <= 1.0 and pair["fidelity_de00"] > 0
    assert folder["summary"]["identity"]["n"] == 1
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 1 and math.isclose(float(rows[0]["identity"]), pair["identity"], rel_tol=1e-5)
    assert Image.open(plot).size[0] > 300


def test_compare_folders(results: tuple[Path, Path]) -> None:
    h0, h4 = results
    result = runner.invoke(app, ["evaluate", str(h0), str(h4), "--compare", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))
    ssim = [f["summary"]["content_ssim"]["mean"] for f in report["folders"]]
    assert ssim[0] >= ssim[1]  # h0 keeps more of the source's fine texture than h4


def test_not_a_results_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2 and "manifest.jsonl" in result.output


def test_paper_metrics_with_weights_in_the_official_layouts(
    tmp_path: Path, astronaut_rgb: np.ndarray
) -> None:
    import torch

    from shmt_cli.metrics import inception, paper, vit

    (tmp_path / "src").mkdir()
    (tmp_path / "ref").mkdir()
    Image.fromarray(astronaut_rgb).save(tmp_path / "src" / "a.png")
    for index, shift in enumerate((30, 60)):
        made_up = astronaut_rgb.copy()
        made_up[..., index] = np.clip(made_up[..., index].astype(int) + shift, 0, 255).astype(np.uint8)
        Image.fromarray(made_up).save(tmp_path / "ref" / f"r{index}.png")
    out = tmp_path / "out"
    args = ["transfer", str(tmp_path / "src"), str(tmp_path / "ref"), "-o", str(out), "--engine", "classic"]
    assert runner.invoke(app, args).exit_code == 0

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    torch.manual_seed(0)
    torch.save(vit.DinoViT().state_dict(), metrics / paper.DINO_VITB8_FILENAME)
    torch.save(inception.FidInceptionV3().state_dict(), metrics / paper.FID_INCEPTION_FILENAME)
    dino_file, fid_file = metrics / paper.DINO_VITB8_FILENAME, metrics / paper.FID_INCEPTION_FILENAME
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(out),
            "--paper",
            "--json",
            "--dino-weights",
            str(dino_file),
            "--inception-weights",
            str(fid_file),
        ],
    )
    assert result.exit_code == 0, result.output
    folder = json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))["folders"][
        0
    ]
    assert len(folder["pairs"]) == 2
    for pair in folder["pairs"]:
        assert -1.0 <= pair["cls"] <= 1.0 and 0.0 < pair["keysim"] <= 1.0 and pair["keysim_mse"] >= 0.0
    assert isinstance(folder["set_metrics"]["fid"], float) and folder["set_metrics"]["fid"] >= 0.0

    # A file of the wrong format, and a missing one, fail clearly before any work.
    wrong = metrics / "wrong.pth"
    torch.save({"not": torch.zeros(3)}, wrong)
    result = runner.invoke(app, ["evaluate", str(out), "--paper", "--dino-weights", str(wrong)])
    assert result.exit_code == 2 and "wrong.pth is not a DINO ViT-B/8 checkpoint" in result.output
    result = runner.invoke(
        app, ["evaluate", str(out), "--paper", "--dino-weights", str(metrics / "nope.pth")]
    )
    assert result.exit_code == 2 and "nope.pth" in result.output
