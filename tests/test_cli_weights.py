"""`shmt weights import | list | verify` through the command line."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from typer.testing import CliRunner

from shmt_cli.cli import app

runner = CliRunner()


class _Exploit:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_import_list_verify(tmp_path: Path, tiny_checkpoints: dict) -> None:
    folder = tmp_path / "weights"
    result = runner.invoke(
        app, ["weights", "import", str(tiny_checkpoints["h4"]), "--weights-dir", str(folder)]
    )
    assert result.exit_code == 0, result.output
    assert "SHMT-h4 (tiny)" in result.output
    result = runner.invoke(app, ["weights", "list", "--weights-dir", str(folder), "--json"])
    entries = json.loads(result.stdout)
    assert sorted(e["file"] for e in entries) == ["shmt_h4.safetensors", "vq_f4.safetensors"]
    assert runner.invoke(app, ["weights", "verify", "--weights-dir", str(folder)]).exit_code == 0

    damaged = folder / "vq_f4.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    result = runner.invoke(app, ["weights", "verify", "--weights-dir", str(folder)])
    assert result.exit_code == 1 and "vq_f4.safetensors" in result.output


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": _Exploit(marker)}))
    result = runner.invoke(app, ["weights", "import", str(evil), "--weights-dir", str(tmp_path / "w")])
    assert result.exit_code == 1
    assert "evil.ckpt" in result.output
    assert not marker.exists()
    assert not (tmp_path / "w" / "manifest.json").exists()
