"""`pid_alive`: running, exited and zombie processes."""

from __future__ import annotations

import subprocess
import sys
import time

from shmt_cli.process import pid_alive


def test_running_exited_and_zombie_processes() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pid_alive(child.pid)
    finally:
        child.kill()
    # Killed but not yet waited for: a zombie, which a writer's temp files must not outlive.
    deadline = time.monotonic() + 10
    while pid_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)
