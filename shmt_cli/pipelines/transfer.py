"""`shmt transfer`: source photos × reference photos → finished photos with the reference's makeup.

Every face is prepared once (aligned, parsed, rendered, engine-prepared) and cached; pairs go to
the engine in batches; each result is pasted back into the source photo at its original size, so
only the face changes.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from shmt_cli.atomic import write_bytes_atomic, write_json_atomic
from shmt_cli.batch import BatchRunner, RunOptions, Summary, WorkItem
from shmt_cli.decompose import FaceParts, analyse_face, load_parts, save_parts
from shmt_cli.engines.base import Engine, EngineUnavailable, PairJob
from shmt_cli.engines.classic import REGIONS
from shmt_cli.engines.registry import create_engine
from shmt_cli.face.align import AlignedFace, crop_face, paste_back
from shmt_cli.face.detect import default_detector
from shmt_cli.face.labels import EYES_MOUTH_LABELS, FACE_LABELS
from shmt_cli.imageio import IMAGE_EXTENSIONS, InputError, encode_image, read_image
from shmt_cli.inputs import InputFile, UsageError, collect_inputs, display_path, output_file
from shmt_cli.pipelines import refuse_output_as_input
from shmt_cli.pipelines.faces import has_sidecar, read_aligned_face
from shmt_cli.representations import IMAGE_SIZE

PAIR_MODES = ("all", "zip")
FACE_CACHE_SIZE = 256
FACES_DIR = "faces"
# The face interior the engines may change: face-mask labels plus eyes and inner mouth.
PASTE_LABELS = (*FACE_LABELS, *EYES_MOUTH_LABELS)


@dataclass(frozen=True)
class TransferSettings:
    """Pipeline parameters that change results (engine parameters come from the engine)."""

    pairs: str = "all"
    seed: int = 321
    crop: bool = False
    grid: bool = False

    def as_params(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "seed": self.seed}


@dataclass(frozen=True)
class Pair:
    """One source × reference pair and the output name stem it writes."""

    source: InputFile
    reference: InputFile
    out_stem: PurePosixPath

    @property
    def key(self) -> str:
        return f"{self.source.key} | {self.reference.key}"


@dataclass
class PreparedFace:
    """A face ready for pairing: its parts, how it was aligned (photos only) and the engine's state."""

    parts: FaceParts
    aligned: AlignedFace | None
    state: Any


def pair_stem(source: InputFile, reference: InputFile) -> PurePosixPath:
    """`<source folders>/<source>__<reference with / as _>`: one output per pair, no collisions."""
    flat_reference = "_".join(reference.rel.parts)
    return source.rel.parent / f"{source.rel.name}__{flat_reference}"


def pair_seed(seed: int, pair: Pair) -> int:
    """A pair's own noise seed: the same whatever the batch size or the order of the run."""
    blob = f"{seed}|{pair.source.rel}|{pair.reference.rel}".encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") & ((1 << 63) - 1)


def _safe_stem(text: str) -> PurePosixPath:
    stem = PurePosixPath(text.replace("\\", "/"))
    if stem.is_absolute() or ".." in stem.parts or not stem.parts:
        raise UsageError(f"output name {text!r} in the pairs file must be a relative path without '..'")
    return stem.with_suffix("") if stem.suffix.lower() in (".png", ".jpg", ".jpeg") else stem


def read_pairs_csv(path: Path) -> list[tuple[str, str, str | None]]:
    """Rows `source,reference[,output]` (a header row naming `source` is skipped)."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read pairs file {display_path(path)}: {exc}") from exc
    rows = []
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and cells[0].lower() == "source":
            continue
        if len(cells) not in (2, 3):
            raise UsageError(f"{display_path(path)} line {number}: expected source,reference[,output]")
        if not cells[0] or not cells[1]:
            raise UsageError(f"{display_path(path)} line {number}: the source or the reference is empty")
        rows.append((cells[0], cells[1], cells[2] if len(cells) == 3 and cells[2] else None))
    if not rows:
        raise UsageError(f"{display_path(path)} lists no pairs")
    return rows


def collect_faces(paths: Sequence[str], exclude: Sequence[Path] = ()) -> list[InputFile]:
    """Faces to pair: photos and aligned crops, or the parts files of a `shmt decompose` folder.

    In a folder that holds parts files (`<name>.safetensors`), only those are taken: its PNGs are the
    decomposition's previews, not faces.
    """
    parts_folders = {
        f.path.parent for f in collect_inputs(paths, extensions=(".safetensors",), exclude=exclude)
    }

    def is_face(path: Path) -> bool:
        return path.suffix.lower() == ".safetensors" or path.parent not in parts_folders

    return collect_inputs(
        paths, extensions=(*IMAGE_EXTENSIONS, ".safetensors"), exclude=exclude, keep=is_face
    )


def plan_pairs(
    sources: Sequence[str], references: Sequence[str], mode: str, exclude: Sequence[Path] = ()
) -> list[Pair]:
    """The pairs of a run. `all`: every reference × every source (reference-major); `zip`: sorted,
    pairwise; otherwise `mode` is a CSV file of pairs. Folders in `exclude` (the output) are not searched."""
    if mode not in PAIR_MODES:
        return _csv_pairs(read_pairs_csv(Path(mode)))
    src_files = collect_faces(sources, exclude)
    ref_files = collect_faces(references, exclude)
    if mode == "zip":
        if len(src_files) != len(ref_files):
            raise UsageError(
                f"--pairs zip needs as many sources ({len(src_files)}) as references ({len(ref_files)})"
            )
        return [Pair(s, r, pair_stem(s, r)) for s, r in zip(src_files, ref_files, strict=True)]
    return [Pair(s, r, pair_stem(s, r)) for r in ref_files for s in src_files]


def _csv_pairs(rows: list[tuple[str, str, str | None]]) -> list[Pair]:
    """Pairs of a CSV file. Paths are relative to the current folder, like every other input. A row
    naming a missing file or a folder becomes a pair that fails (reading it says why), not a stopped run."""
    given = sorted({text for row in rows for text in row[:2]})
    usable = [text for text in given if Path(text).is_file()]
    # Keyed by absolute path: collect_inputs keeps one spelling of a file named two ways (`a.png`, `./a.png`).
    files = {os.path.abspath(f.path): f for f in collect_inputs(usable)} if usable else {}

    def as_input(text: str) -> InputFile:
        found = files.get(os.path.abspath(text))
        return found or InputFile(path=Path(text), rel=PurePosixPath(Path(text).stem or "input"))

    pairs = []
    for source, reference, output in rows:
        src, ref = as_input(source), as_input(reference)
        pairs.append(Pair(src, ref, _safe_stem(output) if output else pair_stem(src, ref)))
    return pairs


def load_face(path: Path, need_render: bool) -> tuple[FaceParts, AlignedFace | None]:
    """A face from a parts file, an aligned crop (with its sidecar) or an ordinary photo."""
    if path.suffix.lower() == ".safetensors":
        return load_parts(path), None
    if has_sidecar(path):
        image, landmarks, source = read_aligned_face(path)
        return _analyse(image, landmarks, need_render, source), None
    photo = read_image(path)
    faces = default_detector().detect(photo)
    if not faces:
        raise InputError("no face found")
    height, width = photo.shape[:2]
    aligned = AlignedFace.from_landmarks(
        faces[0].landmarks, source_path=display_path(path), source_size=(width, height), score=faces[0].score
    )
    crop = crop_face(photo, aligned.matrix, IMAGE_SIZE)
    return _analyse(crop, aligned.landmarks_crop, need_render, display_path(path)), aligned


def _analyse(image: np.ndarray, landmarks: np.ndarray, need_render: bool, source: str) -> FaceParts:
    # References never need the 3D render: skip its cost.
    render = None if need_render else np.zeros_like(image)
    parts = analyse_face(image, landmarks, render=render, source=source)
    if not need_render:
        parts.render_from = "none"
    return parts


def parse_regions(text: str | None) -> frozenset[str] | None:
    """`lips,eyes` -> the regions to paint (None: the engine's default, all); UsageError when the text
    names none (nothing would change)."""
    if text is None:
        return None
    wanted = frozenset(r.strip() for r in text.split(",") if r.strip())
    if not wanted:
        raise UsageError(f"--regions names no region (got {text!r}), e.g. {','.join(REGIONS)}")
    return wanted


def parse_strengths(text: str | None) -> dict[str, float]:
    """`0.5` (every region) or `lips=1,skin=0.5` -> per-region strengths."""
    if not text:
        return {}
    try:
        if "=" not in text:
            return dict.fromkeys(REGIONS, float(text))
        pairs = (part.split("=", 1) for part in text.split(",") if part.strip())
        return {name.strip(): float(value) for name, value in pairs}
    except ValueError:
        raise UsageError(f"--strength takes a number or region=number pairs, got {text!r}") from None


def check_pair_inputs(sources: str | None, references: str | None, pairs: str) -> None:
    """UsageError unless there is a source and a reference, or a pairs CSV names them."""
    if pairs in PAIR_MODES and (sources is None or references is None):
        raise UsageError("give a source and a reference (file or folder), or --pairs FILE.csv")


def open_engine(name: str, options: Mapping[str, Any], weights_dir: Path | None) -> tuple[Engine, str]:
    """The engine for the command line's choice and options (see engines.registry), and the line
    saying which one runs; UsageError when it cannot be built as asked."""
    try:
        return create_engine(name, options, weights_dir)
    except (EngineUnavailable, ValueError) as exc:
        raise UsageError(str(exc)) from None


def paste_mask(labels: np.ndarray) -> np.ndarray:
    """(S, S) uint8 region of the crop pasted back: the face interior grown by a few pixels."""
    inside = np.isin(labels, PASTE_LABELS).astype(np.uint8)
    return cv2.dilate(inside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))


class FaceCache:
    """Prepared faces by path (or the error that prevented preparing them), least recently used out."""

    def __init__(self, engine: Engine, faces_dir: Path | None, capacity: int = FACE_CACHE_SIZE) -> None:
        self.engine = engine
        self.faces_dir = faces_dir
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, Path], PreparedFace | Exception] = OrderedDict()

    def get(self, face: InputFile, role: str) -> PreparedFace:
        key = (role, face.path)
        if key in self._entries:
            self._entries.move_to_end(key)
        else:
            self._entries[key] = self._prepare(face, role)
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        entry = self._entries[key]
        if isinstance(entry, Exception):
            raise InputError(f"{role} {display_path(face.path)}: {entry}")
        return entry

    def _prepare(self, face: InputFile, role: str) -> PreparedFace | Exception:
        try:
            parts, aligned = load_face(face.path, need_render=role == "source" and self.engine.needs_render)
            state = (
                self.engine.prepare_source(parts)
                if role == "source"
                else self.engine.prepare_reference(parts)
            )
            if self.faces_dir is not None:
                self._save(face, role, parts, aligned)
            return PreparedFace(parts, aligned, state)
        except (InputError, ValueError) as exc:
            return exc

    def _save(self, face: InputFile, role: str, parts: FaceParts, aligned: AlignedFace | None) -> None:
        """Keep each face's crop, parsing and alignment for `shmt evaluate` (written once)."""
        assert self.faces_dir is not None
        target = output_file(self.faces_dir / f"{role}s", face.rel, ".safetensors")
        if not target.exists():
            save_parts(target, parts)
            if aligned is not None:
                write_json_atomic(
                    output_file(self.faces_dir / f"{role}s", face.rel, ".json"), aligned.to_json_dict()
                )

    def parts_path(self, face: InputFile, role: str) -> str | None:
        """The parts file as the manifest records it: relative to the output folder, as `evaluate`
        reads it (was `<-o as typed>/faces/...`, so a relative `-o out` gave `out/out/faces/...`)."""
        if self.faces_dir is None:
            return None
        return output_file(
            PurePosixPath(self.faces_dir.name) / f"{role}s", face.rel, ".safetensors"
        ).as_posix()


def grid_strip(source: np.ndarray, reference: np.ndarray, result: np.ndarray) -> np.ndarray:
    """The official 3-panel strip [source | reference | result], (S, 3S, 3) uint8."""
    return np.hstack([source, reference, result])


def run_transfer(
    sources: Sequence[str],
    references: Sequence[str],
    out_dir: Path,
    engine: Engine,
    settings: TransferSettings,
    options: RunOptions,
) -> tuple[BatchRunner, Summary]:
    """Transfer every planned pair into `out_dir` through `engine`."""
    refuse_output_as_input(out_dir, [*sources, *references])
    pairs = plan_pairs(sources, references, settings.pairs, exclude=[out_dir])
    params = {**settings.as_params(), **engine.settings()}
    runner = BatchRunner("transfer", out_dir, params, options)
    cache = FaceCache(engine, out_dir / FACES_DIR)
    items = [
        WorkItem(key=p.key, inputs=(p.source.path, p.reference.path), out_stem=p.out_stem, payload=p)
        for p in pairs
    ]
    engine_info = {k: v for k, v in engine.settings().items() if k in ("engine", "level", "steps")}

    def process_batch(batch: list[WorkItem]) -> list[Any]:
        outcomes: list[Any] = [None] * len(batch)
        jobs: list[PairJob] = []
        ready: list[tuple[int, Pair, PreparedFace, PreparedFace]] = []
        for index, item in enumerate(batch):
            pair: Pair = item.payload
            try:
                src = cache.get(pair.source, "source")
                ref = cache.get(pair.reference, "reference")
            except InputError as exc:
                outcomes[index] = exc
                continue
            seed = pair_seed(settings.seed, pair)
            jobs.append(PairJob(src.state, ref.state, seed))
            ready.append((index, pair, src, ref))
        if jobs:
            results = engine.transfer_batch(jobs)
            for (index, pair, src, ref), result, job in zip(ready, results, jobs, strict=True):
                try:
                    outcomes[index] = _write_pair(out_dir, pair, src, ref, result, settings, cache, job.seed)
                except Exception as exc:  # recorded against this pair; the batch goes on
                    outcomes[index] = exc
        for outcome in outcomes:
            if isinstance(outcome, tuple):
                outcome[1].update(engine_info)
        return outcomes

    def done_outputs(item: WorkItem) -> list[Path]:
        extras = [
            suffix
            for suffix, wanted in (("_crop.png", settings.crop), ("_grid.jpg", settings.grid))
            if wanted
        ]
        return [output_file(out_dir, item.out_stem, suffix) for suffix in (".png", *extras)]

    summary = runner.run(
        items, done_outputs=done_outputs, process_batch=process_batch, batch_size=engine.batch_size
    )
    return runner, summary


def _write_pair(
    out_dir: Path,
    pair: Pair,
    src: PreparedFace,
    ref: PreparedFace,
    result: np.ndarray,
    settings: TransferSettings,
    cache: FaceCache,
    seed: int,
) -> tuple[list[Path], dict[str, Any]]:
    written: list[Path] = []
    main = output_file(out_dir, pair.out_stem, ".png")
    if src.aligned is not None:
        photo = read_image(pair.source.path)
        final = paste_back(
            photo,
            result,
            src.aligned.matrix,
            crop_mask=paste_mask(src.parts.labels),
            feather=0.03,
            original_crop=src.parts.image,
        )
    else:
        final = result
    write_bytes_atomic(main, encode_image(final, ".png"))
    written.append(main)
    if settings.crop:
        crop_path = output_file(out_dir, pair.out_stem, "_crop.png")
        write_bytes_atomic(crop_path, encode_image(result, ".png"))
        written.append(crop_path)
    if settings.grid:
        grid_path = output_file(out_dir, pair.out_stem, "_grid.jpg")
        strip = grid_strip(src.parts.image, ref.parts.image, result)
        write_bytes_atomic(grid_path, encode_image(strip, ".jpg", jpeg_quality=95))
        written.append(grid_path)
    extra = {
        "source": display_path(pair.source.path),
        "reference": display_path(pair.reference.path),
        "seed": seed,
        "source_parts": cache.parts_path(pair.source, "source"),
        "reference_parts": cache.parts_path(pair.reference, "reference"),
        "size": [int(final.shape[1]), int(final.shape[0])],
    }
    return written, extra
