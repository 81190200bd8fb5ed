"""The shared batch runner: input discovery, output naming, manifest, skip/resume, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

import pytest

from shmt_cli.batch import EXIT_FAILURES, BatchRunner, RunOptions, WorkItem
from shmt_cli.imageio import InputError
from shmt_cli.inputs import UsageError, collect_inputs
from shmt_cli.manifest import Manifest


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_collect_inputs_recursive_sorted_and_collision_free(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _touch(root / "b" / "x.jpg")
    _touch(root / "a" / "x.jpg")
    _touch(root / "a" / "y.PNG")
    _touch(root / "a" / "y.jpg")
    _touch(root / "notes.txt")
    (root / "folder.png").mkdir()
    os.symlink(root, root / "a" / "loop")
    single = _touch(tmp_path / "x.jpg")
    found = collect_inputs([str(root), str(single)])
    rels = [str(f.rel) for f in found]
    # `y.jpg` keeps the plain name beside `y.PNG` (a fixed suffix rank, whatever else is there).
    assert rels == ["a/x", "a/y_png", "a/y", "b/x", "x"]
    assert len({f.rel for f in found}) == len(found)
    assert all(".." not in f.rel.parts for f in found)


def test_collect_inputs_same_name_from_two_places(tmp_path: Path) -> None:
    one = _touch(tmp_path / "one" / "face.jpg")
    two = _touch(tmp_path / "two" / "face.jpg")
    found = collect_inputs([str(one), str(two)])
    assert [str(f.rel) for f in found] == ["face", "face~2"]


def test_missing_input_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        collect_inputs([str(tmp_path / "nope.jpg")])


def test_manifest_survives_a_cut_line(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path)
    manifest.append({"key": "a", "status": "ok"})
    with open(manifest.path, "ab") as handle:
        handle.write(b'{"key": "b", "sta')  # a crash in the middle of a write
    manifest.append({"key": "c", "status": "ok"})
    assert [r["key"] for r in manifest.read()] == ["a", "c"]
    for line in manifest.path.read_bytes().splitlines()[2:]:
        json.loads(line)


def _items(names: list[str]) -> list[WorkItem]:
    return [WorkItem(key=n, inputs=(Path(n),), out_stem=PurePosixPath(n)) for n in names]


def test_runner_skips_done_reports_failures_and_resumes(tmp_path: Path) -> None:
    calls: list[str] = []

    def process(item: WorkItem) -> list[Path]:
        calls.append(item.key)
        if item.key == "bad":
            raise InputError("not a recognised image format")
        if item.key == "boom":
            raise RuntimeError("unexpected")
        out = tmp_path / f"{item.key}.out"
        out.write_text("done")
        return [out]

    runner = BatchRunner("test", tmp_path, {"p": 1}, RunOptions())
    summary = runner.run(_items(["a", "bad", "boom", "c"]), process)
    assert (summary.done, summary.skipped, summary.failed) == (2, 0, 2)
    assert summary.exit_code == EXIT_FAILURES
    reasons = dict(summary.failures)
    assert reasons["bad"] == "not a recognised image format"
    assert reasons["boom"].startswith("internal error RuntimeError: unexpected")

    calls.clear()
    summary = BatchRunner("test", tmp_path, {"p": 1}, RunOptions()).run(
        _items(["a", "bad", "boom", "c"]), process
    )
    assert calls == [] and summary.skipped == 4
    # Failures not retried still count: a cron job keeps reporting its bad inputs.
    assert summary.failed_before == 2 and summary.exit_code == EXIT_FAILURES

    summary = BatchRunner("test", tmp_path, {"p": 1}, RunOptions(retry_failed=True)).run(
        _items(["a", "bad", "boom", "c"]), process
    )
    assert calls == ["bad", "boom"] and summary.failed == 2

    (tmp_path / "a.out").unlink()  # a lost output is redone
    calls.clear()
    BatchRunner("test", tmp_path, {"p": 1}, RunOptions()).run(_items(["a", "c"]), process)
    assert calls == ["a"]


def test_runner_refuses_other_parameters_without_overwrite(tmp_path: Path) -> None:
    def process(item: WorkItem) -> list[Path]:
        return []

    BatchRunner("test", tmp_path, {"size": 256}, RunOptions()).run(_items(["a"]), process)
    with pytest.raises(UsageError, match="other parameters"):
        BatchRunner("test", tmp_path, {"size": 512}, RunOptions()).run(_items(["a"]), process)
    summary = BatchRunner("test", tmp_path, {"size": 512}, RunOptions(overwrite=True)).run(
        _items(["a"]), process
    )
    assert summary.done == 1


def test_lock_blocks_a_second_run_and_takes_over_stale_locks(tmp_path: Path) -> None:
    import subprocess
    import sys
    import threading
    import time

    from shmt_cli.lock import LockBusy, OutputLock

    first = OutputLock(tmp_path, command="one")
    first.acquire()
    with pytest.raises(LockBusy, match=f"PID {os.getpid()}"):
        OutputLock(tmp_path).acquire()
    threading.Timer(0.4, first.release).start()
    started = time.monotonic()
    with OutputLock(tmp_path, wait_seconds=10):
        assert time.monotonic() - started >= 0.3
    assert not (tmp_path / ".shmt.lock").exists()

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    import socket

    (tmp_path / ".shmt.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with OutputLock(tmp_path) as lock:
        assert lock.holder()["pid"] == os.getpid()


def test_runner_reports_a_locked_folder(tmp_path: Path) -> None:
    from shmt_cli.batch import CannotRun
    from shmt_cli.lock import OutputLock

    with OutputLock(tmp_path), pytest.raises(CannotRun, match="in use"):
        BatchRunner("test", tmp_path, {}, RunOptions()).run(_items(["a"]), lambda item: [])


def test_shards_partition_items_stably() -> None:
    from shmt_cli.inputs import Shard

    names = [f"photo_{i}" for i in range(200)]
    parts = [[n for n in names if Shard(k, 4).takes(n)] for k in range(1, 5)]
    assert sorted(n for part in parts for n in part) == sorted(names)
    assert all(20 < len(part) < 80 for part in parts)
    more = names + [f"late_{i}" for i in range(50)]
    again = [[n for n in more if Shard(k, 4).takes(n) and n in names] for k in range(1, 5)]
    assert again == parts
    with pytest.raises(UsageError):
        Shard.parse("0/4")
    assert Shard.parse("2/8") == Shard(2, 8)


def test_shard_manifests_merge(tmp_path: Path) -> None:
    from shmt_cli.inputs import Shard
    from shmt_cli.manifest import merge_manifests

    names = [f"n{i}" for i in range(12)]

    def process(item: WorkItem) -> list[Path]:
        out = tmp_path / f"{item.key}.out"
        out.write_text("x")
        return [out]

    for k in (1, 2, 3):
        BatchRunner("test", tmp_path, {}, RunOptions(shard=Shard(k, 3))).run(_items(names), process)
    merged, path = merge_manifests(tmp_path)
    assert sorted(merged) == sorted(names)
    assert all(r["status"] == "ok" for r in merged.values())
    assert len(path.read_text().splitlines()) == len(names)


def test_disk_full_stops_the_run_without_partial_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from shmt_cli import atomic
    from shmt_cli.batch import CannotRun

    def process(item: WorkItem) -> list[Path]:
        target = tmp_path / f"{item.key}.png"
        atomic.write_bytes_atomic(target, b"data")
        return [target]

    real_fdopen = os.fdopen

    def full_disk(fd: int, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

            def write(self, data: bytes) -> int:
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.tmp"))

        return Full()

    monkeypatch.setattr(atomic.os, "fdopen", full_disk)
    with pytest.raises(CannotRun, match="No space left"):
        BatchRunner("test", tmp_path, {}, RunOptions()).run(_items(["a", "b"]), process)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("manifest.jsonl",)]
    assert leftovers == []


def test_an_unlistable_subfolder_is_reported_not_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shmt_cli.imageio import InputError, read_image

    root = tmp_path / "photos"
    _touch(root / "ok.jpg")
    _touch(root / "locked" / "hidden.jpg")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # root can list any folder: simulate a locked one
    found = collect_inputs([str(root)])
    assert [str(f.rel) for f in found] == ["locked", "ok"]
    with pytest.raises(InputError, match="folder could not be searched"):
        read_image(found[0].path)


def test_a_glob_over_an_aligned_folder_skips_sidecars_and_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "aligned"
    for name in ("a.png", "a.json", "b.png", "b.json", "manifest.jsonl", "notes.json"):
        _touch(folder / name)
    named = sorted(str(p) for p in folder.iterdir())  # what the shell makes of `aligned/*`
    assert [f.path.name for f in collect_inputs(named)] == ["a.png", "b.png", "notes.json"]


def test_failure_reason_is_one_line_or_stops_the_run(tmp_path: Path) -> None:
    """Item errors become one manifest line; a full output disk or a CannotRun stops the run (exit 3)."""
    import errno

    from shmt_cli.batch import CannotRun, failure_reason

    assert failure_reason(InputError("a.jpg: not an image\nmore"), tmp_path) == "a.jpg: not an image"
    assert failure_reason(MemoryError(), tmp_path) == "out of memory"
    elsewhere = OSError(errno.ENOSPC, "No space left on device", "/elsewhere/x.png")
    assert failure_reason(elsewhere, tmp_path).startswith("No space left on device: ")
    with pytest.raises(CannotRun, match="cannot write to"):
        failure_reason(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.png")), tmp_path)
    with pytest.raises(CannotRun, match="--batch-size"):
        failure_reason(CannotRun("out of memory at batch 1: try --batch-size"), tmp_path)
    assert failure_reason(ValueError("boom"), tmp_path).startswith("internal error ValueError: boom")
