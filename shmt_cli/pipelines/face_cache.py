"""Faces ready for pairing: read (searched, aligned, parsed, rendered), engine-prepared once per run and
kept in a cache; with worker threads, the faces of the next batches are prepared while the engine runs
the current one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from shmt_cli.atomic import write_json_atomic
from shmt_cli.decompose import FaceParts, analyse_face, load_parts, save_parts
from shmt_cli.engines.base import Engine
from shmt_cli.face.align import AlignedFace, crop_face
from shmt_cli.face.search import find_faces
from shmt_cli.imageio import InputError, PhotoInfo, read_photo
from shmt_cli.inputs import InputFile, display_path, output_file
from shmt_cli.pipelines.faces import has_sidecar, read_aligned_face
from shmt_cli.representations import IMAGE_SIZE

FACE_CACHE_SIZE = 256
#: Bytes of decoded source photos kept for pasting results back (beyond it the oldest are read again):
#: a source photo is then decoded once per run, not once per pair, without holding a folder of
#: 12-megapixel photos in memory.
PHOTO_BUDGET = 1 << 30

LoadedFace = tuple[FaceParts, "AlignedFace | None"]
#: A decoded photo as `imageio.read_photo` gives it: (H, W, 3) uint8 RGB and what its output keeps.
Photo = tuple[np.ndarray, PhotoInfo]


@dataclass
class PreparedFace:
    """A face ready for pairing: its parts, how it was aligned (photos only) and the engine's state."""

    parts: FaceParts
    aligned: AlignedFace | None
    state: Any


@dataclass
class PreparedPhoto:
    """The faces of one input ready for pairing (best first: the one used when only one is), what the
    face search did (manifest fields: faces found, quarter turn, rejected detections) and, for a source
    photo, the decoded photo the results are pasted into (None once dropped from the cache's budget)."""

    faces: list[PreparedFace]
    search: dict[str, Any]
    photo: Photo | None = None

    @property
    def best(self) -> PreparedFace:
        return self.faces[0]


def load_photo_faces(
    path: Path, need_render: bool, all_faces: bool = False
) -> tuple[list[LoadedFace], dict[str, Any], Photo | None]:
    """The faces of a parts file, an aligned crop (with its sidecar) or an ordinary photo, best first,
    what the face search did, and the decoded photo (None for parts files and aligned crops, which are
    not pasted back). Photos give their best plausible face, or all of them (`all_faces`); a face found
    only in a quarter turn of the photo is aligned upright from the photo as it is."""
    if path.suffix.lower() == ".safetensors":
        return [(load_parts(path), None)], {}, None
    if has_sidecar(path):
        image, landmarks, source = read_aligned_face(path)
        return [(_analyse(image, landmarks, need_render, source), None)], {}, None
    photo, info = read_photo(path)
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
    fields = {**search.manifest_fields(), "faces_processed": len(loaded)}
    return loaded, fields, (photo, info)


def load_faces(
    path: Path, need_render: bool, all_faces: bool = False
) -> tuple[list[LoadedFace], dict[str, Any]]:
    """`load_photo_faces` without the decoded photo."""
    loaded, fields, _ = load_photo_faces(path, need_render, all_faces)
    return loaded, fields


def load_face(path: Path, need_render: bool) -> LoadedFace:
    """The best face of a parts file, an aligned crop or a photo (see load_photo_faces)."""
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


CacheKey = tuple[str, Path]


def _torch_threads(count: int) -> None:
    """Give a preparation thread `count` torch threads (torch's OpenMP setting is per thread). The
    caller's count, not fewer: the VQ encoder's float sums depend on it (measured: one thread instead
    of two changes z_bg, z_ref and the IDA features), and results must not depend on --workers."""
    import torch

    torch.set_num_threads(count)


class FaceCache:
    """Prepared photos by path (or the error that prevented preparing them), least recently used out.

    By default a photo's faces are read from its input (searched, aligned, parsed, rendered) and the best
    one is kept in `faces_dir`; with `load`, they are read by that function instead (e.g. from files that
    other workers wrote) and nothing is written.

    With `workers` > 0, `prefetch` prepares faces on that many threads while the caller goes on (the
    engine runs the current batch); `get` waits for a face being prepared. Only the calling thread
    touches the cache itself; the threads only prepare. Close it (or use it as a context manager) to
    stop them.
    """

    def __init__(
        self,
        engine: Engine,
        faces_dir: Path | None,
        capacity: int = FACE_CACHE_SIZE,
        all_faces: bool = False,
        load: FaceLoader | None = None,
        workers: int = 0,
        photo_budget: int = PHOTO_BUDGET,
    ) -> None:
        self.engine = engine
        self.faces_dir = faces_dir
        self.capacity = capacity
        self.all_faces = all_faces
        self.load = load
        self.photo_budget = photo_budget
        self._pool = None
        if workers > 0:
            import torch

            self._pool = ThreadPoolExecutor(
                workers,
                thread_name_prefix="shmt-prepare",
                initializer=_torch_threads,
                initargs=(torch.get_num_threads(),),
            )
        self._entries: OrderedDict[CacheKey, Future[PreparedPhoto | Exception]] = OrderedDict()

    def __enter__(self) -> FaceCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the preparation threads (faces queued but not started are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def prefetch(self, faces: Iterable[tuple[InputFile, str]]) -> None:
        """Start preparing these (face, role) entries on the worker threads, in order (no-op without
        workers, or for entries already cached or under way)."""
        if self._pool is None:
            return
        for face, role in faces:
            key = (role, face.path)
            if key not in self._entries:
                self._add(key, self._pool.submit(self._prepare, face, role))

    def get(self, face: InputFile, role: str) -> PreparedPhoto:
        """The prepared photo (prepared now unless cached or prefetched); InputError when it cannot be."""
        key = (role, face.path)
        future = self._entries.get(key)
        if future is not None:
            self._entries.move_to_end(key)
        # Not started by a thread yet: prepared here and now, with the engine's threads, instead of
        # waiting in the queue (the threads work on later batches meanwhile).
        if future is None or future.cancel():
            future = Future()
            future.set_result(self._prepare(face, role))
            self._add(key, future)
        try:
            entry = future.result()
        except BaseException:
            # As when prepared here: an unexpected failure fails this batch and is not cached.
            self._entries.pop(key, None)
            raise
        if isinstance(entry, Exception):
            raise InputError(f"{role} {display_path(face.path)}: {entry}")
        self._keep_photos_within_budget(entry)
        return entry

    def _add(self, key: CacheKey, future: Future[PreparedPhoto | Exception]) -> None:
        self._entries[key] = future
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def _keep_photos_within_budget(self, newest: PreparedPhoto) -> None:
        """Drop the decoded photos of the least recently used entries beyond `photo_budget` bytes."""
        used = 0
        for future in reversed(self._entries.values()):
            entry = future.result() if future.done() and not future.exception() else None
            if not isinstance(entry, PreparedPhoto) or entry.photo is None:
                continue
            used += entry.photo[0].nbytes
            if used > self.photo_budget and entry is not newest:
                entry.photo = None

    def _prepare(self, face: InputFile, role: str) -> PreparedPhoto | Exception:
        try:
            photo = None
            if self.load is not None:
                loaded, info = self.load(face, role)
            else:
                loaded, info, photo = load_photo_faces(
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
            if photo is not None:
                photo[0].flags.writeable = False  # shared by every pair of this source: never edited
            # Only sources are pasted into: a reference's photo is not needed once it is prepared.
            return PreparedPhoto(prepared, info, photo if role == "source" else None)
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
