"""`shmt transfer --executor ray`: the pending pairs on a Ray cluster, through Ray Data.

Two passes over the pairs the manifest does not yet hold as done:

1. faces: every face the pairs need, once, on CPU tasks: searched, aligned, parsed, rendered and
   written to `<out>/faces/` (the best face of each input, as the local runner keeps it for
   `shmt evaluate`) or, for what the local runner does not keep (--no-cache, the further faces of a
   group photo with --all-faces), to a scratch folder `<out>/.shmt-ray-faces-*` removed after the run;
2. pairs: a pool of actors (`ActorPoolStrategy`), each loading the engine once, takes fixed-size
   batches of pairs, reads their faces back from those files, and writes the outputs atomically
   into the output folder, exactly as the local runner names and encodes them (the same settings:
   format, quality, --all-faces, --no-cache travel to the workers with TransferSettings).

The driver (this process) holds the output folder's lock, streams one small result row per pair
back and appends the manifest, so names, manifest, exit codes and `--json`/`--quiet` are those of
the local runner. Workers therefore need the output folder at the same path (a shared POSIX folder
on a cluster). A worker killed mid-batch is restarted by Ray and its batch redone: the redo writes
the same files again (atomic replace, identical bytes), and the driver keeps the first report of
each pair. The driver killed mid-run leaves outputs without manifest lines, which the next run of
either executor finds and records ("output exists") instead of redoing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import ray

import shmt_cli
from shmt_cli.batch import CannotRun, Outcome, WorkItem, failure_reason
from shmt_cli.decompose import load_parts
from shmt_cli.engines.base import Engine
from shmt_cli.face.align import read_sidecar
from shmt_cli.imageio import InputError, remove_stale_temp_files
from shmt_cli.inputs import InputFile, display_path
from shmt_cli.pipelines.face_cache import FaceCache, LoadedFace, face_file, load_faces, save_face
from shmt_cli.pipelines.pairs import Pair
from shmt_cli.pipelines.transfer import FACES_DIR, TransferSettings, transfer_pairs

ROLES = ("source", "reference")
#: Faces per preparation task: enough to amortise a task's start, few enough to spread over the CPUs.
FACE_BATCH = 4
#: Batches of pairs per block of the pair list: blocks are what Ray hands an actor at a time.
BATCHES_PER_BLOCK = 2


def _encode(text: str) -> bytes:
    """A path or message as bytes for a Ray Data column (Arrow strings refuse non-UTF-8 file names)."""
    return os.fsencode(text)


def _decode(blob: bytes) -> str:
    return os.fsdecode(blob)


def _enter(cwd: str) -> None:
    """Work in the driver's folder, so inputs given as relative paths name the same files (and are
    shown the same way in the manifest) as on the driver; a machine without that folder keeps its own
    (absolute paths then still work)."""
    if os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)


def _face_key(role: str, path: Path | str) -> tuple[str, str]:
    return role, os.fspath(path)


@dataclass(frozen=True)
class FaceStatus:
    """What the face pass found for one input: why it cannot be used ("" when it can), whether it is a
    photo (then each face's alignment is kept beside its parts file, for the paste-back), how many
    faces were kept and what the face search did (manifest fields)."""

    error: str
    aligned: bool
    count: int = 1
    search: str = "{}"  # JSON


@dataclass(frozen=True)
class FaceDirs:
    """Where the face pass keeps faces: the best face of an input in `keep` (`<out>/faces/`, None with
    --no-cache), everything else in `scratch` (removed after the run)."""

    keep: str | None
    scratch: str

    def home(self, index: int) -> Path:
        return Path(self.keep if index == 0 and self.keep is not None else self.scratch)


def prepare_faces(
    batch: dict[str, np.ndarray], out_dir: str, dirs: FaceDirs, cwd: str
) -> dict[str, np.ndarray]:
    """Ray Data task: prepare a batch of inputs' faces and keep them in `dirs`.

    Columns in: face (int), role (str), path and rel (bytes), render and all (bool: every face of a
    group photo). Out: face, error (bytes, empty when prepared), aligned, fatal (bool: the output folder
    cannot be written), count (faces kept), search (JSON bytes). A face that cannot be read is reported,
    never raised.
    """
    _enter(cwd)
    errors: list[bytes] = []
    aligned_flags: list[bool] = []
    fatal_flags: list[bool] = []
    counts: list[int] = []
    searches: list[bytes] = []
    for role, path, rel, render, every in zip(
        batch["role"], batch["path"], batch["rel"], batch["render"], batch["all"], strict=True
    ):
        face = InputFile(path=Path(_decode(path)), rel=PurePosixPath(_decode(rel)))
        loaded: list[LoadedFace] = []
        search: dict[str, Any] = {}
        fatal = False
        try:
            loaded, search = load_faces(face.path, need_render=bool(render), all_faces=bool(every))
            # Replaced, not kept: the pair pass reads these files, and the input may have changed since.
            for index, (parts, aligned) in enumerate(loaded):
                save_face(dirs.home(index), face, str(role), parts, aligned, index)
            error = ""
        except (InputError, ValueError) as exc:
            error = str(exc)
        except Exception as exc:  # one bad face fails its pairs, never the job
            try:
                error = failure_reason(exc, Path(out_dir))
            except CannotRun as cannot:
                error, fatal = str(cannot), True
        errors.append(error.encode("utf-8", "surrogateescape"))
        aligned_flags.append(bool(loaded) and loaded[0][1] is not None)
        fatal_flags.append(fatal)
        counts.append(len(loaded))
        searches.append(_json_bytes(search))
    return {
        "face": np.asarray(batch["face"]),
        "error": np.array(errors, dtype=object),
        "aligned": np.array(aligned_flags, dtype=bool),
        "fatal": np.array(fatal_flags, dtype=bool),
        "count": np.array(counts, dtype=np.int64),
        "search": np.array(searches, dtype=object),
    }


class PairWorker:
    """Ray Data actor: one engine, loaded once, transferring batches of pairs into the output folder."""

    def __init__(
        self,
        engine_factory: Callable[[], Engine],
        out_dir: str,
        settings: TransferSettings,
        dirs: FaceDirs,
        cwd: str,
    ) -> None:
        _enter(cwd)
        self.cwd = cwd
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.dirs = dirs
        self.engine = engine_factory()
        self.faces: dict[tuple[str, str], FaceStatus] = {}
        # faces_dir names the kept parts files in the manifest (None with --no-cache, as locally).
        keep = Path(dirs.keep) if dirs.keep is not None else None
        self.cache = FaceCache(self.engine, keep, all_faces=settings.all_faces, load=self._load)

    def _load(self, face: InputFile, role: str) -> tuple[list[LoadedFace], dict[str, Any]]:
        """An input's faces as the face pass left them (parts files and alignments) and what its face
        search did, or the reason it failed."""
        status = self.faces[_face_key(role, face.path)]
        if status.error:
            raise InputError(status.error)
        loaded: list[LoadedFace] = []
        for index in range(status.count):
            home = self.dirs.home(index)
            parts = load_parts(face_file(home, face, role, ".safetensors", index))
            aligned = read_sidecar(face_file(home, face, role, ".json", index)) if status.aligned else None
            loaded.append((parts, aligned))
        return loaded, json.loads(status.search)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Columns in: see `_pair_rows`. Out: index, ok, fatal (bool), outputs, extra, reason (JSON
        bytes), seconds (float, per pair)."""
        _enter(self.cwd)
        pairs = []
        for i in range(len(batch["index"])):
            faces = []
            for role in ROLES:
                face = InputFile(
                    path=Path(_decode(batch[f"{role}_path"][i])),
                    rel=PurePosixPath(_decode(batch[f"{role}_rel"][i])),
                )
                error = bytes(batch[f"{role}_error"][i]).decode("utf-8", "surrogateescape")
                self.faces[_face_key(role, face.path)] = FaceStatus(
                    error,
                    bool(batch[f"{role}_aligned"][i]),
                    int(batch[f"{role}_count"][i]),
                    bytes(batch[f"{role}_search"][i]).decode("ascii"),
                )
                faces.append(face)
            pairs.append(Pair(faces[0], faces[1], PurePosixPath(_decode(batch["out_stem"][i]))))
        started = time.perf_counter()
        try:
            outcomes: list[Any] = transfer_pairs(pairs, self.engine, self.cache, self.settings, self.out_dir)
        except Exception as exc:  # a failed batch fails its pairs, as in the local runner
            outcomes = [exc] * len(pairs)
        seconds = (time.perf_counter() - started) / max(1, len(pairs))
        rows: dict[str, list[Any]] = {k: [] for k in ("ok", "fatal", "outputs", "extra", "reason")}
        for outcome in outcomes:
            ok, fatal, outputs, extra, reason = _result_row(outcome, self.out_dir)
            rows["ok"].append(ok)
            rows["fatal"].append(fatal)
            rows["outputs"].append(outputs)
            rows["extra"].append(extra)
            rows["reason"].append(reason)
        return {
            "index": np.asarray(batch["index"]),
            "ok": np.array(rows["ok"], dtype=bool),
            "fatal": np.array(rows["fatal"], dtype=bool),
            "outputs": np.array(rows["outputs"], dtype=object),
            "extra": np.array(rows["extra"], dtype=object),
            "reason": np.array(rows["reason"], dtype=object),
            "seconds": np.full(len(pairs), seconds, dtype=np.float64),
        }


def _json_bytes(value: Any) -> bytes:
    # ASCII escapes keep file names that are not UTF-8 (lone surrogates) intact through JSON.
    return json.dumps(value, ensure_ascii=True, default=str).encode("ascii")


def _result_row(outcome: Outcome, out_dir: Path) -> tuple[bool, bool, bytes, bytes, bytes]:
    """(ok, fatal, outputs relative to out_dir, manifest fields, reason) of one pair's outcome."""
    if isinstance(outcome, BaseException):
        try:
            return False, False, b"[]", b"{}", _json_bytes(failure_reason(outcome, out_dir))
        except CannotRun as exc:
            return False, True, b"[]", b"{}", _json_bytes(str(exc))
    produced, extra = outcome if isinstance(outcome, tuple) else (outcome, {})
    outputs = [Path(p).relative_to(out_dir).as_posix() for p in produced]
    return True, False, _json_bytes(outputs), _json_bytes(extra), b'""'


def _outcome(row: dict[str, Any], out_dir: Path) -> Outcome:
    """The runner's outcome for a result row (paths under the driver's spelling of the output folder)."""
    reason = json.loads(row["reason"])
    if row["fatal"]:
        raise CannotRun(reason)
    if not row["ok"]:
        # The worker already turned the error into the runner's one-line reason; InputError keeps it as is.
        return InputError(reason)
    outputs = [out_dir / rel for rel in json.loads(row["outputs"])]
    return outputs, json.loads(row["extra"])


class RayExecutor:
    """Runs `shmt transfer`'s pending pairs on Ray (see the module docstring)."""

    def __init__(
        self,
        engine_factory: Callable[[], Engine],
        address: str | None = None,
        gpus_per_worker: float = 0.0,
        workers: int | None = None,
    ) -> None:
        self.engine_factory = engine_factory
        self.address = address
        self.gpus_per_worker = gpus_per_worker
        self.workers = workers

    def stream(
        self, out_dir: Path, engine: Engine, settings: TransferSettings
    ) -> Callable[[list[WorkItem]], Iterator[tuple[int, Outcome, float]]]:
        def run(pending: list[WorkItem]) -> Iterator[tuple[int, Outcome, float]]:
            if not pending:
                return
            started = connect(self.address)
            try:
                yield from self._run(pending, out_dir, engine, settings)
            finally:
                if started:
                    ray.shutdown()
                # Temp files of workers killed mid-write (same host only: others' are cleared after a day).
                remove_stale_temp_files(out_dir)

        return run

    def pool_size(self) -> int:
        """--workers, or one actor per GPU share (with --gpus-per-worker) or per CPU of the cluster."""
        if self.workers is not None:
            return self.workers
        resources = ray.cluster_resources()
        if self.gpus_per_worker > 0:
            return max(1, int(resources.get("GPU", 0) / self.gpus_per_worker))
        return max(1, int(resources.get("CPU", 1)))

    def _run(
        self, pending: list[WorkItem], out_dir: Path, engine: Engine, settings: TransferSettings
    ) -> Iterator[tuple[int, Outcome, float]]:
        cwd = os.getcwd()
        pairs: list[Pair] = [item.payload for item in pending]
        faces = _faces_of(pairs, engine, settings)
        out_dir.mkdir(parents=True, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=".shmt-ray-faces-", dir=out_dir)
        try:
            yield from self._run_with(pending, pairs, faces, out_dir, engine, settings, cwd, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _run_with(
        self,
        pending: list[WorkItem],
        pairs: list[Pair],
        faces: list[dict[str, Any]],
        out_dir: Path,
        engine: Engine,
        settings: TransferSettings,
        cwd: str,
        scratch: str,
    ) -> Iterator[tuple[int, Outcome, float]]:
        keep = os.path.abspath(out_dir / FACES_DIR) if settings.keep_faces else None
        dirs = FaceDirs(keep, os.path.abspath(scratch))
        status = _prepare_all(faces, out_dir, dirs, cwd)
        size = self.pool_size()
        batch = max(1, engine.batch_size)
        rows = _pair_rows(pairs, status)
        blocks = max(1, min(math.ceil(len(rows) / (batch * BATCHES_PER_BLOCK)), 4 * size))
        size = min(size, blocks)  # an actor with no block to take would load the engine for nothing
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            PairWorker,
            fn_constructor_kwargs={
                "engine_factory": self.engine_factory,
                "out_dir": os.path.abspath(out_dir),
                "settings": settings,
                "dirs": dirs,
                "cwd": cwd,
            },
            batch_size=batch,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size),
            num_cpus=1,
            num_gpus=self.gpus_per_worker or None,
        )
        results = iter(dataset.iter_rows())
        try:
            for row in results:
                yield int(row["index"]), _outcome(row, out_dir), float(row["seconds"])
        finally:
            # A run stopped early (exit 3, Ctrl-C) ends its actors now, not when the iterator is collected.
            close = getattr(results, "close", None)
            if close is not None:
                close()


def _faces_of(pairs: list[Pair], engine: Engine, settings: TransferSettings) -> list[dict[str, Any]]:
    """One row per distinct face of the pairs (a face used in both roles is prepared once per role)."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for pair in pairs:
        for role, face in zip(ROLES, (pair.source, pair.reference), strict=True):
            key = _face_key(role, face.path)
            if key not in seen:
                seen[key] = {
                    "face": len(seen),
                    "role": role,
                    "path": _encode(os.fspath(face.path)),
                    "rel": _encode(str(face.rel)),
                    "render": role == "source" and engine.needs_render,
                    "all": role == "source" and settings.all_faces,
                }
    return list(seen.values())


def _prepare_all(
    faces: list[dict[str, Any]], out_dir: Path, dirs: FaceDirs, cwd: str
) -> dict[tuple[str, str], FaceStatus]:
    """Run the face pass; each face's status by (role, path)."""
    blocks = max(1, math.ceil(len(faces) / FACE_BATCH))
    prepared = ray.data.from_items(faces, override_num_blocks=blocks).map_batches(
        prepare_faces,
        fn_kwargs={"out_dir": os.path.abspath(out_dir), "dirs": dirs, "cwd": cwd},
        batch_size=FACE_BATCH,
        batch_format="numpy",
        num_cpus=1,
    )
    status: dict[tuple[str, str], FaceStatus] = {}
    for row in prepared.iter_rows():
        face = faces[int(row["face"])]
        error = bytes(row["error"]).decode("utf-8", "surrogateescape")
        if row["fatal"]:
            raise CannotRun(error)
        status[_face_key(face["role"], _decode(face["path"]))] = FaceStatus(
            error, bool(row["aligned"]), int(row["count"]), bytes(row["search"]).decode("ascii")
        )
    return status


def _pair_rows(pairs: list[Pair], status: dict[tuple[str, str], FaceStatus]) -> list[dict[str, Any]]:
    """The pair pass's input: one row per pair, with what the face pass found about its two faces."""
    rows = []
    for index, pair in enumerate(pairs):
        row: dict[str, Any] = {"index": index, "out_stem": _encode(str(pair.out_stem))}
        for role, face in zip(ROLES, (pair.source, pair.reference), strict=True):
            found = status.get(_face_key(role, face.path), FaceStatus("not prepared", False))
            row[f"{role}_path"] = _encode(os.fspath(face.path))
            row[f"{role}_rel"] = _encode(str(face.rel))
            row[f"{role}_error"] = found.error.encode("utf-8", "surrogateescape")
            row[f"{role}_aligned"] = found.aligned
            row[f"{role}_count"] = found.count
            row[f"{role}_search"] = found.search.encode("ascii")
        rows.append(row)
    return rows


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at `address` (None: $RAY_ADDRESS, else a new local instance); True when
    this call started Ray (then the caller shuts it down). Workers import this same `shmt_cli`."""
    quiet_ray_logs()
    if ray.is_initialized():
        return False
    package_root = str(Path(shmt_cli.__file__).resolve().parents[1])
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    kwargs: dict[str, Any] = {
        "address": address,
        "runtime_env": {"env_vars": {"PYTHONPATH": python_path}},
        "logging_level": logging.ERROR,
        "log_to_driver": False,
    }
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "a new local instance"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CannotRun(f"cannot start Ray ({display_path(where)}): {reason}") from None
    quiet_ray_logs()
    return True


def quiet_ray_logs() -> None:
    """Ray's own progress bars and INFO lines off: the runner reports progress, stdout stays for --json."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    if hasattr(context, "enable_operator_progress_bars"):
        context.enable_operator_progress_bars = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
