"""Rebuild ``data/jargon.json.gz``: the Jargon File 4.4.7 (hacker slang lexicon) as plain text.

Source: Debian package ``dict-jargon`` 4.4.7-3.1 (the Jargon File is public domain; the Debian
packaging is GPL-2+ and not included). The package stores it as a dictd database:
``jargon.index`` (lines ``headword<TAB>offset<TAB>length``, numbers in dictd's base64, most
significant digit first) and ``jargon.dict.dz`` (gzip-readable text; each entry is the slice at
its offset). The ``00-database-*`` metadata entries are skipped. Each entry is cleaned into plain
text: the headword line, the pronunciation and part-of-speech line (empty ``//`` pronunciations
dropped), then the paragraphs separated by blank lines. The fixed indentation is stripped, the
wrapped lines of a prose paragraph are joined into one line, and ``{cross-reference}`` braces are
removed (their words kept); preformatted paragraphs (code, verse, tables, ASCII art: lines with
no-break spaces, box drawing, or lines that are not filled to the wrap width) keep their lines.
Output: a JSON object {headword: text} in the index order (alphabetical); the key is the entry's
own headword line, which keeps its case (the index lower-cases it, so ``OP`` and ``op`` collide).

    python data/build_jargon.py [--deb path/to/dict-jargon_4.4.7-3.1_all.deb]
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import unicodedata
from pathlib import Path

from _debian import fetch_deb, write_gzip_text

PACKAGE, VERSION = "dict-jargon", "4.4.7-3.1"
DEB_SHA256 = "405f8168d7994ed2cb71407bb95493daec2e9aa66fc0461dafa74a9d6728a8c1"
OUT = Path(__file__).with_name("jargon.json.gz")

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
WRAP = 77  # a line followed by a word that would have fitted within this width was not wrapped
OPENERS, CLOSERS = "{“‘([", "}”’)].,;:?!"  # the formatter wrapped at markup edges with no space there
# a cross-reference: braces tight around the words; not ...!{a, b}!... (a bang path) nor { and }
XREF = re.compile(r"(?<!!)\{([^{}\s](?:[^{}\n]*[^{}\s])?)\}")


def b64_number(text: str) -> int:
    """A dictd index number: base 64 in ``B64``'s alphabet, most significant digit first."""
    value = 0
    for char in text:
        value = value * 64 + B64.index(char)
    return value


def read_dictd(folder: Path, name: str) -> list[tuple[str, str]]:
    """``(index headword, entry text)`` of every entry of dictd database ``name``, in index order."""
    blob = gzip.decompress((folder / f"{name}.dict.dz").read_bytes())
    out = []
    for line in (folder / f"{name}.index").read_text(encoding="utf-8").splitlines():
        head, offset, length = line.split("\t")
        start = b64_number(offset)
        out.append((head, blob[start : start + b64_number(length)].decode("utf-8")))
    return out


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _is_prose(lines: list[str]) -> bool:
    """A wrapped prose paragraph: no preformatting marks, and every line but the last filled."""
    for line in lines:  # preformatted text came with every space a no-break space
        if "\xa0" in line and " " not in line.strip(" ") or any("\u2500" <= c <= "\u257f" for c in line):
            return False
    return all(_width(a) + 1 + _width(b.split()[0]) > WRAP for a, b in zip(lines, lines[1:]))


def _join(lines: list[str]) -> str:
    out = lines[0].strip().replace("\xa0", " ")
    for line in lines[1:]:
        line = line.strip().replace("\xa0", " ")
        url = "://" in out.rsplit(" ", 1)[-1] and out[-1] == "/"
        out += line if out[-1] in OPENERS or line[0] in CLOSERS or url else " " + line
    out = re.sub(r"\{(\S[^{}]*?)\s\}", r"{ \1 }", out)  # a literal "{ and }" wrapped after the "{"
    return XREF.sub(r"\1", out)


def _unbrace_cells(line: str) -> str:
    """Remove cross-reference braces from a preformatted line, padding table cells to keep their borders."""
    if "│" not in line:
        return XREF.sub(r"\1", line)
    return "│".join(XREF.sub(r"\1", cell) + "  " * len(XREF.findall(cell)) for cell in line.split("│"))


def _verbatim(lines: list[str]) -> str:
    lines = [line.replace("\xa0", " ").rstrip() for line in lines]
    indent = min(len(line) - len(line.lstrip(" ")) for line in lines)
    return "\n".join(_unbrace_cells(line[indent:]) for line in lines)


def clean_entry(raw: str) -> tuple[str, str]:
    """``(headword, plain text)`` of one dictd entry of the Jargon File."""
    lines = raw.replace("\xad", "").rstrip("\n").split("\n")
    headword = lines[0].strip()
    end = lines.index("", 1) if "" in lines[1:] else len(lines)
    header = " ".join(line.strip() for line in lines[1:end])
    header = ", ".join(part for part in header.split(", ") if part != "//")  # empty pronunciations
    paragraphs, current = [], []
    for line in lines[end:]:
        if not line.strip():
            if current:
                paragraphs.append(current)
            current = []
        elif current and not line.startswith(" "):  # text overflowing a preformatted box
            current[-1] += " " + line.strip()
        else:
            current.append(line)
    if current:
        paragraphs.append(current)
    if paragraphs and re.fullmatch(r"[A-Z]", paragraphs[-1][0].strip()) and len(paragraphs[-1]) == 1:
        paragraphs.pop()  # the letter heading of the next section of the lexicon
    body = [_join(p) if _is_prose(p) else _verbatim(p) for p in paragraphs]
    return headword, "\n\n".join([headword + ("\n" + header if header else ""), *body])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deb", type=Path, default=None, help="an already downloaded .deb")
    args = parser.parse_args()
    root = fetch_deb(PACKAGE, VERSION, DEB_SHA256, args.deb)
    entries = [clean_entry(raw) for head, raw in read_dictd(root / "usr/share/dictd", "jargon")
               if not head.startswith("00-database-")]
    text = dict(entries)
    if len(text) != len(entries):
        raise SystemExit("two entries have the same headword")
    digest = write_gzip_text(OUT, json.dumps(text, ensure_ascii=False, indent=0))
    words = sum(len(t.split()) for t in text.values())
    print(f"{OUT.name}: {len(text)} entries, {words:,} words, sha256 {digest}")


if __name__ == "__main__":
    main()
