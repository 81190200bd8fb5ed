"""Whether a process is running (used to tell a live lock holder or temp-file writer from a dead one)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
