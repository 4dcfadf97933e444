"""Rebuild ``data/libreoffice_help_en_de.tsv.gz``: English–German segment pairs from LibreOffice.

Source: Debian packages ``libreoffice-help-en-us``, ``libreoffice-help-de`` and
``libreoffice-l10n-de``, all at 4:7.4.7-1+deb12u14 (LibreOffice 7.4 help and user interface,
MPL-2.0, (c) The Document Foundation and contributors).

* Help: the HTML pages under ``usr/share/libreoffice/help/{en-US,de}/text/``. Both languages are
  generated from the same ``.xhp`` sources, so every paragraph and heading (``p``, ``h1``–``h6``,
  and ``li``/``td``/``th`` where they carry one) has the same ``id`` attribute in both; a page
  present in both languages is aligned exactly by (page, id) (the k-th occurrence of an id with
  the k-th, when an embedded section repeats it; ids with a different count are skipped). The
  text is the element's text with ``<br>`` as a space and whitespace collapsed; of a platform or
  module switch (``hidden`` cases for macOS, Unix, Calc, ... shown by the help's script) only
  the ``default`` case is kept. ``page`` is the source page relative to ``text/``, e.g.
  ``scalc/01/02120000.xhp``; its first component is the module (``scalc``, ``shared``, ...).
* User interface: the 33 gettext catalogues
  ``usr/lib/libreoffice/program/resource/de/LC_MESSAGES/*.mo`` (English msgid → German msgstr):
  singular forms only, message contexts stripped, ``~`` accelerator marks and dialog-label
  mnemonics (``_``) removed, untranslated or placeholder-only strings skipped; ``page`` is
  ``l10n/<catalogue>`` (module ``l10n``).

Kept: pairs whose English side has 3–80 words and whose two sides are both non-empty; a pair
with identical sides is dropped when it looks like code (no letter, one token, brackets, ``=``,
``;`` or a Basic comment). Pairs are sorted by (page, id), then de-duplicated on the exact
(English, German) text, keeping the first.
Output: header-less ``page<TAB>english<TAB>german`` lines (tabs and newlines in the text become
spaces). The derived file keeps the MPL-2.0 licence (see ``data/LICENSES.md``).

    python data/build_libreoffice_help.py [--deb-dir DIR]
"""
from __future__ import annotations

import argparse
import re
import struct
from html.parser import HTMLParser
from pathlib import Path

from _debian import fetch_deb, write_gzip_text

VERSION = "4:7.4.7-1+deb12u14"
DEB_SHA256 = {
    "libreoffice-help-en-us": "8faa840285734d6cfe1ed25537b48f07e74bd6412e3917bf8e5f8a653f7b3712",
    "libreoffice-help-de": "00490b63c509ac96f7f212d6a6e40452d3e0d1f97ccf4b824dd5ec4c01e8277f",
    "libreoffice-l10n-de": "aee22c8e3b3c0431f6e1b0bc66f757ba36c860e2651a05eb050fde4897f06548",
}
OUT = Path(__file__).with_name("libreoffice_help_en_de.tsv.gz")
SEGMENT_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "td", "th"}
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
MIN_WORDS, MAX_WORDS = 3, 80


def normalise(text: str) -> str:
    """Collapse every run of whitespace (tabs and newlines included) to one space."""
    return " ".join(text.split())


class _SegmentParser(HTMLParser):
    """Collects ``(id, text)`` of every segment element carrying an ``id``, in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.segments: list[tuple[str, str]] = []
        self._tag: str | None = None  # the open segment element
        self._id = ""
        self._parts: list[str] = []
        self._stack: list[str] = []  # tags opened inside the segment
        self._hidden_at: int | None = None  # stack depth of the hidden element we are inside
        self._done = False  # the page footer (debug info) is not help text

    def _flush(self) -> None:
        self.segments.append((self._id, normalise("".join(self._parts))))
        self._tag, self._parts, self._stack, self._hidden_at = None, [], [], None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._done or tag == "footer":
            self._done = True
            return
        attr = dict(attrs)
        if tag in SEGMENT_TAGS and attr.get("id"):
            if self._tag is not None:  # an unclosed segment ends where the next one starts
                self._flush()
            self._tag, self._id = tag, attr["id"]
            return
        if self._tag is None:
            return
        if tag == "br":
            self._parts.append(" ")
        if tag in VOID_TAGS:
            return
        self._stack.append(tag)
        # a platform / module switch: every case is hidden until the help's script shows one; we
        # keep the default case (id ``default...``), as shown on Windows and Linux in Writer
        if "hidden" in attr and not (attr.get("id") or "").startswith("default") and self._hidden_at is None:
            self._hidden_at = len(self._stack)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._tag is not None and tag == "br":
            self._parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if self._tag is None:
            return
        if tag == self._tag:
            self._flush()
        elif tag in self._stack:  # close it and anything left open inside it
            while self._stack and self._stack.pop() != tag:
                pass
            if self._hidden_at is not None and len(self._stack) < self._hidden_at:
                self._hidden_at = None

    def handle_data(self, data: str) -> None:
        if self._tag is not None and self._hidden_at is None:
            self._parts.append(data)

    def close(self) -> None:
        super().close()
        if self._tag is not None:
            self._flush()


def html_segments(html: str) -> list[tuple[str, str]]:
    """``(id, text)`` of each element of a help page carrying an ``id``, in document order."""
    parser = _SegmentParser()
    parser.feed(html)
    parser.close()
    return parser.segments


def align_page(en_html: str, de_html: str) -> list[tuple[str, str, str]]:
    """Pair the segments of the English and German versions of one page by ``id``.

    Returns ``(id, english, german)``; an id that occurs k times in both pages is paired in order,
    one that occurs a different number of times (the pages disagree) is skipped.
    """
    def by_id(segments: list[tuple[str, str]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for seg_id, text in segments:
            out.setdefault(seg_id, []).append(text)
        return out

    en, de = by_id(html_segments(en_html)), by_id(html_segments(de_html))
    pairs = []
    for seg_id, en_texts in en.items():
        de_texts = de.get(seg_id, [])
        if len(de_texts) == len(en_texts):
            pairs.extend((seg_id, e, d) for e, d in zip(en_texts, de_texts))
    return pairs


def mo_pairs(data: bytes) -> list[tuple[str, str, str]]:
    """``(key, msgid, msgstr)`` of a gettext ``.mo`` catalogue, in catalogue order.

    ``key`` is the raw original string (context included, unique within the catalogue); msgid
    loses its context and plural form, msgstr keeps its first (singular) form. The header entry
    and untranslated entries are skipped.
    """
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">"
    _, count, orig_at, trans_at = struct.unpack(order + "4I", data[4:20])
    pairs = []
    for i in range(count):
        olen, opos = struct.unpack(order + "2I", data[orig_at + 8 * i : orig_at + 8 * i + 8])
        tlen, tpos = struct.unpack(order + "2I", data[trans_at + 8 * i : trans_at + 8 * i + 8])
        key = data[opos : opos + olen].decode("utf-8")
        msgid = key.split("\x04")[-1].split("\x00")[0]
        msgstr = data[tpos : tpos + tlen].decode("utf-8").split("\x00")[0]
        if msgid and msgstr:
            pairs.append((key, msgid, msgstr))
    return pairs


def _strip_mnemonic(token: str) -> str:
    # a dialog label's keyboard mnemonic (``_Zeilen``, ``Ca_ncel``): one ``_`` before a letter,
    # not inside a placeholder such as ``%OBJECT_NAME%`` or ``$error_message$``
    if token.count("_") == 1 and not re.search(r"[%$]", token) and re.search(r"_[^\W\d_]", token):
        return token.replace("_", "")
    return token


def clean_ui(text: str) -> str:
    """A UI string without its accelerator marks (``~``, a label's mnemonic ``_``), whitespace collapsed."""
    return " ".join(_strip_mnemonic(token) for token in text.replace("~", "").split())


def looks_like_code(text: str) -> bool:
    """No letter, a single token, code punctuation (brackets, ``=``, ``;``) or a Basic comment."""
    return (not re.search(r"[^\W\d_]", text) or len(text.split()) == 1
            or bool(re.search(r"[()\[\]{}=;<>]", text)) or text.startswith("'"))


def keep(en: str, de: str) -> bool:
    """The pair filter: both sides non-empty, 3–80 English words, not an untranslated code-like
    string (identical sides that :func:`looks_like_code`), not placeholders only."""
    if not en or not de or (en == de and looks_like_code(en)):
        return False
    if re.fullmatch(r"(\s|%\w+%?|\$\(?\w+\)?\$?)*", en):  # ``%s``, ``%PRODUCTNAME``, ``$(ARG1)``
        return False
    return MIN_WORDS <= len(en.split()) <= MAX_WORDS


def help_pairs(en_root: Path, de_root: Path) -> list[tuple[str, str, str, str]]:
    """``(page, id, english, german)`` of every page found under both ``text/`` folders."""
    rows = []
    for en_file in sorted(en_root.rglob("*.html")):
        rel = en_file.relative_to(en_root)
        de_file = de_root / rel
        if not de_file.is_file():
            continue
        page = rel.with_suffix(".xhp").as_posix()  # the name of the help source page
        en_html, de_html = en_file.read_text(encoding="utf-8"), de_file.read_text(encoding="utf-8")
        rows.extend((page, seg_id, en, de) for seg_id, en, de in align_page(en_html, de_html))
    return rows


def ui_pairs(locale_dir: Path) -> list[tuple[str, str, str, str]]:
    """``(page, key, english, german)`` of every ``.mo`` catalogue in ``locale_dir``."""
    rows = []
    for mo in sorted(locale_dir.glob("*.mo")):
        for key, msgid, msgstr in mo_pairs(mo.read_bytes()):
            rows.append((f"l10n/{mo.stem}", key, clean_ui(msgid), clean_ui(msgstr)))
    return rows


def select(rows: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str]]:
    """Filter with :func:`keep`, sort by (page, id), de-duplicate on (english, german)."""
    out, seen = [], set()
    for page, _, en, de in sorted(rows, key=lambda r: (r[0], r[1])):
        if keep(en, de) and (en, de) not in seen:
            seen.add((en, de))
            out.append((page, en, de))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deb-dir", type=Path, default=None, help="a folder of already downloaded .debs")
    args = parser.parse_args()
    roots = {}
    for package, sha256 in DEB_SHA256.items():
        deb = next(args.deb_dir.glob(f"{package}_*.deb"), None) if args.deb_dir else None
        roots[package] = fetch_deb(package, VERSION, sha256, deb)
    help_dir = "usr/share/libreoffice/help/{}/text"
    help_rows = help_pairs(roots["libreoffice-help-en-us"] / help_dir.format("en-US"),
                           roots["libreoffice-help-de"] / help_dir.format("de"))
    ui_rows = ui_pairs(roots["libreoffice-l10n-de"] / "usr/lib/libreoffice/program/resource/de/LC_MESSAGES")
    pairs = select(help_rows + ui_rows)
    digest = write_gzip_text(OUT, "".join(f"{page}\t{en}\t{de}\n" for page, en, de in pairs))
    n_ui = sum(page.startswith("l10n/") for page, _, _ in pairs)
    print(f"aligned: {len(help_rows):,} help segments, {len(ui_rows):,} UI strings")
    print(f"{OUT.name}: {len(pairs):,} pairs ({len(pairs) - n_ui:,} help, {n_ui:,} UI) "
          f"from {len({p for p, _, _ in pairs}):,} pages, sha256 {digest}")


if __name__ == "__main__":
    main()
