"""`shmt transfer --executor ray` on a local Ray instance: the same outputs as the local runner, a worker
killed mid-run, and a killed driver whose folder the next run (either executor) completes.

Skipped when the `ray` extra is not installed. One Ray instance (2 CPUs) serves the whole module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hostile import wait_for
from typer.testing import CliRunner

from shmt_cli.cli import app

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
SOURCES = ("00305.jpg", "xfsy_0069.png")
REFERENCES = ("00012.jpg", "00202.jpg")
BROKEN = "broken.jpg"  # not an image: each of its pairs must fail alone, in both executors
#: Manifest fields that say when and how fast, not what: they differ between any two runs.
RUN_FIELDS = ("time", "seconds", "host")


@pytest.fixture(scope="module")
def ray_instance():
    from shmt_cli.executors.ray import connect

    started = connect(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def photos(dev_photo_folders) -> tuple[Path, Path]:
    sources, references = dev_photo_folders(SOURCES, REFERENCES)
    (sources / BROKEN).write_bytes(b"this is not a JPEG")
    return sources, references


def _transfer(photos: tuple[Path, Path], out: Path, *extra: str) -> tuple[int, str]:
    sources, references = photos
    args = ["transfer", str(sources), str(references), "-o", str(out), "--engine", "classic", *extra]
    result = runner.invoke(app, args)
    return result.exit_code, result.stdout


@pytest.fixture(scope="module")
def local_out(photos: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local runner's results: what every Ray run must reproduce."""
    out = tmp_path_factory.mktemp("local")
    code, _ = _transfer(photos, out, "--crop")
    assert code == 1  # the broken input's pairs fail
    return out


def _files(out: Path) -> dict[str, bytes]:
    """Every result file by relative path: the outputs and the faces' alignments. Parts files are
    compared by content in _parts: safetensors writes its metadata in a per-process hash order."""
    skip = {"manifest.jsonl", ".shmt.lock"}
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in skip and p.suffix != ".safetensors"
    }


def _parts(out: Path) -> dict[str, dict]:
    from safetensors import safe_open

    found = {}
    for path in sorted((out / "faces").rglob("*.safetensors")):
        with safe_open(str(path), framework="np") as handle:
            found[path.relative_to(out).as_posix()] = {
                "meta": handle.metadata(),
                "tensors": {k: handle.get_tensor(k).tobytes() for k in handle.keys()},  # noqa: SIM118
            }
    return found


def _latest(out: Path) -> dict[str, dict]:
    """The manifest's last record per key, without the fields that differ between runs."""
    latest = {}
    for line in (out / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        latest[record["key"]] = {k: v for k, v in record.items() if k not in RUN_FIELDS}
    return latest


def _assert_same_results(out: Path, expected: Path) -> None:
    assert _files(out) == _files(expected)
    assert _parts(out) == _parts(expected)
    done, want = _latest(out), _latest(expected)
    assert set(done) == set(want)
    for key, record in want.items():
        if record["status"] == "failed":
            assert done[key] == record
        else:  # a resumed item is recorded as found ("output exists"), not made again
            assert done[key]["status"] == "ok" and done[key]["outputs"] == record["outputs"]
    assert not [p for p in out.rglob("*.tmp")], "temp files left behind"


def test_ray_matches_local_for_the_classic_engine(
    ray_instance: str, photos: tuple[Path, Path], local_out: Path, tmp_path: Path
) -> None:
    code, stdout = _transfer(photos, tmp_path, "--crop", "--executor", "ray", "--json")
    assert code == 1
    lines = [json.loads(line) for line in stdout.splitlines()]  # stdout holds only JSON lines
    summary = lines[-1]
    assert summary["type"] == "summary"
    assert (summary["done"], summary["failed"], summary["exit_code"]) == (4, 2, 1)
    assert {line["status"] for line in lines[:-1]} == {"ok", "failed"}
    _assert_same_results(tmp_path, local_out)
    failed = [r for r in _latest(tmp_path).values() if r["status"] == "failed"]
    assert all(BROKEN in r["reason"] for r in failed)
    # A second run finds everything done (or failed before) and does nothing.
    code, stdout = _transfer(photos, tmp_path, "--crop", "--executor", "ray", "--json")
    summary = json.loads(stdout.splitlines()[-1])
    assert (code, summary["done"], summary["skipped"], summary["failed_before"]) == (1, 0, 6, 2)


@pytest.fixture
def one_torch_thread():
    """Ray runs a CPU worker's torch on one thread (OMP_NUM_THREADS=1); float sums, hence the SHMT
    engine's bytes, depend on the thread count, so the local run uses one thread too."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ray_matches_local_for_the_shmt_engine(
    ray_instance: str,
    photos: tuple[Path, Path],
    tiny_weights_dir: Path,
    tmp_path: Path,
    one_torch_thread: None,
) -> None:
    sources, references = photos
    args = ["transfer", str(sources / SOURCES[0]), str(references), "--engine", "shmt"]
    args += ["--weights-dir", str(tiny_weights_dir), "--level", "h4", "--steps", "1", "--batch-size", "2"]
    assert runner.invoke(app, [*args, "-o", str(tmp_path / "local")]).exit_code == 0
    assert runner.invoke(app, [*args, "-o", str(tmp_path / "ray"), "--executor", "ray"]).exit_code == 0
    _assert_same_results(tmp_path / "ray", tmp_path / "local")
    assert len([n for n in _files(tmp_path / "ray") if not n.startswith("faces/")]) == 2  # a JPEG each


@pytest.mark.parametrize("cache", ["--cache", "--no-cache"])
def test_ray_matches_local_with_all_faces_and_an_output_format(
    ray_instance: str, photos: tuple[Path, Path], astronaut_rgb, tmp_path: Path, cache: str
) -> None:
    """A group photo made up face by face (--all-faces), a chosen format and quality, with and without
    the face cache: the workers get these settings and write what the local runner writes."""
    from hostile import five_faces
    from PIL import Image

    sources = tmp_path / "sources"
    sources.mkdir()
    Image.fromarray(five_faces(astronaut_rgb)).save(sources / "group.png")
    shutil.copyfile(photos[0] / SOURCES[0], sources / SOURCES[0])
    args = ["transfer", str(sources), str(photos[1] / REFERENCES[0]), "--engine", "classic", "--json"]
    args += ["--all-faces", "--format", "webp", "--quality", "80", cache]
    assert runner.invoke(app, [*args, "-o", str(tmp_path / "local")]).exit_code == 0
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "ray"), "--executor", "ray"])
    assert result.exit_code == 0, result.stdout
    _assert_same_results(tmp_path / "ray", tmp_path / "local")
    # Every manifest field but timing: faces found and processed, notes, parts files (None: --no-cache).
    assert _latest(tmp_path / "ray") == _latest(tmp_path / "local")
    group = next(r for r in _latest(tmp_path / "ray").values() if "group" in r["key"])
    assert (group["faces_found"], group["faces_processed"]) == (5, 5)
    assert sorted(n for n in _files(tmp_path / "ray") if not n.startswith("faces/")) == [
        f"{Path(SOURCES[0]).stem}__{Path(REFERENCES[0]).stem}.webp",
        f"group__{Path(REFERENCES[0]).stem}.webp",
    ]
    assert (tmp_path / "ray" / "faces").exists() == (cache == "--cache")
    assert not list((tmp_path / "ray").glob(".shmt-ray-faces-*")), "scratch faces left behind"


def test_out_of_memory_in_a_worker_stops_the_run_with_exit_3(
    ray_instance: str, photos: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine worker that runs out of memory even at one pair per batch stops the whole run as the
    local runner does: exit 3 and the one line suggesting --dtype/--batch-size, no pair recorded."""
    import shmt_cli.executors as executors
    from shmt_cli.engines.base import EngineOutOfMemory
    from shmt_cli.engines.classic_engine import ClassicEngine
    from shmt_cli.engines.registry import make_settings

    # Defined in the test, so Ray ships them to its workers by value (only the workers' engine fails).
    class ShortOfMemory(ClassicEngine):
        def transfer_batch(self, jobs: list) -> list:
            raise EngineOutOfMemory("out of memory on cpu even at 1 pair per batch")

    def short_of_memory(name: str, options: dict, weights_dir: Path | None) -> ClassicEngine:
        return ShortOfMemory.create(make_settings(name, options), weights_dir)

    monkeypatch.setattr(executors, "engine_by_name", short_of_memory)
    sources, references = photos
    args = ["transfer", str(sources / SOURCES[0]), str(references), "--engine", "classic"]
    result = runner.invoke(app, [*args, "-o", str(tmp_path), "--executor", "ray"])
    assert result.exit_code == 3, result.stdout
    assert "out of memory" in result.stderr and "--batch-size" in result.stderr
    manifest = tmp_path / "manifest.jsonl"
    records = manifest.read_text().splitlines() if manifest.exists() else []
    assert not [r for r in records if json.loads(r).get("status") == "ok"]


def _worker_pids(class_name: bytes) -> list[int]:
    """Ray worker processes running actors of `class_name` (Ray puts it in their process title)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                title = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"ray::") and class_name in title:
                pids.append(int(entry))
    return pids


def _results(out: Path) -> int:
    return len(list(out.glob("*__*.png")))


def test_a_worker_killed_mid_run_is_replaced_without_duplicates(
    ray_instance: str, photos: tuple[Path, Path], local_out: Path, tmp_path: Path
) -> None:
    killed: list[int] = []
    outputs_then: list[int] = []

    def kill_the_engine_worker() -> None:
        # Once the first pair is written, SIGKILL the (only) engine actor while it has pairs left.
        if wait_for(lambda: _results(tmp_path) > 0, timeout=300):
            pids = _worker_pids(b"PairWorker")
            if pids:
                outputs_then.append(_results(tmp_path))
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

    killer = threading.Thread(target=kill_the_engine_worker, daemon=True)
    killer.start()
    code, _ = _transfer(
        photos, tmp_path, "--crop", "--executor", "ray", "--workers", "1", "--batch-size", "1"
    )
    killer.join(timeout=5)
    assert killed, "no engine worker was found to kill"
    assert outputs_then[0] < 4 * 2, "the worker was killed after it had written everything"
    assert code == 1  # the broken input only
    _assert_same_results(tmp_path, local_out)
    records = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert len(records) == 6  # one line per pair: the redone batch was not recorded twice


def test_the_next_run_completes_a_folder_whose_driver_was_killed(
    ray_instance: str, photos: tuple[Path, Path], local_out: Path, tmp_path: Path
) -> None:
    sources, references = photos
    out = tmp_path / "out"
    args = ["transfer", str(sources), str(references), "-o", str(out), "--engine", "classic", "--crop"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    # The driver joins the module's Ray instance, as `shmt transfer` would join a cluster.
    command = [
        sys.executable,
        "-m",
        "shmt_cli.cli",
        *args,
        "--executor",
        "ray",
        "--ray-address",
        ray_instance,
    ]
    command += ["--workers", "1", "--batch-size", "1"]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        started = wait_for(lambda: driver.poll() is not None or _results(out) > 0, timeout=300)
        assert started and driver.poll() is None, driver.stderr.read().decode() if driver.stderr else ""
        driver.kill()
    finally:
        driver.kill()
        driver.wait()
    # Ray ends a dead driver's workers; then the folder holds some results and no manifest line for them.
    assert wait_for(lambda: not _worker_pids(b"PairWorker"), timeout=60)
    assert 0 < _results(out) < 4
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for folder, executor in ((out, "local"), (copy, "ray")):
        code, stdout = _transfer(photos, folder, "--crop", "--executor", executor, "--json")
        assert code == 1, executor
        summary = json.loads(stdout.splitlines()[-1])
        assert summary["done"] + summary["skipped"] == 4 and summary["failed"] + summary["failed_before"] == 2
        _assert_same_results(folder, local_out)


def test_core_import_does_not_import_ray() -> None:
    modules = "shmt_cli.cli, shmt_cli.pipelines.transfer, shmt_cli.executors"
    code = f"import sys, {modules}; print('ray' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "False"


def test_ray_options_need_the_ray_executor(tmp_path: Path, photos: tuple[Path, Path]) -> None:
    # (--workers has a local meaning too: preparation threads.)
    code, _ = _transfer(photos, tmp_path, "--gpus-per-worker", "1")
    assert code == 2
    assert not (tmp_path / "manifest.jsonl").exists()
