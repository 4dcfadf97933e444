"""Recompute every table's representative points and say whether the numbers came out the same.

    python -m tcomp_utils.reproduce [SPEC ...] [--profile default|smoke] [--workers N] [--runs DIR]

For each sweep spec (default: every ``papermill_runs/*.yaml``) the points of its ``reduced`` list
are recomputed, all specs' points together on ``--workers`` single-threaded workers (longest
first), gathered into the spec's results table as a sweep does (the other cells keep their
committed rows), and compared with the row each point had in that table before the run (the
committed row on a fresh clone; found by key, else by parameters when the notebook's code has
changed since). Every numeric column is compared except measured times and memory (columns
named ``*_s``, ``*_seconds``, ``seconds_*``, ``*_ms``, ``*_mb``) and the bookkeeping columns;
a value reproduces when ``|now - committed| <= atol + rtol * |committed|`` (the spec's
``reproduce: {rtol, atol, ignore}``, default rtol 1e-3, atol 1e-9). A spec whose committed rows
cannot be recomputed exactly says why under ``reproduce: {known_difference: {profile: {reason:
..., where: {parameter: value}}}}``: its differing points that match ``where`` (all, without it)
are reported as known differences, with both values and the reason. It
prints one line per table and a summary ("reproduced 14 of 14 points within tolerance"), names
every mismatch with both values, writes the outcome of every point to ``<runs>/reproduction.csv``
(or ``--summary``) and exits 1 when a point failed or differed without a stated reason.

``make run`` runs it on the default profile; ``make verify`` on the smoke profile with
``--runs papermill_runs/smoke --figures``, against smoke-sized reference rows committed there
(seconds per point, for CI), then draws every figure and results table from those tables as
``make figures`` would (into a temporary folder), so the whole make-run path is exercised.
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from . import progress, sweep
from .files import REPO_ROOT, write_csv_atomic
from .runner import PROFILES

RUNS = REPO_ROOT / "papermill_runs"
MEASURED = re.compile(r"(_s|_seconds|_ms|_mb)$|^seconds(_|$)")  # times and memory: measured, never reproduced
BOOKKEEPING = {"key", "status", "error", "code_hash", "code_modules", "stale", "stale_reason", "profile"}
DEFAULT_RTOL, DEFAULT_ATOL = 1e-3, 1e-9


@dataclass
class Outcome:
    """One recomputed point against its committed row."""

    table: str
    key: str
    point: dict[str, Any]
    status: str  # reproduced | differs | known difference | failed | no committed row
    compared: int = 0  # numeric values compared
    largest: float = 0.0  # largest relative difference |now - committed| / max(|committed|, tiny)
    largest_column: str | None = None
    differences: list[tuple[str, Any, Any]] = field(default_factory=list)  # (column, committed, now)
    reason: str = ""  # a known difference: why (the spec's reproduce.known_difference for its profile and point)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def compare_rows(committed: dict[str, Any], now: dict[str, Any], rtol: float = DEFAULT_RTOL,
                 atol: float = DEFAULT_ATOL, ignore: tuple[str, ...] | list[str] = (),
                 parameters: tuple[str, ...] | list[str] = ()) -> tuple[int, float, str | None, list[tuple[str, Any, Any]]]:
    """Compare the numeric columns of two results rows (bookkeeping, measured-time/memory,
    ``ignore`` and ``parameters`` columns left out). A value the committed row holds and the new one
    lacks (or holds NaN in), or the reverse within a column the committed table has, is a difference;
    a column the committed table does not have at all is a record added to the notebook since, with
    nothing to compare it to. Returns (values compared, largest relative difference, its column, the
    differences beyond ``atol + rtol * |committed|`` as (column, committed, now))."""
    skip = BOOKKEEPING | set(ignore) | set(parameters)
    compared, largest, where, differences = 0, 0.0, None, []
    for column in sorted(set(committed) | set(now)):
        if column in skip or MEASURED.search(column) or column not in committed:
            continue
        a, b = _number(committed.get(column)), _number(now.get(column))
        if a is None and b is None:
            continue  # not a number in either row (text, or a column neither has)
        a_nan, b_nan = a is None or math.isnan(a), b is None or math.isnan(b)
        if a_nan or b_nan:
            if a_nan != b_nan:
                differences.append((column, committed.get(column), now.get(column)))
            continue
        compared += 1
        rel = abs(b - a) / max(abs(a), 1e-12)
        if abs(b - a) > 0 and rel > largest:
            largest, where = rel, column
        if abs(b - a) > atol + rtol * abs(a):
            differences.append((column, a, b))
    return compared, largest, where, differences


def _committed_row(before: pd.DataFrame | None, key: str, point: dict[str, Any],
                   spec: sweep.SweepSpec) -> dict[str, Any] | None:
    if before is None or "status" not in before:
        return None
    ok = before[before.status == "ok"].to_dict("records")
    return next((r for r in ok if r.get("key") == key), None) or next(
        (r for r in ok if sweep.row_is_point(r, point, spec)), None)


# the embedded models the tables train or convert once and cache: made before any worker starts, so
# that two workers never train the same model, and timed apart from the points
ONE_TIME = {"smoke": (("task model", "minilm-l6-tweets3-smoke"), ("task model", "minilm-l6-tweets-smoke"),
                      ("translation model", "transformer-de-en-smoke"), ("converted decoder", "smollm2-135m")),
            # the translation model first: the longest (about 43 minutes on one thread)
            "default": (("translation model", "transformer-help-en-de"), ("task model", "minilm-l6-tweets3"),
                        ("task model", "minilm-l6-tweets"), ("converted decoder", "smollm2-135m"))}


def _make_model(kind: str, name: str, status_file: str | None = None) -> float:
    """Load ``name`` (training or converting it into the cache first when it is not there); seconds.
    ``status_file``: where its training bar reports (:mod:`~tcomp_utils.progress`), removed at the end."""
    import os

    from . import models, task_models, translation

    if status_file is not None:
        os.environ[progress.ENV] = str(progress.started(status_file, f"one-time {kind} {name}"))
    start = time.perf_counter()
    try:
        if kind == "task model":
            task_models.get_task_model(name, progress=False)
        elif kind == "translation model":
            translation.get_translation_model(name, progress=False)
        else:
            models.load_model(name, "causal-lm")
    finally:
        if status_file is not None:
            Path(status_file).unlink(missing_ok=True)
    return time.perf_counter() - start


def prepare_models(profile: str, workers: int = 1) -> dict[str, float]:
    """Train (or convert) and cache the profile's embedded models that are not cached yet, up to
    ``workers`` at once in separate processes (each trains on its own fixed thread count, so the
    models do not depend on how many run together); returns the seconds each took (about 0 when
    it was cached already). The paper profile's come from a hub."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    jobs = ONE_TIME.get(profile, ())
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="tcomp-one-time-") as status, progress.watch([Path(status)], print), \
            ProcessPoolExecutor(max_workers=max(1, min(workers, len(jobs) or 1)), mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_make_model, kind, name, str(Path(status) / f"{i}{progress.SUFFIX}")): (kind, name)
                   for i, (kind, name) in enumerate(jobs)}
        for future in as_completed(futures):
            kind, name = futures[future]
            seconds[name] = future.result()
            print(f"one-time: {kind} {name} ready in {seconds[name]:.0f} s (loaded from the cache, or made now and "
                  "cached for later runs)", flush=True)
    return seconds


def reproduce(specs: list[sweep.SweepSpec], workers: int = 0, progress: bool = True) -> list[Outcome]:
    """Recompute the reduced points of ``specs`` (all together on ``workers``), gather each spec's
    table and compare every recomputed point with its row from before the run."""
    before = {s.name: sweep.read_table(s.output / "results.csv") for s in specs}
    todo = [(s, s.point_key(p), p) for s in specs for p in (s.reduced if s.reduced is not None else s.points)]
    pending = [(s, k, p) for s in specs for k, p in sweep.pending_points(s, reduced=True)]
    last = {(s.name, k): v for s in specs for k, v in sweep.last_seconds(s, [k for t, k, _ in pending if t is s]).items()}
    pending.sort(key=lambda j: -last[j[0].name, j[1]])  # longest first over every table
    bar = tqdm(total=len(todo), initial=len(todo) - len(pending), desc="make run", disable=not progress)
    try:  # logged as a whole in reproduction_runs.csv, not in each sweep's runs.csv (its complete sittings)
        sweep.run_points(pending, workers, None, bar)
    finally:
        bar.close()
    outcomes = []
    for s in specs:
        gathered = {r["key"]: r for r in sweep.gather(s, missing=False).to_dict("records")}
        tol = {"rtol": s.reproduce.get("rtol", DEFAULT_RTOL), "atol": s.reproduce.get("atol", DEFAULT_ATOL),
               "ignore": s.reproduce.get("ignore", [])}
        for spec, key, point in (t for t in todo if t[0] is s):
            now = gathered.get(key, {"status": "missing"})
            if now.get("status") != "ok":
                outcomes.append(Outcome(s.name, key, point, "failed", differences=[("error", None, now.get("error"))]))
                continue
            old = _committed_row(before[s.name], key, point, s)
            if old is None:
                outcomes.append(Outcome(s.name, key, point, "no committed row"))
                continue
            n, largest, column, diffs = compare_rows(old, now, parameters=s.parameter_names, **tol)
            known = s.reproduce.get("known_difference", {}).get(s.profile, {})
            known = known["reason"] if diffs and known and all(
                point.get(k) == v for k, v in known.get("where", {}).items()) else ""
            status = "known difference" if known else "differs" if diffs else "reproduced"
            outcomes.append(Outcome(s.name, key, point, status, n, largest, column, diffs, known))
    return outcomes


def report(outcomes: list[Outcome]) -> str:
    """One line per table, every mismatch with both values, then the summary line."""
    lines = []
    for table in dict.fromkeys(o.table for o in outcomes):
        mine = [o for o in outcomes if o.table == table]
        done = [o for o in mine if o.status == "reproduced"]
        worst = max(mine, key=lambda o: o.largest)
        lines.append(f"{table}: {len(done)} of {len(mine)} points reproduced"
                     + (f" (largest relative difference {worst.largest:.2g}, {worst.largest_column})"
                        if worst.largest_column else " (every value identical)" if done else ""))
        for o in mine:
            if o.status != "reproduced":
                what = "; ".join(f"{c}: committed {a!r}, now {b!r}" for c, a, b in o.differences) or o.status
                lines.append(f"  {o.status}: {o.point}: {what}" + (f" (known: {o.reason})" if o.reason else ""))
    ok = sum(o.status == "reproduced" for o in outcomes)
    known = sum(o.status == "known difference" for o in outcomes)
    lines.append(f"reproduced {ok} of {len(outcomes)} points within tolerance, in {len(set(o.table for o in outcomes))} "
                 "tables" + (f"; {known} known difference(s), each stated in its spec" if known else ""))
    return "\n".join(lines)


def outcomes_frame(outcomes: list[Outcome]) -> pd.DataFrame:
    return pd.DataFrame([{"table": o.table, "key": o.key, "point": str(o.point), "status": o.status,
                          "values_compared": o.compared, "largest_relative_difference": o.largest,
                          "largest_column": o.largest_column,
                          "differences": "; ".join(f"{c}: {a!r} -> {b!r}" for c, a, b in o.differences),
                          "reason": o.reason}
                         for o in outcomes])


def load_specs(paths: list[str], profile: str, runs: Path | None) -> list[sweep.SweepSpec]:
    """The specs with at least one reduced point; with ``runs``, each spec's output is ``runs/<name>``
    and holds only its reduced points (a folder of make-verify references, not the complete grid:
    no row of it is ever 'missing')."""
    specs = []
    for path in paths:
        spec = sweep.SweepSpec.load(path, profile, (runs / Path(path).stem) if runs else None)
        if runs is not None and spec.reduced is not None:
            spec.points = spec.reduced
        if spec.reduced is None or spec.reduced:
            specs.append(spec)
    return specs


def draw_from(runs: Path) -> tuple[list[Path], dict[str, str]]:
    """Every figure and RESULTS.md table whose sweep has a results table under ``runs`` (a folder laid
    out as ``papermill_runs/``), drawn into a temporary folder; returns the files drawn and the tables."""
    import tempfile

    from . import figures

    with tempfile.TemporaryDirectory(prefix="tcomp-verify-") as tmp:
        root = Path(tmp)
        (root / "papermill_runs").symlink_to(runs.resolve(), target_is_directory=True)
        has = lambda source: (root / source).parent.joinpath("results.csv").is_file()  # noqa: E731
        names = [n for n, f in figures.FIGURES.items() if has(f.source)]
        drawn = figures.build(names, root / "figures", root) if names else []
        tables = figures.readme_tables(root, [n for n, t in figures.README_TABLES.items() if has(t.source)])
        return [p.relative_to(root) for p in drawn], tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcomp_utils.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", help="sweep specs (default: every papermill_runs/*.yaml)")
    parser.add_argument("--profile", choices=PROFILES, default=None, help="override the specs' own")
    parser.add_argument("--workers", type=int, default=0, help="single-threaded workers (0: one after another here)")
    parser.add_argument("--runs", type=Path, default=None,
                        help="folder of the sweeps' outputs (default: each spec's own; make verify: papermill_runs/smoke)")
    parser.add_argument("--summary", type=Path, default=None,
                        help="where the outcome of every point goes (default: <runs>/reproduction.csv)")
    parser.add_argument("--models", action=argparse.BooleanOptionalAction, default=True,
                        help="train or convert the profile's embedded models first, timed apart (default: yes)")
    parser.add_argument("--models-only", action="store_true",
                        help="only train or convert the profile's embedded models (make test, before its workers start)")
    parser.add_argument("--figures", action="store_true",
                        help="then draw every figure and results table from the --runs tables (make verify)")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    paths = args.specs or sorted(str(p) for p in RUNS.glob("*.yaml"))
    try:
        specs = load_specs(paths, args.profile, args.runs)
    except sweep.SweepSpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sweep.stop_on_signals()
    one_time, clock = {}, time.perf_counter()
    if args.models_only or (args.models and specs):
        one_time = prepare_models(args.profile or (specs[0].profile if specs else "default"), max(1, args.workers))
    one_time_s = time.perf_counter() - clock  # wall time: the models are made side by side
    if args.models_only:
        return 0
    started, clock = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    outcomes = reproduce(specs, args.workers)
    out = args.summary or (args.runs or RUNS) / "reproduction.csv"
    write_csv_atomic(outcomes_frame(outcomes), out)
    log = out.with_name(f"{out.stem}_runs.csv")  # one row per run: when, how long, how many reproduced
    row = {"started": started.isoformat(timespec="seconds"), "wall_s": round(time.perf_counter() - clock, 1),
           "one_time_s": round(one_time_s, 1) if one_time else 0.0, "workers": args.workers, "points": len(outcomes),
           "reproduced": sum(o.status == "reproduced" for o in outcomes), "tables": len({o.table for o in outcomes})}
    write_csv_atomic(pd.concat([sweep.read_table(log), pd.DataFrame([row])], ignore_index=True), log)
    print(report(outcomes))
    print(f"{row['wall_s'] / 60:.1f} min for the points on {args.workers} worker(s), after {row['one_time_s'] / 60:.1f} "
          "min making the embedded models")
    if args.figures:
        drawn, tables = draw_from(args.runs or RUNS)
        print(f"drew {len(drawn) // 2} figures and {len(tables)} results tables from {args.runs or RUNS}")
    return 0 if all(o.status in ("reproduced", "known difference") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
