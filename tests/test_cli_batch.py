"""The shared batch options of the CLI (shmt_cli/cli_batch.py): declared once, the same on every command."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import typer

from shmt_cli.batch import RunOptions
from shmt_cli.cli import app
from shmt_cli.cli_batch import FILES_FROM_HELP, BatchArgs
from shmt_cli.inputs import UsageError

BATCH_COMMANDS = ("align", "decompose", "transfer")
OPTION_NAMES = {
    "overwrite": ["--overwrite"],
    "retry_failed": ["--retry-failed"],
    "json_out": ["--json"],
    "quiet": ["--quiet", "-q"],
    "shard": ["--shard"],
    "files_from": ["--files-from"],
    "wait_lock": ["--wait-lock"],
    "log": ["--log"],
}


@pytest.mark.parametrize("command", BATCH_COMMANDS)
def test_every_batch_command_takes_the_shared_options(command: str) -> None:
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}  # type: ignore[attr-defined]
    assert "batch" not in params
    for field in fields(BatchArgs):
        assert params[field.name].opts == OPTION_NAMES[field.name]
        assert params[field.name].default == field.default
    files_from_help = params["files_from"].help
    assert (files_from_help == FILES_FROM_HELP) == (command != "transfer")


def test_transfer_files_from_lists_the_sources(tmp_path: Path) -> None:
    listed = tmp_path / "list.txt"
    listed.write_text("a.jpg\n# a comment\nb.jpg\n")
    options = RunOptions()
    sources, references = BatchArgs(files_from=str(listed)).pair_inputs("refs", None, "all", options)
    assert (sources, references) == (["a.jpg", "b.jpg"], ["refs"])  # one positional: the references
    assert options.listed_inputs == {"a.jpg", "b.jpg"}
    sources, references = BatchArgs(files_from=str(listed)).pair_inputs("s.jpg", "refs", "all", RunOptions())
    assert (sources, references) == (["s.jpg", "a.jpg", "b.jpg"], ["refs"])
    assert BatchArgs().pair_inputs("s.jpg", "refs", "all", RunOptions()) == (["s.jpg"], ["refs"])

    with pytest.raises(UsageError, match="cannot both read stdin"):
        BatchArgs(files_from="-").pair_inputs("refs", None, "-", RunOptions())
    listed.write_text("# nothing\n")
    with pytest.raises(UsageError, match="lists no source photo"):
        BatchArgs(files_from=str(listed)).pair_inputs("refs", None, "all", RunOptions())


def test_run_options_refuse_bad_values_before_the_run(tmp_path: Path) -> None:
    options = BatchArgs(overwrite=True, json_out=True, shard="2/3", log=tmp_path / "run.log").run_options()
    assert options.overwrite and options.json_lines and options.log_file == tmp_path / "run.log"
    assert (options.shard.index, options.shard.count) == (2, 3)
    with pytest.raises(UsageError, match="--wait-lock"):
        BatchArgs(wait_lock=-1).run_options()
    with pytest.raises(UsageError, match="is a folder"):
        BatchArgs(log=tmp_path).run_options()
