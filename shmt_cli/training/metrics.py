"""RUN/metrics.jsonl: one JSON object per line, appended as training goes.

Lines are {"step": n, "kind": "train" | "val", ...values}. A line cut short by a kill is ignored when
reading; on resume from step n, lines of later steps (written after the last checkpoint, and about to be
computed again) are dropped first, so the file never holds one step twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from shmt_cli.atomic import write_bytes_atomic

METRICS_NAME = "metrics.jsonl"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every well-formed record (a cut or damaged line is skipped)."""
    if not path.is_file():
        return []
    records = []
    with path.open("rb") as handle:
        for raw in handle:
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
    return records


class MetricsLog:
    """Appends records to RUN/metrics.jsonl (flushed per line)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS_NAME

    def truncate_after(self, step: int) -> None:
        """Keep only records with step <= `step` (rewritten atomically; no-op when nothing is dropped)."""
        records = read_metrics(self.path)
        kept = [r for r in records if r["step"] <= step]
        if self.path.is_file() and len(kept) == len(records) and self.path.read_bytes().endswith(b"\n"):
            return
        text = "".join(json.dumps(r, allow_nan=True) + "\n" for r in kept)
        write_bytes_atomic(self.path, text.encode("utf-8"))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, allow_nan=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
