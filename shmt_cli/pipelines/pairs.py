"""Which pairs a `shmt transfer` run makes: every source × every reference, sorted pairs, or a pairs
table (CSV), and what each pair is called and seeded with."""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from shmt_cli.imageio import IMAGE_EXTENSIONS
from shmt_cli.inputs import InputFile, UsageError, collect_inputs, display_path, require_inputs

PAIR_MODES = ("all", "zip")


@dataclass(frozen=True)
class Pair:
    """One source × reference pair and the output name stem it writes."""

    source: InputFile
    reference: InputFile
    out_stem: PurePosixPath

    @property
    def key(self) -> str:
        return f"{self.source.key} | {self.reference.key}"


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
        return csv_pairs(table.rows, table.base)
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


def csv_pairs(rows: list[tuple[str, str, str | None]], base: Path = Path(".")) -> list[Pair]:
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


def check_pair_inputs(sources: Sequence[str], references: Sequence[str], pairs: str) -> None:
    """UsageError unless there is a source and a reference, or a pairs CSV names them."""
    if pairs in PAIR_MODES and (not sources or not references):
        raise UsageError("give a source and a reference (file or folder), or --pairs FILE.csv")
