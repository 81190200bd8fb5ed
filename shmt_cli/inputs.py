"""Finding the inputs of a batch: files, folders, lists from pipelines; stable output names; shards."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from shmt_cli.imageio import IMAGE_EXTENSIONS
from shmt_cli.manifest import earlier_names


class UsageError(Exception):
    """The command line itself is wrong (exit code 2)."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def display_path(path: str | os.PathLike[str]) -> str:
    """A printable one-line form of a path, also for names that are not UTF-8 or hold control characters.

    Undecodable bytes and control characters (a newline in a file name) become `\\xNN` escapes, so a
    report about the file stays on one line.
    """
    text = os.fsencode(path).decode("utf-8", errors="backslashreplace")
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


@dataclass(frozen=True)
class InputFile:
    """One input found on the command line: its path and the relative name its outputs derive from.

    `rel` keeps the folder structure below a folder argument (so `a/x.jpg` and `b/x.jpg` never
    collide) and has no suffix; it never contains `..` or an absolute part.
    """

    path: Path
    rel: PurePosixPath

    @property
    def key(self) -> str:
        return display_path(self.path)


def output_file(out_dir: Path, stem: PurePosixPath, suffix: str) -> Path:
    """`out_dir/stem<suffix>`; unlike Path.with_suffix it keeps dots inside the stem (`my.photo`)."""
    return out_dir / stem.parent / f"{stem.name}{suffix}"


def _folder_id(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _walk_images(
    root: Path, extensions: Sequence[str], skip: frozenset[tuple[int, int] | None] = frozenset()
) -> Iterator[Path]:
    """Image files below `root`, following symlinked folders once (symlink loops are cut).

    Folders whose (st_dev, st_ino) is in `skip` are not entered unless they are `root` itself. A
    sub-folder that cannot be listed is yielded itself (reading it reports why).
    """
    seen = set(skip) - {_folder_id(root)}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
        except OSError:
            continue
        ident = (info.st_dev, info.st_ino)
        if ident in seen:
            continue
        seen.add(ident)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: os.fsencode(e.name))
        except OSError:
            # Yielded so that the batch reports it as one failed input instead of silently skipping it.
            if folder != root:
                yield folder
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                stack.append(path)
            elif path.suffix.lower() in extensions:
                yield path


def read_file_list(source: str) -> list[str]:
    """Paths listed one per line in a file, or on stdin for `-` (blank lines and `#` comments skipped)."""
    if source == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --files-from {source}: {exc.strerror or exc}") from exc
    names = []
    for raw in data.replace(b"\0", b"\n").splitlines():
        line = raw.rstrip(b"\r")
        if line.strip() and not line.lstrip().startswith(b"#"):
            names.append(os.fsdecode(line))
    return names


def _is_own_metadata(path: Path, extensions: Sequence[str]) -> bool:
    """A sidecar (`x.json` beside `x.png`) or manifest that a shell glob like `aligned/*` names too."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl" and path.name.startswith("manifest"):
        return True
    return suffix == ".json" and any(path.with_suffix(ext).exists() for ext in extensions)


def collect_inputs(
    paths: Sequence[str | os.PathLike[str]],
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    exclude: Sequence[str | os.PathLike[str]] = (),
    keep: Callable[[Path], bool] | None = None,
    optional: Collection[str] = frozenset(),
) -> list[InputFile]:
    """Expand files and folders (recursively) into a sorted, de-duplicated, collision-free input list.

    `keep(path)` filters the files found inside folders before output names are made. Paths in
    `optional` (read from a list) that do not exist are kept as inputs, so they fail one by one.

    A named file is taken whatever its suffix (reading it reports what is wrong), except our own
    sidecars and manifests that a glob like `aligned/*` names beside the images; inside folders only
    files with one of `extensions` are taken, and folders in `exclude` (the run's output folder: else
    `shmt align photos -o photos/aligned` would align its own crops one level deeper on every run) are
    not searched. A path that does not exist is a UsageError.

    The `exclude` folders are also where earlier runs recorded the names they gave (their manifests'
    input names): a file named there keeps its name whatever appeared beside it since.
    """
    if not paths:
        raise UsageError("no inputs given")
    skip = frozenset(_folder_id(Path(folder)) for folder in exclude) - {None}
    found: list[tuple[Path, PurePosixPath]] = []
    for given in paths:
        path = Path(given)
        if not path.exists() and not path.is_symlink():
            if os.fspath(given) in optional:
                found.append((path, PurePosixPath(path.name)))
                continue
            raise UsageError(f"input not found: {display_path(path)}")
        if path.is_dir():
            below = sorted(_walk_images(path, extensions, skip), key=lambda p: os.fsencode(p))
            for file in below if keep is None else filter(keep, below):
                found.append((file, PurePosixPath(*file.relative_to(path).parts)))
        elif not _is_own_metadata(path, extensions):
            found.append((path, PurePosixPath(path.name)))
    unique: dict[str, tuple[Path, PurePosixPath]] = {}
    for path, rel in found:
        unique.setdefault(os.path.abspath(path), (path, rel))
    earlier: dict[str, PurePosixPath] = {}
    for folder in exclude:
        earlier.update(earlier_names(Path(folder)))
    return _disambiguate(list(unique.values()), earlier)


def require_inputs(
    found: list[InputFile],
    paths: Sequence[str | os.PathLike[str]],
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> list[InputFile]:
    """`found`, or a UsageError naming the folders searched when it is empty (an empty or unmounted
    folder, or one with only formats that are not read: a cron job must not pass silently)."""
    if found:
        return found
    others: dict[str, int] = {}
    for given in paths:
        if os.path.isdir(given):
            for _parent, _dirs, names in os.walk(given):
                for name in names:
                    suffix = os.path.splitext(name)[1].lower() or "(no suffix)"
                    others[suffix] = others.get(suffix, 0) + 1
    where = ", ".join(display_path(p) for p in paths) or "(nothing given)"
    seen = ", ".join(f"{count} {suffix}" for suffix, count in sorted(others.items()))
    detail = f"; files there: {seen}" if seen else " (empty or not mounted?)"
    return_types = ", ".join(extensions)
    raise UsageError(f"no input images found in {where}{detail}; read: {return_types}")


# Output names add suffixes to a stem (`_face12.json`, `_parsing_color.png`): stems longer than this
# many bytes are cut so every output name stays within the 255 bytes file systems allow.
MAX_STEM_BYTES = 200


def _bounded(stem: PurePosixPath) -> PurePosixPath:
    """`stem` with its last part cut to MAX_STEM_BYTES (whole characters, plus a hash of the full name)."""
    if len(os.fsencode(stem.name)) <= MAX_STEM_BYTES:
        return stem
    digest = hashlib.sha256(os.fsencode(stem.name)).hexdigest()[:8]
    kept, size = [], 0
    for char in stem.name:
        size += len(os.fsencode(char))
        if size > MAX_STEM_BYTES - len(digest) - 1:
            break
        kept.append(char)
    return stem.with_name(f"{''.join(kept)}~{digest}")


def _suffix_rank(suffix: str) -> tuple[int, str]:
    """Which of several files sharing a name keeps the plain name: the first in IMAGE_EXTENSIONS order."""
    suffix = suffix.lower()
    order = IMAGE_EXTENSIONS.index(suffix) if suffix in IMAGE_EXTENSIONS else len(IMAGE_EXTENSIONS)
    return order, suffix


def _disambiguate(
    found: list[tuple[Path, PurePosixPath]], earlier: Mapping[str, PurePosixPath] | None = None
) -> list[InputFile]:
    """Drop suffixes from relative names; files sharing a name keep the plain name by a fixed suffix rank
    (`.jpg` before `.png`, ...), the others get `_<suffix>`; then same-named files get ~N.

    The rank depends on the file alone, not on what else is there, so the common case (a `p.png` export
    appearing beside `p.jpg`) never renames the outputs of the file that was there first. The reverse
    case (`p.jpg` appearing beside a processed `p.png`) needs `earlier`: absolute path -> the name an
    earlier run gave the file, kept first; a new file whose plain name is taken gets `_<suffix>`.
    """
    earlier = earlier or {}
    taken: set[PurePosixPath] = set()
    kept: dict[int, PurePosixPath] = {}
    for index, (path, _) in enumerate(found):
        name = earlier.get(os.path.abspath(path))
        if name is not None and name not in taken:
            kept[index] = name
            taken.add(name)
    stems = [rel.with_suffix("") if rel.suffix else rel for _, rel in found]
    best: dict[PurePosixPath, tuple[int, str]] = {}
    for stem, (_, rel) in zip(stems, found, strict=True):
        rank = _suffix_rank(rel.suffix)
        best[stem] = min(best.get(stem, rank), rank)
    result = []
    for index, ((path, rel), stem) in enumerate(zip(found, stems, strict=True)):
        if index in kept:
            result.append(InputFile(path=path, rel=kept[index]))
            continue
        name = stem
        if rel.suffix and (_suffix_rank(rel.suffix) != best[stem] or _bounded(stem) in kept.values()):
            name = stem.with_name(f"{stem.name}_{rel.suffix.lstrip('.').lower()}")
        name = _bounded(name)
        base, n = name, 2
        while name in taken:
            name = base.with_name(f"{base.name}~{n}")
            n += 1
        taken.add(name)
        result.append(InputFile(path=path, rel=name))
    return result


@dataclass(frozen=True)
class Shard:
    """Part `index` (1-based) of `count`: a deterministic partition of work items by a hash of their name."""

    index: int = 1
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        if not text:
            return cls()
        try:
            index_text, count_text = text.split("/")
            index, count = int(index_text), int(count_text)
        except ValueError:
            raise UsageError(f"--shard takes K/N with whole numbers, e.g. 2/8; got {text!r}") from None
        if count < 1:
            raise UsageError(f"--shard {text}: N (the number of shards) must be at least 1")
        if not 1 <= index <= count:
            raise UsageError(f"--shard {text}: K must be between 1 and N ({count})")
        return cls(index, count)

    @property
    def label(self) -> str:
        return f"{self.index}-of-{self.count}"

    def takes(self, name: str) -> bool:
        """Whether this shard owns the item named `name` (stable whatever else is in the list)."""
        if self.count == 1:
            return True
        digest = hashlib.sha256(name.encode("utf-8", errors="surrogateescape")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1
