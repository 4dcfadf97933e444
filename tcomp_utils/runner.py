"""Run one notebook with parameters through papermill; keep the executed copy and its records.

    python -m tcomp_utils.runner notebooks/00_baselines.ipynb --profile default [-p name value ...]

The executed copy goes to ``papermill_runs/<notebook stem>/<profile>/<stem>.ipynb`` (or
``--out``) and its records to ``records.json`` beside it. Both are written to temporary files
and renamed into place, so an interrupted run leaves no half-written result.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import records

PROFILES = ("smoke", "default", "paper")
REPO_ROOT = Path(__file__).resolve().parents[1]


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    return profile


def run_notebook(notebook: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 parameters: dict[str, Any] | None = None, profile: str = "default",
                 progress: bool = True) -> dict[str, Any]:
    """Execute ``notebook`` with ``parameters`` (``profile`` included) and return its records.

    Writes ``<out_dir>/<stem>.ipynb`` (executed) and ``<out_dir>/records.json``
    (``{"notebook", "parameters", "records", "elapsed_s", "finished"}``). The kernel starts in
    the notebook's folder. A failing notebook raises papermill's error; its partial executed
    copy is kept under a ``.failed.ipynb`` name for inspection.
    """
    import papermill as pm

    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    params = {"profile": check_profile(profile), **(parameters or {})}
    out_dir = Path(out_dir or REPO_ROOT / "papermill_runs" / notebook.stem / params["profile"]).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{notebook.stem}.{os.getpid()}.ipynb"
    start = time.perf_counter()
    try:
        nb = pm.execute_notebook(str(notebook), str(tmp), parameters=params, cwd=str(notebook.parent),
                                 progress_bar=progress, kernel_name="python3")
    except BaseException:
        if tmp.exists():
            tmp.replace(out_dir / f"{notebook.stem}.failed.ipynb")
        raise
    tmp.replace(out_dir / f"{notebook.stem}.ipynb")
    found = records.records_from_notebook(nb)
    records.write_json_atomic(out_dir / "records.json", {
        "notebook": str(notebook.relative_to(REPO_ROOT)) if notebook.is_relative_to(REPO_ROOT) else str(notebook),
        "parameters": params, "records": found,
        "elapsed_s": round(time.perf_counter() - start, 1),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })
    return found


def _value(text: str) -> Any:
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
    found = run_notebook(args.notebook, args.out, {k: _value(v) for k, v in args.parameter}, args.profile)
    for name, value in found.items():
        if not isinstance(value, list):
            print(f"{name} = {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
