"""Rebuild ``data/austen.json.gz``: the six Jane Austen novels as plain text.

Source: Debian package ``r-cran-janeaustenr`` 1.0.0-1 (MIT; the novels are public domain). The
package stores them as an R lazy-load database: ``Rdata.rdx`` (a gzip-compressed RDS index of
offsets) and ``Rdata.rdb`` (each object a 4-byte length followed by zlib data), read here with
the ``rdata`` package. Output: a JSON object {book name: text}, lines joined with newlines.

    python data/build_austen.py [--deb path/to/r-cran-janeaustenr_1.0.0-1_all.deb]
"""
from __future__ import annotations

import argparse
import gzip
import json
import zlib
from pathlib import Path

import rdata

from _debian import fetch_deb, write_gzip_text

PACKAGE, VERSION = "r-cran-janeaustenr", "1.0.0-1"
DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
OUT = Path(__file__).with_name("austen.json.gz")


def read_r_lazyload(folder: Path) -> dict[str, object]:
    """Read every object of an R lazy-load database (``Rdata.rdx`` + ``Rdata.rdb``)."""
    index = rdata.conversion.convert(
        rdata.parser.parse_data(gzip.decompress((folder / "Rdata.rdx").read_bytes()))
    )
    blob = (folder / "Rdata.rdb").read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].items():
        record = blob[int(offset) : int(offset) + int(length)]
        out[str(name)] = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(record[4:])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deb", type=Path, default=None, help="an already downloaded .deb")
    args = parser.parse_args()
    root = fetch_deb(PACKAGE, VERSION, DEB_SHA256, args.deb)
    books = read_r_lazyload(root / "usr/lib/R/site-library/janeaustenr/data")
    text = {name: "\n".join(str(line) for line in lines) for name, lines in sorted(books.items())}
    digest = write_gzip_text(OUT, json.dumps(text, ensure_ascii=False, indent=0))
    words = sum(len(t.split()) for t in text.values())
    print(f"{OUT.name}: {len(text)} books, {words:,} words, sha256 {digest}")


if __name__ == "__main__":
    main()
