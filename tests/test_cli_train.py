"""`shmt train` and `shmt weights export` on the command line: usage errors and the export file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import random_weights_dir
from typer.testing import CliRunner

from shmt_cli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_weights_dir(tmp_path_factory.mktemp("weights"))


def test_export_needs_official_and_writes_a_safe_lightning_checkpoint(weights: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.ckpt"
    refused = runner.invoke(app, ["weights", "export", "--weights-dir", str(weights), str(target)])
    assert refused.exit_code == 2 and not target.exists()
    result = runner.invoke(
        app, ["weights", "export", "--official", "--weights-dir", str(weights), str(target)]
    )
    assert result.exit_code == 0, result.output
    state = torch.load(target, weights_only=True)["state_dict"]
    assert "model_ema.num_updates" in state and "first_stage_model.quantize.embedding.weight" in state
    assert "sqrt_alphas_cumprod" in state and "corr_stage_model.ref_enc.10.weight" in state


def test_train_without_usable_faces_is_a_one_line_usage_error(weights: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["train", str(empty), "-o", str(tmp_path / "run"), "--init", str(weights)])
    assert result.exit_code == 2
    assert "no usable training faces" in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_refuses_an_unknown_precision(weights: Path, tmp_path: Path) -> None:
    args = ["train", str(tmp_path), "-o", str(tmp_path / "run"), "--init", str(weights), "--dtype", "fp16"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "dtype" in result.output
