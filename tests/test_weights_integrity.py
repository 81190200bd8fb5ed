"""Imported weights: byte-reproducible imports, checks at load time, `verify` on a fresh install."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shmt_cli.cli import app
from shmt_cli.engines.shmt import weights as W

runner = CliRunner()


def _import(checkpoint: Path, folder: Path) -> None:
    result = runner.invoke(app, ["weights", "import", str(checkpoint), "--weights-dir", str(folder)])
    assert result.exit_code == 0, result.output


def _hashes(folder: Path) -> dict[str, str]:
    files = json.loads((folder / W.MANIFEST_NAME).read_text())["files"]
    return {name: row["sha256"] for name, row in files.items()}


def test_the_same_checkpoint_imports_to_the_same_bytes(tmp_path: Path, tiny_checkpoints: dict) -> None:
    # Was: safetensors wrote a multi-key metadata map in hash-map order, so two imports differed.
    folders = [tmp_path / f"w{k}" for k in range(4)]
    for folder in folders:
        _import(tiny_checkpoints["h4"], folder)
    _import(tiny_checkpoints["h4"], folders[0])  # a re-import into the same folder
    for name in ("shmt_h4.safetensors", "vq_f4.safetensors"):
        contents = {(folder / name).read_bytes() for folder in folders}
        assert len(contents) == 1, name
    assert all(_hashes(folder) == _hashes(folders[0]) for folder in folders)


def _transfer_with_shmt(folder: Path, tmp_path: Path) -> tuple[int, str]:
    photo = tmp_path / "x.png"
    photo.write_bytes(b"")  # never read: the engine is refused first
    result = runner.invoke(
        app,
        [
            "transfer",
            str(photo),
            str(photo),
            "-o",
            str(tmp_path / "out"),
            "--engine",
            "shmt",
            "--weights-dir",
            str(folder),
        ],
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_a_bit_flip_or_a_truncation_is_caught_when_loading(tmp_path: Path, tiny_checkpoints: dict) -> None:
    folder = tmp_path / "weights"
    _import(tiny_checkpoints["h4"], folder)
    W.check_weights_file(folder, "vq_f4.safetensors")  # as imported: fine

    vq = folder / "vq_f4.safetensors"
    original = vq.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01  # one bit inside a tensor: size and header unchanged
    vq.write_bytes(bytes(flipped))
    with pytest.raises(W.CheckpointError, match="sha256 differs"):
        W.check_weights_file(folder, "vq_f4.safetensors")
    code, output = _transfer_with_shmt(folder, tmp_path)
    assert code == 2 and "sha256 differs" in output and len(output.strip().splitlines()) == 1

    vq.write_bytes(original[: len(original) // 2])  # an interrupted copy
    code, output = _transfer_with_shmt(folder, tmp_path)
    assert code == 2 and "truncated" in output and len(output.strip().splitlines()) == 1

    # The flip is found by `verify` too, even when the file's time stamp was put back.
    vq.write_bytes(bytes(flipped))
    stamp = json.loads((folder / W.MANIFEST_NAME).read_text())["files"]["vq_f4.safetensors"]["stamp"]
    os.utime(vq, ns=(stamp[1], stamp[1]))
    W.check_weights_file(folder, "vq_f4.safetensors")  # the cheap load check trusts the unchanged stamp
    result = runner.invoke(app, ["weights", "verify", "--weights-dir", str(folder)])
    assert result.exit_code == 1 and "sha256 differs" in result.output


def test_verify_on_a_fresh_install_says_nothing_is_installed(tmp_path: Path) -> None:
    for folder in (tmp_path / "missing", tmp_path):
        result = runner.invoke(app, ["weights", "verify", "--weights-dir", str(folder)])
        assert result.exit_code == 1
        assert "no weights installed" in result.output and "manifest" not in result.output
