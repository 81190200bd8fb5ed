"""Running the `shmt` CLI in-process in tests, and reading what a run wrote."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from shmt_cli.cli import app

runner = CliRunner()


def run_shmt(*args: str | Path, stdin: str | None = None) -> tuple[int, str]:
    """(exit code, output) of `shmt ARGS`; fails the test on an exception other than the exit, or on a
    traceback in the output."""
    result = runner.invoke(app, [str(arg) for arg in args], input=stdin)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def manifest_records(out: Path) -> dict[str, dict]:
    """The item records of `out/manifest.jsonl` by key (the run header lines have none)."""
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return {r["key"]: r for r in map(json.loads, lines) if "key" in r}
