"""Two `shmt align` runs on one output folder at once: the second fails clearly or waits its turn.

Real subprocesses: run A holds the folder; run B (no --wait-lock) must exit 3 naming the lock and A's
PID; run C (--wait-lock) must wait for A, then skip all A did and do only what is new. Shards of one job
run side by side in one folder, each under its own lock.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from hostile import shmt_command, wait_for, write_photo_set

from shmt_cli.inputs import display_path
from shmt_cli.lock import OutputLock
from shmt_cli.manifest import manifest_path, read_records

LOCK = ".shmt.lock"


def _lock_holder(folder: Path) -> int | None:
    try:
        return json.loads((folder / LOCK).read_text("utf-8"))["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_second_run_fails_clearly_or_waits(tmp_path: Path, astronaut_rgb: np.ndarray) -> None:
    # Large photos make run A slow enough (detection runs at up to 1600 px) for B and C to meet it.
    photos = write_photo_set(tmp_path / "photos", astronaut_rgb, 12, sizes=(1200, 1400, 1600))
    extra = write_photo_set(tmp_path / "more", astronaut_rgb, 1)[0]
    out = tmp_path / "out"
    folder = str(tmp_path / "photos")
    run_a = subprocess.Popen(
        [*shmt_command(), "align", folder, "-o", str(out), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    paused = False
    try:
        assert wait_for(lambda: _lock_holder(out) == run_a.pid, 90), "run A never took the lock"
        # Pause A while it holds the lock: B and C then meet a live holder however fast the machine is.
        os.kill(run_a.pid, signal.SIGSTOP)
        paused = True
        run_c = subprocess.Popen(
            [*shmt_command(), "align", folder, str(extra), "-o", str(out), "--json", "--wait-lock", "300"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        run_b = subprocess.run(
            [*shmt_command(), "align", folder, "-o", str(out), "--json"],
            capture_output=True,
            timeout=120,
            check=False,
        )
        a_was_running = run_a.poll() is None
        c_was_waiting = run_c.poll() is None
        os.kill(run_a.pid, signal.SIGCONT)
        paused = False
        c_out, c_err = run_c.communicate(timeout=300)
    finally:
        if paused:
            os.kill(run_a.pid, signal.SIGCONT)
        a_out, a_err = run_a.communicate(timeout=300)

    assert c_was_waiting, "run C did not wait for the folder's lock"
    # B: exit 3, one clear line naming the lock and the PID holding it, nothing on stdout.
    assert a_was_running, "run A finished before run B tried the folder: the test proves nothing"
    b_err = run_b.stderr.decode("utf-8", "replace")
    assert run_b.returncode == 3, b_err
    assert "Traceback" not in b_err and run_b.stdout == b""
    assert len(b_err.strip().splitlines()) == 1, b_err
    assert f"in use by PID {run_a.pid}" in b_err and LOCK in b_err and "--wait-lock" in b_err

    # A did every photo; C waited for it, then skipped them all and did only the new one.
    assert run_a.returncode == 0, a_err.decode("utf-8", "replace")
    a_summary = json.loads(a_out.splitlines()[-1])
    assert (a_summary["done"], a_summary["skipped"], a_summary["failed"]) == (12, 0, 0)
    assert run_c.returncode == 0, c_err.decode("utf-8", "replace")
    assert b"Traceback" not in a_err + c_err
    c_lines = [json.loads(line) for line in c_out.splitlines()]
    assert (c_lines[-1]["done"], c_lines[-1]["skipped"], c_lines[-1]["failed"]) == (1, 12, 0)
    assert [line["key"] for line in c_lines[:-1] if line["status"] == "ok"] == [display_path(extra)]

    # One record per photo, A's first and C's last; one crop and sidecar each; the lock is gone.
    records = read_records(manifest_path(out))
    keys = [r["key"] for r in records]
    assert sorted(keys) == sorted(display_path(p) for p in [*photos, extra])
    assert keys[-1] == display_path(extra)
    assert len(list(out.glob("*.png"))) == len(list(out.glob("*.json"))) == 13
    assert not (out / LOCK).exists()


def test_shards_run_side_by_side_in_one_folder(tmp_path: Path, astronaut_rgb: np.ndarray) -> None:
    photos = write_photo_set(tmp_path / "photos", astronaut_rgb, 8)
    out = tmp_path / "out"
    shards = [
        subprocess.Popen(
            [
                *shmt_command(),
                "align",
                str(tmp_path / "photos"),
                "-o",
                str(out),
                "--shard",
                f"{k}/2",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for k in (1, 2)
    ]
    results = [shard.communicate(timeout=180) for shard in shards]
    for shard, (_, stderr) in zip(shards, results, strict=True):
        assert shard.returncode == 0, stderr.decode("utf-8", "replace")
        assert b"Traceback" not in stderr
    done = [json.loads(stdout.splitlines()[-1])["done"] for stdout, _ in results]
    assert sum(done) == len(photos) and min(done) >= 1  # a real split, both did work at once

    merged = subprocess.run(
        [*shmt_command(), "manifest-merge", str(out), "--expect", str(len(photos))],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert merged.returncode == 0, merged.stderr.decode("utf-8", "replace")
    assert f"{len(photos)} items, {len(photos)} ok" in merged.stderr.decode("utf-8", "replace")
    assert not list(out.glob(".*.lock")) and not list(out.rglob("*.tmp"))


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _most_holders_at_once(folder: Path, racers: int) -> int:
    """Let `racers` threads take a lock left by a dead run at the same moment; the most holding it at once."""
    (folder / LOCK).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    holding, most = [0], [0]
    count = threading.Lock()
    start = threading.Barrier(racers)

    def race() -> None:
        lock = OutputLock(folder, wait_seconds=30)
        start.wait()
        lock.acquire()
        with count:
            holding[0] += 1
            most[0] = max(most[0], holding[0])
        time.sleep(0.002)
        with count:
            holding[0] -= 1
        lock.release()

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return most[0]


def test_racing_takeovers_of_a_stale_lock_admit_one_run_at_a_time(tmp_path: Path) -> None:
    # Tiny thread switch intervals interleave the racers at every step (deleting and re-creating a
    # stale lock let two of them in on about half of these rounds).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        most = [_most_holders_at_once(tmp_path, racers=5) for _ in range(6)]
    finally:
        sys.setswitchinterval(interval)
    assert most == [1] * 6
    assert not (tmp_path / LOCK).exists()
