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
    reduced:                             # optional: the subset `make run` (--reduced) computes
      points: [{model: minilm-l6, seq_len: 128}]   # (an empty list: none; no key: every point)
    reproduce: {rtol: 1e-3, ignore: [ratio]}  # optional: how close make run's recomputed points must
                                         # come to the committed rows (tcomp_utils.reproduce)
    output: papermill_runs/budget_axis   # default: papermill_runs/<name>

Each point is identified by a stable hash of (the notebook's code, profile, parameters): its executed
notebook and its record are ``<output>/points/<hash>.ipynb`` and ``<hash>.json``, written
atomically, the record last, so a killed sweep leaves only complete points. Every record keeps
the package modules its kernel loaded (``code_modules``) and the hash of their sources
(``code_hash``). A rerun skips points whose record says ``ok`` *and* whose code hash is that of
those modules' current sources; a point computed with other package code is
*stale* and runs again (``--keep-stale`` reuses it, marked ``stale`` in the table); a point whose
parameters changed has a new hash and runs again; a failed point is recorded with its error and
retried on the next run. At the end all points of the spec are gathered into
``<output>/results.csv`` (one row per point: parameters, status, error, code hash, scalar records)
and each table-valued record ``R`` into ``<output>/R.csv``.

Each point runs under a lock, ``<output>/points/<hash>.lock`` (see :class:`PointLock`): a second
sweep of the same spec started meanwhile skips the points the first is running, saying so, and runs
the others, so no point is computed twice; a lock left by a killed sweep never blocks. A sweep
stopped by Ctrl-C or SIGTERM says what it kept and exits with 128 + the signal's number.

Every run that computes points appends a row to ``<output>/runs.csv``: when it started, its wall
time, the workers, how many points it ran of the spec's, and their summed cell time; the measured
time of a complete grid is read there.

With ``--reduced`` only the ``reduced`` points run; every other point keeps its row of the existing
``results.csv`` (the committed table), marked ``stale`` when its code hash is not the current one.
With ``--resume`` a point with no record here whose committed row is ``ok`` and current (or stale,
with ``--keep-stale``) counts as done: a grid too long for one sitting is finished in another
clone from its committed rows.

The spec is checked before anything runs: every parameter must be one the notebook's
``parameters`` cell defines, of the type of its default; a point listed twice is run once.

    python -m tcomp_utils.sweep SPEC [--profile P] [--workers N | --scheduler ADDRESS] [--reduced] [--keep-stale]
                                [--resume]
"""
from __future__ import annotations

import argparse
import datetime as dt
import heapq
import json
import math
import os
import signal
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
from tqdm.auto import tqdm

from . import progress
from .files import write_csv_atomic
from .runner import execute_point, notebook_label, package_digest, write_result
from .sweep_control import Interrupted, PointBusy, PointLock, stop_on_signals  # noqa: F401 (re-exported)
from .sweep_spec import SweepSpec, SweepSpecError  # noqa: F401 (re-exported: the spec's names)



def _read_record(path: Path) -> dict | None:
    """A point's record, or None when it is missing or unreadable (then the point runs again)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "status" in record else None


def _modules(rec: dict) -> list[str] | None:
    """The package modules a point's kernel had loaded (a list in a record, ';'-joined in a table)."""
    found = rec.get("code_modules")
    return found.split(";") if isinstance(found, str) else found if isinstance(found, list) else None


def is_stale(rec: dict) -> bool:
    """Whether a point's record (or row) was computed with other code than the current sources of
    the modules it loaded."""
    return rec.get("code_hash") != package_digest(_modules(rec))


def _done(record_path: Path, keep_stale: bool = False) -> bool:
    record = _read_record(record_path)
    return bool(record) and record["status"] == "ok" and (keep_stale or not is_stale(record))


def _committed_done(spec: SweepSpec, keep_stale: bool = False) -> set[str]:
    """Keys of the committed ``results.csv`` rows that are ``ok`` and current (any, ``keep_stale``)."""
    before = read_table(spec.output / "results.csv")
    if before is None or not {"key", "status", "code_hash"} <= set(before.columns):
        return set()
    rows = before[before.status == "ok"].to_dict("records")
    return {r["key"] for r in rows if keep_stale or not is_stale(r)}


def last_seconds(spec: SweepSpec, keys: list[str]) -> dict[str, float]:
    """The time each point took when last run (its record, else its row in the committed results
    table); infinite when never run, so that unknown points are scheduled first."""
    before = read_table(spec.output / "results.csv")
    table = ({k: v for k, v in zip(before.key, before.elapsed_s)}
             if before is not None and {"key", "elapsed_s"} <= set(before.columns) else {})
    out = {}
    for key in keys:
        seconds = (_read_record(spec.output / "points" / f"{key}.json") or {}).get("elapsed_s", table.get(key))
        out[key] = float(seconds) if isinstance(seconds, (int, float)) and math.isfinite(seconds) else math.inf
    return out


def longest_first_wall(seconds: list[float], workers: int) -> float:
    """The wall time (s) of points taking ``seconds`` each when run as a sweep runs them: longest first,
    each on the first of ``workers`` single-threaded workers to come free. A lower bound of a real run
    (no start-up, no scheduling gaps); it prices a cut grid from the cells' measured times."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    free = [0.0] * workers
    for s in sorted(seconds, reverse=True):
        heapq.heapreplace(free, free[0] + s)
    return max(free)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# every point runs on this many threads, wherever and however many at once: a float reduction split over
# another number of threads sums in another order, and a point that amplifies rounding (GPTQ with
# act-order) then gives another result (the tweet model's 4-bit act-order point: 90.3 % on one thread,
# 90.05 % on two). More cores are used by more workers, not by more threads per point.
POINT_THREADS = 1


def point_env() -> dict[str, str]:
    """The thread variables of every point's kernel: :data:`POINT_THREADS` each, unless this process's
    environment sets one (passed on unchanged: an explicit choice, e.g. to time a point on all cores)."""
    return {v: os.environ.get(v, str(POINT_THREADS)) for v in THREAD_VARIABLES}


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """This process's environment (and so a kernel started in it) with ``values``; restored after."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pending_points(spec: SweepSpec, reduced: bool = False, keep_stale: bool = False,
                   resume: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """The ``(key, point)`` pairs of ``spec`` that must run (missing, failed, or computed with other
    package code unless ``keep_stale``; only the ``reduced`` subset with ``reduced``; with
    ``resume``, a point with no record here whose committed row is ok is done), longest first."""
    points_dir = spec.output / "points"
    todo = spec.reduced if reduced and spec.reduced is not None else spec.points
    committed = _committed_done(spec, keep_stale) if resume else set()
    pending = [(k, p) for k, p in ((spec.point_key(p), p) for p in todo)
               if not _done(points_dir / f"{k}.json", keep_stale)
               and not (k in committed and not (points_dir / f"{k}.json").exists())]
    last = last_seconds(spec, [k for k, _ in pending])
    return sorted(pending, key=lambda kp: -last[kp[0]])  # longest first, so that no long point starts last


def run_points(jobs: list[tuple[SweepSpec, str, dict[str, Any]]], workers: int = 0, scheduler: str | None = None,
               bar: Any = None, saved: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Execute ``(spec, key, point)`` jobs (of one spec or several) in the given order, writing each
    point's executed notebook and record as it finishes. Returns the keys saved, per spec name (also
    filled into ``saved`` as they finish, so that an interrupted caller still knows them).

    Each point runs under its :class:`PointLock`: a point that another process (a second sweep of
    the same spec) is running is skipped with a line naming it, that process and the lock file, and
    one that another process finished meanwhile is not run again.

    ``workers=0`` and no ``scheduler``: one after another in this process; ``workers=N``: a local
    Dask cluster of N worker processes; every point's kernel on :func:`point_env`'s threads; ``scheduler``: an existing Dask scheduler."""
    saved = {} if saved is None else saved
    say = tqdm.write if bar is not None else print  # tqdm's write keeps the bar whole
    sources = {spec.name: json.loads(spec.notebook.read_text(encoding="utf-8")) for spec, _, _ in jobs}

    def save(spec: SweepSpec, key: str, point: dict[str, Any], result: dict[str, Any]) -> None:
        write_result(result, spec.output / "points" / f"{key}.ipynb", spec.output / "points" / f"{key}.json",
                     {"sweep": spec.name, "key": key, "notebook": notebook_label(spec.notebook),
                      "parameters": spec.point_parameters(point)})
        saved.setdefault(spec.name, []).append(key)
        if bar is not None:
            bar.update(1)
            if result["status"] != "ok":
                bar.write(f"point {spec.name} {key} {point} failed: {result['error']}")

    def claim(spec: SweepSpec, key: str, point: dict[str, Any]) -> PointLock | None:
        """The point's lock, or None when another process is running the point or has finished it."""
        try:
            lock = PointLock(spec.output / "points" / f"{key}.lock").acquire()
        except PointBusy as busy:
            say(f"point {spec.name} {key} {point} skipped: {busy}; its record will be "
                f"{spec.output / 'points' / f'{key}.json'} (run the sweep again once it has finished to gather it)",
                file=sys.stderr)
            return None
        if _done(spec.output / "points" / f"{key}.json"):  # finished by another process since the list was made
            lock.release()
            if bar is not None:
                bar.update(1)
            return None
        return lock

    def status(spec: SweepSpec, key: str) -> str | None:
        """A point's progress status file (None on a remote scheduler, whose workers write elsewhere)."""
        return None if scheduler else str(spec.output / "points" / f"{key}{progress.SUFFIX}")

    for spec, _, _ in jobs:
        (spec.output / "points").mkdir(parents=True, exist_ok=True)
    folders = sorted({spec.output / "points" for spec, _, _ in jobs})
    # environment: inherited by kernels and local workers; watch: which point runs, for how long, its latest bar
    with _environment(point_env()), ExitStack() as held, progress.watch(folders, say):
        if workers or scheduler:
            claimed = {}
            for spec, key, point in jobs:
                if (lock := claim(spec, key, point)) is not None:
                    claimed[spec.name, key] = held.enter_context(lock)
            todo = [(spec, k, p) for spec, k, p in jobs if (spec.name, k) in claimed]
            if todo:
                import dask
                from dask.distributed import Client, LocalCluster, as_completed

                # Dask's nanny gives its workers MALLOC_TRIM_THRESHOLD_=65536, and a threshold that is set also
                # fixes glibc's mmap threshold: every large tensor a training step frees is unmapped and faulted
                # in again (the 3-layer student's step 1.56x slower, two at a time); points run on glibc's defaults
                with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                    cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1,
                                                                  processes=True, dashboard_address=None)
                try:
                    with Client(scheduler or cluster) as client:
                        # priority keeps the given order (Dask would otherwise start them in no set order)
                        futures = {client.submit(execute_point, sources[spec.name], spec.point_parameters(p),
                                                 str(spec.notebook.parent), status_file=status(spec, k),
                                                 label=f"{spec.name} {p}", pure=False, key=f"{spec.name}-{k}",
                                                 priority=len(todo) - i): (spec, k, p)
                                   for i, (spec, k, p) in enumerate(todo)}
                        for future in as_completed(futures):
                            spec, key, point = futures[future]
                            save(spec, key, point, future.result())
                            claimed[spec.name, key].release()
                finally:
                    if cluster is not None:
                        cluster.close()
        else:
            for spec, key, point in jobs:
                if (lock := claim(spec, key, point)) is not None:
                    with lock:
                        save(spec, key, point, execute_point(sources[spec.name], spec.point_parameters(point),
                                                             str(spec.notebook.parent), status_file=status(spec, key),
                                                             label=f"{spec.name} {point}"))
    return saved


def run_sweep(spec: SweepSpec, workers: int = 0, scheduler: str | None = None, progress: bool = True,
              keep_stale: bool = False, reduced: bool = False, resume: bool = False) -> pd.DataFrame:
    """Run every pending point of ``spec`` (see :func:`pending_points`) and return the gathered
    results table of every point (see :func:`gather`).

    ``workers=0`` and no ``scheduler``: points run one after another in this process.
    ``workers=N``: a local Dask cluster of N single-threaded worker processes.
    ``scheduler``: the address of an existing Dask scheduler (its workers need this package
    and the notebook's data; results come back to this process, which writes every file).
    """
    (spec.output / "points").mkdir(parents=True, exist_ok=True)
    pending = pending_points(spec, reduced, keep_stale, resume)
    total = len(spec.reduced if reduced and spec.reduced is not None else spec.points)
    bar = tqdm(total=total, initial=total - len(pending), desc=f"sweep {spec.name}", disable=not progress)
    saved: dict[str, list[str]] = {}
    started, clock = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    try:
        run_points([(spec, k, p) for k, p in pending], workers, scheduler, bar, saved)
    finally:  # an interrupted run is logged too: its wall time and the points it finished
        bar.close()
        if pending:
            log_run(spec, started, time.perf_counter() - clock, scheduler or workers, saved.get(spec.name, []), reduced)
    return gather(spec)


def log_run(spec: SweepSpec, started: dt.datetime, wall_s: float, workers: int | str, keys: list[str],
            reduced: bool = False) -> pd.DataFrame:
    """Append one run to ``<output>/runs.csv``: ``started`` (UTC), ``wall_s``, ``workers`` (0: in
    this process; or the scheduler's address), ``points_run`` of ``points_total``, ``reduced``, the
    points' summed ``cell_s`` and how many ended ``ok``. Returns the whole log."""
    recs = [_read_record(spec.output / "points" / f"{k}.json") or {} for k in keys]
    row = {"started": started.isoformat(timespec="seconds"), "wall_s": round(wall_s, 1), "workers": workers,
           "points_run": len(keys), "points_total": len(spec.points), "reduced": reduced,
           "cell_s": round(sum(float(r.get("elapsed_s") or 0) for r in recs), 1),
           "ok": sum(r.get("status") == "ok" for r in recs)}
    path = spec.output / "runs.csv"
    log = pd.concat([read_table(path), pd.DataFrame([row])], ignore_index=True)
    write_csv_atomic(log, path)
    return log


def read_table(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path) if path.is_file() else None
    except (OSError, ValueError, pd.errors.ParserError):
        return None


NOTEBOOK_CHANGED = "computed with another version of the notebook's code (key {old}; this point's key is now {new})"
NOT_IN_SPEC = "not a point of the current spec (its parameters match none of the spec's points)"
RETIRED = "retired"  # the status of a committed result kept although the spec no longer has its point
CODE_CHANGED = "computed with other sources of the package modules it loaded"


def _same_value(a: Any, b: Any) -> bool:
    """A parameter's value as a results table holds it (read back from CSV) against a point's."""
    missing = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    if missing(a) or missing(b):
        return missing(a) and missing(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return str(a) == str(b)


def row_is_point(row: dict, point: dict[str, Any], spec: SweepSpec) -> bool:
    """Whether a committed row holds ``point``: the same profile and the same value (or none) of
    every parameter the notebook defines."""
    names = [n for n in spec.parameter_names if n != "profile"] or list(point)
    return _same_value(row.get("profile"), spec.profile) and all(_same_value(row.get(n), point.get(n)) for n in names)


def gather(spec: SweepSpec, missing: bool = True) -> pd.DataFrame:
    """Collect the spec's point records into ``results.csv`` (+ one CSV per table record).

    ``missing``: a point never computed (no record, no committed row) gets a row with status ``missing``,
    so an interrupted sweep's table says what is left; ``make run`` passes False, so that recomputing a
    subset does not add rows for the cells of a grid still being computed elsewhere.

    A point with no record here keeps its ``ok`` row of the existing ``results.csv`` (the committed
    table: point files are not committed) and its table rows, so computing a subset (``make run``)
    refreshes those cells and keeps the others. Committed results are never dropped: an ``ok`` row
    whose key is no longer the key of its point (the notebook's code changed since) is kept as that
    point's row, and one whose parameters match no point of the spec is kept after the spec's rows
    with status ``retired``, its rows of the record tables dropped (so no figure draws it; git keeps them);
    both are marked ``stale``, with the reason in ``stale_reason``. ``stale`` also says a row's ``code_hash``
    is not that of the current sources of the modules it loaded (``code_modules``)."""
    before = read_table(spec.output / "results.csv")
    kept = {}
    if before is not None and {"key", "status"} <= set(before.columns):
        kept = {r["key"]: r for r in before[before.status.isin(["ok", RETIRED])].to_dict("records")}
    rows, tables, kept_keys = [], {}, set()

    def keep(row: dict, point: dict[str, Any] | None, reason: str | None) -> None:
        if point is not None:
            row = {**row, **point, "profile": spec.profile}  # the point's own values, not their CSV reading
        stale = is_stale(row)
        row["stale"] = bool(reason) or stale
        row["stale_reason"] = reason or (CODE_CHANGED if stale else None)
        rows.append(row)
        kept_keys.add(row["key"])

    for point in spec.points:
        key = spec.point_key(point)
        path = spec.output / "points" / f"{key}.json"
        rec = _read_record(path)
        if rec is None and not path.exists():
            if key in kept and kept[key]["status"] == "ok":
                keep(kept[key], point, None)
                continue
            older = next((r for k, r in kept.items() if k not in kept_keys and r["status"] == "ok"
                          and row_is_point(r, point, spec)), None)
            if older is not None:
                keep(older, point, NOTEBOOK_CHANGED.format(old=older["key"], new=key))
                continue
        if rec is None and not path.exists() and not missing:
            continue
        if rec is None:
            rec = ({"status": "unreadable", "error": f"{path} is damaged (not a complete record); rerun the sweep"}
                   if path.exists() else {"status": "missing"})
        stale = is_stale(rec) if rec["status"] == "ok" else False
        row = {"key": key, **point, "profile": spec.profile, "status": rec["status"], "error": rec.get("error"),
               "code_hash": rec.get("code_hash"), "stale": stale, "stale_reason": CODE_CHANGED if stale else None,
               "code_modules": ";".join(_modules(rec) or []) or None,
               "elapsed_s": rec.get("elapsed_s")}
        for name, value in (rec.get("records") or {}).items():
            if name in row or name in spec.parameter_names:
                continue  # refused when recorded; an old record cannot take a column's name
            if isinstance(value, list) and value and isinstance(value[0], dict):
                tables.setdefault(name, []).extend({"key": key, **point, **r} for r in value)
            elif not isinstance(value, (list, dict)):
                row[name] = value
        rows.append(row)
    matched, retired = {r["key"] for r in rows}, set()
    for key, row in kept.items():  # committed results of points the spec no longer has
        if key not in matched and not any(row_is_point(row, p, spec) for p in spec.points):
            keep({**row, "status": RETIRED}, None, NOT_IN_SPEC)
            retired.add(key)
    results = pd.DataFrame(rows)
    write_csv_atomic(results, spec.output / "results.csv")
    names = set(tables) | ({p.stem for p in spec.output.glob("*.csv") if p.name not in ("results.csv", "runs.csv")}
                           if kept_keys else set())
    for name in names:  # a retired point keeps its results.csv row but leaves the record tables the figures draw
        frame = pd.DataFrame(tables.get(name, []))
        old = read_table(spec.output / f"{name}.csv") if kept_keys else None
        if old is not None and "key" in old:
            frame = pd.concat([old[old.key.isin(kept_keys - retired)], frame], ignore_index=True)
        if len(frame):
            write_csv_atomic(frame, spec.output / f"{name}.csv")
    return results


def summary_line(results: pd.DataFrame, spec: SweepSpec) -> str:
    """What a gathered table holds: points ok (how many stale, and why), not computed, retired."""
    points = results[results.status != RETIRED]
    ok = points[points.status == "ok"]
    why = ok[ok.stale.astype(bool)].stale_reason.fillna(CODE_CHANGED) if "stale_reason" in ok else pd.Series(dtype=str)
    reasons = {"other package code": int((why == CODE_CHANGED).sum()),
               "an earlier version of the notebook": int(why.str.startswith(NOTEBOOK_CHANGED[:30]).sum())}
    stale = ", ".join(f"{n} computed with {r}" for r, n in reasons.items() if n)
    retired = len(results) - len(points)
    return (f"{len(ok)}/{len(points)} points ok ({stale or 'none stale'}), {int((points.status == 'missing').sum())} "
            f"not computed" + (f", {retired} committed row(s) of points no longer in the spec kept as retired"
                               if retired else "") + f"; results: {spec.output / 'results.csv'}")


def interrupted_message(spec: SweepSpec, signum: int, reduced: bool = False, keep_stale: bool = False,
                        resume: bool = False) -> str:
    """What an interrupted sweep tells its user: what stopped, what is kept, how to go on."""
    total = len(spec.reduced if reduced and spec.reduced is not None else spec.points)
    left = len(pending_points(spec, reduced, keep_stale, resume))
    return (f"sweep {spec.name} interrupted by {signal.Signals(signum).name}: {total - left} of its {total} points "
            f"are finished and kept in {spec.output / 'points'} (the run is logged in {spec.output / 'runs.csv'}; a "
            f"point that was running is not saved). Run the same command again to compute the {left} other(s): "
            "finished points are skipped.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcomp_utils.sweep", description="Run a notebook sweep.")
    parser.add_argument("spec", help="sweep spec (YAML)")
    parser.add_argument("--profile", choices=("smoke", "default", "paper"), default=None, help="override the spec's")
    parser.add_argument("--output", default=None, help="override the spec's output folder")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=0, help="run on a local Dask cluster of N workers")
    where.add_argument("--scheduler", default=None, help="run on the Dask scheduler at ADDRESS (tcp://host:8786)")
    parser.add_argument("--reduced", action="store_true",
                        help="run only the spec's reduced grid (what `make run` computes); other cells keep their rows")
    parser.add_argument("--keep-stale", action="store_true",
                        help="reuse points computed with other package code (marked stale) instead of rerunning them")
    parser.add_argument("--resume", action="store_true",
                        help="count points whose committed results row is ok (and current) as done: finish a grid "
                             "begun in another clone")
    args = parser.parse_args(argv)
    stop_on_signals()
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    try:
        spec = SweepSpec.load(args.spec, args.profile, args.output)
    except SweepSpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if spec.duplicates:
        print(f"note: {spec.duplicates} point(s) listed more than once; each runs once", file=sys.stderr)
    try:
        results = run_sweep(spec, workers=args.workers, scheduler=args.scheduler, keep_stale=args.keep_stale,
                            reduced=args.reduced, resume=args.resume)
    except KeyboardInterrupt as err:  # a signal (see stop_on_signals): a message, not a traceback
        signum = getattr(err, "signum", signal.SIGINT)
        handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:  # a second signal must not cut the message short
            print(f"\n{interrupted_message(spec, signum, args.reduced, args.keep_stale, args.resume)}", file=sys.stderr)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return 128 + signum  # the shell's status of a process stopped by that signal
    failed = results[results.status.isin(["failed", "unreadable"])]
    print(summary_line(results, spec))
    for _, row in failed.iterrows():
        print(f"  failed {row.key}: {row.error}", file=sys.stderr)
    return 1 if len(failed) or ((results.status == "missing").any() and not args.reduced) else 0


if __name__ == "__main__":
    sys.exit(main())
