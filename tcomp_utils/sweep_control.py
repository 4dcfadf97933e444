"""A sweep's control of its own run: a lock per point, so that two sweeps on one spec never compute
the same point twice (:class:`PointLock`), and SIGINT/SIGTERM turned into an exception the sweep
catches to log its run and say how to go on (:func:`stop_on_signals`)."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock, points are not locked (see PointLock)
    fcntl = None


class PointBusy(RuntimeError):
    """A point whose lock another live process holds: it is running that point."""


class PointLock:
    """This process's exclusive lock on one point of a sweep, ``<output>/points/<key>.lock``: an
    advisory ``flock`` held while the point runs, the file saying who holds it (pid, host, since
    when) and removed on release. The operating system drops the lock of a process that dies, so
    the file a killed sweep leaves (naming a dead pid) never blocks: the next sweep takes it over.
    Where ``flock`` does not exist (Windows) points are not locked."""

    def __init__(self, path: str | os.PathLike):
        self.path, self._fd = Path(path), None

    def holder(self) -> str:
        """Who holds the lock, as its file says."""
        try:
            info = json.loads(self.path.read_text())
            return f"process {info['pid']} on {info['host']} (since {info['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"  # it has not written its name yet

    def acquire(self) -> "PointLock":
        """Take the lock or raise :class:`PointBusy` naming its holder and the lock file."""
        if fcntl is None or self._fd is not None:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise PointBusy(f"{self.holder()} is running it (lock file {self.path})") from None
            try:  # the holder we waited on may have removed the file between our open and our lock
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (nothing when not held)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked, so no other process can lock this file
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "PointLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Interrupted(KeyboardInterrupt):
    """A sweep stopped by a signal (``signum``: SIGINT or SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def stop_on_signals() -> None:
    """SIGINT and SIGTERM stop a sweep as Ctrl-C does (raising :class:`Interrupted`), so it logs
    its run (a shell starts a background job with SIGINT ignored, and SIGTERM would skip the logging)."""
    def stop(signum, frame):
        raise Interrupted(signum)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
