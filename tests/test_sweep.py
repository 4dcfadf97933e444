"""Sweeps: failures recorded, resumable after a kill, same table locally and on Dask."""
import json
import os
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
    assert len(results) == 2 and (results.status == "ok").all()


def test_point_keys_are_stable_and_depend_on_parameters(tmp_path):
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": 1}]))
    assert spec.point_key({"x": 1, "a": 2}) == spec.point_key({"a": 2, "x": 1})
    assert spec.point_key({"x": 1}) != spec.point_key({"x": 2})
    assert spec.point_key({"x": 1}) != sweep.SweepSpec.load(write_spec(tmp_path, [{"x": 1}]), profile="default").point_key({"x": 1})


def test_killed_sweep_resumes_without_recomputing_or_corruption(tmp_path):
    spec_path = write_spec(tmp_path, [{"x": x} for x in range(1, 7)], delay=1.0)
    proc = subprocess.Popen([sys.executable, "-m", "tcomp_utils.sweep", str(spec_path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    points = tmp_path / "out" / "points"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(points.glob("*.json"))) < 2:
        time.sleep(0.2)
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


def test_committed_spec_gives_the_same_table_locally_and_on_dask(tmp_path):
    spec_path = ROOT / "papermill_runs" / "budget_axis.yaml"
    assert len(sweep.SweepSpec.load(spec_path).points) >= 4
    local = sweep.run_sweep(sweep.SweepSpec.load(spec_path, "smoke", tmp_path / "local"), progress=False)
    on_dask = sweep.run_sweep(sweep.SweepSpec.load(spec_path, "smoke", tmp_path / "dask"), workers=2, progress=False)
    assert (local.status == "ok").all(), local.error.tolist()
    pd.testing.assert_frame_equal(local, on_dask)
    by_role = [pd.read_csv(tmp_path / where / "by_role.csv") for where in ("local", "dask")]
    pd.testing.assert_frame_equal(*by_role)


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
    ({"notebook": "notebooks/nope.ipynb"}, "notebook notebooks/nope.ipynb does not exist"),
    ({"points": [], "grid": {"x": []}}, "non-empty list"),
    ({"points": None}, "no points"),
    ({"profile": "huge"}, "unknown profile 'huge'"),
    ({"parameters": {"profile": "smoke"}}, "top-level 'profile' key"),
])
def test_bad_specs_are_clear_errors(tmp_path, change, message):
    spec = {"name": "bad", "notebook": PROBE, "points": [{"x": 1}], **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises((sweep.SweepSpecError, ValueError), match=message):
        sweep.SweepSpec.load(path)
    assert not (tmp_path / "out").exists()


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
