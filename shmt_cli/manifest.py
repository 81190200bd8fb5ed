"""The results manifest of an output folder: JSON lines, one per item, crash-tolerant; shard merging."""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST_NAME = "manifest.jsonl"
SHARD_GLOB = "manifest.shard-*.jsonl"
#: Record field: per input (same order as "inputs"), the name its outputs derive from.
INPUT_NAMES = "input_names"


def json_line(record: dict[str, Any]) -> str:
    """`record` as one line of JSON text that any UTF-8 stream can carry.

    Non-ASCII text stays readable; a lone surrogate (a file name that is not UTF-8, decoded with
    surrogateescape) becomes a `\\udcXX` escape instead of making the write fail, and reads back as
    the same surrogate, so the name still opens the file.
    """
    text = json.dumps(record, ensure_ascii=False, default=str)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def manifest_path(out_dir: Path, shard_label: str | None = None) -> Path:
    """`manifest.jsonl`, or `manifest.shard-K-of-N.jsonl` for one shard writing into a shared folder."""
    return out_dir / (MANIFEST_NAME if not shard_label else f"manifest.shard-{shard_label}.jsonl")


def read_records(path: Path) -> list[dict[str, Any]]:
    """All well-formed records of one manifest file (a line cut short by a crash is ignored)."""
    if not path.exists():
        return []
    records = []
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and "key" in record:
                records.append(record)
    return records


class Manifest:
    """Append-only JSON-lines record of one output folder (or of one shard in it).

    The last line for a key wins. Reading considers the folder's main manifest and every shard
    manifest, so a shard that restarts sees what any shard already finished.
    """

    def __init__(self, out_dir: Path, shard_label: str | None = None) -> None:
        self.out_dir = out_dir
        self.path = manifest_path(out_dir, shard_label)

    def read(self) -> list[dict[str, Any]]:
        paths = [manifest_path(self.out_dir), *sorted(self.out_dir.glob(SHARD_GLOB))]
        records: list[dict[str, Any]] = []
        for path in dict.fromkeys(paths):
            records += read_records(path)
        return records

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last record of every key."""
        return {record["key"]: record for record in self.read()}

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as a single write, then fsync (a crash leaves at most one cut line)."""
        line = (json_line(record) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def earlier_names(out_dir: Path) -> dict[str, PurePosixPath]:
    """Absolute input path -> the name runs into `out_dir` gave it (the latest recorded; records
    written before names were recorded give none)."""
    names: dict[str, PurePosixPath] = {}
    for record in Manifest(out_dir).read():
        recorded = record.get(INPUT_NAMES) or []
        for path, name in zip(record.get("inputs") or [], recorded, strict=False):
            names[os.path.abspath(path)] = PurePosixPath(name)
    return names


def merge_manifests(
    out_dir: Path, sources: list[Path] | None = None
) -> tuple[dict[str, dict[str, Any]], Path]:
    """Combine shard manifests (default: every `manifest.shard-*.jsonl` in `out_dir`) with the main one.

    Returns the merged last-record-per-key map and the path written (`manifest.jsonl`, rewritten
    atomically with one line per key).
    """
    from shmt_cli.atomic import write_bytes_atomic

    paths = [manifest_path(out_dir), *(sources if sources is not None else sorted(out_dir.glob(SHARD_GLOB)))]
    merged: dict[str, dict[str, Any]] = {}
    for path in dict.fromkeys(paths):
        for record in read_records(path):
            previous = merged.get(record["key"])
            # An ok result is never replaced by a later skip/failed record of the same key.
            if previous is None or previous.get("status") != "ok" or record.get("status") == "ok":
                merged[record["key"]] = record
    blob = "".join(json_line(r) + "\n" for r in merged.values()).encode("utf-8")
    target = manifest_path(out_dir)
    write_bytes_atomic(target, blob)
    return merged, target
