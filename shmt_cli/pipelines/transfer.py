"""`shmt transfer`: source photos × reference photos → finished photos with the reference's makeup.

Every face is prepared once (aligned, parsed, rendered, engine-prepared) and cached; pairs go to
the engine in batches; each result is pasted back into the source photo at its original size, so
only the face changes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from shmt_cli.atomic import write_bytes_atomic
from shmt_cli.batch import BatchRunner, CannotRun, RunOptions, StreamFn, Summary, WorkItem
from shmt_cli.engines.base import DeviceUnavailable, Engine, EngineOutOfMemory, EngineUnavailable, PairJob
from shmt_cli.engines.registry import create_engine
from shmt_cli.face.align import paste_back
from shmt_cli.face.labels import EYES_MOUTH_LABELS, FACE_LABELS
from shmt_cli.imageio import (
    OUTPUT_FORMATS,
    InputError,
    encode_image,
    encode_photo,
    output_format,
    read_photo,
)
from shmt_cli.inputs import InputFile, UsageError, display_path, output_file
from shmt_cli.pipelines import refuse_output_as_input
from shmt_cli.pipelines.face_cache import FaceCache, PreparedPhoto, faces_note
from shmt_cli.pipelines.pairs import PAIR_MODES, Pair, csv_pairs, load_pairs_table, pair_seed, plan_pairs
from shmt_cli.pipelines.regions import keep_regions, keeps_everything, region_strengths

#: Preparation threads of a local run unless --workers says (chosen from timings: see CHANGELOG).
DEFAULT_WORKERS = 0
#: Batches whose faces the preparation threads (--workers) work ahead on: bounds their memory.
PREPARE_AHEAD = 2
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
    all_faces: bool = False
    #: Output format: "same" (the source's: JPEG stays JPEG), "png", "jpg" or "webp"; quality for jpg/webp.
    format: str = "same"
    quality: int | None = None
    #: Keep each face's crop, parsing and landmarks under out/faces/ (what `shmt evaluate` reads).
    keep_faces: bool = True
    #: --regions (None: all) and --strength, for engines that do not paint regions themselves.
    regions: frozenset[str] | None = None
    strengths: Mapping[str, float] = field(default_factory=dict)

    def main_suffix(self, source: Path) -> str:
        """The main output's suffix for a source (`.jpg` for a JPEG source by default)."""
        return OUTPUT_FORMATS[output_format(source, self.format)][1]

    def region_strengths(self, engine: Engine) -> dict[str, float] | None:
        """Per-region strengths of the post-step on `engine`'s results, or None when there is none (the
        engine paints regions itself, as classic does, or every region is kept at full strength)."""
        if "regions" in engine.settings() or keeps_everything(self.regions, self.strengths):
            return None
        return region_strengths(self.regions, self.strengths)

    def as_params(
        self, pairs_digest: str | None = None, uses_seed: bool = True, regions_step: bool = False
    ) -> dict[str, Any]:
        """What the parameter hash covers: a pairs table by its content (`pairs_digest`), never by its
        name; the seed only for engines that draw noise; the regions when the pipeline applies them
        (`regions_step`), in the classic engine's form."""
        params: dict[str, Any] = {"pairs": self.pairs if pairs_digest is None else f"table:{pairs_digest}"}
        if regions_step:
            params["regions"] = sorted(name for name, on in region_strengths(self.regions, {}).items() if on)
            params["strengths"] = dict(sorted(self.strengths.items()))
        if uses_seed:
            params["seed"] = self.seed
        if self.all_faces:
            params["all_faces"] = True
        # Output encoding is in the hash only when chosen, so folders of earlier runs still resume.
        if self.format != "same":
            params["format"] = self.format
        if self.quality is not None:
            params["quality"] = self.quality
        return params


def check_output_format(name: str) -> None:
    """UsageError unless `name` is `same` or an output format."""
    if name != "same" and name not in OUTPUT_FORMATS:
        raise UsageError(f"--format must be same, {', '.join(OUTPUT_FORMATS)}; got {name!r}")


def open_engine(name: str, options: Mapping[str, Any], weights_dir: Path | None) -> tuple[Engine, str]:
    """The engine for the command line's choice and options (see engines.registry), and the line
    saying which one runs; UsageError when it cannot be built as asked."""
    try:
        check_device(str(options.get("device") or "auto"))
        return create_engine(name, options, weights_dir)
    except (EngineUnavailable, ValueError) as exc:
        raise UsageError(str(exc)) from None


def check_device(device: str) -> None:
    """DeviceUnavailable for a CUDA device on a machine without one, whichever engine `auto` picks:
    `--device cuda` never turns into a silent CPU run."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"--device {device}: no CUDA device is available here (use --device cpu)")


def paste_mask(labels: np.ndarray) -> np.ndarray:
    """(S, S) uint8 region of the crop pasted back: the face interior grown by a few pixels."""
    inside = np.isin(labels, PASTE_LABELS).astype(np.uint8)
    return cv2.dilate(inside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))


def grid_strip(source: np.ndarray, reference: np.ndarray, result: np.ndarray) -> np.ndarray:
    """The official 3-panel strip [source | reference | result], (S, 3S, 3) uint8."""
    return np.hstack([source, reference, result])


class PairExecutor(Protocol):
    """Runs the pending pairs elsewhere (e.g. on a Ray cluster) and streams their outcomes back."""

    def stream(self, out_dir: Path, engine: Engine, settings: TransferSettings) -> StreamFn: ...


def run_transfer(
    sources: Sequence[str],
    references: Sequence[str],
    out_dir: Path,
    engine: Engine,
    settings: TransferSettings,
    options: RunOptions,
    executor: PairExecutor | None = None,
    workers: int = 0,
) -> tuple[BatchRunner, Summary]:
    """Transfer every planned pair into `out_dir` through `engine`, in this process or on `executor`.

    Locally, `workers` threads prepare the faces of the next batches while the engine runs the current
    one (0: faces are prepared in turn, when a batch needs them); results are the same either way."""
    refuse_output_as_input(out_dir, [*sources, *references])
    digest = None
    if settings.pairs in PAIR_MODES:
        pairs = plan_pairs(sources, references, settings.pairs, [out_dir], options.listed_inputs)
    else:
        table = load_pairs_table(settings.pairs)  # read once: stdin cannot be read twice
        pairs, digest = csv_pairs(table.rows, table.base), table.digest
    uses_seed = getattr(engine, "uses_seed", True)
    regions_step = settings.region_strengths(engine) is not None
    params = {**settings.as_params(digest, uses_seed, regions_step), **engine.settings()}
    runner = BatchRunner("transfer", out_dir, params, options)
    items = [
        WorkItem(
            key=p.key,
            inputs=(p.source.path, p.reference.path),
            out_stem=p.out_stem,
            payload=p,
            input_names=(p.source.rel, p.reference.rel),
        )
        for p in pairs
    ]

    def done_outputs(item: WorkItem) -> list[Path]:
        return pair_outputs(out_dir, item.payload, settings)

    if executor is not None:
        stream = executor.stream(out_dir, engine, settings)
        return runner, runner.run(items, done_outputs=done_outputs, process_stream=stream)
    faces_dir = out_dir / FACES_DIR if settings.keep_faces else None
    # Pairs this run will most likely process, in order: what the preparation threads work ahead on.
    todo = [
        item
        for item in (items if workers > 0 else ())
        if options.shard.takes(str(item.out_stem))
        and (options.overwrite or not all(path.exists() for path in done_outputs(item)))
    ]
    position = {id(item): index for index, item in enumerate(todo)}
    ahead = PREPARE_AHEAD * engine.batch_size
    with FaceCache(engine, faces_dir, all_faces=settings.all_faces, workers=workers) as cache:

        def process_batch(batch: list[WorkItem]) -> list[Any]:
            start = position.get(id(batch[-1]), len(todo)) + 1
            # The threads work on the next batches' faces; this batch's are prepared here if not yet.
            cache.prefetch(_faces([item.payload for item in todo[start : start + ahead]]))
            return transfer_pairs([item.payload for item in batch], engine, cache, settings, out_dir)

        summary = runner.run(
            items, done_outputs=done_outputs, process_batch=process_batch, batch_size=engine.batch_size
        )
    return runner, summary


def _faces(pairs: Sequence[Pair]) -> Iterator[tuple[InputFile, str]]:
    """The (face, role) entries `pairs` read, in order."""
    for pair in pairs:
        yield pair.source, "source"
        yield pair.reference, "reference"


def out_of_memory_message(exc: EngineOutOfMemory) -> str:
    """The one line a run stopped by running out of memory ends with: what happened and what to try."""
    what = str(exc).splitlines()[0] if str(exc) else "out of memory at batch size 1"
    return f"{what}; try --dtype bf16 (fp16 on CUDA) or a smaller --batch-size"


def pair_outputs(out_dir: Path, pair: Pair, settings: TransferSettings) -> list[Path]:
    """The files one pair writes: its main output (in the format `settings` gives for its source), plus
    `_crop.png` / `_grid.jpg` when asked for."""
    extras = [
        suffix for suffix, wanted in (("_crop.png", settings.crop), ("_grid.jpg", settings.grid)) if wanted
    ]
    main = settings.main_suffix(pair.source.path)
    return [output_file(out_dir, pair.out_stem, suffix) for suffix in (main, *extras)]


def transfer_pairs(
    pairs: Sequence[Pair], engine: Engine, cache: FaceCache, settings: TransferSettings, out_dir: Path
) -> list[Any]:
    """One engine batch: each pair's outcome, in order: (written paths, manifest fields) or the
    exception that failed that pair (a face that cannot be prepared fails only its pairs). Every face of
    a source prepared with --all-faces is one engine job, all pasted into the pair's one output."""
    outcomes: list[Any] = [None] * len(pairs)
    jobs: list[PairJob] = []
    ready: list[tuple[int, Pair, PreparedPhoto, PreparedPhoto]] = []
    for index, pair in enumerate(pairs):
        try:
            src = cache.get(pair.source, "source")
            ref = cache.get(pair.reference, "reference")
        except InputError as exc:
            outcomes[index] = exc
            continue
        for face_index, face in enumerate(src.faces):
            jobs.append(PairJob(face.state, ref.best.state, pair_seed(settings.seed, pair, face_index)))
        ready.append((index, pair, src, ref))
    strengths = settings.region_strengths(engine)
    if jobs:
        try:
            results = iter(engine.transfer_batch(jobs))
        except EngineOutOfMemory as exc:  # the engine already retried with smaller batches: stop the run
            raise CannotRun(out_of_memory_message(exc)) from None
        for index, pair, src, ref in ready:
            # Every face of this pair's source, in order: one result each.
            mine = [next(results) for _ in src.faces]
            seed = pair_seed(settings.seed, pair)
            try:
                if strengths is not None:
                    faces = zip(mine, src.faces, strict=True)
                    mine = [keep_regions(crop, face.parts, strengths) for crop, face in faces]
                outcomes[index] = _write_pair(out_dir, pair, src, ref, mine, settings, cache, seed)
            except Exception as exc:  # recorded against this pair; the batch goes on
                outcomes[index] = exc
    engine_info = {k: v for k, v in engine.settings().items() if k in ("engine", "level", "steps")}
    for outcome in outcomes:
        if isinstance(outcome, tuple):
            outcome[1].update(engine_info)
    return outcomes


def _write_pair(
    out_dir: Path,
    pair: Pair,
    src_photo: PreparedPhoto,
    ref_photo: PreparedPhoto,
    results: list[np.ndarray],
    settings: TransferSettings,
    cache: FaceCache,
    seed: int,
) -> tuple[list[Path], dict[str, Any]]:
    """Paste every face's result into the source photo (or keep the crop for aligned inputs) and write."""
    written: list[Path] = []
    fmt = output_format(pair.source.path, settings.format)
    main = output_file(out_dir, pair.out_stem, settings.main_suffix(pair.source.path))
    info = None
    src, ref, result = src_photo.best, ref_photo.best, results[0]
    if src.aligned is not None:
        # Decoded when the face was prepared (once per run), unless the cache had to drop it since.
        final, info = src_photo.photo or read_photo(pair.source.path)
        photo = final
        for face, face_result in zip(src_photo.faces, results, strict=True):
            assert face.aligned is not None
            final = paste_back(
                final,
                face_result,
                face.aligned.matrix,
                crop_mask=paste_mask(face.parts.labels),
                feather=0.03,
                original_crop=face.parts.image,
            )
    else:
        final = result
    if info is not None and info.straight_rgb is not None:
        # A transparent photo: faces were found on it composited over white; outside the changed
        # pixels its own colour under the alpha is kept, so re-applying the alpha gives the photo back.
        changed = (final != photo).any(axis=2, keepdims=True)
        final = np.where(changed, final, info.straight_rgb)
    write_bytes_atomic(main, encode_photo(final, fmt, info, settings.quality))
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
        **src_photo.search,
        **{f"reference_{key}": value for key, value in ref_photo.search.items() if key != "faces_processed"},
    }
    notes = (faces_note("source", src_photo.search), faces_note("reference", ref_photo.search))
    # The face searches, then what the engine did differently for this source (classic: a gray photo).
    note = "; ".join(n for n in (*notes, getattr(src.state, "note", "")) if n)
    if note:
        extra["note"] = note
    return written, extra
