"""Reports of `shmt evaluate`: the CSV, the JSON document, the box plot and the summary tables."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shmt_cli.pipelines.evaluate import METRICS, SET_METRICS, FolderEvaluation, metric_order


def write_csv(path: Path, evaluations: Sequence[FolderEvaluation]) -> None:
    """One row per folder and pair, one column per metric."""
    import csv
    import io

    names = sorted({n for e in evaluations for row in e.rows.values() for n in row}, key=metric_order)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["folder", "source", "reference", *names])
    for evaluation in evaluations:
        for (source, reference), row in sorted(evaluation.rows.items()):
            writer.writerow([str(evaluation.folder), source, reference, *[_fmt(row.get(n)) for n in names]])
    from shmt_cli.atomic import write_bytes_atomic

    write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return "inf" if math.isinf(value) else f"{value:.6g}"


def to_json(
    evaluations: Sequence[FolderEvaluation], pairs: Sequence[tuple[str, str]] | None
) -> dict[str, Any]:
    """Per-pair rows and per-folder summaries, JSON-safe: every metric a number or null. null is NaN
    (not measurable) or an infinite PSNR (nothing changed there): a string "inf" broke numeric readers."""

    def clean(value: Any) -> Any:
        if isinstance(value, float):
            return None if not math.isfinite(value) else value
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    return {
        "folders": [
            {
                "folder": str(e.folder),
                "summary": clean(e.summary(pairs)),
                "set_metrics": clean(e.set_metrics),
                "pairs": [
                    {"source": s, "reference": r, **clean(row)} for (s, r), row in sorted(e.rows.items())
                ],
                "failures": [{"pair": key, "reason": reason} for key, reason in e.failures],
            }
            for e in evaluations
        ]
    }


def box_plot(path: Path, evaluations: Sequence[FolderEvaluation], pairs: Sequence[tuple[str, str]]) -> None:
    """One box plot per metric (columns) and folder (boxes), drawn with OpenCV: a PNG a person can read."""
    from shmt_cli.imageio import write_image_atomic

    names = [n for n in METRICS if any(n in row for e in evaluations for row in e.rows.values())]
    panel_w, panel_h, top, bottom, per_row = 300, 220, 40, 40, 3
    rows_of_panels = max(1, math.ceil(len(names) / per_row))
    block_h = panel_h + top + bottom
    sheet = np.full((block_h * rows_of_panels + 40, panel_w * per_row, 3), 255, np.uint8)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    for position, name in enumerate(names):
        x0 = (position % per_row) * panel_w
        y_base = (position // per_row) * block_h
        series = []
        all_infinite = True
        for evaluation in evaluations:
            values = np.array([evaluation.rows[p].get(name, math.nan) for p in pairs if p in evaluation.rows])
            all_infinite &= bool(values.size) and bool(np.isinf(values).all())
            series.append(values[np.isfinite(values)])
        if all_infinite:
            note = "all inf (unchanged)"
            cv2.putText(
                sheet,
                note,
                (x0 + 60, y_base + top + panel_h // 2),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5,
                (0, 0, 0),
                1,
            )
        present = [s for s in series if s.size]
        low = min((s.min() for s in present), default=0.0)
        high = max((s.max() for s in present), default=1.0)
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5

        def y_of(value: float, low: float = low, high: float = high, y_base: int = y_base) -> int:
            return int(y_base + top + panel_h - 10 - (value - low) / (high - low) * (panel_h - 20))

        cv2.putText(
            sheet, name, (x0 + 8, y_base + 24), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
        )
        cv2.line(sheet, (x0 + 40, y_base + top), (x0 + 40, y_base + top + panel_h), (0, 0, 0), 1)
        for tick in (low, high):
            cv2.putText(
                sheet, f"{tick:.3g}", (x0 + 2, y_of(tick) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1
            )
        width = (panel_w - 60) // max(1, len(series))
        for index, values in enumerate(series):
            colour = colours[index % len(colours)][::-1]
            cx = x0 + 50 + index * width + width // 2
            label = f"{index + 1}"
            label_y = y_base + top + panel_h + 20
            cv2.putText(sheet, label, (cx - 4, label_y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)
            if values.size == 0:
                continue
            q1, med, q3 = np.percentile(values, [25, 50, 75])
            lo, hi = np.percentile(values, [10, 90])
            half = max(4, width // 3)
            cv2.line(sheet, (cx, y_of(lo)), (cx, y_of(hi)), colour, 1)
            cv2.rectangle(sheet, (cx - half, y_of(q3)), (cx + half, y_of(q1)), colour, 2)
            cv2.line(sheet, (cx - half, y_of(med)), (cx + half, y_of(med)), (0, 0, 0), 2)
    legend_y = block_h * rows_of_panels + 20
    for index, evaluation in enumerate(evaluations):
        colour = colours[index % len(colours)][::-1]
        text = f"{index + 1}: {evaluation.folder.name}"
        cv2.putText(sheet, text, (10 + 220 * index, legend_y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)
    write_image_atomic(path, cv2.cvtColor(sheet, cv2.COLOR_BGR2RGB))


def summary_json_line(
    evaluations: Sequence[FolderEvaluation], pairs: Sequence[tuple[str, str]] | None
) -> str:
    """The whole evaluation as one JSON document (for --json)."""
    return json.dumps(to_json(evaluations, pairs), ensure_ascii=False)


def summary_tables(
    evaluations: Sequence[FolderEvaluation], pairs: Sequence[tuple[str, str]] | None
) -> list[Any]:
    """Rich tables: one per folder (mean, median, p10, p90, n per metric; set metrics last), then a
    side-by-side table of means when there are several folders."""
    from rich.markup import escape
    from rich.table import Table

    tables = []
    for evaluation in evaluations:
        table = Table(
            title=f"{escape(str(evaluation.folder))}: {len(evaluation.rows)} pairs", title_justify="left"
        )
        for column in ("metric", "mean", "median", "p10", "p90", "n"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for name, stats in evaluation.summary(pairs).items():
            arrow = "↑" if METRICS.get(name, ("", True))[1] else "↓"
            values = (f"{stats[k]:.4g}" for k in ("mean", "median", "p10", "p90"))
            table.add_row(f"{name} {arrow}", *values, str(stats["n"]))
        for name, value in evaluation.set_metrics.items():
            arrow = "↑" if SET_METRICS[name][1] else "↓"
            table.add_row(f"{name} {arrow}", f"{value:.4g}", "", "", "", "set")
        tables.append(table)
    if len(evaluations) > 1:
        table = Table(title=f"side by side over {len(pairs or [])} shared pairs (mean)", title_justify="left")
        table.add_column("metric")
        for evaluation in evaluations:
            table.add_column(escape(evaluation.folder.name), justify="right")
        summaries = [e.summary(pairs) for e in evaluations]
        for name in summaries[0]:
            table.add_row(name, *(f"{s.get(name, {}).get('mean', math.nan):.4g}" for s in summaries))
        for name in evaluations[0].set_metrics:
            table.add_row(name, *(f"{e.set_metrics.get(name, math.nan):.4g}" for e in evaluations))
        tables.append(table)
    return tables
