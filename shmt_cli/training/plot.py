"""`shmt train --plot`: the loss curves of a run as a PNG, drawn with OpenCV (no plotting library).

Panels share the step axis: training loss (per step, faint, and a moving average) with the validation
loss of the raw and the EMA weights on top; a log-scaled y axis when the values span more than 10×.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shmt_cli.imageio import write_image_atomic

WIDTH, HEIGHT = 960, 540
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 80, 20, 40, 50
# RGB colours.
FAINT, TRAIN, VAL_RAW, VAL_EMA, AXIS, TEXT = (
    (190, 200, 230),
    (40, 80, 200),
    (220, 120, 30),
    (30, 150, 60),
    (0,) * 3,
    (0,) * 3,
)


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over up to `window` values (the first points average what exists)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return array
    sums = np.cumsum(np.insert(array, 0, 0.0))
    index = np.arange(1, array.size + 1)
    start = np.maximum(0, index - window)
    return (sums[index] - sums[start]) / (index - start)


def _series(records: Sequence[dict[str, Any]], kind: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(r["step"], r[key]) for r in records if r.get("kind") == kind and isinstance(r.get(key), float)]
    points = [(s, v) for s, v in points if math.isfinite(v)]
    if not points:
        return np.empty(0), np.empty(0)
    steps, values = zip(*points, strict=True)
    return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def draw_loss_plot(records: Sequence[dict[str, Any]], title: str = "shmt train") -> np.ndarray:
    """(HEIGHT, WIDTH, 3) uint8 RGB chart of the "loss" of train records and "loss" / "loss_ema" of val
    records (see `metrics`)."""
    canvas = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    train_x, train_y = _series(records, "train", "loss")
    smooth = moving_average(train_y, max(1, round(train_y.size**0.5)))
    val_x, val_y = _series(records, "val", "loss")
    ema_x, ema_y = _series(records, "val", "loss_ema")
    all_y = np.concatenate([train_y, val_y, ema_y])
    all_x = np.concatenate([train_x, val_x, ema_x])
    cv2.putText(canvas, title, (MARGIN_LEFT, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, TEXT, 1, cv2.LINE_AA)
    if all_y.size == 0:
        cv2.putText(
            canvas, "no losses yet", (WIDTH // 2 - 80, HEIGHT // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.7, TEXT
        )
        return canvas
    log = all_y.min() > 0 and all_y.max() / all_y.min() > 10
    transform = np.log10 if log else (lambda v: v)
    lo, hi = float(transform(all_y).min()), float(transform(all_y).max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    x_lo, x_hi = float(all_x.min()), float(max(all_x.max(), all_x.min() + 1))
    plot_w, plot_h = WIDTH - MARGIN_LEFT - MARGIN_RIGHT, HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def to_px(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        px = MARGIN_LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w
        py = MARGIN_TOP + (hi - transform(y)) / (hi - lo) * plot_h
        return np.stack([px, py], axis=1).round().astype(np.int32)

    # Axes, ticks and labels.
    cv2.rectangle(canvas, (MARGIN_LEFT, MARGIN_TOP), (WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM), AXIS, 1)
    for i in range(6):
        value = lo + (hi - lo) * i / 5
        y = round(MARGIN_TOP + (hi - value) / (hi - lo) * plot_h)
        label = f"{(10**value if log else value):.4g}"
        cv2.line(canvas, (MARGIN_LEFT - 4, y), (MARGIN_LEFT, y), AXIS, 1)
        cv2.putText(canvas, label, (5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, TEXT, 1, cv2.LINE_AA)
        step = x_lo + (x_hi - x_lo) * i / 5
        x = round(MARGIN_LEFT + (step - x_lo) / (x_hi - x_lo) * plot_w)
        cv2.line(canvas, (x, HEIGHT - MARGIN_BOTTOM), (x, HEIGHT - MARGIN_BOTTOM + 4), AXIS, 1)
        cv2.putText(
            canvas, f"{step:.0f}", (x - 12, HEIGHT - MARGIN_BOTTOM + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, TEXT
        )
    cv2.putText(
        canvas, "step", (WIDTH // 2, HEIGHT - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, TEXT, 1, cv2.LINE_AA
    )

    legend = []
    if train_y.size:
        cv2.polylines(canvas, [to_px(train_x, train_y)], False, FAINT, 1, cv2.LINE_AA)
        cv2.polylines(canvas, [to_px(train_x, smooth)], False, TRAIN, 2, cv2.LINE_AA)
        legend.append(("train loss (moving average)", TRAIN))
    for xs, ys, colour, name in (
        (val_x, val_y, VAL_RAW, "val loss"),
        (ema_x, ema_y, VAL_EMA, "val loss, EMA"),
    ):
        if ys.size:
            points = to_px(xs, ys)
            cv2.polylines(canvas, [points], False, colour, 2, cv2.LINE_AA)
            for p in points:
                cv2.circle(canvas, tuple(int(v) for v in p), 3, colour, -1, cv2.LINE_AA)
            legend.append((name, colour))
    for i, (name, colour) in enumerate(legend):
        y = MARGIN_TOP + 18 + 18 * i
        x = WIDTH - MARGIN_RIGHT - 230
        cv2.line(canvas, (x, y - 4), (x + 25, y - 4), colour, 2)
        cv2.putText(canvas, name, (x + 32, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, TEXT, 1, cv2.LINE_AA)
    return canvas


def write_loss_plot(records: Sequence[dict[str, Any]], target: Path, title: str = "shmt train") -> Path:
    """Draw and write the chart atomically (PNG)."""
    write_image_atomic(target, draw_loss_plot(records, title))
    return target
