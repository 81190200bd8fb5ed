"""`shmt transfer` of a grayscale photo with the classic engine: a gray result and a note."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from shmt_cli.cli import app
from shmt_cli.engines.classic import GRAYSCALE_NOTE

runner = CliRunner()


def test_grayscale_source_stays_gray_and_is_noted(astronaut_rgb: np.ndarray, tmp_path: Path) -> None:
    gray = np.asarray(Image.fromarray(astronaut_rgb).convert("L").convert("RGB"))
    made_up = astronaut_rgb.copy()
    made_up[..., 0] = np.clip(made_up[..., 0].astype(int) + 40, 0, 255)  # a strongly red reference
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(made_up).save(tmp_path / "red.png")
    out = tmp_path / "out"
    args = ["transfer", str(tmp_path / "gray.png"), str(tmp_path / "red.png"), "-o", str(out)]
    result = runner.invoke(app, [*args, "--engine", "classic", "--json"])
    assert result.exit_code == 0, result.output
    record = next(json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines())
    assert record["status"] == "ok" and GRAYSCALE_NOTE in record["note"]
    output = np.asarray(Image.open(out / "gray__red.png").convert("RGB")).astype(int)
    assert (output != gray).any(), "the makeup's lightness was transferred"
    # Paste-back blends with the photo, whose channels are equal too: no colour anywhere.
    assert (output.max(axis=2) - output.min(axis=2)).max() <= 1
