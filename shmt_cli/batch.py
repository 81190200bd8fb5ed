"""The batch runner every subcommand uses.

Inputs (files, folders, lists) become work items with stable keys and collision-free output
names; each item is processed once, its outputs written atomically, its result appended to the
output folder's `manifest.jsonl`; a bad item is one line and the batch goes on; the summary and
exit code say what happened (0 all done, 1 some items failed, 2 usage error).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from shmt_cli import __version__
from shmt_cli.imageio import IMAGE_EXTENSIONS, InputError

MANIFEST_NAME = "manifest.jsonl"

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2

Status = Literal["ok", "skipped", "failed"]


class UsageError(Exception):
    """The command line itself is wrong (exit code 2)."""


def display_path(path: str | os.PathLike[str]) -> str:
    """A printable form of a path, also for file names that are not valid UTF-8."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


@dataclass(frozen=True)
class InputFile:
    """One input found on the command line: its path and the relative name its outputs derive from.

    `rel` keeps the folder structure below a folder argument (so `a/x.jpg` and `b/x.jpg` never
    collide) and has no suffix; it never contains `..`.
    """

    path: Path
    rel: PurePosixPath

    @property
    def key(self) -> str:
        return display_path(self.path)


def _walk_images(root: Path, extensions: Sequence[str]) -> Iterator[Path]:
    """Image files below `root`, following symlinked folders once (symlink loops are cut)."""
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
        except OSError:
            continue
        ident = (info.st_dev, info.st_ino)
        if ident in seen:
            continue
        seen.add(ident)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: os.fsencode(e.name))
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                stack.append(path)
            elif path.suffix.lower() in extensions:
                yield path


def collect_inputs(
    paths: Sequence[str | os.PathLike[str]], extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> list[InputFile]:
    """Expand files and folders (recursively) into a sorted, de-duplicated, collision-free input list.

    A named file is taken whatever its suffix (reading it reports what is wrong); inside folders only
    files with one of `extensions` are taken. A path that does not exist is a UsageError.
    """
    found: list[tuple[Path, PurePosixPath]] = []
    for given in paths:
        path = Path(given)
        if not path.exists() and not path.is_symlink():
            raise UsageError(f"input not found: {display_path(path)}")
        if path.is_dir():
            below = sorted(_walk_images(path, extensions), key=lambda p: os.fsencode(p))
            for file in below:
                rel = PurePosixPath(*file.relative_to(path).parts)
                found.append((file, rel))
        else:
            found.append((path, PurePosixPath(path.name)))
    unique: dict[str, tuple[Path, PurePosixPath]] = {}
    for path, rel in found:
        unique.setdefault(os.path.abspath(path), (path, rel))
    return _disambiguate(list(unique.values()))


def _disambiguate(found: list[tuple[Path, PurePosixPath]]) -> list[InputFile]:
    """Drop suffixes from relative names; names that then collide keep their suffix, then get ~N."""
    stems = [rel.with_suffix("") if rel.suffix else rel for _, rel in found]
    counts: dict[PurePosixPath, int] = {}
    suffixes: dict[tuple[PurePosixPath, str], int] = {}
    for stem, (_, rel) in zip(stems, found, strict=True):
        counts[stem] = counts.get(stem, 0) + 1
        suffixes[stem, rel.suffix.lower()] = suffixes.get((stem, rel.suffix.lower()), 0) + 1
    taken: set[PurePosixPath] = set()
    result = []
    for (path, rel), stem in zip(found, stems, strict=True):
        name = stem
        # `x.jpg` beside `x.png` keeps the suffix; two `x.jpg` from different folders get ~N instead.
        if counts[stem] > 1 and rel.suffix and suffixes[stem, rel.suffix.lower()] == 1:
            name = stem.with_name(f"{stem.name}_{rel.suffix.lstrip('.').lower()}")
        base, n = name, 2
        while name in taken:
            name = base.with_name(f"{base.name}~{n}")
            n += 1
        taken.add(name)
        result.append(InputFile(path=path, rel=name))
    return result


def params_hash(params: dict[str, Any]) -> str:
    """A short stable hash of the parameters that change results."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class WorkItem:
    """One unit of work: a stable key, its input files, and the output name stem (relative)."""

    key: str
    inputs: tuple[Path, ...]
    out_stem: PurePosixPath
    payload: Any = None


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


@dataclass
class Summary:
    """Counts and failures of a batch run."""

    command: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURES if self.failed else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "summary",
            "command": self.command,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "failures": [{"input": key, "reason": reason} for key, reason in self.failures],
            "exit_code": self.exit_code,
        }


class Manifest:
    """The append-only JSON-lines record of an output folder (`manifest.jsonl`).

    Each line is one item result; the last line for a key wins. A line cut short by a crash is
    ignored on reading, and the next append starts on a fresh line.
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / MANIFEST_NAME

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        with open(self.path, "rb") as handle:
            for raw in handle:
                try:
                    record = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(record, dict) and "key" in record:
                    records.append(record)
        return records

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last record of every key."""
        return {record["key"]: record for record in self.read()}

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:
                with open(self.path, "rb") as handle:
                    handle.seek(size - 1)
                    if handle.read(1) != b"\n":
                        line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


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


ProcessFn = Callable[[WorkItem], "list[Path] | tuple[list[Path], dict[str, Any]]"]


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
        self.manifest = Manifest(out_dir)

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
        process: ProcessFn,
        done_outputs: Callable[[WorkItem], Iterable[Path]] | None = None,
    ) -> Summary:
        """Process every item; `done_outputs(item)` names files whose presence means the item is done
        (used when the manifest has no record, e.g. outputs from an older run)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        previous = self.manifest.latest()
        self.check_parameters(previous)
        summary = Summary(command=self.command)
        started = time.perf_counter()
        show_progress = not self.options.quiet and self.console.is_terminal and len(items) > 1
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
        with progress:
            task = progress.add_task(self.command, total=len(items), current="")
            for item in items:
                progress.update(task, current=escape(item.key[-50:]))
                result = self._run_one(item, process, previous.get(item.key), done_outputs)
                self._record(result, summary)
                progress.advance(task)
        summary.seconds = time.perf_counter() - started
        return summary

    def _skip_reason(
        self,
        item: WorkItem,
        record: dict[str, Any] | None,
        done_outputs: Callable[[WorkItem], Iterable[Path]] | None,
    ) -> str | None:
        if self.options.overwrite:
            return None
        if record is not None:
            outputs_exist = all((self.out_dir / out).exists() for out in record.get("outputs", []))
            if record.get("status") == "ok" and outputs_exist:
                return "already done"
            if record.get("status") == "failed" and not self.options.retry_failed:
                return f"failed before ({record.get('reason', '')}); use --retry-failed to try again"
        if done_outputs is not None:
            paths = list(done_outputs(item))
            if paths and all(p.exists() for p in paths):
                return "output exists"
        return None

    def _run_one(
        self,
        item: WorkItem,
        process: ProcessFn,
        record: dict[str, Any] | None,
        done_outputs: Callable[[WorkItem], Iterable[Path]] | None,
    ) -> ItemResult:
        inputs = [display_path(p) for p in item.inputs]
        reason = self._skip_reason(item, record, done_outputs)
        if reason is not None:
            outputs = list(record.get("outputs", [])) if record else []
            return ItemResult(key=item.key, status="skipped", inputs=inputs, outputs=outputs, reason=reason)
        start = time.perf_counter()
        try:
            produced = process(item)
            extra: dict[str, Any] = {}
            if isinstance(produced, tuple):
                produced, extra = produced
            outputs = [self._relative(p) for p in produced]
            return ItemResult(
                key=item.key,
                status="ok",
                inputs=inputs,
                outputs=outputs,
                seconds=time.perf_counter() - start,
                extra=extra,
            )
        except InputError as exc:
            message = str(exc)
        except MemoryError:
            message = "out of memory"
        except OSError as exc:
            message = f"{exc.strerror or type(exc).__name__}: {display_path(exc.filename or '')}".rstrip(": ")
        except Exception as exc:  # one bad item must never stop the batch
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
            message = f"internal error {type(exc).__name__}: {exc}{where}"
        return ItemResult(
            key=item.key,
            status="failed",
            inputs=inputs,
            reason=message.splitlines()[0] if message else "failed",
            seconds=time.perf_counter() - start,
        )

    def _relative(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.out_dir).as_posix()
        except ValueError:
            return display_path(path)

    def _record(self, result: ItemResult, summary: Summary) -> None:
        record = {
            "key": result.key,
            "command": self.command,
            "status": result.status,
            "inputs": result.inputs,
            "outputs": result.outputs,
            "reason": result.reason,
            "seconds": round(result.seconds, 4),
            "params": self.params,
            "params_hash": self.params_hash,
            "version": __version__,
            "host": socket.gethostname(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **result.extra,
        }
        if result.status != "skipped":
            self.manifest.append(record)
        if result.status == "ok":
            summary.done += 1
        elif result.status == "skipped":
            summary.skipped += 1
        else:
            summary.failed += 1
            summary.failures.append((result.key, result.reason))
            self.console.print(f"[red]error[/red] {escape(result.key)}: {escape(result.reason)}")
        if self.options.json_lines:
            fields = {k: v for k, v in asdict(result).items() if k != "extra"}
            line = {"type": "item", **fields, **result.extra}
            line["seconds"] = round(result.seconds, 4)
            sys.stdout.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
            sys.stdout.flush()

    def report(self, summary: Summary) -> None:
        """Print the end-of-run summary (human form on stderr, JSON on stdout with --json)."""
        if self.options.json_lines:
            sys.stdout.write(json.dumps(summary.to_json(), ensure_ascii=False) + "\n")
            sys.stdout.flush()
        if self.options.quiet and not summary.failed:
            return
        colour = "red" if summary.failed else "green"
        self.console.print(
            f"[{colour}]{self.command}[/{colour}]: {summary.done} done, {summary.skipped} skipped, "
            f"{summary.failed} failed in {summary.seconds:.1f} s → {escape(display_path(self.out_dir))}"
        )
        for key, reason in summary.failures:
            self.console.print(f"  [red]failed[/red] {escape(key)}: {escape(reason)}")
