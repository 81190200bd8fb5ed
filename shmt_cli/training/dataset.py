"""Training data for `shmt train`: prepared faces, seeded augmented samples, data order and validation.

DATA folders hold ordinary photos (or `shmt align` crops) or `shmt decompose` output folders (parts
files). Photos are aligned and decomposed once with the project's own pipeline (the same `load_face` as
`shmt transfer`) and cached under RUN/cache/faces/ as parts files keyed by the photo's content, so a
second epoch, a resumed run or a new run on the same RUN/ does not redo them. A photo that cannot be
used (unreadable, no face) is reported once as one line and skipped; that verdict is cached too.

Randomness is explicit: a training item's augmentation is drawn from a generator seeded by (run seed,
epoch, index), and the data order of every epoch is a permutation seeded by (run seed, epoch), so a
resumed run that restarts the stream at the number of samples already consumed sees the same samples.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from shmt_cli import __version__
from shmt_cli.atomic import write_json_atomic
from shmt_cli.decompose import PARTS_FORMAT, load_parts, save_parts
from shmt_cli.face.labels import NUM_LABELS
from shmt_cli.imageio import InputError
from shmt_cli.inputs import display_path
from shmt_cli.pipelines.transfer import collect_faces, load_face
from shmt_cli.representations import IMAGE_SIZE
from shmt_cli.training.sample import make_sample

CACHE_FOLDER = Path("cache") / "faces"
# Changing how photos are prepared must not reuse old cache entries: the key includes this signature.
PREPARATION = f"{PARTS_FORMAT};size={IMAGE_SIZE};shmt={__version__}"
# Independent random streams derived from the run seed.
TRAIN_STREAM, VALIDATION_STREAM, ORDER_STREAM = 0, 1, 2
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFailure:
    """An input that cannot be trained on: its path (printable) and the one-line reason."""

    path: str
    reason: str

    def line(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class PreparedFace:
    """A usable face: the input it came from (printable) and the parts file that holds it."""

    name: str
    parts_path: Path


# ----------------------------------------------------------------------------------------------------
# Preparation (I/O, once per input).


def photo_cache_key(path: Path) -> str:
    """sha256 of the photo's bytes and of PREPARATION (hex): moving or renaming a photo keeps its entry."""
    digest = hashlib.sha256(PREPARATION.encode())
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_faces(
    data: Sequence[str | os.PathLike[str]],
    run_dir: Path,
    report: Callable[[DataFailure], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[PreparedFace], list[DataFailure]]:
    """Find every face in ``data`` and make sure it has a parts file; returns (faces, failures).

    Inputs are found as `shmt transfer` finds faces (folders recursively, sorted; in a folder holding
    parts files only those). Parts files are checked by reading them; photos are aligned, parsed and
    rendered into RUN/cache/faces/<key>.safetensors (atomically) unless that exists. ``report`` is
    called once per failure as it happens, ``progress(done, total)`` after each input.
    """
    cache_dir = Path(run_dir) / CACHE_FOLDER
    files = collect_faces([os.fspath(p) for p in data], exclude=[Path(run_dir)])
    faces: list[PreparedFace] = []
    failures: list[DataFailure] = []
    for done, found in enumerate(files, start=1):
        name = display_path(found.path)
        try:
            faces.append(PreparedFace(name, _prepared_parts(found.path, cache_dir)))
        except Exception as exc:  # one bad input fails itself, not the run
            failure = DataFailure(name, _reason(exc))
            failures.append(failure)
            if report is not None:
                report(failure)
        if progress is not None:
            progress(done, len(files))
    return faces, failures


def _prepared_parts(path: Path, cache_dir: Path) -> Path:
    if path.suffix.lower() == ".safetensors":
        parts = load_parts(path)  # raises InputError naming what is wrong
        if parts.labels.size and int(parts.labels.max()) >= NUM_LABELS:
            raise InputError(f"parsing labels go up to {int(parts.labels.max())}, not 0..{NUM_LABELS - 1}")
        return path
    key = photo_cache_key(path)
    parts_path = cache_dir / f"{key}.safetensors"
    failed_path = cache_dir / f"{key}.failed.json"
    if parts_path.is_file():
        return parts_path
    if failed_path.is_file():
        raise InputError(json.loads(failed_path.read_text(encoding="utf-8"))["reason"])
    try:
        parts, _ = load_face(path, need_render=True)
    except InputError as exc:
        # The photo itself is unusable (bad file, no face): the same bytes will fail again.
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(failed_path, {"input": display_path(path), "reason": _reason(exc)})
        raise
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_parts(parts_path, parts)
    return parts_path


def _reason(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        message = str(exc)
    elif isinstance(exc, OSError):
        message = exc.strerror or type(exc).__name__
    else:
        message = f"internal error {type(exc).__name__}: {exc}"
    return message.splitlines()[0] if message else "failed"


# ----------------------------------------------------------------------------------------------------
# Seeds and order (pure).


def item_rng(seed: int, epoch: int, index: int, stream: int = TRAIN_STREAM) -> np.random.Generator:
    """The generator of one item's augmentation: a function of (stream, run seed, epoch, item index) only."""
    return np.random.default_rng([stream, seed, epoch, index])


def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    """The data order of one epoch: a permutation of range(size) seeded by (run seed, epoch), int64."""
    return np.random.default_rng([ORDER_STREAM, seed, epoch]).permutation(size)


class SampleStream(Sampler[tuple[int, int]]):
    """Endless (epoch, index) keys for TrainingDataset: epoch 0's order, then epoch 1's, and so on.

    Global position p is (p // size, epoch_order(size, seed, p // size)[p % size]). Process ``rank`` of
    ``world_size`` takes positions start + rank, start + rank + world_size, ...; together the processes
    read the global stream in order. To resume, pass ``start`` = samples consumed by all processes so far
    (steps × batch × grad-accum × world size). Use it as a DataLoader ``sampler`` with a ``batch_size``.
    """

    def __init__(self, size: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if size < 1:
            raise ValueError("no training faces")
        if not 0 <= rank < world_size or start < 0:
            raise ValueError(f"bad stream position: start {start}, rank {rank} of {world_size}")
        self.size, self.seed, self.start, self.rank, self.world_size = size, seed, start, rank, world_size

    def key(self, position: int) -> tuple[int, int]:
        """The (epoch, index) at a global stream position."""
        epoch, offset = divmod(position, self.size)
        return epoch, int(epoch_order(self.size, self.seed, epoch)[offset])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start + self.rank
        epoch, order = -1, np.empty(0, np.int64)
        while True:
            current, offset = divmod(position, self.size)
            if current != epoch:
                epoch, order = current, epoch_order(self.size, self.seed, current)
            yield epoch, int(order[offset])
            position += self.world_size


# ----------------------------------------------------------------------------------------------------
# Datasets.


def _face_sample(face: PreparedFace, rng: np.random.Generator) -> dict[str, Any]:
    parts = load_parts(face.parts_path)
    sample: dict[str, Any] = make_sample(parts.image, parts.labels, parts.render, rng)
    sample["name"] = face.name
    return sample


class TrainingDataset(Dataset):
    """Augmented self-pairs of prepared faces (see ``sample.sample_tensors`` for the tensors; each item
    also carries ``name`` (str) and ``index`` (int)).

    Keys are an index (uses ``self.epoch``, see ``set_epoch``) or an (epoch, index) pair (from
    ``SampleStream``, which is safe with DataLoader workers); an item's augmentation depends only on
    (seed, epoch, index).
    """

    def __init__(
        self, faces: Sequence[PreparedFace], seed: int = 0, failures: Sequence[DataFailure] = ()
    ) -> None:
        if seed < 0:
            raise ValueError(f"the seed must be >= 0, got {seed}")
        self.faces = list(faces)
        self.seed = seed
        self.epoch = 0
        self._failures = list(failures)

    @classmethod
    def from_folders(
        cls,
        data: Sequence[str | os.PathLike[str]],
        run_dir: Path,
        seed: int = 0,
        report: Callable[[DataFailure], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> TrainingDataset:
        """Prepare ``data`` (see ``prepare_faces``) and build the dataset over the usable faces."""
        faces, failures = prepare_faces(data, run_dir, report, progress)
        return cls(faces, seed, failures)

    def failures(self) -> list[DataFailure]:
        """The inputs that were reported and skipped while preparing."""
        return list(self._failures)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        sample = _face_sample(self.faces[index], item_rng(self.seed, epoch, index))
        sample["index"] = index
        return sample


class ValidationSet(Dataset):
    """A fixed validation set of self-pairs: ``count`` faces chosen by the seed (all when fewer), each
    with one augmentation fixed by (seed, face index): the same tensors at every evaluation and on resume.
    Items are built like TrainingDataset's (same keys)."""

    def __init__(self, faces: Sequence[PreparedFace], count: int = 8, seed: int = 0) -> None:
        chosen = np.random.default_rng([VALIDATION_STREAM, seed]).permutation(len(faces))[:count]
        self.faces = list(faces)
        self.indices = sorted(int(i) for i in chosen)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Any]:
        index = self.indices[position]
        sample = _face_sample(self.faces[index], item_rng(self.seed, 0, index, VALIDATION_STREAM))
        sample["index"] = index
        return sample


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV and one torch thread per worker (many workers already
    use the cores; extra threads only contend)."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
