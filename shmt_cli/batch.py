"""The batch runner every subcommand uses.

(About 500 lines, over the project's ~450: `BatchRunner` is one state machine — lock, manifest,
skip/resume, progress, log, summary — and its small record types are read with it; split apart they
would be two halves of one idea.)

Inputs (files, folders, lists) become work items with stable keys and collision-free output
names; each item is processed once, its outputs written atomically, its result appended to the
output folder's `manifest.jsonl`; a bad item is one line and the batch goes on; the summary and
exit code say what happened (0 all done, 1 some items failed, 2 usage error).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from shmt_cli import __version__
from shmt_cli.atomic import remove_stale_temp_files
from shmt_cli.imageio import InputError
from shmt_cli.inputs import Shard, UsageError, display_path
from shmt_cli.lock import LockBusy, OutputLock, OutputNotWritable
from shmt_cli.manifest import INPUT_NAMES, Manifest

__all__ = [
    "EXIT_CANNOT_RUN",
    "EXIT_FAILURES",
    "EXIT_OK",
    "EXIT_USAGE",
    "BatchRunner",
    "CannotRun",
    "ItemResult",
    "RunOptions",
    "Summary",
    "WorkItem",
    "failure_reason",
    "make_console",
]

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_CANNOT_RUN = 3  # output folder locked by another run, or not writable (disk full, read-only)
FAILED_BEFORE = "failed before"

Status = Literal["ok", "skipped", "failed"]


def params_hash(params: dict[str, Any]) -> str:
    """A short stable hash of the parameters that change results."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class WorkItem:
    """One unit of work: a stable key, its input files, and the output name stem (relative).

    input_names: the name each input's outputs derive from (`InputFile.rel`), kept in the manifest so
    a later run gives the same file the same name (`manifest.earlier_names`).
    """

    key: str
    inputs: tuple[Path, ...]
    out_stem: PurePosixPath
    payload: Any = None
    input_names: tuple[PurePosixPath, ...] = ()

    def names_record(self) -> dict[str, Any]:
        """The manifest field of `input_names` ({} when there are none)."""
        return {INPUT_NAMES: [str(name) for name in self.input_names]} if self.input_names else {}


@dataclass
class ItemResult:
    """What happened to one work item; one line of the manifest."""

    key: str
    status: Status
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    input_stamps: list[list[int] | None] | None = None  # manifest only: what the inputs were


@dataclass
class Summary:
    """Counts and failures of a batch run.

    `failed_before` counts skipped items whose last attempt failed (not retried without
    --retry-failed): they still make the exit code 1, so a cron job keeps reporting a bad input.
    """

    command: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failed_before: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURES if self.failed or self.failed_before else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "summary",
            "command": self.command,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "failed_before": self.failed_before,
            "seconds": round(self.seconds, 3),
            "failures": [{"input": key, "reason": reason} for key, reason in self.failures],
            "exit_code": self.exit_code,
        }


def input_stamps(paths: Sequence[Path]) -> list[list[int] | None]:
    """[size, mtime in ns] of each input (None when it cannot be read): tells a changed input apart."""
    stamps: list[list[int] | None] = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append([info.st_size, info.st_mtime_ns])
    return stamps


def make_console() -> Console:
    """The stderr console for progress and messages (stdout stays clean for --json)."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class RunOptions:
    """Options every batch subcommand shares."""

    overwrite: bool = False
    retry_failed: bool = False
    json_lines: bool = False
    quiet: bool = False
    shard: Shard = field(default_factory=Shard)
    wait_lock: float = 0.0
    log_file: Path | None = None
    #: Inputs read from a list (--files-from): a missing one fails as an item instead of stopping the run.
    listed_inputs: frozenset[str] = frozenset()


class CannotRun(Exception):
    """The run cannot start or go on: output folder locked, not writable, or disk full."""


Produced = "list[Path] | tuple[list[Path], dict[str, Any]]"
Outcome = Any  # Produced, or the exception that failed the item
ProcessFn = Callable[[WorkItem], Any]
BatchFn = Callable[[list[WorkItem]], Sequence[Outcome]]
#: Takes every pending item at once and yields (index into that list, outcome, seconds) in any order,
#: as results come back: how an executor that spreads the items over other processes reports them.
StreamFn = Callable[[list[WorkItem]], Iterable[tuple[int, Outcome, float]]]


def _one_by_one(process: ProcessFn) -> BatchFn:
    """A batch function that runs `process` on each item, catching each item's failure."""

    def run_each(items: list[WorkItem]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for item in items:
            try:
                outcomes.append(process(item))
            except CannotRun:
                raise
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    return run_each


class BatchRunner:
    """Runs work items through a process function with skip/resume, manifest, progress and summary."""

    def __init__(
        self,
        command: str,
        out_dir: Path,
        params: dict[str, Any],
        options: RunOptions,
        console: Console | None = None,
    ) -> None:
        self.command = command
        self.out_dir = out_dir
        self.params = params
        self.params_hash = params_hash(params)
        self.options = options
        self.console = console or make_console()
        shard = options.shard
        self.shard_label = shard.label if shard.count > 1 else None
        self.manifest = Manifest(out_dir, self.shard_label)

    def check_parameters(self, previous: dict[str, dict[str, Any]]) -> None:
        """Refuse to mix results made with other parameters into one folder unless --overwrite."""
        if self.options.overwrite:
            return
        for record in previous.values():
            other = record.get("params_hash")
            if record.get("command") == self.command and other not in (None, self.params_hash):
                raise UsageError(
                    f"{display_path(self.out_dir)} holds results of '{self.command}' made with other "
                    f"parameters ({record.get('params')}); use --overwrite to replace them "
                    "or another output folder"
                )

    def run(
        self,
        items: Sequence[WorkItem],
        process: ProcessFn | None = None,
        done_outputs: Callable[[WorkItem], Iterable[Path]] | None = None,
        *,
        process_batch: BatchFn | None = None,
        batch_size: int = 1,
        process_stream: StreamFn | None = None,
    ) -> Summary:
        """Process every item of this shard, holding the output folder's lock.

        Either `process(item)` per item, or `process_batch(items)` on up to `batch_size` items at a
        time, returning one outcome per item (its output paths, optionally with extra manifest fields,
        or the exception that failed it). `done_outputs(item)` names files whose presence means the
        item is done when the manifest has no record of it (e.g. outputs of an older run). Or
        `process_stream(pending)`, given every item still to do at once (see StreamFn). Raises
        CannotRun when the folder is locked or cannot be written.
        """
        if process_stream is not None:
            process_batch = None
        elif process_batch is None:
            if process is None:
                raise TypeError("run needs process, process_batch or process_stream")
            process_batch = _one_by_one(process)
            batch_size = 1
        lock_name = ".shmt.lock" if self.shard_label is None else f".shmt.shard-{self.shard_label}.lock"
        lock = OutputLock(self.out_dir, lock_name, self.options.wait_lock, self.command)
        try:
            lock.acquire()
        except (LockBusy, OutputNotWritable) as exc:
            raise CannotRun(str(exc)) from None
        try:
            return self._run_locked(items, process_batch, max(1, batch_size), done_outputs, process_stream)
        finally:
            lock.release()

    def _run_locked(
        self,
        items: Sequence[WorkItem],
        process_batch: BatchFn | None,
        batch_size: int,
        done_outputs: Callable[[WorkItem], Iterable[Path]] | None,
        process_stream: StreamFn | None = None,
    ) -> Summary:
        shard = self.options.shard
        mine = [item for item in items if shard.takes(str(item.out_stem))]
        # Runs killed mid-write leave temp files; only those of dead writers go (shards run alongside).
        for stale in remove_stale_temp_files(self.out_dir):
            self._log(f"removed stale temp file {display_path(stale)}")
        previous = self.manifest.latest()
        self.check_parameters(previous)
        summary = Summary(command=self.command)
        started = time.perf_counter()
        show_progress = not self.options.quiet and self.console.is_terminal and len(mine) > 1
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[current]}"),
            console=self.console,
            transient=True,
            disable=not show_progress,
        )
        pending: list[WorkItem] = []

        def flush() -> None:
            if not pending or process_batch is None:
                return
            progress.update(task, current=escape(pending[-1].key[-50:]))
            batch_start = time.perf_counter()
            try:
                outcomes: list[Outcome] = list(process_batch(list(pending)))
                if len(outcomes) != len(pending):
                    raise RuntimeError(f"{len(outcomes)} outcomes for {len(pending)} items")
            except CannotRun:
                raise
            except Exception as exc:  # a failed batch fails its items, not the run
                outcomes = [exc] * len(pending)
            seconds = (time.perf_counter() - batch_start) / len(pending)
            for item, outcome in zip(pending, outcomes, strict=True):
                self._record(self._outcome_result(item, outcome, seconds), summary)
                progress.advance(task)
            pending.clear()

        with progress:
            task = progress.add_task(self.command, total=len(mine), current="")
            for item in mine:
                reason = self._skip_reason(item, previous.get(item.key), done_outputs)
                if reason is not None:
                    record = previous.get(item.key) or {}
                    outputs = list(record.get("outputs", []))
                    inputs = [display_path(p) for p in item.inputs]
                    skipped = ItemResult(
                        item.key,
                        "skipped",
                        inputs=inputs,
                        outputs=outputs,
                        reason=reason,
                        extra=item.names_record(),
                    )
                    if not record and done_outputs is not None:
                        # Outputs of a run killed before it recorded them: record them now, or the
                        # manifest would never account for this item.
                        skipped.outputs = [self._relative(p) for p in done_outputs(item)]
                        skipped.input_stamps = input_stamps(item.inputs)
                        self._append(skipped, "ok")
                    self._record(skipped, summary)
                    progress.advance(task)
                    continue
                pending.append(item)
                if process_stream is None and len(pending) >= batch_size:
                    flush()
            if process_stream is not None:
                self._record_stream(pending, process_stream, summary, lambda: progress.advance(task))
            flush()
        summary.seconds = time.perf_counter() - started
        self._log(f"summary done={summary.done} skipped={summary.skipped} failed={summary.failed}")
        return summary

    def _record_stream(
        self, pending: list[WorkItem], stream: StreamFn, summary: Summary, advance: Callable[[], None]
    ) -> None:
        """Record the outcomes `stream` yields for `pending`; an item it never reports fails."""
        reported: set[int] = set()
        for index, outcome, seconds in stream(list(pending)):
            if index in reported or not 0 <= index < len(pending):
                continue  # a retried task may report an item twice: the first report stands
            reported.add(index)
            self._record(self._outcome_result(pending[index], outcome, seconds), summary)
            advance()
        for index, item in enumerate(pending):
            if index not in reported:
                missing = RuntimeError("the executor returned no result for this item")
                self._record(self._outcome_result(item, missing, 0.0), summary)
                advance()
        pending.clear()

    def _skip_reason(
        self,
        item: WorkItem,
        record: dict[str, Any] | None,
        done_outputs: Callable[[WorkItem], Iterable[Path]] | None,
    ) -> str | None:
        if self.options.overwrite:
            return None
        stamps = record.get("input_stamps") if record is not None else None
        if stamps is not None and stamps != input_stamps(item.inputs):
            return None  # the input changed since (an upload that finished, an edited photo): redo it
        wanted = list(done_outputs(item)) if done_outputs is not None else []
        if record is not None:
            outputs_exist = all((self.out_dir / out).exists() for out in record.get("outputs", []))
            # Outputs asked for now but not made then (e.g. --crop added on a re-run) mean: not done.
            if record.get("status") == "ok" and outputs_exist and all(p.exists() for p in wanted):
                return "already done"
            if record.get("status") == "failed" and not self.options.retry_failed:
                return f"{FAILED_BEFORE} ({record.get('reason', '')}); use --retry-failed to try again"
        if record is None and wanted and all(p.exists() for p in wanted):
            return "output exists"
        return None

    def _outcome_result(self, item: WorkItem, outcome: Outcome, seconds: float) -> ItemResult:
        result = self._outcome(item, outcome, seconds)
        result.input_stamps = input_stamps(item.inputs)
        result.extra = {**item.names_record(), **result.extra}
        return result

    def _outcome(self, item: WorkItem, outcome: Outcome, seconds: float) -> ItemResult:
        inputs = [display_path(p) for p in item.inputs]
        if not isinstance(outcome, BaseException):
            produced, extra = outcome if isinstance(outcome, tuple) else (outcome, {})
            outputs = [self._relative(p) for p in produced]
            return ItemResult(item.key, "ok", inputs=inputs, outputs=outputs, seconds=seconds, extra=extra)
        reason = failure_reason(outcome, self.out_dir)
        return ItemResult(item.key, "failed", inputs=inputs, reason=reason, seconds=seconds)

    def _relative(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.out_dir).as_posix()
        except ValueError:
            return display_path(path)

    def _append(self, result: ItemResult, status: Status) -> None:
        """Append `result` to the manifest with `status` (CannotRun when the manifest cannot be written)."""
        record = {
            "key": result.key,
            "command": self.command,
            "status": status,
            "inputs": result.inputs,
            "outputs": result.outputs,
            "reason": result.reason,
            "seconds": round(result.seconds, 4),
            "params": self.params,
            "params_hash": self.params_hash,
            "version": __version__,
            "host": socket.gethostname(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **({"input_stamps": result.input_stamps} if result.input_stamps is not None else {}),
            **result.extra,
        }
        try:
            self.manifest.append(record)
        except OSError as exc:
            raise CannotRun(
                f"cannot write the manifest in {display_path(self.out_dir)}: {exc.strerror}"
            ) from None

    def _record(self, result: ItemResult, summary: Summary) -> None:
        if result.status != "skipped":
            self._append(result, result.status)
        if result.status == "ok":
            summary.done += 1
        elif result.status == "skipped":
            summary.skipped += 1
            if result.reason.startswith(FAILED_BEFORE):
                summary.failed_before += 1
        else:
            summary.failed += 1
            summary.failures.append((result.key, result.reason))
            self.console.print(f"[red]error[/red] {escape(result.key)}: {escape(result.reason)}")
        note = result.extra.get("note")
        if note:
            # E.g. "source: 4 faces found, 1 processed": the item is done, but not all that was there.
            if not self.options.quiet:
                self.console.print(f"[yellow]note[/yellow] {escape(result.key)}: {escape(str(note))}")
            self._log(f"note {result.key} {note}")
        self._log(f"{result.status} {result.key} {result.reason}".rstrip())
        if self.options.json_lines:
            fields = {k: v for k, v in asdict(result).items() if k not in ("extra", "input_stamps")}
            line = {"type": "item", **fields, **result.extra}
            line["seconds"] = round(result.seconds, 4)
            # ASCII escapes: a non-UTF-8 file name must not break a strict UTF-8 stdout.
            sys.stdout.write(json.dumps(line, ensure_ascii=True, default=str) + "\n")
            sys.stdout.flush()

    def _log(self, message: str) -> None:
        if self.options.log_file is None:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with open(self.options.log_file, "a", encoding="utf-8", errors="backslashreplace") as handle:
            handle.write(f"{stamp} {self.command} {message}\n")

    def report(self, summary: Summary) -> None:
        """Print the end-of-run summary (human form on stderr, JSON on stdout with --json)."""
        if self.options.json_lines:
            sys.stdout.write(json.dumps(summary.to_json(), ensure_ascii=True) + "\n")
            sys.stdout.flush()
        # --quiet: each failure was printed once as it happened; only items that failed in an earlier
        # run (not printed now) get the summary line that explains the exit code.
        if self.options.quiet and not summary.failed_before:
            return
        colour = "red" if summary.exit_code else "green"
        before = f" ({summary.failed_before} failed before; --retry-failed)" if summary.failed_before else ""
        self.console.print(
            f"[{colour}]{self.command}[/{colour}]: {summary.done} done, {summary.skipped} skipped{before}, "
            f"{summary.failed} failed in {summary.seconds:.1f} s → {escape(display_path(self.out_dir))}"
        )
        if self.options.quiet:
            return
        for key, reason in summary.failures:
            self.console.print(f"  [red]failed[/red] {escape(key)}: {escape(reason)}")


_FATAL_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT}


def _is_below(filename: str | bytes | None, folder: Path) -> bool:
    if not filename:
        return True
    try:
        Path(os.fsdecode(filename)).resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def failure_reason(exc: BaseException, out_dir: Path) -> str:
    """The one-line manifest reason for an item that failed with `exc`.

    Raises CannotRun when `exc` means the run cannot go on: the output folder itself cannot be written
    (disk full, read-only), or `exc` already is CannotRun (e.g. out of memory at one pair per batch).
    """
    if isinstance(exc, CannotRun):
        raise exc
    if isinstance(exc, InputError):
        message = str(exc)
    elif isinstance(exc, MemoryError):
        message = "out of memory"
    elif isinstance(exc, OSError):
        if exc.errno in _FATAL_ERRNOS and _is_below(exc.filename, out_dir):
            raise CannotRun(f"cannot write to {display_path(out_dir)}: {exc.strerror}") from None
        where = f": {display_path(exc.filename)}" if exc.filename else ""
        message = f"{exc.strerror or type(exc).__name__}{where}"
    else:
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
        message = f"internal error {type(exc).__name__}: {exc}{where}"
    return message.splitlines()[0] if message else "failed"
