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
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import cv2
import numpy as np

from shmt_cli.atomic import write_bytes_atomic, write_json_atomic
from shmt_cli.batch import BatchRunner, RunOptions, StreamFn, Summary, WorkItem
from shmt_cli.decompose import FaceParts, analyse_face, load_parts, save_parts
from shmt_cli.engines.base import Engine, EngineUnavailable, PairJob
from shmt_cli.engines.classic import REGIONS
from shmt_cli.engines.registry import create_engine
from shmt_cli.face.align import AlignedFace, crop_face, paste_back
from shmt_cli.face.labels import EYES_MOUTH_LABELS, FACE_LABELS
from shmt_cli.face.search import find_faces
from shmt_cli.imageio import (
    IMAGE_EXTENSIONS,
    OUTPUT_FORMATS,
    InputError,
    encode_image,
    encode_photo,
    output_format,
    read_image,
    read_photo,
)
from shmt_cli.inputs import InputFile, UsageError, collect_inputs, display_path, output_file, require_inputs
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
    all_faces: bool = False
    #: Output format: "same" (the source's: JPEG stays JPEG), "png", "jpg" or "webp"; quality for jpg/webp.
    format: str = "same"
    quality: int | None = None
    #: Keep each face's crop, parsing and landmarks under out/faces/ (what `shmt evaluate` reads).
    keep_faces: bool = True

    def main_suffix(self, source: Path) -> str:
        """The main output's suffix for a source (`.jpg` for a JPEG source by default)."""
        return OUTPUT_FORMATS[output_format(source, self.format)][1]

    def as_params(self, pairs_digest: str | None = None, uses_seed: bool = True) -> dict[str, Any]:
        """What the parameter hash covers: a pairs table by its content (`pairs_digest`), never by its
        name; the seed only for engines that draw noise."""
        params: dict[str, Any] = {"pairs": self.pairs if pairs_digest is None else f"table:{pairs_digest}"}
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


@dataclass
class PreparedPhoto:
    """The faces of one input ready for pairing (best first: the one used when only one is) and what
    the face search did (manifest fields: faces found, quarter turn, rejected detections)."""

    faces: list[PreparedFace]
    search: dict[str, Any]

    @property
    def best(self) -> PreparedFace:
        return self.faces[0]


def pair_stem(source: InputFile, reference: InputFile) -> PurePosixPath:
    """`<source folders>/<source>__<reference with / as _>`: one output per pair, no collisions."""
    flat_reference = "_".join(reference.rel.parts)
    return source.rel.parent / f"{source.rel.name}__{flat_reference}"


def pair_seed(seed: int, pair: Pair, face_index: int = 0) -> int:
    """A pair's own noise seed: the same whatever the batch size or the order of the run. Further faces
    of a group photo (--all-faces) get their own; the best face keeps the single-face seed."""
    blob = f"{seed}|{pair.source.rel}|{pair.reference.rel}".encode("utf-8", "surrogateescape")
    if face_index:
        blob += f"|face{face_index}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") & ((1 << 63) - 1)


def _safe_stem(text: str) -> PurePosixPath:
    stem = PurePosixPath(text.replace("\\", "/"))
    if stem.is_absolute() or ".." in stem.parts or not stem.parts:
        raise UsageError(f"output name {text!r} in the pairs file must be a relative path without '..'")
    return stem.with_suffix("") if stem.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") else stem


@dataclass(frozen=True)
class PairsTable:
    """A pairs file as read: its rows, the folder its relative paths start from, a hash of its text."""

    rows: list[tuple[str, str, str | None]]
    base: Path
    digest: str


def load_pairs_table(given: str) -> PairsTable:
    """Read `--pairs FILE` (or `-`: stdin). Relative paths in a file are relative to the file's folder
    (so a table travels with its photos and works from any current folder); on stdin, to the current
    folder. The digest is of the text, not the name: a dated copy of the same table resumes a run."""
    if given == "-":
        import sys

        raw = sys.stdin.buffer.read()
        where, base = "pairs on stdin", Path(".")
    else:
        path = Path(given)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read pairs file {display_path(path)}: {exc.strerror or exc}") from exc
        where, base = display_path(path), path.parent
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    rows = parse_pairs_csv(text, where)
    return PairsTable(rows, base, hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])


def read_pairs_csv(path: Path) -> list[tuple[str, str, str | None]]:
    """Rows `source,reference[,output]` of a pairs file (a header row naming `source` is skipped)."""
    return load_pairs_table(str(path)).rows


def parse_pairs_csv(text: str, where: str) -> list[tuple[str, str, str | None]]:
    """Rows `source,reference[,output]` of a pairs table's text; `where` names it in errors."""
    rows = []
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and cells[0].lower() == "source":
            continue
        if len(cells) not in (2, 3):
            raise UsageError(f"{where} line {number}: expected source,reference[,output]")
        if not cells[0] or not cells[1]:
            raise UsageError(f"{where} line {number}: the source or the reference is empty")
        rows.append((cells[0], cells[1], cells[2] if len(cells) == 3 and cells[2] else None))
    if not rows:
        raise UsageError(f"{where} lists no pairs")
    return rows


def collect_faces(
    paths: Sequence[str], exclude: Sequence[Path] = (), optional: Collection[str] = frozenset()
) -> list[InputFile]:
    """Faces to pair: photos and aligned crops, or the parts files of a `shmt decompose` folder.

    In a folder that holds parts files (`<name>.safetensors`), only those are taken: its PNGs are the
    decomposition's previews, not faces.
    """
    parts_folders = {
        f.path.parent
        for f in collect_inputs(paths, extensions=(".safetensors",), exclude=exclude, optional=optional)
    }

    def is_face(path: Path) -> bool:
        return path.suffix.lower() == ".safetensors" or path.parent not in parts_folders

    return collect_inputs(
        paths,
        extensions=(*IMAGE_EXTENSIONS, ".safetensors"),
        exclude=exclude,
        keep=is_face,
        optional=optional,
    )


def plan_pairs(
    sources: Sequence[str],
    references: Sequence[str],
    mode: str,
    exclude: Sequence[Path] = (),
    optional: Collection[str] = frozenset(),
) -> list[Pair]:
    """The pairs of a run. `all`: every reference × every source (reference-major); `zip`: sorted,
    pairwise; otherwise `mode` is a CSV file of pairs. Folders in `exclude` (the output) are not searched;
    sources in `optional` (read from a list) that are missing fail as pairs instead of stopping the run."""
    if mode not in PAIR_MODES:
        table = load_pairs_table(mode)
        return _csv_pairs(table.rows, table.base)
    faces = (*IMAGE_EXTENSIONS, ".safetensors")
    src_files = require_inputs(collect_faces(sources, exclude, optional), sources, faces)
    ref_files = require_inputs(collect_faces(references, exclude), references, faces)
    if mode == "zip":
        if len(src_files) != len(ref_files):
            raise UsageError(
                f"--pairs zip needs as many sources ({len(src_files)}) as references ({len(ref_files)})"
            )
        return [Pair(s, r, pair_stem(s, r)) for s, r in zip(src_files, ref_files, strict=True)]
    return [Pair(s, r, pair_stem(s, r)) for r in ref_files for s in src_files]


def _csv_pairs(rows: list[tuple[str, str, str | None]], base: Path = Path(".")) -> list[Pair]:
    """Pairs of a CSV table. Relative paths start from `base` (the table's folder). A row naming a
    missing file or a folder becomes a pair that fails (reading it says why), not a stopped run."""

    def located(text: str) -> str:
        return text if os.path.isabs(text) or base == Path(".") else os.path.join(base, text)

    rows = [(located(src), located(ref), out) for src, ref, out in rows]
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


LoadedFace = tuple[FaceParts, "AlignedFace | None"]


def load_faces(
    path: Path, need_render: bool, all_faces: bool = False
) -> tuple[list[LoadedFace], dict[str, Any]]:
    """The faces of a parts file, an aligned crop (with its sidecar) or an ordinary photo, best first,
    and what the face search did. Photos give their best plausible face, or all of them (`all_faces`);
    a face found only in a quarter turn of the photo is aligned upright from the photo as it is."""
    if path.suffix.lower() == ".safetensors":
        return [(load_parts(path), None)], {}
    if has_sidecar(path):
        image, landmarks, source = read_aligned_face(path)
        return [(_analyse(image, landmarks, need_render, source), None)], {}
    photo = read_image(path)
    search = find_faces(photo)
    if not search.faces:
        raise InputError(search.failure())
    height, width = photo.shape[:2]
    chosen = search.faces if all_faces else search.faces[:1]
    loaded: list[LoadedFace] = []
    for index, face in enumerate(chosen):
        aligned = AlignedFace.from_landmarks(
            face.landmarks,
            source_path=display_path(path),
            source_size=(width, height),
            score=face.score,
            face_index=index,
        )
        crop = crop_face(photo, aligned.matrix, IMAGE_SIZE)
        loaded.append((_analyse(crop, aligned.landmarks_crop, need_render, display_path(path)), aligned))
    info = {**search.manifest_fields(), "faces_processed": len(loaded)}
    return loaded, info


def load_face(path: Path, need_render: bool) -> LoadedFace:
    """The best face of a parts file, an aligned crop or a photo (see load_faces)."""
    return load_faces(path, need_render)[0][0]


def faces_note(role: str, info: dict[str, Any]) -> str:
    """A one-line note on what the face search of a source or reference did ('' when nothing to say)."""
    notes = []
    found, processed = info.get("faces_found", 1), info.get("faces_processed", 1)
    if found > processed:
        hint = " (--all-faces for every face)" if role == "source" else ""
        notes.append(f"{role}: {found} faces found, {processed} processed{hint}")
    if info.get("rotation"):
        notes.append(f"{role}: face found with the photo turned {info['rotation']}° counter-clockwise")
    return "; ".join(notes)


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


def check_pair_inputs(sources: Sequence[str], references: Sequence[str], pairs: str) -> None:
    """UsageError unless there is a source and a reference, or a pairs CSV names them."""
    if pairs in PAIR_MODES and (not sources or not references):
        raise UsageError("give a source and a reference (file or folder), or --pairs FILE.csv")


def check_output_format(name: str) -> None:
    """UsageError unless `name` is `same` or an output format."""
    if name != "same" and name not in OUTPUT_FORMATS:
        raise UsageError(f"--format must be same, {', '.join(OUTPUT_FORMATS)}; got {name!r}")


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


#: Reads the faces of an input (file, role "source" or "reference") as load_faces does: (parts, alignment
#: for photos) per face, best first, and what the face search did.
FaceLoader = Callable[[InputFile, str], "tuple[list[LoadedFace], dict[str, Any]]"]


def face_file(faces_dir: Path, face: InputFile, role: str, suffix: str, index: int = 0) -> Path:
    """Where a prepared face is kept: `<faces_dir>/<role>s/<rel><suffix>` (.safetensors or .json); the
    further faces of a group photo (`index` >= 1, --all-faces) at `<rel>.face<index><suffix>`."""
    more = f".face{index}" if index else ""
    return output_file(faces_dir / f"{role}s", face.rel, f"{more}{suffix}")


def save_face(
    faces_dir: Path, face: InputFile, role: str, parts: FaceParts, aligned: AlignedFace | None, index: int = 0
) -> None:
    """Write a prepared face's compact parts file and, for a photo, its alignment (both atomically)."""
    save_parts(face_file(faces_dir, face, role, ".safetensors", index), parts, compact=True)
    if aligned is not None:
        write_json_atomic(face_file(faces_dir, face, role, ".json", index), aligned.to_json_dict())


class FaceCache:
    """Prepared photos by path (or the error that prevented preparing them), least recently used out.

    By default a photo's faces are read from its input (searched, aligned, parsed, rendered) and the best
    one is kept in `faces_dir`; with `load`, they are read by that function instead (e.g. from files that
    other workers wrote) and nothing is written.
    """

    def __init__(
        self,
        engine: Engine,
        faces_dir: Path | None,
        capacity: int = FACE_CACHE_SIZE,
        all_faces: bool = False,
        load: FaceLoader | None = None,
    ) -> None:
        self.engine = engine
        self.faces_dir = faces_dir
        self.capacity = capacity
        self.all_faces = all_faces
        self.load = load
        self._entries: OrderedDict[tuple[str, Path], PreparedPhoto | Exception] = OrderedDict()

    def get(self, face: InputFile, role: str) -> PreparedPhoto:
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

    def _prepare(self, face: InputFile, role: str) -> PreparedPhoto | Exception:
        try:
            if self.load is not None:
                loaded, info = self.load(face, role)
            else:
                loaded, info = load_faces(
                    face.path, need_render=self.needs_render(role), all_faces=self.wants_all(role)
                )
            prepared = []
            for parts, aligned in loaded:
                state = (
                    self.engine.prepare_source(parts)
                    if role == "source"
                    else self.engine.prepare_reference(parts)
                )
                prepared.append(PreparedFace(parts, aligned, state))
            if self.faces_dir is not None and self.load is None:
                # The best face is what `evaluate` measures.
                self.save(face, role, *loaded[0])
            return PreparedPhoto(prepared, info)
        except (InputError, ValueError) as exc:
            return exc

    def needs_render(self, role: str) -> bool:
        """Whether a face in `role` needs its 3D render (only sources, and only for some engines)."""
        return role == "source" and self.engine.needs_render

    def wants_all(self, role: str) -> bool:
        """Whether every face of a photo in `role` is made up (--all-faces: sources only)."""
        return role == "source" and self.all_faces

    def save(self, face: InputFile, role: str, parts: FaceParts, aligned: AlignedFace | None) -> None:
        """Keep each face's crop, parsing and alignment for `shmt evaluate` (written once)."""
        assert self.faces_dir is not None
        if not face_file(self.faces_dir, face, role, ".safetensors").exists():
            save_face(self.faces_dir, face, role, parts, aligned)

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
) -> tuple[BatchRunner, Summary]:
    """Transfer every planned pair into `out_dir` through `engine`, in this process or on `executor`."""
    refuse_output_as_input(out_dir, [*sources, *references])
    digest = None
    if settings.pairs in PAIR_MODES:
        pairs = plan_pairs(sources, references, settings.pairs, [out_dir], options.listed_inputs)
    else:
        table = load_pairs_table(settings.pairs)  # read once: stdin cannot be read twice
        pairs, digest = _csv_pairs(table.rows, table.base), table.digest
    uses_seed = getattr(engine, "uses_seed", True)
    params = {**settings.as_params(digest, uses_seed), **engine.settings()}
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
    cache = FaceCache(engine, faces_dir, all_faces=settings.all_faces)

    def process_batch(batch: list[WorkItem]) -> list[Any]:
        return transfer_pairs([item.payload for item in batch], engine, cache, settings, out_dir)

    summary = runner.run(
        items, done_outputs=done_outputs, process_batch=process_batch, batch_size=engine.batch_size
    )
    return runner, summary


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
    if jobs:
        results = iter(engine.transfer_batch(jobs))
        for index, pair, src, ref in ready:
            # Every face of this pair's source, in order: one result each.
            mine = [next(results) for _ in src.faces]
            seed = pair_seed(settings.seed, pair)
            try:
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
        final, info = read_photo(pair.source.path)
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
