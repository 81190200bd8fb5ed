"""`shmt decompose`: aligned faces in; parsing, 3D render, previews and a parts file per face out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from shmt_cli.batch import BatchRunner, RunOptions, Summary, WorkItem
from shmt_cli.decompose import FaceParts, analyse_face, save_parts
from shmt_cli.face.parsing import LABEL_ORDERS, load_label_map
from shmt_cli.imageio import InputError, read_image, write_image_atomic
from shmt_cli.inputs import UsageError, collect_inputs, display_path, output_file, require_inputs
from shmt_cli.pipelines import refuse_output_as_input
from shmt_cli.pipelines.faces import read_aligned_face
from shmt_cli.previews import band_preview, contact_sheet, parsing_colour, parsing_overlay
from shmt_cli.representations import SourceParts, source_parts

PREVIEW_LEVELS = (0, 1, 2, 3, 4)
CONTACT_SHEET_ROWS = 64
CONTACT_SHEET_NAME = "contact_sheet.png"
CONTACT_SHEET_COLUMNS = ("photo", "parsing", "3D render", "h0 content", "h4 content")


@dataclass(frozen=True)
class DecomposeSettings:
    """Parameters that change `decompose` results."""

    parsing_dir: Path | None = None
    parsing_order: str = "celebamask"
    render_dir: Path | None = None
    levels: tuple[int, ...] = (0, 4)

    def as_params(self) -> dict[str, Any]:
        return {
            "parsing": str(self.parsing_dir) if self.parsing_dir else "builtin",
            "parsing_order": self.parsing_order,
            "render3d": str(self.render_dir) if self.render_dir else "builtin",
            "levels": list(self.levels),
        }


def _first_existing(candidates: list[Path]) -> Path | None:
    return next((path for path in candidates if path.is_file()), None)


def external_parsing_path(folder: Path, rel: PurePosixPath) -> Path | None:
    """`<folder>/<rel>.png`, or `<folder>/<name>.png` when the folder is flat."""
    return _first_existing([output_file(folder, rel, ".png"), folder / f"{rel.name}.png"])


def external_render_path(folder: Path, rel: PurePosixPath) -> Path | None:
    """3DDFA_V2's `<name>_3d.jpg` or `<name>.png`, with or without the sub-folder."""
    names = [f"{rel.name}_3d.jpg", f"{rel.name}_3d.png", f"{rel.name}.png", f"{rel.name}.jpg"]
    return _first_existing([folder / rel.parent / n for n in names] + [folder / n for n in names])


def _require_square(path: Path, what: str) -> None:
    """Refuse a non-square external map: it belongs to another picture, and resizing it onto the square
    face would stretch it silently. (Square maps of any size are fine: official ones are 512 for 256.)"""
    try:
        with Image.open(path) as picture:
            width, height = picture.size
    except (OSError, ValueError):
        return  # unreadable: the reader that follows says why
    if width != height:
        raise InputError(f"{what} {display_path(path)} is {width}x{height}, not square like the face")


def _external_file(
    folder: Path, rel: PurePosixPath, locate: Callable[[Path, PurePosixPath], Path | None], what: str
) -> Path:
    """The external `what` (parsing map, 3D render) of face `rel` in `folder`: found and square, or
    InputError."""
    path = locate(folder, rel)
    if path is None:
        raise InputError(f"no {what} for it in {display_path(folder)}")
    _require_square(path, what)
    return path


def decompose_face(path: Path, rel: PurePosixPath, settings: DecomposeSettings) -> FaceParts:
    """Read one aligned face and decompose it, using external maps where the settings name a folder."""
    image, landmarks, source = read_aligned_face(path)
    size = image.shape[0]
    labels = render = None
    parsing_file = render_file = None
    if settings.parsing_dir is not None:
        parsing_file = _external_file(settings.parsing_dir, rel, external_parsing_path, "parsing map")
        try:
            labels = load_label_map(parsing_file, size, settings.parsing_order)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
    if settings.render_dir is not None:
        render_file = _external_file(settings.render_dir, rel, external_render_path, "3D render")
        try:
            render = read_image(render_file)
        except InputError as exc:
            # Name the render: the face itself is fine, and the user must know which file to fix.
            raise InputError(f"3D render {display_path(render_file)}: {exc}") from exc
    parts = analyse_face(image, landmarks, labels, render, source=source)
    if parsing_file is not None:
        parts.parsing_from = display_path(parsing_file)
    if render_file is not None:
        parts.render_from = display_path(render_file)
    return parts


def preview_pictures(parts: FaceParts, src: SourceParts) -> dict[str, np.ndarray]:
    """Suffix → picture for every preview file of one face (`src` built with PREVIEW_LEVELS)."""
    size = parts.image.shape[0]
    pictures = {
        "_parsing.png": parts.labels,
        "_parsing_color.png": parsing_colour(parts.labels),
        "_3d.png": parts.render,
        "_bg.png": src.bg_u8[0].permute(1, 2, 0).numpy(),
        "_makeup.png": (parts.image * (src.face_mask_u8[0, 0].numpy()[:, :, None])).astype(np.uint8),
        "_gray.png": src.gray_u8[0, 0].numpy(),
    }
    for level in PREVIEW_LEVELS:
        # Coarser bands carry larger values: less gain keeps them from saturating.
        pictures[f"_h{level}.png"] = band_preview(src.bands[level], size, gain=4.0 / (1 + level))
    return pictures


def run_decompose(
    inputs: list[str], out_dir: Path, settings: DecomposeSettings, options: RunOptions, sheet: bool = True
) -> tuple[BatchRunner, Summary]:
    """Decompose every aligned face in `inputs` into `out_dir` (plus a contact sheet)."""
    if settings.parsing_order not in LABEL_ORDERS:
        raise UsageError(f"--parsing-order must be one of {', '.join(LABEL_ORDERS)}")
    for folder in (settings.parsing_dir, settings.render_dir):
        if folder is not None and not folder.is_dir():
            raise UsageError(f"not a folder: {display_path(folder)}")
    refuse_output_as_input(out_dir, inputs)
    files = require_inputs(collect_inputs(inputs, exclude=[out_dir], optional=options.listed_inputs), inputs)
    items = [WorkItem(key=f.key, inputs=(f.path,), out_stem=f.rel) for f in files]
    runner = BatchRunner("decompose", out_dir, settings.as_params(), options)

    def process(item: WorkItem) -> list[Path]:
        parts = decompose_face(item.inputs[0], item.out_stem, settings)
        src = source_parts(parts.image, parts.labels, parts.render, levels=PREVIEW_LEVELS)
        written = []
        for suffix, picture in preview_pictures(parts, src).items():
            target = output_file(out_dir, item.out_stem, suffix)
            write_image_atomic(target, picture)
            written.append(target)
        parts_file = output_file(out_dir, item.out_stem, ".safetensors")
        save_parts(parts_file, parts, settings.levels, src)
        return [parts_file, *written]

    def done_outputs(item: WorkItem) -> list[Path]:
        return [output_file(out_dir, item.out_stem, ".safetensors")]

    summary = runner.run(items, process, done_outputs)
    if sheet:
        write_contact_sheet(out_dir, [item.out_stem for item in items])
    return runner, summary


def write_contact_sheet(out_dir: Path, stems: list[PurePosixPath]) -> Path | None:
    """One row per decomposed face (photo, parsing, 3D render, h0, h4), at most CONTACT_SHEET_ROWS."""
    from shmt_cli.decompose import load_parts

    rows = []
    for stem in stems:
        parts_file = output_file(out_dir, stem, ".safetensors")
        if not parts_file.is_file():
            continue
        try:
            parts = load_parts(parts_file)
            h0 = read_image(output_file(out_dir, stem, "_h0.png"))
            h4 = read_image(output_file(out_dir, stem, "_h4.png"))
        except InputError:
            continue
        rows.append([parts.image, parsing_overlay(parts.image, parts.labels), parts.render, h0, h4])
        if len(rows) == CONTACT_SHEET_ROWS:
            break
    if not rows:
        return None
    target = out_dir / CONTACT_SHEET_NAME
    write_image_atomic(target, contact_sheet(rows, labels=CONTACT_SHEET_COLUMNS))
    return target
