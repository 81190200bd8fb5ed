"""Whether a process is running (used to tell a live lock holder or temp-file writer from a dead one)."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True if a process with this PID runs on this host (one we may not signal counts as alive).

    A zombie (exited, not yet reaped by its parent, e.g. a killed Ray worker) writes nothing more and
    counts as dead, although signalling it still succeeds.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (not Linux) or the process just went: decided by the signal alone
        return False
    # The state letter follows the command name, which is in parentheses and may hold spaces or ')'.
    end = stat.rfind(")")
    return stat[end + 2 : end + 3] == "Z"
