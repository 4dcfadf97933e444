"""Files and folders written whole or not at all, and their digests: the one place for atomic
writes (a temporary sibling renamed into place), for folders built once into a cache (with the
SHA-256 of every file recorded at build time and checked on every later use), for SHA-256 of a
file, and for where the repository is.

A folder is built in a hidden temporary sibling ``.NAME-build-HOST-PID-xxxxxxxx``: removed when
the build fails, is interrupted, or the process gets SIGTERM (which then exits with status 143
once the temporary folder is gone); one left by a process that was killed outright (SIGKILL) is
removed by the next build of the same name on that host once its process is gone.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKSUMS = "checksums.json"  # {relative path: SHA-256} of a built folder's files, written when it is built


class CacheCorruptedError(RuntimeError):
    """A file of a folder built into the cache is missing, or no longer matches its recorded SHA-256."""


class Terminated(SystemExit):
    """SIGTERM, raised inside :func:`terminate_cleanly` so that ``finally`` blocks and context
    managers run on the way out (uncaught, the process exits with status 143, as a terminated one)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_replaceable(folder: str | os.PathLike, is_previous: Callable[[Path, set[str]], bool], what: str,
                      overwrite: bool) -> None:
    """Refuse (``FileExistsError``) writing ``folder`` unless it is missing, empty, or a previous
    ``what`` (``is_previous(folder, names)`` on its file names) replaced with ``overwrite``."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    contents = {p.name for p in folder.iterdir()}
    if not contents:
        return
    if not is_previous(folder, contents):
        shown = ", ".join(sorted(contents)[:5]) + ("..." if len(contents) > 5 else "")
        raise FileExistsError(f"{folder} is not empty and is not a previous {what} ({shown}); choose an empty or new "
                              "folder")
    if not overwrite:
        raise FileExistsError(f"{folder} holds a previous {what}; pass overwrite=True to replace it")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """``data`` as indented JSON (non-ASCII kept), written atomically."""
    write_text_atomic(path, json.dumps(data, indent=1, ensure_ascii=False))


def write_csv_atomic(frame: Any, path: str | os.PathLike, **to_csv: Any) -> None:
    """A pandas frame as CSV (no index unless asked), written atomically."""
    write_text_atomic(path, frame.to_csv(**{"index": False, **to_csv}))


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """Within: SIGTERM raises :class:`Terminated` instead of killing the process on the spot, so
    temporary folders are removed on the way out. Only where SIGTERM would kill outright (the
    default handler, in the main thread): a handler someone installed is left alone."""
    in_main = threading.current_thread() is threading.main_thread()
    if not in_main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _stale_builds(folder: Path) -> list[Path]:
    """Temporary build folders of ``folder`` left by processes of this host that are gone. Only
    names this module makes match: never a resumable ``.ckpt-*`` checkpoint folder."""
    made = re.compile(rf"\.{re.escape(folder.name)}-build-{re.escape(_host())}-(\d+)-[a-z0-9_]+")
    return [p for p in folder.parent.iterdir()
            if not p.name.startswith(".ckpt-") and (m := made.fullmatch(p.name)) and p.is_dir()
            and not _alive(int(m[1]))]


@contextlib.contextmanager
def build_dir(folder: str | os.PathLike) -> Iterator[Path]:
    """A new temporary folder beside ``folder`` (``.NAME-build-HOST-PID-xxxxxxxx``) to build it in,
    removed on the way out, SIGTERM included (:func:`terminate_cleanly`). Those of earlier builds
    of ``folder`` whose process is gone are removed first."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in _stale_builds(folder):
        shutil.rmtree(stale, ignore_errors=True)
    with terminate_cleanly(), tempfile.TemporaryDirectory(
            dir=folder.parent, prefix=f".{folder.name}-build-{_host()}-{os.getpid()}-") as tmp:
        yield Path(tmp)


def record_checksums(folder: str | os.PathLike) -> dict[str, str]:
    """Write ``folder/checksums.json``: the SHA-256 of every file below ``folder``; return it."""
    folder = Path(folder)
    digests = {p.relative_to(folder).as_posix(): sha256_file(p)
               for p in sorted(folder.rglob("*")) if p.is_file() and p.name != CHECKSUMS}
    write_json_atomic(folder / CHECKSUMS, digests)
    return digests


def _record_unrecorded(folder: Path, rebuild_hint: str) -> None:
    """A folder built before checksums were recorded: its safetensors files must at least be whole
    (a truncated one is refused); then its checksums are recorded now, with a one-line notice."""
    import safetensors

    for path in sorted(folder.rglob("*.safetensors")):
        try:
            with safetensors.safe_open(str(path), framework="numpy"):
                pass
        except Exception as err:  # SafetensorError: a truncated or damaged file
            raise CacheCorruptedError(f"{path} is damaged ({err}); {rebuild_hint}") from None
    try:
        record_checksums(folder)
    except OSError as err:  # a read-only cache still loads, unverified
        print(f"note: {folder} has no {CHECKSUMS} (built before checksums were recorded) and none could be "
              f"written ({err}); its files are not verified", file=sys.stderr)
        return
    print(f"note: {folder} was built before checksums were recorded; recorded them now in {CHECKSUMS}, "
          "its files are verified from now on", file=sys.stderr)


def verify_folder(folder: str | os.PathLike, rebuild_hint: str = "build it again") -> None:
    """Check every file recorded in ``folder/checksums.json`` against its SHA-256 (about 0.3 s per
    100 MB on one busy core; loading the weights reads them all anyway). A missing or changed file raises
    :class:`CacheCorruptedError` naming it and ``rebuild_hint`` (what rebuilds the folder). A
    folder built before checksums were recorded gets them recorded now (rebuilding could take hours)."""
    folder = Path(folder)
    record = folder / CHECKSUMS
    if not record.is_file():
        _record_unrecorded(folder, rebuild_hint)
        return
    try:
        recorded = json.loads(record.read_text())
        if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
            raise ValueError("not a mapping of file names to SHA-256s")
    except ValueError as err:
        raise CacheCorruptedError(f"{record} is damaged ({err}); {rebuild_hint}") from None
    for rel, digest in recorded.items():
        path = folder / rel
        if not path.is_file():
            raise CacheCorruptedError(f"{path} is missing (recorded in {record}); {rebuild_hint}")
        if sha256_file(path) != digest:
            raise CacheCorruptedError(f"{path} does not match the SHA-256 recorded in {record} when the folder was "
                                      f"built: the file is damaged; {rebuild_hint}")


def build_folder(folder: str | os.PathLike, build: Callable[[Path], None], rebuild: bool = False,
                 marker: str = "metrics.json", rebuild_hint: str = "build it again") -> Path:
    """``folder`` made once: unless it holds ``marker`` already (and not ``rebuild``), ``build(tmp)``
    fills a temporary sibling (:func:`build_dir`), whose files' SHA-256s are recorded
    (``checksums.json``) before it replaces the folder whole (or, when another process finished
    the same folder meanwhile and this is no ``rebuild``, is dropped). A folder already there is
    checked against its checksums (:func:`verify_folder`; ``rebuild_hint`` says in the error what
    rebuilds it). Returns the folder."""
    folder = Path(folder)
    if not rebuild and (folder / marker).is_file():
        verify_folder(folder, rebuild_hint)
        return folder
    with build_dir(folder) as tmp:
        built = tmp / "built"
        built.mkdir()
        build(built)
        record_checksums(built)
        if not rebuild and (folder / marker).is_file():
            return folder  # a concurrent build finished first: keep the folder readers may have open
        if folder.exists():
            shutil.rmtree(folder)
        built.rename(folder)
    return folder
