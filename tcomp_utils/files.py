"""Files and folders written whole or not at all, and their digests: the one place for atomic
writes (a temporary sibling renamed into place), for folders built once into a cache, for SHA-256
of a file, and for where the repository is."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def build_folder(folder: str | os.PathLike, build: Callable[[Path], None], rebuild: bool = False,
                 marker: str = "metrics.json") -> Path:
    """``folder`` made once: unless it holds ``marker`` already (and not ``rebuild``), ``build(tmp)``
    fills a temporary sibling, which then replaces the folder whole (or, when another process
    finished the same folder meanwhile and this is no ``rebuild``, is dropped). Returns the folder."""
    folder = Path(folder)
    if rebuild or not (folder / marker).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-") as tmp:
            built = Path(tmp) / "built"
            built.mkdir()
            build(built)
            if not rebuild and (folder / marker).is_file():
                return folder  # a concurrent build finished first: keep the folder readers may have open
            if folder.exists():
                shutil.rmtree(folder)
            built.rename(folder)
    return folder
