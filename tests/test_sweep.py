"""Sweeps: failures recorded, resumable after a kill, same table locally and on Dask."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tcomp_utils import records, runner, sweep

ROOT = Path(__file__).resolve().parents[1]
PROBE = "tests/notebooks/sweep_probe.ipynb"


def write_spec(tmp_path, points, name="probe", **fixed):
    spec = {"name": name, "notebook": PROBE, "profile": "smoke", "output": str(tmp_path / "out"),
            "parameters": {"marker_dir": str(tmp_path), **fixed}, "points": points}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def runs(tmp_path, x):
    marker = tmp_path / f"{x}.runs"
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def test_failed_point_is_recorded_and_the_others_complete(tmp_path):
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": x} for x in (1, 2, 3, 4)], fail_on=3))
    results = sweep.run_sweep(spec, progress=False)
    assert list(results.status) == ["ok", "ok", "failed", "ok"]
    assert results.loc[2, "error"] == "ValueError: bad point 3"
    assert list(results.square.fillna(-1)) == [1, 4, -1, 16]
    rows = pd.read_csv(tmp_path / "out" / "rows.csv")
    assert len(rows) == 6 and set(rows.x) == {1, 2, 4}
    failed = json.loads((tmp_path / "out" / "points" / f"{results.key[2]}.json").read_text())
    assert failed["status"] == "failed" and failed["parameters"]["x"] == 3
    # a rerun skips the finished points and retries only the failed one
    sweep.run_sweep(spec, progress=False)
    assert [runs(tmp_path, x) for x in (1, 2, 3, 4)] == [1, 1, 2, 1]


def test_changed_parameters_run_again(tmp_path):
    sweep.run_sweep(sweep.SweepSpec.load(write_spec(tmp_path, [{"x": 1}, {"x": 2}])), progress=False)
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": 1}, {"x": 2, "delay": 0.01}]))
    results = sweep.run_sweep(spec, progress=False)
    assert [runs(tmp_path, x) for x in (1, 2)] == [1, 2]
    assert list(results.status) == ["ok", "ok", "retired"]  # the old x=2 row is kept, out of every figure
    table = pd.read_csv(tmp_path / "out" / "rows.csv")  # and its record-table rows are dropped: no figure draws them
    assert set(table.key) == set(results.key[:2]) and len(table) == 4
    assert list(results.delay.fillna(0)) == [0, 0.01, 0] and results.stale_reason[2] == sweep.NOT_IN_SPEC


def test_point_keys_are_stable_and_depend_on_parameters(tmp_path):
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": 1}]))
    assert spec.point_key({"x": 1, "a": 2}) == spec.point_key({"a": 2, "x": 1})
    assert spec.point_key({"x": 1}) != spec.point_key({"x": 2})
    assert spec.point_key({"x": 1}) != sweep.SweepSpec.load(write_spec(tmp_path, [{"x": 1}]), profile="default").point_key({"x": 1})


def test_an_interrupted_sweep_logs_its_wall_time_and_finished_points(tmp_path, monkeypatch):
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": x} for x in (1, 2, 3)]))
    execute = sweep.execute_point
    calls = []

    def interrupted_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return execute(*args, **kwargs)

    monkeypatch.setattr(sweep, "execute_point", interrupted_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(spec, progress=False)
    log = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert len(log) == 1 and log.points_run[0] == 1 and log.ok[0] == 1 and log.points_total[0] == 3
    monkeypatch.setattr(sweep, "execute_point", execute)
    results = sweep.run_sweep(spec, progress=False)  # the resumed run computes the other two
    log = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert list(log.points_run) == [1, 2] and (results.status == "ok").all()
    assert [runs(tmp_path, x) for x in (1, 2, 3)] == [1, 1, 1]


def _sweep_with_two_points_done(tmp_path, stderr=subprocess.DEVNULL):
    """A sweep of six slow points running in a subprocess, once two of them are recorded."""
    spec_path = write_spec(tmp_path, [{"x": x} for x in range(1, 7)], delay=1.0)
    proc = subprocess.Popen([sys.executable, "-m", "tcomp_utils.sweep", str(spec_path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    points = tmp_path / "out" / "points"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(points.glob("*.json"))) < 2:
        time.sleep(0.2)
    return spec_path, proc, points


def test_killed_sweep_resumes_without_recomputing_or_corruption(tmp_path):
    spec_path, proc, points = _sweep_with_two_points_done(tmp_path)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {json.loads(p.read_text())["parameters"]["x"] for p in points.glob("*.json")}
    assert 2 <= len(done_before) < 6, done_before
    for record in points.glob("*.json"):  # every record that exists is complete and valid
        assert json.loads(record.read_text())["status"] == "ok"
    results = sweep.run_sweep(sweep.SweepSpec.load(spec_path), progress=False)
    assert (results.status == "ok").all() and list(results.square) == [x * x for x in range(1, 7)]
    for x in done_before:
        assert runs(tmp_path, x) == 1, f"point x={x} finished before the kill but ran again"


def test_a_terminated_sweep_logs_the_points_it_finished(tmp_path):
    _, proc, _ = _sweep_with_two_points_done(tmp_path)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    log = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert len(log) == 1 and 2 <= log.points_run[0] < 6 and log.ok[0] == log.points_run[0]


def test_a_terminated_sweep_says_what_it_kept_and_how_to_go_on_without_a_traceback(tmp_path):
    """SIGTERM used to end the sweep with a KeyboardInterrupt traceback: now one message (what was
    interrupted, that the finished points are kept, how to resume) and the status 128 + 15."""
    with open(tmp_path / "stderr.txt", "w") as err:
        _, proc, _ = _sweep_with_two_points_done(tmp_path, stderr=err)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    text = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, text
    # the running notebook's kernel may log its own one line ("[IPKernelApp] ERROR | KeyboardInterrupt caught in
    # kernel.") when the signal reaches it mid-cell; the sweep itself prints no traceback and no exception
    ours = "\n".join(line for line in text.splitlines() if "[IPKernelApp]" not in line)
    assert "Traceback" not in text and "KeyboardInterrupt" not in ours, text
    found = re.search(r"sweep probe interrupted by SIGTERM: (\d) of its 6 points are finished and kept in (\S+) ", text)
    assert found and 2 <= int(found[1]) < 6 and found[2] == str(tmp_path / "out" / "points"), text
    left = 6 - int(found[1])
    assert f"Run the same command again to compute the {left} other(s): finished points are skipped" in text


def _hold_lock(path):
    """Another process holding the lock of a point (as a second sweep running it does); it lets go
    when its stdin closes."""
    code = ("import sys\nfrom tcomp_utils import sweep\nwith sweep.PointLock(sys.argv[1]):\n"
            "    print('held', flush=True)\n    sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_point_another_process_is_running_is_skipped_naming_that_process_and_the_lock(tmp_path, capsys):
    """Two sweeps of one spec used to both run every point: a point whose lock another live process
    holds is now skipped with a line naming it, the process and the lock file; the others run, and
    the point runs on the next sweep once the lock is released."""
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": 1}, {"x": 2}]))
    key = spec.point_key(spec.points[0])
    lock = tmp_path / "out" / "points" / f"{key}.lock"
    lock.parent.mkdir(parents=True)
    holder = _hold_lock(lock)
    try:
        results = sweep.run_sweep(spec, progress=False)
        assert list(results.status) == ["missing", "ok"] and [runs(tmp_path, x) for x in (1, 2)] == [0, 1]
        err = capsys.readouterr().err
        assert re.search(rf"point probe {key} \{{.*'x': 1.*\}} skipped: process {holder.pid} on \S+ \(since [^)]+\) is "
                         rf"running it \(lock file {re.escape(str(lock))}\); its record will be "
                         rf"{re.escape(str(lock.with_suffix('.json')))}", err), err
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert not lock.exists()  # removed by its holder on release
    results = sweep.run_sweep(spec, progress=False)
    assert (results.status == "ok").all() and [runs(tmp_path, x) for x in (1, 2)] == [1, 1]


def test_a_lock_left_by_a_dead_process_does_not_block(tmp_path):
    """A killed sweep leaves its lock file naming a pid that no longer runs: the next sweep takes it over."""
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": 1}]))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / "out" / "points" / f"{spec.point_key(spec.points[0])}.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": "here", "since": "2020-01-01T00:00:00+00:00"}))
    results = sweep.run_sweep(spec, progress=False)
    assert list(results.status) == ["ok"] and runs(tmp_path, 1) == 1 and not lock.exists()


def test_two_sweeps_of_one_spec_at_once_run_each_point_once(tmp_path):
    spec_path = write_spec(tmp_path, [{"x": x} for x in range(1, 5)], delay=0.5)
    procs = [subprocess.Popen([sys.executable, "-m", "tcomp_utils.sweep", str(spec_path)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    for proc in procs:
        proc.wait(timeout=300)
    assert [runs(tmp_path, x) for x in range(1, 5)] == [1, 1, 1, 1]
    results = sweep.run_sweep(sweep.SweepSpec.load(spec_path), progress=False)
    assert (results.status == "ok").all() and [runs(tmp_path, x) for x in range(1, 5)] == [1, 1, 1, 1]
    assert not list((tmp_path / "out" / "points").glob("*.lock"))


def test_the_same_table_locally_and_on_dask(tmp_path):
    spec_path = write_spec(tmp_path, [{"x": 2}, {"x": 3}])
    local = sweep.run_sweep(sweep.SweepSpec.load(spec_path, output=tmp_path / "local"), progress=False)
    on_dask = sweep.run_sweep(sweep.SweepSpec.load(spec_path, output=tmp_path / "dask"), workers=2, progress=False)
    assert (local.status == "ok").all(), local.error.tolist()
    pd.testing.assert_frame_equal(local.drop(columns="elapsed_s"), on_dask.drop(columns="elapsed_s"))
    rows = [pd.read_csv(tmp_path / where / "rows.csv") for where in ("local", "dask")]
    pd.testing.assert_frame_equal(*rows)


def test_committed_specs_name_only_their_notebooks_parameters():
    for path in sorted((ROOT / "papermill_runs").glob("*.yaml")):
        spec = sweep.SweepSpec.load(path)  # raises on an unknown or mistyped parameter
        assert spec.points and spec.duplicates == 0, path.name


def test_no_notebook_records_a_name_that_a_sweep_would_refuse():
    """A record named like a parameter or a results column fails every sweep point after the
    notebook has run: caught here, before hours of cells are spent."""
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        names = set(re.findall(r"""record\(\s*["'](\w+)["']""", source))
        clash = names & (set(runner.notebook_parameters(nb, path)) | set(records.RESERVED))
        assert not clash, f"{path.name} records {sorted(clash)}, which are parameters or results columns"


def test_papermill_reads_every_parameter_of_every_notebook():
    """papermill parses the parameters cell line by line (a comment it misreads makes it warn
    'Unable to parse line' and 'Passed unknown parameter' on every run): it must find the same
    names as the sweep's own parser."""
    import papermill

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        assert list(papermill.inspect_notebook(str(path))) == list(runner.notebook_parameters(nb, path)), path.name


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
    ({"notebook": "notebooks/nope.ipynb"}, "notebook notebooks/nope.ipynb does not exist"),
    ({"points": [], "grid": {"x": []}}, "non-empty list"),
    ({"points": None}, "no points"),
    ({"profile": "huge"}, "unknown profile 'huge'"),
    ({"parameters": {"profile": "smoke"}}, "top-level 'profile' key"),
    ({"points": [{"xx": 1}]}, r"unknown parameter 'xx' \(did you mean 'x'\?\); tests/notebooks/sweep_probe.ipynb has "
                              r"parameters x, delay, fail_on, marker_dir, y, extra_record"),
    ({"points": [{"x": "abc"}]}, r"parameter x='abc' is a str, but the notebook's default 1 is a int"),
    ({"points": {"x": 1}}, "'points' must be a list of mappings"),
    ({"points": ["x=1"]}, "'points' must be a list of mappings"),
    ({"name": "../../escape"}, r"name '../../escape' must be letters"),
    ({"parameters": [1]}, "'parameters' must be a mapping"),
])
def test_bad_specs_are_clear_errors(tmp_path, change, message):
    """Each bad spec fails before anything runs, naming what is wrong and what is allowed."""
    spec = {"name": "bad", "notebook": PROBE, "points": [{"x": 1}], **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises((sweep.SweepSpecError, ValueError), match=message):
        sweep.SweepSpec.load(path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, message", [
    ({"output": 5}, r"bad.yaml: 'output' must be a path \(text: absolute, or relative to the repository\), got 5 "
                    r"\(a int\)"),
    ({"output": ["a", "b"]}, r"bad.yaml: 'output' must be a path .*got \['a', 'b'\] \(a list\)"),
    ({"notebook": 5}, r"bad.yaml: 'notebook' must be a path .*got 5 \(a int\)"),
    ({"notebook": "notebooks"}, r"bad.yaml: notebook notebooks is a folder, not a notebook file: 'notebook' names one "
                                r"\.ipynb file"),
    ({"output": "FILE"}, r"bad.yaml: output .*taken.txt is a file, not a folder"),
])
def test_a_spec_with_a_bad_path_names_the_key_the_value_and_what_is_allowed(tmp_path, change, message):
    """A non-text output or notebook path, a folder given as the notebook, a file given as the output
    folder: each a SweepSpecError naming the spec file, the key and the value (not a raw TypeError,
    nor 'does not exist' for a folder), before anything is written."""
    (tmp_path / "taken.txt").write_text("x")
    change = {k: str(tmp_path / "taken.txt") if v == "FILE" else v for k, v in change.items()}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "notebook": PROBE, "points": [{"x": 1}], **change}))
    with pytest.raises(sweep.SweepSpecError, match=message):
        sweep.SweepSpec.load(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "taken.txt"]


def test_the_runner_says_a_folder_is_not_a_notebook(tmp_path):
    with pytest.raises(runner.NotebookError, match=f"notebook {re.escape(str(tmp_path))} is a folder, not a notebook "
                                                   "file: give one .ipynb file"):
        runner.run_notebook(tmp_path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_binary_spec_is_an_error_naming_it(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(sweep.SweepSpecError, match=r"sweep spec .*bin.yaml is not a text file \(byte \d+ is not "
                                                    r"UTF-8\)"):
        sweep.SweepSpec.load(path)


def test_a_list_of_grids_concatenates_their_products_and_keys_follow_the_code(tmp_path):
    path = tmp_path / "grids.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "notebook": PROBE, "parameters": {"fail_on": -1},
                                    "grid": [{"x": [1, 2], "y": ["a", "b"]}, {"x": [3]}], "points": [{"x": 4}]}))
    spec = sweep.SweepSpec.load(path)
    assert [(p["x"], p.get("y")) for p in spec.points] == [(1, "a"), (1, "b"), (2, "a"), (2, "b"), (3, None), (4, None)]
    assert all(p["fail_on"] == -1 for p in spec.points)
    keys = [spec.point_key(p) for p in spec.points]
    assert len(set(keys)) == len(keys)
    # editing the notebook's code gives every point a new key (prose edits would not)
    nb = json.loads((ROOT / PROBE).read_text())
    code_cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", []))
    code_cell["source"] = "".join(code_cell["source"]) + "\n# changed"
    (tmp_path / "probe.ipynb").write_text(json.dumps(nb))
    spec.notebook = tmp_path / "probe.ipynb"
    assert not set(spec.point_key(p) for p in spec.points) & set(keys)


def test_runner_writes_executed_copy_and_records(tmp_path):
    found = runner.run_notebook(ROOT / PROBE, tmp_path, {"x": 5}, profile="smoke", progress=False)
    assert found["square"] == 25
    assert records.read_records(tmp_path / "records.json") == found
    assert records.read_records(tmp_path / "sweep_probe.ipynb") == found
    with pytest.raises(runner.NotebookFailed, match="bad point 5"):
        runner.run_notebook(ROOT / PROBE, tmp_path / "f", {"x": 5, "fail_on": 5}, profile="smoke", progress=False)
    assert json.loads((tmp_path / "f" / "records.json").read_text())["status"] == "failed"
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        runner.run_notebook(ROOT / PROBE, tmp_path, profile="fast")


def test_records_round_trip_plain_json():
    frame = pd.DataFrame({"a": [1, 2], "b": [0.5, float("nan")]})
    assert records.to_json(frame) == [{"a": 1, "b": 0.5}, {"a": 2, "b": None}]
    assert records.to_json({"x": (1, 2)}) == {"x": [1, 2]}
    with pytest.raises(TypeError, match="cannot record a value of type object"):
        records.to_json(object())


def test_unreadable_specs_and_notebooks_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(sweep.SweepSpecError, match="is not valid YAML"):
        sweep.SweepSpec.load(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(sweep.SweepSpecError, match="a sweep spec is a mapping"):
        sweep.SweepSpec.load(bad)
    (tmp_path / "nb.ipynb").write_text("not json")
    bad.write_text(yaml.safe_dump({"name": "b", "notebook": str(tmp_path / "nb.ipynb"), "points": [{"x": 1}]}))
    with pytest.raises(sweep.SweepSpecError, match="is not a readable notebook"):
        sweep.SweepSpec.load(bad)
    (tmp_path / "nb.ipynb").write_text(json.dumps({"cells": [], "metadata": {}}))
    with pytest.raises(sweep.SweepSpecError, match="has no cell tagged 'parameters'"):
        sweep.SweepSpec.load(bad)
    bad.write_text(yaml.safe_dump({"name": "b", "notebook": PROBE, "profile": "huge", "points": [{"x": 1}]}))
    assert sweep.main([str(bad)]) == 2  # a clear message on stderr, no traceback


def test_a_point_listed_twice_runs_once(tmp_path):
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": 1}, {"x": 2}, {"x": 1}]))
    assert spec.duplicates == 1 and [p["x"] for p in spec.points] == [1, 2]
    results = sweep.run_sweep(spec, progress=False)
    assert list(results.x) == [1, 2] and runs(tmp_path, 1) == 1


def test_records_may_not_take_the_name_of_a_parameter_or_a_column(tmp_path):
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": 1, "extra_record": "delay"}, {"x": 2, "extra_record": "status"},
                                                       {"x": 3}]))
    results = sweep.run_sweep(spec, progress=False)
    assert list(results.status) == ["failed", "failed", "ok"]
    assert "record name(s) ['delay'] are parameters" in results.error[0]
    assert "record name 'status' is not allowed" in results.error[1]
    assert "delay" not in results and list(results.x) == [1, 2, 3]  # no record took a parameter's column


def test_points_computed_with_other_package_code_are_stale_and_rerun(tmp_path, monkeypatch):
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": 1}, {"x": 2}]))
    first = sweep.run_sweep(spec, progress=False)
    assert first.code_hash.nunique() == 1 and not first.stale.any()
    monkeypatch.setattr(sweep, "package_digest", lambda modules=None: "0" * 16)  # the package changed since
    kept = sweep.run_sweep(spec, progress=False, keep_stale=True)
    assert [runs(tmp_path, x) for x in (1, 2)] == [1, 1] and kept.stale.all()
    monkeypatch.setattr(runner, "package_digest", lambda modules=None: "0" * 16)
    rerun = sweep.run_sweep(spec, progress=False)
    assert [runs(tmp_path, x) for x in (1, 2)] == [2, 2] and not rerun.stale.any()


def test_a_damaged_point_file_is_named_and_rerun(tmp_path):
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": 1}, {"x": 2}]))
    results = sweep.run_sweep(spec, progress=False)
    damaged = tmp_path / "out" / "points" / f"{results.key[0]}.json"
    damaged.write_text(damaged.read_text()[:20])
    gathered = sweep.gather(spec)
    assert gathered.status[0] == "unreadable" and str(damaged) in gathered.error[0]
    assert (sweep.run_sweep(spec, progress=False).status == "ok").all() and runs(tmp_path, 1) == 2


def test_arrays_are_recorded_as_lists():
    import numpy as np
    import torch
    assert records.to_json(np.arange(3)) == [0, 1, 2]
    assert records.to_json(torch.tensor([[1.5], [2.0]])) == [[1.5], [2.0]]
    assert records.to_json(np.float32(0.5)) == 0.5


def test_a_reduced_run_refreshes_its_cells_and_keeps_the_committed_others(tmp_path):
    path = write_spec(tmp_path, [{"x": x} for x in (1, 2, 3)])
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "reduced": {"points": [{"x": 2}]}}))
    spec = sweep.SweepSpec.load(path)
    assert [p["x"] for p in spec.reduced] == [2]
    full = sweep.run_sweep(spec, progress=False)
    import shutil
    shutil.rmtree(tmp_path / "out" / "points")  # a fresh clone: the committed tables, no point files
    again = sweep.run_sweep(spec, progress=False, reduced=True)
    assert [runs(tmp_path, x) for x in (1, 2, 3)] == [1, 2, 1]  # only the reduced point ran again
    assert (again.status == "ok").all() and list(again.square) == [1, 4, 9] and list(again.key) == list(full.key)
    assert len(pd.read_csv(tmp_path / "out" / "rows.csv")) == 6  # table records of the kept points too
    path.write_text(yaml.safe_dump({**raw, "reduced": {"points": []}}))  # none of it in make run
    none = sweep.run_sweep(sweep.SweepSpec.load(path), progress=False, reduced=True)
    assert [runs(tmp_path, x) for x in (1, 2, 3)] == [1, 2, 1] and list(none.square) == [1, 4, 9]
    path.write_text(yaml.safe_dump({**raw, "reduced": {"points": [{"x": 7}]}}))
    with pytest.raises(sweep.SweepSpecError, match="reduced point .* is not a point of the complete grid"):
        sweep.SweepSpec.load(path)


def test_a_resumed_grid_skips_the_committed_ok_rows_of_another_clone(tmp_path):
    """A grid finished over two sittings: the second clone has the committed results.csv and no
    point files; with resume it computes only the points the first did not, and the table has all."""
    import shutil
    path = write_spec(tmp_path, [{"x": x} for x in (1, 2, 3)])
    spec = sweep.SweepSpec.load(path)
    partial = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**partial, "points": [{"x": 1}, {"x": 3}]}))
    sweep.run_sweep(sweep.SweepSpec.load(path), progress=False)  # the first sitting: two of the three points
    path.write_text(yaml.safe_dump(partial))
    shutil.rmtree(tmp_path / "out" / "points")  # another clone: the committed table only
    results = sweep.run_sweep(spec, progress=False, resume=True)
    assert [runs(tmp_path, x) for x in (1, 2, 3)] == [1, 1, 1]
    assert (results.status == "ok").all() and list(results.square) == [1, 4, 9]
    shutil.rmtree(tmp_path / "out" / "points")
    sweep.run_sweep(spec, progress=False)  # without resume every point runs again
    assert [runs(tmp_path, x) for x in (1, 2, 3)] == [2, 2, 2]


def test_the_code_hash_covers_the_modules_a_point_loaded(tmp_path, monkeypatch):
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": 1}]))
    sweep.run_sweep(spec, progress=False)
    record = json.loads(next((tmp_path / "out" / "points").glob("*.json")).read_text())
    assert "tcomp_utils.records" in record["code_modules"]  # the probe notebook imports it ...
    assert "tcomp_utils.methods.gptq" not in record["code_modules"]  # ... and no method
    assert record["code_hash"] == runner.package_digest(record["code_modules"])
    executed = json.loads(next((tmp_path / "out" / "points").glob("*.ipynb")).read_text())
    assert not any("tcomp-loaded-modules" in c["metadata"].get("tags", []) for c in executed["cells"])

    package = tmp_path / "pkg"
    (package / "methods").mkdir(parents=True)
    for name in ("__init__.py", "records.py", "budget.py", "methods/__init__.py", "methods/gptq.py"):
        (package / name).write_text("x = 1\n")
    monkeypatch.setattr(runner, "PACKAGE_ROOT", package)
    loaded = ["tcomp_utils", "tcomp_utils.records", "tcomp_utils.methods", "tcomp_utils.methods.gptq"]
    digest, whole = runner.package_digest(loaded), runner.package_digest()
    (package / "budget.py").write_text("x = 2\n")  # not loaded: the point is not stale
    assert runner.package_digest(loaded) == digest and runner.package_digest() != whole
    (package / "methods" / "gptq.py").write_text("x = 3\n")
    assert runner.package_digest(loaded) != digest
    (package / "methods" / "gptq.py").unlink()  # a loaded module that is gone: stale too
    assert runner.package_digest(loaded) not in (digest, runner.package_digest(loaded[:-1]))


def test_pending_points_run_longest_first_and_new_ones_before_them(tmp_path, monkeypatch):
    # a long point started last would keep the other workers idle at the end of a sweep
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": x} for x in (1, 2, 3)]))
    order, seconds = [], {1: 5.0, 2: 50.0, 3: 0.5, 4: 1.0}

    def fake(notebook, parameters, cwd=None, progress=False, status_file=None, label=""):
        order.append(parameters["x"])
        return {"status": "failed", "error": "again", "records": {}, "elapsed_s": seconds[parameters["x"]],
                "executed": notebook, "code_hash": None, "code_modules": None}

    monkeypatch.setattr(sweep, "execute_point", fake)
    sweep.run_sweep(spec, progress=False)
    assert order == [1, 2, 3]  # never run: the spec's order
    order.clear()
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": x} for x in (1, 2, 3, 4)]))
    sweep.run_sweep(spec, progress=False)
    assert order == [4, 2, 1, 3]


def test_longest_first_wall_packs_points_as_a_sweep_runs_them():
    # longest first on the first free worker: 7 | 5+2 | 4+3 -> the last worker ends at 7
    assert sweep.longest_first_wall([2, 3, 4, 5, 7], workers=3) == 7
    assert sweep.longest_first_wall([2, 3, 4, 5, 7], workers=1) == 21  # one worker: the sum
    assert sweep.longest_first_wall([10, 1, 1], workers=2) == 10  # never below the longest point
    assert sweep.longest_first_wall([], workers=2) == 0
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        sweep.longest_first_wall([1.0], workers=0)


def test_each_run_that_computes_points_is_logged_with_its_wall_time(tmp_path):
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": x} for x in (1, 2, 3)], fail_on=3))
    sweep.run_sweep(spec, progress=False)
    sweep.run_sweep(spec, progress=False)  # only the failed point runs again
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": x} for x in (1, 2, 3, 4)], fail_on=3))
    sweep.run_sweep(spec, progress=False)  # the new point and the failed one
    sweep.run_sweep(spec, progress=False, keep_stale=True)
    log = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert list(log.points_run) == [3, 1, 2, 1] and list(log.points_total) == [3, 3, 4, 4] and list(log.ok) == [2, 0, 1, 0]
    assert (log.workers == 0).all() and not log.reduced.any()
    assert (log.wall_s >= log.cell_s - 0.1).all() and (log.cell_s > 0).all()  # serial: the cells add up to less
    assert pd.to_datetime(log.started).is_monotonic_increasing


def test_every_point_runs_on_the_pinned_thread_count_locally_and_on_dask(tmp_path, monkeypatch):
    for v in sweep.THREAD_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    assert sweep.point_env() == dict.fromkeys(sweep.THREAD_VARIABLES, str(sweep.POINT_THREADS))
    spec_path = write_spec(tmp_path, [{"x": 2}], record_threads=True)
    for where, workers in (("local", 0), ("dask", 1)):
        got = sweep.run_sweep(sweep.SweepSpec.load(spec_path, output=tmp_path / where), workers=workers, progress=False)
        assert list(got.omp_threads) == [str(sweep.POINT_THREADS)], where
        assert list(got.malloc_trim) == ["unset"], where  # not Dask's memory trimming (slows training steps)
    assert "OMP_NUM_THREADS" not in os.environ  # this process's environment is restored
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # an explicit choice is passed on
    assert sweep.point_env()["OMP_NUM_THREADS"] == "3"


def test_a_reduced_run_keeps_committed_rows_whose_keys_no_longer_match(tmp_path):
    """The make-run failure: the notebook's code changed since the committed rows were computed
    (one comment), so none of their keys is a point's key any more. A reduced run recomputes its
    point and keeps every other committed row, marked stale with the reason; nothing is lost."""
    import shutil
    notebook = tmp_path / "probe.ipynb"
    shutil.copy(ROOT / PROBE, notebook)
    path = write_spec(tmp_path, [{"x": x} for x in (1, 2, 3)])
    raw = {**yaml.safe_load(path.read_text()), "notebook": str(notebook), "reduced": {"points": [{"x": 2}]}}
    path.write_text(yaml.safe_dump(raw))
    committed = sweep.run_sweep(sweep.SweepSpec.load(path), progress=False)
    shutil.rmtree(tmp_path / "out" / "points")  # a fresh clone: the committed tables only
    nb = json.loads(notebook.read_text())
    nb["cells"][1]["source"] = ["# a comment added since\n"] + nb["cells"][1]["source"]
    notebook.write_text(json.dumps(nb))
    spec = sweep.SweepSpec.load(path)
    assert not set(spec.point_key(p) for p in spec.points) & set(committed.key)
    again = sweep.run_sweep(spec, progress=False, reduced=True)
    assert [runs(tmp_path, x) for x in (1, 2, 3)] == [1, 2, 1]
    assert list(again.status) == ["ok"] * 3 and list(again.square) == [1, 4, 9] and list(again.x) == [1, 2, 3]
    assert list(again.stale) == [True, False, True]
    assert list(again.key[[0, 2]]) == list(committed.key[[0, 2]])  # kept under the key it was computed with
    for i in (0, 2):
        assert again.stale_reason[i] == sweep.NOTEBOOK_CHANGED.format(old=committed.key[i], new=spec.point_key({**spec.parameters, "x": i + 1}))
    assert len(pd.read_csv(tmp_path / "out" / "rows.csv")) == 6  # their table records too
    assert "3/3 points ok (2 computed with an earlier version of the notebook)" in sweep.summary_line(again, spec)
    # and a spec that drops a point keeps its committed row, retired, out of the figures
    path.write_text(yaml.safe_dump({**raw, "points": [{"x": 1}, {"x": 2}], "reduced": {"points": []}}))
    fewer = sweep.run_sweep(sweep.SweepSpec.load(path), progress=False, reduced=True)
    assert list(fewer.status) == ["ok", "ok", "retired"] and list(fewer.square) == [1, 4, 9]
    assert fewer.stale_reason[2] == sweep.NOT_IN_SPEC
