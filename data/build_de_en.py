"""Rebuild ``data/de_en_pairs.tsv.gz``: German→English sentence pairs from the Ding dictionary.

Source: Debian package ``dict-de-en`` 1.9-6 (Ding, GPL-2+, (c) Frank Richter): dictd files
``german-english.index`` (headword, base64 offset, base64 length) and ``german-english.dict.dz``
(dictzip, readable as gzip). Each entry is the German headword, a line of grammar tags and the
English translation indented by three spaces. We keep entries whose two sides are both full
sentences: ending in . ! or ?, at least 4 words, and no alternatives (``;`` or ``|``) or
bracketed notes. Output: ``german<TAB>english`` lines, de-duplicated, in dictionary order.
The derived file is distributed under the same GPL-2+ licence (see ``data/LICENSES.md``).

    python data/build_de_en.py [--deb path/to/dict-de-en_1.9-6_all.deb]
"""
from __future__ import annotations

import argparse
import gzip
import re
from pathlib import Path

from _debian import fetch_deb, write_gzip_text

PACKAGE, VERSION = "dict-de-en", "1.9-6"
DEB_SHA256 = "e584b830545c79682441055697857257a8b4d9625068c1d1553af4d7b1f94982"
OUT = Path(__file__).with_name("de_en_pairs.tsv.gz")
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dictd_number(code: str) -> int:
    """Decode a dictd base64 number (most significant digit first)."""
    value = 0
    for ch in code:
        value = value * 64 + B64.index(ch)
    return value


def is_sentence(text: str) -> bool:
    """A full sentence: ends in . ! or ?, has 4+ words, no alternatives or bracketed notes."""
    return (
        text[-1:] in ".!?"
        and len(text.split()) >= 4
        and not re.search(r"[;|{}\[\]<>()/]", text)
        and not text.startswith(("...", "…"))
    )


def sentence_pairs(index: str, body: bytes) -> list[tuple[str, str]]:
    """Parse every dictd entry and keep the (German, English) pairs that are both sentences."""
    pairs, seen = [], set()
    for line in index.splitlines():
        fields = line.split("\t")
        if len(fields) != 3 or fields[0].startswith("00-database"):
            continue
        start, length = dictd_number(fields[1]), dictd_number(fields[2])
        entry = body[start : start + length].decode("utf-8").rstrip("\n").split("\n")
        german = entry[0].strip()
        english = " ".join(part.strip() for part in entry[2:]).strip()
        if len(entry) < 3 or not (is_sentence(german) and is_sentence(english)):
            continue
        if (german, english) not in seen:
            seen.add((german, english))
            pairs.append((german, english))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deb", type=Path, default=None, help="an already downloaded .deb")
    args = parser.parse_args()
    root = fetch_deb(PACKAGE, VERSION, DEB_SHA256, args.deb)
    dictd = root / "usr/share/dictd"
    index = (dictd / "german-english.index").read_text(encoding="utf-8")
    body = gzip.decompress((dictd / "german-english.dict.dz").read_bytes())
    pairs = sentence_pairs(index, body)
    digest = write_gzip_text(OUT, "".join(f"{de}\t{en}\n" for de, en in pairs))
    print(f"{OUT.name}: {len(pairs):,} pairs, sha256 {digest}")


if __name__ == "__main__":
    main()
