"""One writer per output folder: a lock file holding the owner's PID and host."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType


class LockBusy(Exception):
    """Another live run holds the output folder."""


class OutputNotWritable(Exception):
    """The output folder cannot be created or written."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """`with OutputLock(folder):` — exclusive use of an output folder (or of one shard's part of it).

    The lock file is created with O_EXCL. A lock left by a dead process on this host is taken over;
    a live holder makes the second run wait (`wait_seconds` > 0, polling) or fail with LockBusy.
    """

    def __init__(
        self, folder: Path, name: str = ".shmt.lock", wait_seconds: float = 0.0, command: str = ""
    ) -> None:
        self.path = folder / name
        self.wait_seconds = wait_seconds
        self.command = command
        self._held = False

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text("utf-8"))
        except (OSError, ValueError):
            return {}

    def _stale(self, info: dict) -> bool:
        if not info:
            # Unreadable or half-written: stale only once it is old enough not to be a writer mid-write.
            try:
                return time.time() - self.path.stat().st_mtime > 10
            except OSError:
                return True
        if info.get("host") != socket.gethostname():
            return False
        pid = info.get("pid")
        return not isinstance(pid, int) or not _pid_alive(pid)

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputNotWritable(
                f"cannot create output folder {self.path.parent}: {exc.strerror}"
            ) from exc
        deadline = time.monotonic() + self.wait_seconds
        payload = json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": self.command}
        ).encode()
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = self.holder()
                if self._stale(info):
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                if time.monotonic() >= deadline:
                    who = f"PID {info.get('pid')} on {info.get('host')}" if info else "another run"
                    raise LockBusy(
                        f"output folder {self.path.parent} is in use by {who} (lock {self.path.name}); "
                        "use --wait-lock SECONDS to wait for it"
                    ) from None
                time.sleep(0.2)
                continue
            except OSError as exc:
                if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC):
                    raise OutputNotWritable(f"cannot write to {self.path.parent}: {exc.strerror}") from exc
                raise
            try:
                os.write(fd, payload)
            finally:
                os.close(fd)
            self._held = True
            return

    def release(self) -> None:
        if self._held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._held = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
