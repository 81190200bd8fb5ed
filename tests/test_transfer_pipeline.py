"""The transfer pipeline around any engine: faces prepared ahead on worker threads (--workers), each
photo decoded once, --regions/--strength as a post-step for engines that do not paint regions, the
exit codes of engine errors and the first line saying what runs."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from shmt_cli.batch import CannotRun, RunOptions
from shmt_cli.cli import app
from shmt_cli.decompose import FaceParts, load_parts
from shmt_cli.engines.base import DeviceUnavailable, Engine, EngineOutOfMemory, PairJob
from shmt_cli.face.labels import L_LIP, U_LIP
from shmt_cli.imageio import read_image
from shmt_cli.inputs import Shard
from shmt_cli.pipelines import face_cache
from shmt_cli.pipelines import transfer as tr

runner = CliRunner()


class FakeEngine(Engine[FaceParts, FaceParts]):
    """Prepares nothing, returns a deterministic function of the pair; records what happened when."""

    name = "fake"
    uses_seed = False

    def __init__(self, batch_size: int = 2, settle: float = 0.0, fail: Exception | None = None) -> None:
        self.batch_size = batch_size
        self.settle = settle
        self.fail = fail
        self.prepared: list[str] = []
        #: Faces prepared when each batch finished (after waiting `settle` s of no new preparation).
        self.prepared_at_batch: list[int] = []

    def settings(self) -> dict[str, Any]:
        return {"engine": self.name}

    def prepare_source(self, face: FaceParts) -> FaceParts:
        self.prepared.append(face.source)
        return face

    def prepare_reference(self, face: FaceParts) -> FaceParts:
        self.prepared.append(face.source)
        return face

    def transfer_batch(self, jobs: Sequence[PairJob[FaceParts, FaceParts]]) -> list[np.ndarray]:
        if self.fail is not None:
            raise self.fail
        if self.settle:
            # Wait until the preparation threads have nothing more to do (or 10 s).
            count, quiet_since, deadline = len(self.prepared), time.monotonic(), time.monotonic() + 10
            while time.monotonic() - quiet_since < self.settle and time.monotonic() < deadline:
                time.sleep(0.01)
                if len(self.prepared) != count:
                    count, quiet_since = len(self.prepared), time.monotonic()
        self.prepared_at_batch.append(len(self.prepared))
        return [(job.source.image // 2 + job.reference.image // 2).astype(np.uint8) for job in jobs]


def _synthetic_parts(path: Path, need_render: bool, all_faces: bool = False):
    """A made-up face per file name (no detection, no parsing): the preparation is instant."""
    rng = np.random.default_rng(sum(path.name.encode()))
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    parts = FaceParts(image, np.zeros((68, 2)), np.ones((256, 256), np.uint8), image, source=path.name)
    return [(parts, None)], {}, None


def _dummy_photos(folder: Path, count: int, prefix: str) -> Path:
    folder.mkdir(parents=True)
    for index in range(count):
        (folder / f"{prefix}{index:02d}.png").write_bytes(b"not read: faces are made up")
    return folder


def _run(sources: Path, references: Path, out: Path, engine: Engine, workers: int, **settings: Any):
    return tr.run_transfer(
        [str(sources)],
        [str(references)],
        out,
        engine,
        tr.TransferSettings(**settings),
        RunOptions(quiet=True),
        workers=workers,
    )[1]


def _images(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def _manifest_keys(out: Path) -> list[str]:
    return [json.loads(line)["key"] for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_workers_prepare_the_next_batches_while_the_engine_runs(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(face_cache, "load_photo_faces", _synthetic_parts)
    sources = _dummy_photos(tmp_path / "sources", 10, "s")
    references = _dummy_photos(tmp_path / "references", 1, "r")
    counts = {}
    for workers in (0, 1):
        engine = FakeEngine(batch_size=2, settle=0.3)
        summary = _run(sources, references, tmp_path / f"out{workers}", engine, workers)
        assert summary.done == 10
        assert sorted(engine.prepared) == sorted(p.name for p in [*sources.iterdir(), *references.iterdir()])
        counts[workers] = engine.prepared_at_batch
    # In turn: a batch sees only its own faces (the reference and two sources, then two more each).
    assert counts[0] == [3, 5, 7, 9, 11]
    # With a thread: also the faces of the next two batches (and no more: the look-ahead is bounded).
    assert counts[1] == [7, 9, 11, 11, 11]
    assert _images(tmp_path / "out0") == _images(tmp_path / "out1")
    assert _manifest_keys(tmp_path / "out0") == _manifest_keys(tmp_path / "out1")


def test_threads_work_ahead_only_on_this_shard_s_pairs_still_to_do(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(face_cache, "load_photo_faces", _synthetic_parts)
    sources = _dummy_photos(tmp_path / "sources", 8, "s")
    references = _dummy_photos(tmp_path / "references", 1, "r")
    out, shard = tmp_path / "out", RunOptions(quiet=True, shard=Shard.parse("1/2"))
    settings = tr.TransferSettings()
    engine = FakeEngine(settle=0.3)
    summary = tr.run_transfer([str(sources)], [str(references)], out, engine, settings, shard, workers=2)[1]
    (manifest,) = out.glob("manifest*.jsonl")
    mine = {Path(json.loads(line)["inputs"][0]).name for line in manifest.read_text().splitlines()}
    assert summary.done == len(mine) and 0 < len(mine) < 8
    assert set(engine.prepared) == mine | {"r00.png"}  # no face of the other shard's pairs
    # Resumed with one pair to redo (its output lost): only its faces are prepared, none of the
    # finished pairs after it.
    first = json.loads(manifest.read_text().splitlines()[0])
    (out / first["outputs"][0]).unlink()
    again = FakeEngine(settle=0.3)
    summary = tr.run_transfer([str(sources)], [str(references)], out, again, settings, shard, workers=2)[1]
    assert summary.done == 1 and sorted(again.prepared) == sorted([Path(first["inputs"][0]).name, "r00.png"])


def test_preparation_threads_run_torch_with_the_caller_s_thread_count(monkeypatch, tmp_path) -> None:
    seen: list[tuple[str, int]] = []

    def recording(path: Path, need_render: bool, all_faces: bool = False):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return _synthetic_parts(path, need_render, all_faces)

    monkeypatch.setattr(face_cache, "load_photo_faces", recording)
    sources = _dummy_photos(tmp_path / "sources", 3, "s")
    references = _dummy_photos(tmp_path / "references", 1, "r")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # not what a new thread starts with (the machine's cores)
    try:
        _run(sources, references, tmp_path / "out", FakeEngine(), workers=2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    # The first batch's faces are needed at once: prepared here; the next batch's on a thread.
    # Same count on both (fewer threads would change the VQ encoder's float sums, so the bytes).
    threads = {name.split("_")[0]: n for name, n in seen}
    assert len(seen) == 4 and threads == {"MainThread": 1, "shmt-prepare": 1}


def test_each_photo_is_decoded_once_per_run(monkeypatch, faces_dir: Path, tmp_path: Path) -> None:
    sources, references = tmp_path / "sources", tmp_path / "references"
    for folder, kind, names in (
        (sources, "non_makeup", ("00305.jpg", "xfsy_0069.png")),
        (references, "makeup", ("00012.jpg", "00202.jpg")),
    ):
        folder.mkdir()
        for name in names:
            shutil.copyfile(faces_dir / kind / "images" / name, folder / name)
    decoded: Counter[str] = Counter()
    real_read_photo = face_cache.read_photo

    def counting(path, *args, **kwargs):
        decoded[Path(path).name] += 1
        return real_read_photo(path, *args, **kwargs)

    monkeypatch.setattr(face_cache, "read_photo", counting)
    monkeypatch.setattr(tr, "read_photo", counting)
    summary = _run(sources, references, tmp_path / "out", FakeEngine(), workers=1)
    assert summary.done == 4  # 2 sources x 2 references: each source pasted into twice
    assert decoded == Counter({"00305.jpg": 1, "xfsy_0069.png": 1, "00012.jpg": 1, "00202.jpg": 1})


def test_classic_results_do_not_depend_on_workers(faces_dir: Path, tmp_path: Path) -> None:
    sources, references = tmp_path / "sources", tmp_path / "references"
    sources.mkdir()
    references.mkdir()
    for name in ("00305.jpg", "xfsy_0069.png"):
        shutil.copyfile(faces_dir / "non_makeup" / "images" / name, sources / name)
    shutil.copyfile(faces_dir / "makeup" / "images" / "00012.jpg", references / "00012.jpg")
    outputs = {}
    for workers in ("0", "2"):
        out = tmp_path / f"out{workers}"
        args = ["transfer", str(sources), str(references), "-o", str(out), "--engine", "classic"]
        result = runner.invoke(app, [*args, "--workers", workers, "--crop", "--format", "png"])
        assert result.exit_code == 0, result.output
        outputs[workers] = (_images(out), _manifest_keys(out))
    assert len(outputs["0"][0]) == 4 and outputs["0"] == outputs["2"]


def test_out_of_memory_at_batch_one_stops_the_run_with_exit_3(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(face_cache, "load_photo_faces", _synthetic_parts)
    sources = _dummy_photos(tmp_path / "sources", 2, "s")
    references = _dummy_photos(tmp_path / "references", 1, "r")
    engine = FakeEngine(fail=EngineOutOfMemory("CUDA out of memory at batch size 1"))
    with pytest.raises(CannotRun, match="--batch-size") as stopped:
        _run(sources, references, tmp_path / "lib", engine, workers=0)
    assert "--dtype" in str(stopped.value) and "\n" not in str(stopped.value)

    monkeypatch.setattr(tr, "open_engine", lambda *args: (engine, "engine: fake"))
    result = runner.invoke(app, ["transfer", str(sources), str(references), "-o", str(tmp_path / "cli")])
    assert result.exit_code == 3, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "--batch-size" in errors[0] and "--dtype" in errors[0]


def test_a_missing_device_is_a_usage_error(monkeypatch, tmp_path: Path) -> None:
    def no_cuda(*args: Any) -> Any:
        raise DeviceUnavailable("--device cuda: no CUDA device is available here (use --device cpu)")

    monkeypatch.setattr(tr, "create_engine", no_cuda)
    sources = _dummy_photos(tmp_path / "sources", 1, "s")
    result = runner.invoke(app, ["transfer", str(sources), str(sources), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "no CUDA device" in result.stderr
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_device_cuda_without_cuda_is_refused_for_every_engine(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    sources = _dummy_photos(tmp_path / "sources", 1, "s")
    args = ["transfer", str(sources), str(sources), "-o", str(tmp_path / "out"), "--device", "cuda"]
    result = runner.invoke(app, [*args, "--engine", "classic"])
    assert result.exit_code == 2, result.output
    assert "no CUDA device" in result.stderr


def test_the_first_line_says_what_runs(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(face_cache, "load_photo_faces", _synthetic_parts)
    monkeypatch.setattr(tr, "open_engine", lambda *args: (FakeEngine(), "engine: fake"))
    sources = _dummy_photos(tmp_path / "sources", 1, "s")
    references = _dummy_photos(tmp_path / "references", 1, "r")
    args = ["transfer", str(sources), str(references), "--workers", "1"]
    shown = runner.invoke(app, [*args, "-o", str(tmp_path / "a"), "--json"])
    assert shown.exit_code == 0, shown.output
    first = shown.stderr.splitlines()[0]
    assert first.startswith("engine: fake") and FakeEngine().describe() in first and "1 preparation" in first
    assert all(line.startswith("{") for line in shown.stdout.splitlines())  # not on --json's stdout
    quiet = runner.invoke(app, [*args, "-o", str(tmp_path / "b"), "--quiet"])
    assert quiet.exit_code == 0 and "engine: fake" not in quiet.stderr


def test_negative_workers_are_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["transfer", str(tmp_path), str(tmp_path), "-o", str(tmp_path / "o"), "--workers", "-1"]
    )
    assert result.exit_code == 2 and "--workers" in result.stderr


def test_regions_step_only_for_engines_that_do_not_paint_regions() -> None:
    from shmt_cli.engines.classic import ClassicParams
    from shmt_cli.engines.classic_engine import ClassicEngine

    lips = tr.TransferSettings(regions=frozenset({"lips"}), strengths={"lips": 0.5})
    assert lips.region_strengths(FakeEngine()) == {"skin": 0.0, "eyes": 0.0, "brows": 0.0, "lips": 0.5}
    assert lips.region_strengths(ClassicEngine(ClassicParams(regions=frozenset({"lips"})))) is None
    # Every region at full strength: the engine's result as it is (and the parameters of earlier runs).
    assert tr.TransferSettings().region_strengths(FakeEngine()) is None
    assert "regions" not in tr.TransferSettings().as_params()
    assert lips.as_params(regions_step=True)["regions"] == ["lips"]


def test_shmt_with_regions_lips_keeps_the_source_outside_the_lips(
    faces_dir: Path, tiny_weights_dir: Path, tmp_path: Path
) -> None:
    sources, references = tmp_path / "sources", tmp_path / "references"
    sources.mkdir()
    references.mkdir()
    shutil.copyfile(faces_dir / "non_makeup" / "images" / "00305.jpg", sources / "00305.jpg")
    shutil.copyfile(faces_dir / "makeup" / "images" / "00012.jpg", references / "00012.jpg")
    out = tmp_path / "out"
    args = ["transfer", str(sources), str(references), "-o", str(out), "--engine", "shmt", "--crop"]
    args += ["--weights-dir", str(tiny_weights_dir), "--level", "h4", "--steps", "2", "--regions", "lips"]
    result = runner.invoke(app, [*args, "--workers", "1"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert record["params"]["regions"] == ["lips"]
    source = load_parts(out / "faces" / "sources" / "00305.safetensors")
    crop = read_image(out / "00305__00012_crop.png")
    lips = np.isin(source.labels, (U_LIP, L_LIP)).astype(np.uint8)
    # The lips' feathering reaches a few pixels past their parsing border, no further.
    near_lips = cv2.dilate(lips, np.ones((17, 17), np.uint8)) > 0
    assert np.array_equal(crop[~near_lips], source.image[~near_lips])
    assert (crop[lips > 0] != source.image[lips > 0]).any()
