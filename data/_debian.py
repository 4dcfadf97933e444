"""Shared helper of the data build scripts: get a pinned Debian package and unpack it.

The scripts rebuild the small derived files committed in this folder. They need a Debian-like
system (``apt-get download`` and ``dpkg-deb``); the library itself never runs them.
"""
from __future__ import annotations

import gzip
import hashlib
import subprocess
import tempfile
from pathlib import Path


def fetch_deb(package: str, version: str, sha256: str, deb: Path | None = None) -> Path:
    """Return an unpacked copy of Debian ``package`` at ``version``, checked by SHA-256.

    ``deb`` may name an already downloaded ``.deb``; otherwise ``apt-get download`` fetches it
    (run ``apt-get update`` first on a fresh machine).
    """
    work = Path(tempfile.mkdtemp(prefix=f"tcomp-{package}-"))
    if deb is None:
        subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=work, check=True)
        deb = next(work.glob(f"{package}_*.deb"))
    digest = hashlib.sha256(Path(deb).read_bytes()).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{deb}: SHA-256 {digest} does not match the pinned {sha256}")
    root = work / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def write_gzip_text(path: Path, text: str) -> str:
    """Write ``text`` gzip-compressed with a fixed timestamp (byte-identical rebuilds); return its SHA-256."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    tmp.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()
