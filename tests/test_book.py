"""The book (``make book``) built from a smoke run and looked at in a real headless browser (Debian's
Chromium, driven by Playwright): the index and an executed notebook's page render, their figures
load, and no cell shows an error. Screenshots are saved in the test's temporary folder."""
from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tcomp_utils import book

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:.*is deprecated:Warning")  # Sphinx 9 on MyST's internals
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# the flags a closed network needs: no background connections, no first-run or component updates
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

# run in the page: what a reader would see is wrong
PROBLEMS_JS = """() => {
  const problems = [];
  for (const img of document.querySelectorAll('main img, article img, .bd-article img')) {
    if (!img.complete || img.naturalWidth === 0) problems.push('missing figure ' + img.getAttribute('src'));
  }
  for (const out of document.querySelectorAll('.output.traceback, .output.error')) {
    problems.push('error cell: ' + out.innerText.slice(0, 120));
  }
  return problems;
}"""


@functools.cache
def _chromium_missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM}: apt-get install chromium (make test installs it)"
    return None


def _serve(folder: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _look(pages: dict[str, str], shots: Path) -> dict[str, dict]:
    """Open each ``name -> url`` in headless Chromium; per page its title, headings, images, problems,
    and a full-page screenshot ``shots/<name>.png``."""
    from playwright.sync_api import sync_playwright
    seen = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for name, url in pages.items():
            response = page.goto(url, wait_until="load")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
            seen[name] = dict(status=response.status if response else None, title=page.title(),
                              h1=page.locator("h1").first.inner_text(),
                              images=page.locator("main img, article img, .bd-article img").count(),
                              problems=page.evaluate(PROBLEMS_JS))
        browser.close()
    return seen


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    """The book built from a smoke run of one budget-axis point (a sweep of one point, as make run writes it)."""
    tmp = tmp_path_factory.mktemp("book")
    runs = tmp / "runs"
    spec = tmp / "budget_axis.yaml"
    spec.write_text(f"name: budget_axis\noutput: {runs / 'budget_axis'}\nnotebook: notebooks/01_budget_axis.ipynb\n"
                    "profile: smoke\npoints:\n  - {model: minilm-l6, seq_len: 128}\n")
    subprocess.run([sys.executable, "-m", "tcomp_utils.sweep", str(spec)], cwd=ROOT, check=True)
    index = book.build_book(tmp / "site", runs=runs)
    return tmp, index


def test_the_book_stages_executed_copies_and_marks_the_rest(smoke_book):
    tmp, index = smoke_book
    src = tmp / "site" / "src"
    executed = book.executed_notebooks(tmp / "runs")
    assert list(executed) == ["notebooks/01_budget_axis.ipynb"]
    page = json.loads((src / "notebooks" / "01_budget_axis.ipynb").read_text())
    assert any(c.get("outputs") for c in page["cells"] if c["cell_type"] == "code")  # the run's outputs
    other = json.loads((src / "notebooks" / "02_svd.ipynb").read_text())
    assert book.NOT_EXECUTED in "".join(other["cells"][1]["source"])
    assert (index.parent / "RESULTS.html").is_file() and (index.parent / "docs" / "sweeps.html").is_file()
    assert len(list((index.parent / "notebooks").glob("*.html"))) == len(list((ROOT / "notebooks").glob("*.ipynb")))


def test_the_book_renders_in_a_headless_browser(smoke_book):
    if _chromium_missing():
        pytest.fail(_chromium_missing())
    tmp, index = smoke_book
    server = _serve(index.parent)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        seen = _look({"index": f"{base}/index.html", "budget_axis": f"{base}/notebooks/01_budget_axis.html",
                      "results": f"{base}/RESULTS.html"}, tmp)
    finally:
        server.shutdown()
    for name, page in seen.items():
        assert page["status"] == 200 and not page["problems"], (name, page)
        assert (tmp / f"{name}.png").stat().st_size > 20_000  # a rendered page, not a blank one
    assert "tcomp" in seen["index"]["h1"]
    assert seen["budget_axis"]["images"] >= 1  # the notebook's figure, as the run drew it


def test_the_browser_check_sees_a_missing_figure_and_an_error_cell(tmp_path):
    """The check itself can fail: a page with a broken image and an error output is reported twice."""
    if _chromium_missing():
        pytest.fail(_chromium_missing())
    (tmp_path / "bad.html").write_text(
        "<html><body><main><h1>bad</h1><img src='nowhere.png'>"
        "<div class='output traceback'>ZeroDivisionError: division by zero</div></main></body></html>")
    server = _serve(tmp_path)
    try:
        seen = _look({"bad": f"http://127.0.0.1:{server.server_address[1]}/bad.html"}, tmp_path)
    finally:
        server.shutdown()
    problems = seen["bad"]["problems"]
    assert len(problems) == 2 and problems[0] == "missing figure nowhere.png" and "ZeroDivisionError" in problems[1]


def test_a_missing_page_source_or_runs_folder_is_named(tmp_path):
    (tmp_path / "README.md").write_text("# x\n")
    with pytest.raises(FileNotFoundError, match="RESULTS.md"):
        book.build_book(tmp_path / "out", runs=tmp_path, root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no folder of executed notebooks at .*nowhere"):
        book.build_book(tmp_path / "out", runs=tmp_path / "nowhere", root=ROOT)
    assert not (tmp_path / "out").exists()  # nothing written before the checks


def test_a_failed_build_keeps_the_previous_site(tmp_path, monkeypatch):
    import sphinx.cmd.build
    site = tmp_path / "out" / "html"
    site.mkdir(parents=True)
    (site / "index.html").write_text("the previous site")
    monkeypatch.setattr(sphinx.cmd.build, "build_main", lambda args: 1)
    with pytest.raises(RuntimeError, match="sphinx-build failed"):
        book.build_book(tmp_path / "out", runs=tmp_path, root=ROOT)
    assert (site / "index.html").read_text() == "the previous site"
    assert not (tmp_path / "out" / "html.building").exists()
