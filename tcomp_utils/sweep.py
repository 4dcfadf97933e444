"""Resumable parameter sweeps over a notebook, on one machine or on a Dask cluster.

A sweep spec is a YAML file under ``papermill_runs/``::

    name: budget_axis                    # names the output folder and the results table
    notebook: notebooks/01_budget_axis.ipynb
    profile: default                     # smoke | default | paper (overridable with --profile)
    parameters: {}                       # fixed for every point
    grid:                                # cartesian product (or a list of such grids, concatenated) ...
      model: [minilm-l6, smollm2-135m]
      seq_len: [128, 512]
    # points: [{model: minilm-l6, seq_len: 128}, ...]   # ... or an explicit list (or both)
    output: papermill_runs/budget_axis   # default: papermill_runs/<name>

Each point is identified by a stable hash of (the notebook's code, profile, parameters): its executed
notebook and its record are ``<output>/points/<hash>.ipynb`` and ``<hash>.json``, written
atomically, the record last, so a killed sweep leaves only complete points. A rerun skips
points whose record says ``ok``; a point whose parameters changed has a new hash and runs again;
a failed point is recorded with its error and retried on the next run. At the end all points
of the spec are gathered into ``<output>/results.csv`` (one row per point: parameters, status,
error, scalar records) and each table-valued record ``R`` into ``<output>/R.csv``.

    python -m tcomp_utils.sweep SPEC [--profile P] [--workers N | --scheduler ADDRESS]
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm.auto import tqdm

from .runner import REPO_ROOT, check_profile, execute_point, notebook_label, write_result

SPEC_KEYS = {"name", "notebook", "profile", "parameters", "grid", "points", "output"}


class SweepSpecError(ValueError):
    pass


@dataclass
class SweepSpec:
    """A parsed sweep spec (paths resolved against the repository root)."""

    name: str
    notebook: Path
    profile: str
    output: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path, profile: str | None = None, output: str | Path | None = None) -> "SweepSpec":
        """Read and check a spec; ``profile``/``output`` override the spec's."""
        path = Path(path)
        if not path.is_file():
            raise SweepSpecError(f"sweep spec {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        unknown = set(raw) - SPEC_KEYS
        if unknown:
            raise SweepSpecError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
        for key in ("name", "notebook"):
            if key not in raw:
                raise SweepSpecError(f"{path}: missing required key {key!r}")
        notebook = (REPO_ROOT / raw["notebook"]).resolve()
        if not notebook.is_file():
            raise SweepSpecError(f"{path}: notebook {raw['notebook']} does not exist")
        grid = raw.get("grid") or []
        grids = grid if isinstance(grid, list) else [grid]
        if not all(isinstance(g, dict) and g and all(isinstance(v, list) and v for v in g.values()) for g in grids):
            raise SweepSpecError(f"{path}: 'grid' must map each parameter to a non-empty list of values "
                                 "(or be a list of such maps)")
        points = [dict(zip(g, combo)) for g in grids for combo in itertools.product(*g.values())]
        points += list(raw.get("points") or [])
        if not points:
            raise SweepSpecError(f"{path}: no points: give a 'grid' or a list of 'points'")
        fixed = dict(raw.get("parameters") or {})
        if "profile" in fixed or any("profile" in p for p in points):
            raise SweepSpecError(f"{path}: set the profile with the top-level 'profile' key, not as a parameter")
        out = Path(output or raw.get("output") or f"papermill_runs/{raw['name']}")
        return cls(name=raw["name"], notebook=notebook, profile=check_profile(profile or raw.get("profile", "default")),
                   output=out if out.is_absolute() else REPO_ROOT / out, parameters=fixed,
                   points=[{**fixed, **p} for p in points])

    def point_parameters(self, point: dict[str, Any]) -> dict[str, Any]:
        return {"profile": self.profile, **point}

    def point_key(self, point: dict[str, Any]) -> str:
        """Stable hash of what determines a point's result: the notebook's code cells, the profile
        and the parameters (editing prose does not invalidate results; editing code does)."""
        blob = json.dumps([self.code_digest(), self.point_parameters(point)], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def code_digest(self) -> str:
        nb = json.loads(self.notebook.read_text(encoding="utf-8"))
        code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
        return hashlib.sha256(json.dumps(code).encode()).hexdigest()


def _done(record_path: Path) -> bool:
    try:
        return json.loads(record_path.read_text())["status"] == "ok"
    except (OSError, ValueError, KeyError):
        return False


def run_sweep(spec: SweepSpec, workers: int = 0, scheduler: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Run every pending point of ``spec`` and return the gathered results table.

    ``workers=0`` and no ``scheduler``: points run one after another in this process.
    ``workers=N``: a local Dask cluster of N single-threaded worker processes.
    ``scheduler``: the address of an existing Dask scheduler (its workers need this package
    and the notebook's data; results come back to this process, which writes every file).
    """
    points_dir = spec.output / "points"
    points_dir.mkdir(parents=True, exist_ok=True)
    keys = [spec.point_key(p) for p in spec.points]
    pending = [(k, p) for k, p in zip(keys, spec.points) if not _done(points_dir / f"{k}.json")]
    source = json.loads(spec.notebook.read_text(encoding="utf-8"))
    cwd = str(spec.notebook.parent)
    bar = tqdm(total=len(keys), initial=len(keys) - len(pending), desc=f"sweep {spec.name}", disable=not progress)

    def save(key: str, point: dict[str, Any], result: dict[str, Any]) -> None:
        write_result(result, points_dir / f"{key}.ipynb", points_dir / f"{key}.json",
                     {"sweep": spec.name, "key": key, "notebook": notebook_label(spec.notebook),
                      "parameters": spec.point_parameters(point)})
        bar.update(1)
        if result["status"] != "ok":
            bar.write(f"point {key} {point} failed: {result['error']}")

    if pending and (workers or scheduler):
        from dask.distributed import Client, LocalCluster, as_completed

        cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                      dashboard_address=None)
        with Client(scheduler or cluster) as client:
            futures = {client.submit(execute_point, source, spec.point_parameters(p), cwd, pure=False,
                                     key=f"{spec.name}-{k}"): (k, p) for k, p in pending}
            for future in as_completed(futures):
                save(*futures[future], future.result())
        if cluster is not None:
            cluster.close()
    else:
        for key, point in pending:
            save(key, point, execute_point(source, spec.point_parameters(point), cwd))
    bar.close()
    return gather(spec)


def gather(spec: SweepSpec) -> pd.DataFrame:
    """Collect the spec's point records into ``results.csv`` (+ one CSV per table record)."""
    rows, tables = [], {}
    for point in spec.points:
        key = spec.point_key(point)
        path = spec.output / "points" / f"{key}.json"
        rec = json.loads(path.read_text()) if path.is_file() else {"status": "missing", "error": None, "records": {}}
        row = {"key": key, **point, "status": rec["status"], "error": rec["error"]}
        for name, value in rec["records"].items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                tables.setdefault(name, []).extend({"key": key, **point, **r} for r in value)
            elif not isinstance(value, (list, dict)):
                row[name] = value
        rows.append(row)
    results = pd.DataFrame(rows)
    _write_csv(results, spec.output / "results.csv")
    for name, table in tables.items():
        _write_csv(pd.DataFrame(table), spec.output / f"{name}.csv")
    return results


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcomp_utils.sweep", description="Run a notebook sweep.")
    parser.add_argument("spec", help="sweep spec (YAML)")
    parser.add_argument("--profile", choices=("smoke", "default", "paper"), default=None, help="override the spec's")
    parser.add_argument("--output", default=None, help="override the spec's output folder")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=0, help="run on a local Dask cluster of N workers")
    where.add_argument("--scheduler", default=None, help="run on the Dask scheduler at ADDRESS (tcp://host:8786)")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    try:
        spec = SweepSpec.load(args.spec, args.profile, args.output)
    except SweepSpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = run_sweep(spec, workers=args.workers, scheduler=args.scheduler)
    failed = results[results.status != "ok"]
    print(f"{len(results) - len(failed)}/{len(results)} points ok; results: {spec.output / 'results.csv'}")
    for _, row in failed.iterrows():
        print(f"  failed {row.key}: {row.error}", file=sys.stderr)
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
