"""Progress a person can see from outside a notebook.

A sweep point runs in a papermill kernel, so its progress bars (task-model or translation-model
training, GPTQ over blocks) print into the executed notebook, not into the terminal that started
``make run``. :class:`Bar` is the tqdm bar the package's long loops use: shown or not, it also
writes its state, at most every :data:`INTERVAL_S` seconds, to the file named by
``$TCOMP_PROGRESS_FILE`` when that is set. A status file holds two lines: the label of the job and
its start time (written by whoever starts the job: :func:`started`), then the latest bar line.
:func:`watch` reads the status files of a folder from another thread every few seconds and prints
one line per running job: its label, elapsed time and latest bar.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from tqdm.auto import tqdm

ENV = "TCOMP_PROGRESS_FILE"
SUFFIX = ".progress"
INTERVAL_S = 5.0  # how often a bar rewrites its status file at most
WATCH_S = float(os.environ.get("TCOMP_PROGRESS_EVERY", 30))  # how often watch() prints


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one


def started(path: str | os.PathLike, label: str) -> Path:
    """Start the status file of one job (``label``: what runs, e.g. a sweep point); returns its path."""
    path = Path(path)
    _write(path, f"{label}\n{time.time():.3f}\n")
    return path


def elapsed(seconds: float) -> str:
    """``h:mm:ss`` or ``m:ss``."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Bar(tqdm):
    """tqdm's bar that also reports its count, rate and postfix to ``$TCOMP_PROGRESS_FILE`` (when set),
    whether it is displayed or disabled (a notebook's ``progress=False``)."""

    def __init__(self, *args, **kwargs):
        self._file = Path(os.environ[ENV]) if os.environ.get(ENV) else None
        self._count, self._since, self._last = 0, time.perf_counter(), 0.0
        super().__init__(*args, **kwargs)
        # a disabled tqdm keeps neither its description nor an iterable's length: kept here
        iterable = args[0] if args else kwargs.get("iterable")
        self._desc = kwargs.get("desc") or (args[1] if len(args) > 1 else None) or "working"
        self._total = self.total if self.total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self._count = self._first = self.n  # a resumed loop starts at its initial count
        self._report(force=True)

    def __iter__(self):
        for item in super().__iter__():
            yield item
            self._count += 1
            self._report()

    def update(self, n: float | None = 1):
        self._count += n or 0
        self._report()
        return super().update(n)

    def close(self):
        self._report(force=True)
        super().close()

    def status(self) -> str:
        """``desc: n/total (rate) postfix``."""
        spent = time.perf_counter() - self._since
        total = f"/{self._total:g}" if self._total else ""
        done = self._count - self._first
        rate = f", {spent / done:.2f} s/it" if done else ""
        post = f", {self.postfix}" if getattr(self, "postfix", None) else ""
        return f"{self._desc}: {self._count:g}{total}{rate}{post}"

    def _report(self, force: bool = False) -> None:
        if self._file is None or not hasattr(self, "_first"):
            return
        now = time.perf_counter()
        if not force and now - self._last < INTERVAL_S:
            return
        self._last = now
        try:
            head = self._file.read_text(encoding="utf-8").splitlines()[:2]
        except OSError:
            head = []
        if len(head) < 2:  # no job header (the bar runs outside a watched job): report under its own name
            head = [self._desc, f"{time.time():.3f}"]
        try:
            _write(self._file, "\n".join([*head, self.status()]) + "\n")
        except OSError:  # the folder went away: progress is a courtesy, never a failure
            self._file = None


def read(path: Path) -> tuple[str, float, str] | None:
    """``(label, start time, latest bar line)`` of a status file, or None if it is gone or unfinished."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    if len(lines) < 2:
        return None
    try:
        return lines[0], float(lines[1]), lines[2] if len(lines) > 2 else "starting"
    except ValueError:
        return None


def lines(folders: list[Path]) -> list[str]:
    """One line per running job in ``folders``: ``label · elapsed · latest bar``."""
    out = []
    for folder in folders:
        for path in sorted(Path(folder).glob(f"*{SUFFIX}")):
            if (got := read(path)) is not None:
                label, start, bar = got
                out.append(f"running {label} · {elapsed(time.time() - start)} · {bar}")
    return out


@contextmanager
def watch(folders: list[Path], say: Callable[[str], None] = print, every: float | None = None) -> Iterator[None]:
    """While the block runs, print :func:`lines` of ``folders`` every ``every`` seconds (default
    :data:`WATCH_S`; nothing when no job runs)."""
    stop = threading.Event()
    every = WATCH_S if every is None else every

    def loop() -> None:
        while not stop.wait(every):
            for line in lines(folders):
                say(line)

    thread = threading.Thread(target=loop, name="tcomp-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
