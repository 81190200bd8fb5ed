"""The shared batch runner: input discovery, output naming, manifest, skip/resume, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

import pytest

from shmt_cli.batch import (
    EXIT_FAILURES,
    EXIT_OK,
    BatchRunner,
    Manifest,
    RunOptions,
    UsageError,
    WorkItem,
    collect_inputs,
)
from shmt_cli.imageio import InputError


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
    assert rels == ["a/x", "a/y_png", "a/y_jpg", "b/x", "x"]
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
    assert calls == [] and summary.skipped == 4 and summary.exit_code == EXIT_OK

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
