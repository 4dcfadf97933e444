"""Run one notebook with parameters through papermill; keep the executed copy and its records.

    python -m tcomp_utils.runner notebooks/00_baselines.ipynb --profile default [-p name value ...]

The executed copy goes to ``papermill_runs/<notebook stem>/<profile>/<stem>.ipynb`` (or
``--out``) and its records to ``records.json`` beside it. Both are written to temporary files
and renamed into place, so an interrupted run leaves no half-written result.
"""
from __future__ import annotations

import argparse
import ast
import datetime as dt
import hashlib
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from . import progress as progress_mod
from . import records
from .files import REPO_ROOT, write_json_atomic

PROFILES = ("smoke", "default", "paper")
PACKAGE_ROOT = Path(__file__).resolve().parent


def _module_file(name: str) -> Path:
    """The source of a module of this package (``tcomp_utils.methods.gptq`` -> methods/gptq.py)."""
    parts = name.split(".")[1:]
    folder = PACKAGE_ROOT.joinpath(*parts)
    return folder / "__init__.py" if folder.is_dir() else PACKAGE_ROOT.joinpath(*parts[:-1], f"{parts[-1]}.py") if parts else PACKAGE_ROOT / "__init__.py"


def package_digest(modules: list[str] | None = None) -> str:
    """SHA-256 (first 16 hex digits) of the sources of ``modules`` (names like
    ``tcomp_utils.budget``; default: every module of the package): what a result depends on
    besides the notebook and its parameters. A point records the modules its kernel had loaded,
    so a change to a method it never imported does not make it stale."""
    files = ([_module_file(m) for m in sorted(set(modules))] if modules is not None
             else sorted(PACKAGE_ROOT.rglob("*.py")))
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(PACKAGE_ROOT)).encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
        h.update(b"\0")
    return h.hexdigest()[:16]


# appended to a notebook before it runs (and removed from the executed copy): the package modules
# its kernel loaded, whose sources the point's code hash covers
_MODULES_TAG = "tcomp-loaded-modules"
_MODULES_CELL = ("import json as _json, sys as _sys\n"
                 "print(_json.dumps(sorted(m for m in _sys.modules if m.split('.')[0] == 'tcomp_utils')))")


class NotebookError(ValueError):
    """A notebook or spec that cannot be run as given (the message says what is wrong)."""


def notebook_parameters(nb: dict, path: Path | str = "notebook") -> dict[str, Any]:
    """The names the notebook's ``parameters`` cell assigns, with their default values (``...``
    where the default is not a literal)."""
    cells = [c for c in nb["cells"] if c.get("cell_type") == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise NotebookError(f"{path} has no cell tagged 'parameters' (papermill injects parameters after it)")
    found: dict[str, Any] = {}
    for cell in cells:
        source = "".join(cell["source"])
        try:
            tree = ast.parse(source)
        except SyntaxError as err:
            raise NotebookError(f"{path}: the parameters cell does not parse: {err}") from None
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            for target in targets:
                if isinstance(target, ast.Name):
                    try:
                        found[target.id] = ast.literal_eval(node.value)
                    except (ValueError, TypeError, SyntaxError):
                        found[target.id] = ...
    return found


class NotebookFailed(RuntimeError):
    """A notebook raised; ``result`` holds the error, the partial executed copy and its records."""

    def __init__(self, result: dict[str, Any]):
        super().__init__(result["error"])
        self.result = result


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    return profile


@contextmanager
def _status(path: str | None, label: str) -> Iterator[None]:
    """The point's status file, named to its kernel by ``$TCOMP_PROGRESS_FILE``, for the block's length."""
    if path is None:
        yield
        return
    before = os.environ.get(progress_mod.ENV)
    os.environ[progress_mod.ENV] = str(progress_mod.started(path, label))
    try:
        yield
    finally:
        Path(path).unlink(missing_ok=True)
        if before is None:
            os.environ.pop(progress_mod.ENV, None)
        else:
            os.environ[progress_mod.ENV] = before


def execute_point(notebook: dict, parameters: dict[str, Any], cwd: str | None = None,
                  progress: bool = False, status_file: str | None = None, label: str = "") -> dict[str, Any]:
    """Execute a notebook (its JSON as a dict) with ``parameters``; never raises for a failing cell.

    Self-contained so that it can run on a Dask worker on another machine: it needs the
    notebook's content, not its path, and returns everything instead of writing files.
    Returns ``{"status": "ok"|"failed", "error", "records", "elapsed_s", "code_hash", "code_modules",
    "executed"}`` where ``executed`` is the executed (or partially executed) notebook as a dict,
    ``code_modules`` the package modules the kernel had loaded at the end (None when it did not
    get there) and ``code_hash`` their :func:`package_digest` (of the whole package when None). A record named like a
    parameter or a results column fails the point (it would overwrite that column).

    ``status_file``: while the point runs, its :mod:`~tcomp_utils.progress` status file (``label``, the
    start time, the latest bar of the kernel's long loops), removed when it ends.
    """
    import nbformat
    import papermill as pm

    start = time.perf_counter()
    probe = {"cell_type": "code", "execution_count": None, "id": _MODULES_TAG, "outputs": [],
             "metadata": {"tags": [_MODULES_TAG]}, "source": _MODULES_CELL}
    with tempfile.TemporaryDirectory(prefix="tcomp-run-") as tmp, _status(status_file, label):
        out = Path(tmp) / "executed.ipynb"
        error = None
        try:
            pm.execute_notebook(nbformat.from_dict({**notebook, "cells": notebook["cells"] + [probe]}), str(out), parameters=parameters,
                                cwd=cwd if cwd and Path(cwd).is_dir() else None,
                                progress_bar=progress, kernel_name="python3")
        except pm.PapermillExecutionError as err:
            error = f"{err.ename}: {err.evalue}"
        except Exception as err:  # kernel died, bad parameters, ...: recorded, not raised
            error = f"{type(err).__name__}: {err}"
        executed = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else notebook
    modules = None
    for cell in [c for c in executed["cells"] if _MODULES_TAG in c.get("metadata", {}).get("tags", [])]:
        executed["cells"].remove(cell)
        text = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []) if o.get("name") == "stdout")
        modules = json.loads(text) if text.strip() else None
    found = records.records_from_notebook(executed)
    try:
        names = set(notebook_parameters(notebook)) | set(parameters)
    except NotebookError:
        names = set(parameters)
    clash = sorted(set(found) & (names | set(records.RESERVED)))
    if clash and not error:
        error = (f"record name(s) {clash} are parameters or results columns ({', '.join(records.RESERVED)}): "
                 "rename the records")
    return {"status": "failed" if error else "ok", "error": error, "records": found,
            "elapsed_s": round(time.perf_counter() - start, 2), "code_hash": package_digest(modules),
            "code_modules": modules, "executed": executed}


def write_result(result: dict[str, Any], notebook_out: Path, record_out: Path, meta: dict[str, Any]) -> None:
    """Write the executed notebook, then the record file (the record is the 'done' marker)."""
    write_json_atomic(notebook_out, result["executed"])
    write_json_atomic(record_out, {
        **meta, "status": result["status"], "error": result["error"], "records": result["records"],
        "elapsed_s": result["elapsed_s"], "code_hash": result.get("code_hash"),
        "code_modules": result.get("code_modules"), "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })


def notebook_label(path: Path) -> str:
    """The notebook's path relative to the repository when it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def run_notebook(notebook: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 parameters: dict[str, Any] | None = None, profile: str = "default",
                 progress: bool = True) -> dict[str, Any]:
    """Execute ``notebook`` with ``parameters`` (``profile`` included) and return its records.

    Writes ``<out_dir>/<stem>.ipynb`` (executed) and ``<out_dir>/records.json``
    (``{"notebook", "parameters", "status", "error", "records", "elapsed_s", "finished"}``).
    The kernel starts in the notebook's folder. A failing notebook raises :class:`NotebookFailed`
    after its partial executed copy and its failed record were written.
    """
    notebook = Path(notebook).resolve()
    if notebook.is_dir():
        raise NotebookError(f"notebook {notebook} is a folder, not a notebook file: give one .ipynb file")
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    params = {"profile": check_profile(profile), **(parameters or {})}
    out_dir = Path(out_dir or REPO_ROOT / "papermill_runs" / notebook.stem / params["profile"])
    result = execute_point(json.loads(notebook.read_text(encoding="utf-8")), params, str(notebook.parent), progress)
    write_result(result, out_dir / f"{notebook.stem}.ipynb", out_dir / "records.json",
                 {"notebook": notebook_label(notebook), "parameters": params})
    if result["status"] != "ok":
        raise NotebookFailed(result)
    return result["records"]


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, lists, true/null), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcomp_utils.runner", description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("--profile", default="default", choices=PROFILES)
    parser.add_argument("--out", default=None, help="output folder (default papermill_runs/<stem>/<profile>)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override one parameter (VALUE parsed as JSON when it can be)")
    args = parser.parse_args(argv)
    try:
        found = run_notebook(args.notebook, args.out, {k: parse_value(v) for k, v in args.parameter}, args.profile)
    except NotebookFailed as err:
        print(f"notebook failed: {err}", file=sys.stderr)
        return 1
    for name, value in found.items():
        if not isinstance(value, list):
            print(f"{name} = {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
