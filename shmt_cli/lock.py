"""One writer per output folder: a flocked lock file holding the owner's PID and host."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from shmt_cli.process import pid_alive

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: only the PID check in the file guards the folder
    fcntl = None  # type: ignore[assignment]


class LockBusy(Exception):
    """Another live run holds the output folder."""


class OutputNotWritable(Exception):
    """The output folder cannot be created or written."""


class OutputLock:
    """`with OutputLock(folder):` — exclusive use of an output folder (or of one shard's part of it).

    Exclusion comes from an advisory lock (flock) on the lock file, which the kernel drops when its
    holder dies: of several runs taking over a lock left by a killed run, exactly one wins (deleting
    and re-creating the file instead let two runs each delete the other's fresh lock). The file holds
    the owner's PID, host and command for messages; a file naming a live process on this host, or
    any process on another host, still counts as held (an older writer, or a file system without
    flock). A live holder makes the second run wait (`wait_seconds` > 0, polling) or fail with LockBusy.
    """

    def __init__(
        self, folder: Path, name: str = ".shmt.lock", wait_seconds: float = 0.0, command: str = ""
    ) -> None:
        self.path = folder / name
        self.wait_seconds = wait_seconds
        self.command = command
        self._fd: int | None = None

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
        return not isinstance(pid, int) or not pid_alive(pid)

    def _open(self) -> tuple[int, bool] | None:
        """The lock file opened read-write, and whether this call created it; None if it just vanished."""
        try:
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                return os.open(self.path, os.O_RDWR), False
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC):
                raise OutputNotWritable(f"cannot write to {self.path.parent}: {exc.strerror}") from exc
            raise

    def _take(self, fd: int, created: bool) -> bool:
        """Whether the lock file open as `fd` is now ours (flocked, still at our path, not held)."""
        flocked = False
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flocked = True
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
        # The run we waited for removes its file on release: lock only the file the path names now.
        try:
            if not os.path.samestat(os.fstat(fd), os.stat(self.path)):
                return False
        except FileNotFoundError:
            return False
        try:
            info = json.loads(os.pread(fd, 65536, 0) or b"{}")
        except ValueError:
            info = {}
        if not isinstance(info, dict):
            info = {}
        if not info and (flocked or created):
            return True  # ours, or made by a racer not yet past flock, or by a writer that died
        return self._stale(info)

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
            opened = self._open()
            if opened is None:
                continue
            fd, created = opened
            try:
                taken = self._take(fd, created)
                if taken:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, payload, 0)
            except BaseException:
                os.close(fd)
                raise
            if taken:
                self._fd = fd
                return
            os.close(fd)
            if time.monotonic() >= deadline:
                info = self.holder()
                who = f"PID {info.get('pid')} on {info.get('host')}" if info else "another run"
                raise LockBusy(
                    f"output folder {self.path.parent} is in use by {who} (lock {self.path.name}); "
                    "use --wait-lock SECONDS to wait for it"
                )
            time.sleep(0.2)

    def release(self) -> None:
        if self._fd is None:
            return
        # Remove the file while still holding it, so a run that opened it meanwhile sees it is gone.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def live_locks(folder: Path, pattern: str = ".shmt*.lock") -> list[tuple[str, dict]]:
    """(lock file name, holder info) of the locks in `folder` whose holder still runs (or runs on another
    host, where it cannot be checked): e.g. shards still writing while their manifests are merged."""
    held = []
    for path in sorted(folder.glob(pattern)):
        lock = OutputLock(folder, path.name)
        info = lock.holder()
        if info and not lock._stale(info):
            held.append((path.name, info))
    return held
