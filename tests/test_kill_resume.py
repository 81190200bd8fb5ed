"""`kill -9` in the middle of `shmt align`, then resume: nothing lost, duplicated, truncated or left over.

The command runs as a real subprocess and is killed with SIGKILL at seeded random moments (once during
start-up, then always while it is writing items), several times over; a last run completes the batch.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hostile import shmt_command, wait_for, write_photo_set
from PIL import Image
from typer.testing import CliRunner

from shmt_cli.atomic import TEMP_NAME, remove_stale_temp_files, temp_prefix
from shmt_cli.cli import app
from shmt_cli.face.align import read_sidecar
from shmt_cli.inputs import display_path
from shmt_cli.manifest import manifest_path, read_records

SEED = 20261125
PHOTOS = 32
KILLS = 5


def _launch(args: list[str], logs: Path, name: str) -> subprocess.Popen[bytes]:
    with open(logs / f"{name}.out", "wb") as stdout, open(logs / f"{name}.err", "wb") as stderr:
        # As from a terminal: SIGINT at its default even when this test runs as a background job,
        # whose shell hands its children SIGINT ignored (Python then never raises KeyboardInterrupt).
        return subprocess.Popen(
            [*shmt_command(), *args],
            stdout=stdout,
            stderr=stderr,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def _progress_made(run: subprocess.Popen[bytes], out: Path, before: int) -> Callable[[], bool]:
    """True once `run` has ended or the manifest holds more records than `before`."""
    return lambda: run.poll() is not None or len(read_records(manifest_path(out))) > before


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_kill_9_at_random_points_then_resume(tmp_path: Path, astronaut_rgb: np.ndarray) -> None:
    photos = write_photo_set(tmp_path / "photos", astronaut_rgb, PHOTOS)
    out, logs = tmp_path / "out", tmp_path / "logs"
    logs.mkdir()
    args = ["align", str(tmp_path / "photos"), "-o", str(out)]
    rng = random.Random(SEED)
    killed: list[int] = []
    stale_locks_seen = 0
    for attempt in range(KILLS):
        before = len(read_records(manifest_path(out)))
        run = _launch(args, logs, f"run{attempt}")
        if attempt == 0:
            time.sleep(rng.uniform(0.05, 0.5))  # during start-up, before any item is written
        else:
            # Once this run has finished an item it is mid-batch: kill it a random moment later.
            started = wait_for(_progress_made(run, out, before), 90)
            assert started, "the run made no progress"
            time.sleep(rng.uniform(0.0, 0.3))
        if run.poll() is None:
            run.send_signal(signal.SIGKILL)
            run.wait()
            killed.append(run.pid)
            assert run.returncode == -signal.SIGKILL
        else:
            assert run.returncode == 0  # it finished before the kill: a normal, complete run
        assert b"Traceback" not in (logs / f"run{attempt}.err").read_bytes()
        lock = out / ".shmt.lock"
        if lock.exists():
            holder = json.loads(lock.read_text("utf-8") or "{}")
            if holder:
                assert holder["pid"] == run.pid and holder["host"] == socket.gethostname()
                stale_locks_seen += 1
    assert len(killed) >= KILLS - 1, "most runs must be killed mid-way"
    assert stale_locks_seen >= 1, "a killed run leaves its lock behind"
    assert len(read_records(manifest_path(out))) < PHOTOS, "the kills must leave work undone"

    # The last run takes the stale lock over and completes the batch.
    final = subprocess.run([*shmt_command(), *args, "--json"], capture_output=True, timeout=180, check=False)
    assert b"Traceback" not in final.stderr + final.stdout
    assert final.returncode == 0, final.stderr.decode(errors="replace")
    lines = [json.loads(line) for line in final.stdout.splitlines()]
    summary = lines[-1]
    assert (summary["failed"], summary["done"] + summary["skipped"]) == (0, PHOTOS)
    assert summary["done"] >= 1
    assert not (out / ".shmt.lock").exists()

    # No lost item, no duplicate: exactly one crop and one sidecar per photo.
    stems = [p.name.rsplit(".", 1)[0] for p in photos]
    wanted = {f"{s}{suffix}" for s in stems for suffix in (".png", ".json")}
    leftovers = sorted(out.rglob(".*.tmp"))
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files - {p.relative_to(out).as_posix() for p in leftovers} == wanted | {"manifest.jsonl"}

    # No truncated or corrupt output: every crop decodes whole, every sidecar parses and fits its photo.
    for photo, stem in zip(photos, stems, strict=True):
        with Image.open(out / f"{stem}.png") as crop:
            crop.load()
            assert crop.size == (256, 256) and crop.mode == "RGB"
        sidecar = read_sidecar(out / f"{stem}.json")
        with Image.open(photo) as original:
            assert sidecar.source_size == original.size
        assert sidecar.source_path.endswith(photo.name)

    # The manifest parses (a line cut by a kill is skipped) and accounts for every photo: an ok record,
    # or, for a photo killed after its outputs but before its record, the final run's "output exists".
    raw_lines = manifest_path(out).read_bytes().splitlines()
    assert len(read_records(manifest_path(out))) >= len(raw_lines) - len(killed)
    latest = {r["key"]: r for r in read_records(manifest_path(out))}
    keys = {display_path(p) for p in photos}
    recorded = {key for key, r in latest.items() if r["status"] == "ok"}
    adopted = {
        line["key"]
        for line in lines[:-1]
        if line["status"] == "skipped" and line["reason"] == "output exists"
    }
    assert recorded | adopted == keys and set(latest) <= keys
    for key in recorded:
        stem = Path(key).name.rsplit(".", 1)[0]
        assert latest[key]["outputs"] == [f"{stem}.png", f"{stem}.json"]

    # Temp files a kill left behind are ignored by the run (never outputs), belong to the killed
    # writers, and are exactly what remove_stale_temp_files deletes.
    for path in leftovers:
        match = TEMP_NAME.match(path.name)
        assert match is not None and int(match["pid"]) in killed, path.name
    assert sorted(remove_stale_temp_files(out)) == leftovers
    print(f"kills {len(killed)}, final run done {summary['done']}, temp files left by kills {len(leftovers)}")
    assert not list(out.rglob("*.tmp"))


def test_stale_temp_cleanup_spares_live_writers_and_foreign_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "face.png"
    target.parent.mkdir()
    live = target.parent / f"{temp_prefix(target)}abcd1234.tmp"  # this very process: alive
    dead = target.parent / f"{temp_prefix(target).rsplit('-', 1)[0]}-{_dead_pid()}.efgh5678.tmp"
    foreign = tmp_path / ".notes.txt.tmp"  # not named like ours
    other_host = tmp_path / ".face.png.000000-1.ijkl9012.tmp"
    for path in (live, dead, foreign, other_host):
        path.write_bytes(b"partial")
    assert TEMP_NAME.match(dead.name) and TEMP_NAME.match(live.name)
    assert remove_stale_temp_files(tmp_path) == [dead]
    assert live.exists() and foreign.exists() and other_host.exists()
    old = time.time() - 2 * 24 * 3600
    os.utime(other_host, (old, old))  # an old leftover of another host goes too
    assert remove_stale_temp_files(tmp_path) == [other_host]


def test_long_names_get_bounded_temp_names(tmp_path: Path) -> None:
    target = tmp_path / ("n" * 250 + ".png")
    assert len(temp_prefix(target)) + len("abcdefgh.tmp") < 255
    assert TEMP_NAME.match(f"{temp_prefix(target)}abcdefgh.tmp")


def test_a_new_run_removes_temp_files_of_dead_writers(tmp_path: Path, astronaut_rgb: np.ndarray) -> None:
    photo = write_photo_set(tmp_path / "photos", astronaut_rgb, 1)[0]
    out = tmp_path / "out"
    out.mkdir()
    prefix = temp_prefix(out / "photo_00.png").rsplit("-", 1)[0]
    stale = out / f"{prefix}-{_dead_pid()}.abcdefgh.tmp"
    stale.write_bytes(b"\x89PNG half")
    result = CliRunner().invoke(app, ["align", str(photo), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert not stale.exists()


def test_outputs_without_a_record_get_one(tmp_path: Path, astronaut_rgb: np.ndarray) -> None:
    photos = write_photo_set(tmp_path / "photos", astronaut_rgb, 2)
    out = tmp_path / "out"
    assert CliRunner().invoke(app, ["align", str(tmp_path / "photos"), "-o", str(out)]).exit_code == 0
    manifest = manifest_path(out)
    manifest.write_bytes(manifest.read_bytes().splitlines(keepends=True)[0])  # as if killed before line 2
    assert CliRunner().invoke(app, ["align", str(tmp_path / "photos"), "-o", str(out)]).exit_code == 0
    latest = {r["key"]: r for r in read_records(manifest)}
    assert {display_path(p) for p in photos} == set(latest)
    assert all(r["status"] == "ok" for r in latest.values())


def test_a_photo_that_changed_since_its_record_is_redone(tmp_path: Path, astronaut_rgb: np.ndarray) -> None:
    photo = write_photo_set(tmp_path / "photos", astronaut_rgb, 1)[0]
    out, whole = tmp_path / "out", photo.read_bytes()
    args = ["align", str(photo.parent), "-o", str(out), "--json"]
    photo.write_bytes(whole[: len(whole) // 3])  # cron ran while the upload was still going
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 1 and "corrupt or truncated" in first.output
    photo.write_bytes(whole)  # the upload finished
    second = CliRunner().invoke(app, args)
    assert json.loads(second.stdout.splitlines()[-1])["done"] == 1
    crop = (out / "photo_00.png").read_bytes()

    Image.fromarray(np.ascontiguousarray(astronaut_rgb[:, ::-1])).save(photo)  # edited in place
    third = CliRunner().invoke(app, args)
    assert json.loads(third.stdout.splitlines()[-1])["done"] == 1
    assert (out / "photo_00.png").read_bytes() != crop


@pytest.mark.parametrize(
    ("signum", "code", "word", "advice"),
    [
        (signal.SIGTERM, 128 + signal.SIGTERM, "SIGTERM", "run again to resume"),  # the shell's convention
        (signal.SIGINT, 130, "interrupted", "Ctrl-C"),
    ],
)
def test_a_signal_stops_a_run_cleanly_with_one_line(
    tmp_path: Path, astronaut_rgb: np.ndarray, signum: int, code: int, word: str, advice: str
) -> None:
    # Enough photos that the run cannot finish between its first record and the signal (a quiet
    # machine aligns one in ~0.1 s).
    write_photo_set(tmp_path / "photos", astronaut_rgb, 48, sizes=(800,))
    out, logs = tmp_path / "out", tmp_path / "logs"
    logs.mkdir()
    run = _launch(["align", str(tmp_path / "photos"), "-o", str(out)], logs, "run")
    assert wait_for(_progress_made(run, out, 0), 90)
    run.send_signal(signum)
    run.wait(timeout=60)
    err = (logs / "run.err").read_text()
    assert "Traceback" not in err
    assert run.returncode == code
    # One line says what happened (was: silence, or a traceback when it hit the detector).
    said = [line for line in err.splitlines() if word in line]
    assert len(said) == 1 and advice in said[0]
    assert not (out / ".shmt.lock").exists() and not list(out.rglob("*.tmp"))
    assert 1 <= len(read_records(manifest_path(out))) < 48
