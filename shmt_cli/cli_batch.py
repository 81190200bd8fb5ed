"""What the batch commands of the CLI share: their options, how a run starts and ends, exit codes.

`batch_options` adds the eight batch options (--overwrite, --retry-failed, --json, --quiet, --shard,
--files-from, --wait-lock, --log) to a typer command and hands them to it as one `BatchArgs`;
`run_batch` runs a job and maps its outcome and errors to the exit codes of `shmt_cli.cli`.
"""

from __future__ import annotations

import functools
import inspect
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

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

F = TypeVar("F", bound=Callable[..., Any])


def _output_folder(text: str) -> Path:
    # Path("") is Path("."): an empty -o (an unset shell variable) would write into the current folder.
    if not text.strip():
        raise typer.BadParameter("the output folder is empty (an unset variable?); give a folder")
    return Path(text)


Inputs = Annotated[
    list[str] | None, typer.Argument(help="Photos and/or folders (searched recursively).", show_default=False)
]
OutDir = Annotated[
    Path, typer.Option("--output", "-o", parser=_output_folder, help="Output folder (created if missing).")
]
JsonOut = Annotated[
    bool, typer.Option("--json", help="Stream one JSON line per item, then a JSON summary, on stdout.")
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="For cron: no progress bar or summary, errors only.")
]
FILES_FROM_HELP = "Read more inputs, one per line ('-': stdin)."


@dataclass(frozen=True)
class BatchArgs:
    """The shared batch options as given on the command line (see `batch_options`)."""

    overwrite: bool = False
    retry_failed: bool = False
    json_out: bool = False
    quiet: bool = False
    shard: str | None = None
    files_from: str | None = None
    wait_lock: float = 0.0
    log: Path | None = None

    def run_options(self) -> RunOptions:
        """The batch runner's options; UsageError for a negative --wait-lock or an unwritable --log."""
        if self.wait_lock < 0:
            raise UsageError(f"--wait-lock takes seconds >= 0 (0: do not wait), got {self.wait_lock:g}")
        if self.log is not None:
            check_log_file(self.log)
        return RunOptions(
            overwrite=self.overwrite,
            retry_failed=self.retry_failed,
            json_lines=self.json_out,
            quiet=self.quiet,
            shard=Shard.parse(self.shard),
            wait_lock=self.wait_lock,
            log_file=self.log,
        )

    def inputs(self, positional: Iterable[str], options: RunOptions) -> list[str]:
        """`positional` plus the inputs listed with --files-from (recorded in `options`: a missing listed
        file fails as one item, while a missing positional path is a usage error)."""
        listed = read_file_list(self.files_from) if self.files_from else []
        options.listed_inputs = frozenset(listed)
        return [*positional, *listed]

    def pair_inputs(
        self, source: str | None, reference: str | None, pairs: str, options: RunOptions
    ) -> tuple[list[str], list[str]]:
        """`shmt transfer`'s (sources, references). With --files-from the list holds sources, and a single
        positional argument is the references (`--files-from LIST REFS`)."""
        sources = [source] if source is not None else []
        references = [reference] if reference is not None else []
        if self.files_from is None:
            return sources, references
        if self.files_from == "-" and pairs == "-":
            raise UsageError("--files-from - and --pairs - cannot both read stdin")
        if reference is None:
            references, sources = sources, []
        sources = self.inputs(sources, options)
        if not sources:
            raise UsageError(f"--files-from {self.files_from} lists no source photo")
        return sources, references


def _batch_parameters(files_from_help: str) -> list[inspect.Parameter]:
    """The typer parameters of `BatchArgs`, in its field order."""
    declared: dict[str, Any] = {
        "overwrite": Annotated[
            bool, typer.Option("--overwrite", help="Redo items whose outputs already exist.")
        ],
        "retry_failed": Annotated[
            bool, typer.Option("--retry-failed", help="Retry items that failed in an earlier run.")
        ],
        "json_out": JsonOut,
        "quiet": Quiet,
        "shard": Annotated[
            str | None,
            typer.Option(
                "--shard", metavar="K/N", help="Do only part K of N (1-based), e.g. for job arrays."
            ),
        ],
        "files_from": Annotated[
            str | None, typer.Option("--files-from", metavar="FILE", help=files_from_help)
        ],
        "wait_lock": Annotated[
            float,
            typer.Option(
                "--wait-lock", metavar="SECONDS", help="Wait this long for another run on the output folder."
            ),
        ],
        "log": Annotated[
            Path | None, typer.Option("--log", help="Append a line per item and the summary here.")
        ],
    }
    return [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=declared[f.name]
        )
        for f in fields(BatchArgs)
    ]


def batch_options(files_from_help: str = FILES_FROM_HELP) -> Callable[[F], F]:
    """Decorate a command taking `batch: BatchArgs`: typer sees the eight batch options instead."""

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "batch"]
        names = [f.name for f in fields(BatchArgs)]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            batch = BatchArgs(**{name: kwargs.pop(name) for name in names})
            return command(*args, batch=batch, **kwargs)

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=own + _batch_parameters(files_from_help)
        )
        return wrapper  # type: ignore[return-value]

    return decorate


def check_log_file(log: Path) -> None:
    """UsageError unless --log can be appended to (checked before the run, not mid-batch)."""
    if log.is_dir():
        raise UsageError(f"--log {log}: is a folder, give a file name")
    try:
        with open(log, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise UsageError(f"--log {log}: cannot write ({exc.strerror or exc})") from None


# ---------------------------------------------------------------------------------------------
# Ending a run


class Stopped(BaseException):
    """SIGTERM arrived (BaseException, like KeyboardInterrupt: no `except Exception` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so the lock is released and half-written temp files are
    removed on the way out."""
    raise Stopped(signum)


def error_exit(message: str, code: int) -> typer.Exit:
    """Print `error: message` and return the typer.Exit to raise with `code`."""
    make_console().print(f"[red]error[/red]: {escape(message)}")
    return typer.Exit(code)


def print_failures(console: Console, failures: Iterable[tuple[str, str]]) -> None:
    """One `failed KEY: reason` line per failure."""
    for key, reason in failures:
        console.print(f"[red]failed[/red] {escape(key)}: {escape(reason)}")


def run_batch(job: Callable[[], tuple[BatchRunner, Summary]]) -> None:
    """Run a batch job, print its report and exit with its code (usage and fatal errors mapped)."""
    try:
        runner, summary = job()
    except KeyboardInterrupt:
        raise error_exit("interrupted (Ctrl-C); finished items are kept, run again to resume", 130) from None
    except Stopped as stop:
        name = signal.Signals(stop.signum).name
        raise error_exit(
            f"stopped by {name}; finished items are kept, run again to resume", 128 + stop.signum
        ) from None
    except UsageError as exc:
        raise error_exit(str(exc), EXIT_USAGE) from None
    except CannotRun as exc:
        raise error_exit(str(exc), EXIT_CANNOT_RUN) from None
    runner.report(summary)
    raise typer.Exit(summary.exit_code)
