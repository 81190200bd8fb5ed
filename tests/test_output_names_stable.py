"""Output names do not change when a same-named file with another extension appears (issue 13 §4)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from shmt_cli.cli import app
from shmt_cli.inputs import collect_inputs

runner = CliRunner()


def _names(folder: Path, out: Path | None = None) -> dict[str, str]:
    found = collect_inputs([folder], exclude=[out] if out else [])
    return {f.path.name: str(f.rel) for f in found}


def test_names_without_history_follow_the_suffix_rank(tmp_path: Path) -> None:
    for name in ("p.png", "p.jpg", "q.webp"):
        (tmp_path / name).write_bytes(b"")
    assert _names(tmp_path) == {"p.jpg": "p", "p.png": "p_png", "q.webp": "q"}


def test_transfer_keeps_the_names_of_processed_files(astronaut_rgb: np.ndarray, tmp_path: Path) -> None:
    src, ref, out = tmp_path / "src", tmp_path / "ref", tmp_path / "out"
    src.mkdir()
    ref.mkdir()
    Image.fromarray(astronaut_rgb).save(src / "p.png")
    Image.fromarray(np.ascontiguousarray(astronaut_rgb[:, ::-1])).save(ref / "r.png")
    args = ["transfer", str(src), str(ref), "-o", str(out), "--engine", "classic", "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert (out / "p__r.png").is_file()
    before = (out / "p__r.png").stat().st_mtime_ns

    # A JPEG of the same name appears: by rank it would take the plain name `p` from p.png.
    Image.fromarray(astronaut_rgb).save(src / "p.jpg", quality=90)
    assert _names(src) == {"p.jpg": "p", "p.png": "p_png"}  # no history: the rank decides
    assert _names(src, out) == {"p.png": "p", "p.jpg": "p_jpg"}  # the manifest remembers p.png's name
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    summary = [json.loads(line) for line in second.output.splitlines() if line.startswith("{")][-1]
    assert (summary["done"], summary["skipped"]) == (1, 1)  # p.png's pair is not redone
    assert (out / "p__r.png").stat().st_mtime_ns == before
    assert (out / "p_jpg__r.jpg").is_file() and not (out / "p_png__r.png").exists()
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [PurePosixPath(name) for name in records[-1]["input_names"]] == [
        PurePosixPath("p_jpg"),
        PurePosixPath("r"),
    ]
