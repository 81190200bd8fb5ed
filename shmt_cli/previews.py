"""Pictures for people: coloured parsing maps, texture-band previews, contact sheets."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

# One colour per CelebAMask-HQ id (0 background .. 18 cloth), chosen to tell neighbours apart.
PARSING_PALETTE = np.array(
    [
        [0, 0, 0], [232, 190, 160], [255, 140, 60], [120, 120, 255], [40, 200, 255], [0, 120, 255],
        [140, 70, 20], [90, 40, 10], [200, 120, 200], [160, 80, 160], [60, 0, 40], [230, 30, 60],
        [170, 0, 40], [90, 60, 40], [80, 80, 160], [255, 215, 0], [200, 200, 0], [250, 210, 190],
        [70, 130, 90],
    ],
    dtype=np.uint8,
)  # fmt: skip


def parsing_colour(labels: np.ndarray) -> np.ndarray:
    """(H, W) label ids → (H, W, 3) uint8 RGB picture (ids beyond 18 shown white)."""
    palette = np.vstack([PARSING_PALETTE, np.full((256 - len(PARSING_PALETTE), 3), 255, np.uint8)])
    return palette[labels]


def parsing_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The coloured parsing blended over the photo, (H, W, 3) uint8."""
    colour = parsing_colour(labels).astype(np.float32)
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colour
    mixed[labels == 0] = image[labels == 0]
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def band_preview(band: torch.Tensor | np.ndarray, size: int, gain: float = 4.0) -> np.ndarray:
    """A Laplacian band (h, w) or (1, 1, h, w) in the [-1,1] domain as a gray (size, size, 3) uint8 picture.

    Zero detail is mid-gray; coarse bands are enlarged with nearest neighbour so their grid shows.
    """
    array = band.detach().cpu().numpy() if isinstance(band, torch.Tensor) else np.asarray(band)
    array = array.reshape(array.shape[-2], array.shape[-1]).astype(np.float32)
    gray = np.clip(np.round(128.0 + 127.0 * gain * array), 0, 255).astype(np.uint8)
    gray = cv2.resize(gray, (size, size), interpolation=cv2.INTER_NEAREST)
    return np.repeat(gray[:, :, None], 3, axis=2)


def contact_sheet(
    rows: Sequence[Sequence[np.ndarray]],
    cell: int = 128,
    gap: int = 2,
    labels: Sequence[str] = (),
) -> np.ndarray:
    """Tile pictures into a grid, one row per entry, under a header naming each column (`labels`):
    (header + rows·(cell+gap) + gap, cols·(cell+gap) + gap, 3) uint8 on white."""
    columns = max(len(row) for row in rows)
    header = 22 if labels else 0
    sheet = np.full((header + len(rows) * (cell + gap) + gap, columns * (cell + gap) + gap, 3), 255, np.uint8)
    for c, label in enumerate(labels[:columns]):
        x = gap + c * (cell + gap) + 4
        cv2.putText(sheet, label, (x, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (40, 40, 40), 1, cv2.LINE_AA)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            tile = picture if picture.ndim == 3 else np.repeat(picture[:, :, None], 3, axis=2)
            tile = cv2.resize(tile, (cell, cell), interpolation=cv2.INTER_AREA)
            y, x = header + gap + r * (cell + gap), gap + c * (cell + gap)
            sheet[y : y + cell, x : x + cell] = tile
    return sheet
