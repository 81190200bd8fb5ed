"""The `shmt` command line: parses options, calls the library, prints. No image logic here.

Exit codes: 0 all done; 1 some inputs failed; 2 usage error; 3 the run could not start or go on
(output folder locked by another run, not writable, disk full).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.markup import escape

from shmt_cli import __version__
from shmt_cli.batch import (
    EXIT_CANNOT_RUN,
    EXIT_USAGE,
    BatchRunner,
    CannotRun,
    RunOptions,
    Summary,
    make_console,
)
from shmt_cli.inputs import Shard, UsageError, read_file_list

app = typer.Typer(
    name="shmt",
    help="Batch makeup transfer: align faces, decompose them, transfer makeup, evaluate results.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")

Inputs = Annotated[
    list[str] | None, typer.Argument(help="Photos and/or folders (searched recursively).", show_default=False)
]
OutDir = Annotated[Path, typer.Option("--output", "-o", help="Output folder (created if missing).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Redo items whose outputs already exist.")]
RetryFailed = Annotated[
    bool, typer.Option("--retry-failed", help="Retry items that failed in an earlier run.")
]
JsonOut = Annotated[
    bool, typer.Option("--json", help="Stream one JSON line per item, then a JSON summary, on stdout.")
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="For cron: no progress bar or summary, errors only.")
]
ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", metavar="K/N", help="Do only part K of N (1-based), e.g. for job arrays."),
]
FilesFrom = Annotated[
    str | None,
    typer.Option("--files-from", metavar="FILE", help="Read more inputs, one per line ('-': stdin)."),
]
WaitLock = Annotated[
    float,
    typer.Option(
        "--wait-lock", metavar="SECONDS", help="Wait this long for another run on the output folder."
    ),
]
LogFile = Annotated[Path | None, typer.Option("--log", help="Append a line per item and the summary here.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"shmt {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """shmt: makeup transfer for folders of photos."""


def _error_exit(message: str, code: int) -> typer.Exit:
    make_console().print(f"[red]error[/red]: {escape(message)}")
    return typer.Exit(code)


def run_options(
    overwrite: bool,
    retry_failed: bool,
    json_out: bool,
    quiet: bool,
    shard: str | None,
    wait_lock: float,
    log: Path | None,
) -> RunOptions:
    """The shared batch options from the command line."""
    return RunOptions(
        overwrite=overwrite,
        retry_failed=retry_failed,
        json_lines=json_out,
        quiet=quiet,
        shard=Shard.parse(shard),
        wait_lock=wait_lock,
        log_file=log,
    )


def all_inputs(inputs: list[str] | None, files_from: str | None) -> list[str]:
    """Positional inputs plus those listed with --files-from."""
    listed = read_file_list(files_from) if files_from else []
    return [*(inputs or []), *listed]


def run_batch(job: Callable[[], tuple[BatchRunner, Summary]]) -> None:
    """Run a batch job, print its report and exit with its code (usage and fatal errors mapped)."""
    try:
        runner, summary = job()
    except UsageError as exc:
        raise _error_exit(str(exc), EXIT_USAGE) from None
    except CannotRun as exc:
        raise _error_exit(str(exc), EXIT_CANNOT_RUN) from None
    runner.report(summary)
    raise typer.Exit(summary.exit_code)


@app.command()
def align(
    output: OutDir,
    inputs: Inputs = None,
    size: Annotated[int, typer.Option("--size", min=64, max=2048, help="Crop size in pixels.")] = 256,
    all_faces: Annotated[
        bool, typer.Option("--all-faces", help="Write every face found, not just the best one.")
    ] = False,
    overwrite: Overwrite = False,
    retry_failed: RetryFailed = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    shard: ShardOpt = None,
    files_from: FilesFrom = None,
    wait_lock: WaitLock = 0.0,
    log: LogFile = None,
) -> None:
    """Detect, landmark and crop faces into SHMT (MT-dataset) framing, with a JSON sidecar per face."""
    from shmt_cli.pipelines.align import AlignSettings, run_align

    def job() -> tuple[BatchRunner, Summary]:
        options = run_options(overwrite, retry_failed, json_out, quiet, shard, wait_lock, log)
        return run_align(all_inputs(inputs, files_from), output, AlignSettings(size, all_faces), options)

    run_batch(job)


@app.command("manifest-merge")
def manifest_merge(
    folder: Annotated[Path, typer.Argument(help="Output folder that shards wrote into.")],
    expect: Annotated[
        int | None,
        typer.Option("--expect", help="Number of items the whole job has; missing ones are reported."),
    ] = None,
) -> None:
    """Combine the shard manifests of a folder into manifest.jsonl and report failed or missing items."""
    from shmt_cli.manifest import merge_manifests

    if not folder.is_dir():
        raise _error_exit(f"not a folder: {folder}", EXIT_USAGE)
    merged, path = merge_manifests(folder)
    statuses = [r.get("status") for r in merged.values()]
    console = make_console()
    ok, failed = statuses.count("ok"), statuses.count("failed")
    console.print(f"{escape(str(path))}: {len(merged)} items, {ok} ok, {failed} failed")
    missing = (expect - len(merged)) if expect is not None else 0
    if missing > 0:
        console.print(f"[red]missing[/red]: {missing} of {expect} items have no record")
    raise typer.Exit(1 if failed or missing > 0 else 0)


if __name__ == "__main__":  # pragma: no cover
    app()
