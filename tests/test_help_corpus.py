"""The LibreOffice help corpus: its build script's extraction and the fixed help-en-de splits."""
import importlib.util
import struct
import sys

import pytest

from tcomp_utils import assets, tasks

BUILD_SCRIPT = assets.REPO_ROOT / "data" / "build_libreoffice_help.py"


@pytest.fixture(scope="module")
def build():
    """The build script as a module (it imports its helper ``_debian`` from data/)."""
    sys.path.insert(0, str(BUILD_SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("build_libreoffice_help", BUILD_SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BUILD_SCRIPT.parent))
    return module


@pytest.fixture(scope="module")
def task():
    return tasks.load_task("help-en-de")


@pytest.fixture(scope="module")
def columns(task):
    """Each split as plain lists (``to_dict`` is much faster than reading ``Dataset`` columns)."""
    return {split: ds.to_dict() for split, ds in task.splits.items()}


def test_split_sizes_are_fixed_for_every_seed(task, columns):
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 32_940, "validation": 2_000, "test": 2_010}
    assert all(v.column_names == ["en", "de", "page"] for v in task.splits.values())
    other = {k: v.to_dict() for k, v in tasks.load_task("help-en-de", seed=7).splits.items()}
    assert other == columns
    assert task.spec.kind == "translation" and task.spec.metrics == ("bleu", "chrf")
    assert (task.spec.text_fields, task.spec.label_field) == (("en",), "de")


def test_splits_hold_whole_pages_and_ui_strings_only_in_train(columns):
    pages = {k: set(v["page"]) for k, v in columns.items()}
    assert not (pages["train"] & pages["test"] or pages["train"] & pages["validation"]
                or pages["validation"] & pages["test"])
    assert not any(p.startswith("l10n/") for p in pages["test"] | pages["validation"])
    assert sum(p.startswith("l10n/") for p in columns["train"]["page"]) == 10_147
    assert (len(pages["test"]), len(pages["validation"])) == (157, 196)


def test_no_held_out_text_leaks_into_an_earlier_split(columns):
    key = tasks._help_key
    for side in ("en", "de"):
        test = {key(t) for t in columns["test"][side]}
        validation = {key(t) for t in columns["validation"][side]}
        train = {key(t) for t in columns["train"][side]}
        assert not (test & validation) and not (test & train) and not (validation & train)
    assert key("  Click  OK.") == key("click ok") == "click ok"
    assert key("„Kopf-/Fußzeile“") == "kopf-/fußzeile"


def test_both_directions_give_the_same_pairs(columns):
    back = tasks.load_task("help-de-en")
    assert (back.spec.text_fields, back.spec.label_field) == (("de",), "en")
    for split, ds in back.splits.items():
        # the source of one direction is the target of the other, pair by pair
        assert list(zip(*(ds.to_dict()[c] for c in back.spec.text_fields + (back.spec.label_field,)))) == \
            list(zip(columns[split]["de"], columns[split]["en"]))


@pytest.mark.parametrize("page, en, de", [
    # heading hd_id3145251 and paragraph par_id3151073 of the Calc "Headers & Footers" dialog
    ("scalc/01/02120000.xhp", "Headers & Footers", "Kopf-/Fußzeile"),
    ("scalc/01/02120000.xhp", "Allows you to define and format headers and footers.",
     "Hiermit definieren und formatieren Sie Kopf- und Fußzeilen."),
    # a platform switch inside a paragraph: the default (Tools - Options) case, not macOS's
    ("scalc/01/04060102.xhp", "Choose Tools - Options - LibreOffice Calc - Calculate to select the date base.",
     "Wählen Sie Extras – Optionen… – LibreOffice Calc – Berechnen, um die Basis für das Datum festzulegen."),
    # a UI message of the database catalogue
    ("l10n/dba", "Do you really want to delete the user?", "Soll der Benutzer wirklich gelöscht werden?"),
])
def test_known_pairs_are_aligned(columns, page, en, de):
    rows = {(p, e): d for split in columns.values() for p, e, d in zip(split["page"], split["en"], split["de"])}
    assert rows[(page, en)] == de


EN_PAGE = """<html><body><div id="DisplayArea">
<h1 id="hd_id1" dir="auto">Sort   Data</h1>
<p id="par_id2" class="paragraph">Choose <span class="switchinline"><span hidden="true" id="MACx">
LibreOffice - Preferences</span><span hidden="true" id="defaultx"><span class="emph">Tools - Options</span></span>
</span> to sort<br>the rows.</p>
<p id="par_id3">Only in English.</p>
<div class="embedded"><p id="par_id4">Repeated text.</p></div><p id="par_id4">Repeated text.</p>
<p>No id, not a segment.</p>
</div><footer><p id="bm_module">debug info</p></footer></body></html>"""
DE_PAGE = """<html><body><div id="DisplayArea">
<h1 id="hd_id1">Daten sortieren</h1>
<p id="par_id2">Wählen Sie <span><span hidden="true" id="MACx">LibreOffice - Einstellungen</span>
<span hidden="true" id="defaultx">Extras &#8211; Optionen</span></span>, um die Zeilen zu sortieren.</p>
<p id="par_id4">Wiederholter Text.</p>
</div></body></html>"""


def test_html_segments_keep_default_switch_cases_and_skip_the_footer(build):
    assert build.html_segments(EN_PAGE) == [
        ("hd_id1", "Sort Data"),
        ("par_id2", "Choose Tools - Options to sort the rows."),
        ("par_id3", "Only in English."),
        ("par_id4", "Repeated text."),
        ("par_id4", "Repeated text."),
    ]


def test_align_page_pairs_by_id(build):
    # par_id3 has no German, par_id4 occurs twice in English but once in German: both skipped
    assert build.align_page(EN_PAGE, DE_PAGE) == [
        ("hd_id1", "Sort Data", "Daten sortieren"),
        ("par_id2", "Choose Tools - Options to sort the rows.",
         "Wählen Sie Extras – Optionen, um die Zeilen zu sortieren."),
    ]


def _mo(entries: list[tuple[str, str]]) -> bytes:
    """A little-endian gettext .mo file of ``entries`` (sorted by msgid, as msgfmt writes them)."""
    entries = sorted(entries)
    n = len(entries)
    strings_at = 28 + 16 * n
    head, tables, blob = struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0), [b"", b""], b""
    for column in (0, 1):
        for entry in entries:
            data = entry[column].encode("utf-8")
            tables[column] += struct.pack("<2I", len(data), strings_at + len(blob))
            blob += data + b"\0"
    return head + tables[0] + tables[1] + blob


def test_mo_pairs_strip_context_plurals_and_header(build):
    data = _mo([("", "Content-Type: text/plain; charset=UTF-8\n"),
                ("STR_X\x04Delete ~all rows", "~Alle Zeilen löschen"),
                ("%1 file\x00%1 files", "%1 Datei\x00%1 Dateien"),
                ("Untranslated", "")])
    assert build.mo_pairs(data) == [("%1 file\x00%1 files", "%1 file", "%1 Datei"),
                                    ("STR_X\x04Delete ~all rows", "Delete ~all rows", "~Alle Zeilen löschen")]
    assert build.clean_ui("Delete ~all rows") == "Delete all rows"
    assert build.clean_ui("Use page li_ne-spacing for %OBJECT_NAME%") == "Use page line-spacing for %OBJECT_NAME%"


def test_pair_filter(build):
    assert build.keep("Sort the rows.", "Die Zeilen sortieren.")
    assert not build.keep("Sort", "Sortieren")  # under 3 English words
    assert not build.keep(" ".join(["word"] * 81), "Wort")  # over 80
    assert not build.keep("Sort the rows.", "")
    assert not build.keep("svc.Unescape(inputstr: str): str", "svc.Unescape(inputstr: str): str")  # code
    assert not build.keep("1 2 3", "1 2 3")  # no letters
    assert build.keep("PostScript Level 3", "PostScript Level 3")  # a name, the same in German
    assert not build.keep("%PRODUCTNAME %s $(ARG1)", "%PRODUCTNAME %s $(ARG1)")


def test_select_sorts_then_deduplicates(build):
    rows = [("b.xhp", "par_2", "One two three.", "Eins zwei drei."),
            ("a.xhp", "par_9", "One two three.", "Eins zwei drei."),
            ("a.xhp", "par_1", "Four five six.", "Vier fünf sechs."),
            ("a.xhp", "hd_1", "Title", "Titel")]
    assert build.select(rows) == [("a.xhp", "Four five six.", "Vier fünf sechs."),
                                  ("a.xhp", "One two three.", "Eins zwei drei.")]


def test_missing_corpus_names_its_build_script(monkeypatch, tmp_path):
    monkeypatch.setattr(assets, "REPO_ROOT", tmp_path)  # a checkout without the data file
    with pytest.raises(assets.AssetMissingError,
                       match=r"'libreoffice-help'.*missing.*python data/build_libreoffice_help\.py"):
        assets.asset_path("libreoffice-help")


def test_the_readme_counts_of_the_leakage_filter_and_unseen_test_tokens(columns):
    """The asset table's numbers (docs/assets.md): 396 pairs dropped by the leakage filter (the file's pairs less the splits'),
    and 6.7 % of the German test tokens (lower-cased, whitespace-split) absent from the German training text."""
    import gzip

    with gzip.open(assets.asset_path("libreoffice-help"), "rt", encoding="utf-8") as fh:
        pairs = sum(1 for _ in fh)
    assert pairs == 37_346 and pairs - sum(len(v["en"]) for v in columns.values()) == 396
    seen = {w for text in columns["train"]["de"] for w in text.lower().split()}
    test_tokens = [w for text in columns["test"]["de"] for w in text.lower().split()]
    assert f"{100 * sum(w not in seen for w in test_tokens) / len(test_tokens):.1f}" == "6.7"
