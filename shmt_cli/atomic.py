"""Atomic file writes: readers see the old file or the whole new one, never a part.

Every write goes through a temporary file in the target's folder (named `.<name>.<host>-<pid>.<random>.tmp`,
so a later run can remove what a killed writer left), is fsynced, given the permissions an ordinary
`open()` would give (0666 minus the umask: mkstemp's 0600 would hide outputs and imported weights
from the other users of a shared machine), then renamed over the target.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from shmt_cli.process import pid_alive

TEMP_NAME_KEEP = 80  # characters of the target name kept, so long names stay within NAME_MAX (255)
TEMP_NAME = re.compile(r"^\..*\.(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]+)\.[a-z0-9_]+\.tmp$", re.DOTALL)
STALE_TEMP_SECONDS = 24 * 3600  # a temp file this old is left over whoever wrote it


def _host_id() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def temp_prefix(target: Path) -> str:
    """The prefix of the temporary file written for `target` (host and PID tagged)."""
    return f".{target.name[:TEMP_NAME_KEEP]}.{_host_id()}-{os.getpid()}."


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """`with atomic_path(target) as tmp:` write the file `tmp` (by path, e.g. a library's save
    function); on a clean exit it is fsynced, made 0666 & ~umask and renamed over `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb+") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_UMASK)
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(handle)` on a binary handle of a temporary file, then publish it as `path`."""
    with atomic_path(path) as tmp, os.fdopen(os.open(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as handle:
        write(handle)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes to `path` atomically."""
    atomic_write(path, lambda handle: handle.write(data))


def write_json_atomic(path: str | os.PathLike[str], payload: Any, *, sort_keys: bool = False) -> None:
    """Write JSON (UTF-8, indented, no NaN) atomically."""
    text = json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False, sort_keys=sort_keys) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale_temp_files(folder: Path, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete temporary files left below `folder` by writers that died (killed, power cut).

    A temp file is stale when this host wrote it from a PID that is no longer running, or when it
    is older than `older_than` seconds. Files of live writers (a concurrent shard) and files not
    named like ours are kept. Returns the paths removed.
    """
    host, now, removed = _host_id(), time.time(), []
    for parent, _, files in os.walk(folder):
        for name in files:
            match = TEMP_NAME.match(name)
            if match is None:
                continue
            path = Path(parent) / name
            try:
                age = now - path.lstat().st_mtime
            except OSError:
                continue
            dead = match["host"] == host and not pid_alive(int(match["pid"]))
            if dead or age > older_than:
                # A file we cannot delete (read-only share) must not stop the run that tidies up.
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
    return removed
