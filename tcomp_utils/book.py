"""The book: a static HTML site of the notebooks as a run executed them (their outputs, figures and
"What we see"), with the README as its front page and ``RESULTS.md`` and ``docs/`` as its other pages.

Built with Sphinx and MyST-NB, the engine Jupyter Book 1 wraps, called directly: one small
``conf.py`` instead of Jupyter Book's configuration layer, and no Node.js toolchain (Jupyter Book 2
is a Node application). MyST-NB renders the notebooks' stored outputs (it executes nothing here).

Each notebook's page is its newest executed copy under ``runs`` (the ``points/<key>.ipynb`` a sweep,
``make run`` or ``make verify`` wrote, whose record says ``ok``); a notebook that no run executed is
shown from its source with a note saying so. The site is a build product (``build/book/``).

    python -m tcomp_utils.book [--runs papermill_runs] [--out build/book]    (or: make book)
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .files import REPO_ROOT

RUNS = REPO_ROOT / "papermill_runs"
OUT = REPO_ROOT / "build" / "book"

CONF = '''\
project = "tcomp"
author = "the tcomp authors"
extensions = ["myst_nb"]
html_theme = "sphinx_book_theme"
html_title = "tcomp: transformer compression, notebook first"
nb_execution_mode = "off"            # the outputs are the run's; the book executes nothing
nb_output_stderr = "remove"          # progress bars and library warnings: the run's log, not the reader's
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath", "amsmath"]  # the notebooks' $...$ (MathJax, from its CDN when the reader is online)
suppress_warnings = ["mystnb.unknown_mime_type", "myst.xref_missing", "myst.header", "misc.highlighting_failure", "toc.not_included"]  # the records (application/vnd.tcomp.record+json) are data for the sweep, not for readers
exclude_patterns = ["_build"]
'''

NOT_EXECUTED = ("> **Not executed in this book**: no run this book was built from executed this notebook "
                "(it has no sweep point there). Run it with `make lab`, or `make run` and `make book` again.")


def executed_notebooks(runs: Path) -> dict[str, Path]:
    """``notebooks/NAME.ipynb`` → the newest executed copy under ``runs/**/points/`` whose record is ``ok``
    (newest by the record's ``finished`` time)."""
    best: dict[str, tuple[str, Path]] = {}
    for record_path in sorted(Path(runs).glob("**/points/*.json")):
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a record being written, or not a point's record
        executed = record_path.with_suffix(".ipynb")
        if record.get("status") != "ok" or not executed.is_file() or "notebook" not in record:
            continue
        finished = str(record.get("finished", ""))
        if record["notebook"] not in best or finished > best[record["notebook"]][0]:
            best[record["notebook"]] = (finished, executed)
    return {nb: path for nb, (_, path) in best.items()}


def _with_note(source: Path, note: str) -> dict:
    """The notebook at ``source`` with ``note`` as a markdown cell after its title cell."""
    nb = json.loads(source.read_text(encoding="utf-8"))
    nb["cells"].insert(1, {"cell_type": "markdown", "metadata": {}, "source": [note]})
    return nb


def stage(src: Path, runs: Path = RUNS, root: Path = REPO_ROOT) -> dict[str, Path | None]:
    """Lay out the book's sources in ``src``: ``index.md`` (the README, with a table of contents),
    ``RESULTS.md``, ``docs/``, ``figures/`` and one page per notebook. Returns each notebook's
    executed copy (None: shown from its source)."""
    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    executed = executed_notebooks(runs)
    shown: dict[str, Path | None] = {}
    for notebook in sorted((root / "notebooks").glob("*.ipynb")):
        rel = f"notebooks/{notebook.name}"
        copy = executed.get(rel)
        shown[rel] = copy
        nb = json.loads(copy.read_text(encoding="utf-8")) if copy else _with_note(notebook, NOT_EXECUTED)
        for i, cell in enumerate(nb["cells"]):  # papermill's copies may lack the cell ids nbformat 4.5 wants
            cell.setdefault("id", f"cell-{i}")
        (src / rel).write_text(json.dumps(nb), encoding="utf-8")
    shutil.copytree(root / "docs", src / "docs")
    if (root / "figures").is_dir():
        shutil.copytree(root / "figures", src / "figures")
    shutil.copy(root / "RESULTS.md", src / "RESULTS.md")
    pages = ["RESULTS", *(f"docs/{p.stem}" for p in sorted((root / "docs").glob("*.md")))]
    toc = ("\n\n```{toctree}\n:hidden:\n:caption: Results and guides\n\n" + "\n".join(pages) + "\n```\n"
           "\n```{toctree}\n:hidden:\n:caption: Notebooks\n\n" + "\n".join(f"notebooks/{Path(n).stem}" for n in shown)
           + "\n```\n")
    (src / "index.md").write_text((root / "README.md").read_text(encoding="utf-8") + toc, encoding="utf-8")
    (src / "conf.py").write_text(CONF, encoding="utf-8")
    return shown


def build_book(out: Path = OUT, runs: Path = RUNS, root: Path = REPO_ROOT, quiet: bool = True) -> Path:
    """Stage the sources under ``out/src`` and build the site into ``out/html``; returns its
    ``index.html``. Raises ``FileNotFoundError`` naming a missing page source or ``runs`` folder (before
    anything is written), and ``RuntimeError`` when Sphinx fails (the previous site, if any, is kept)."""
    for need in ("README.md", "RESULTS.md", "docs", "notebooks"):
        if not (root / need).exists():
            raise FileNotFoundError(f"the book needs {root / need}, which does not exist")
    if not Path(runs).is_dir():
        raise FileNotFoundError(f"no folder of executed notebooks at {runs}: run `make run` (or a sweep) first, "
                                "or pass --runs FOLDER")
    try:
        from sphinx.cmd.build import build_main
    except ImportError as why:  # the dev extras carry it
        raise RuntimeError("the book needs Sphinx and MyST-NB: pip install -e '.[dev]' (make install)") from why
    out = Path(out)
    shown = stage(out / "src", runs, root)
    html, building = out / "html", out / "html.building"  # a failed build leaves the previous site as it was
    shutil.rmtree(building, ignore_errors=True)
    args = ["-b", "html", "-j", "1", str(out / "src"), str(building)] + (["-q"] if quiet else [])
    if build_main(args) != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise RuntimeError(f"sphinx-build failed on {out / 'src'} (run `python -m tcomp_utils.book -v` to see why)")
    shutil.rmtree(html, ignore_errors=True)
    building.rename(html)
    executed = sum(p is not None for p in shown.values())
    print(f"book: {html / 'index.html'} ({len(shown)} notebooks, {executed} as executed under {runs}"
          + ("; run `make run` first to show them executed)" if not executed else ")"))
    return html / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcomp_utils.book", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=RUNS, help="where the executed notebooks are (default papermill_runs)")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default build/book)")
    parser.add_argument("-v", "--verbose", action="store_true", help="Sphinx's full output")
    args = parser.parse_args(argv)
    build_book(args.out, args.runs, quiet=not args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
