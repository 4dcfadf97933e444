"""make run's reproduction check: recomputed points against their committed rows."""
import shutil

import pandas as pd
import yaml

from tcomp_utils import reproduce, sweep
from test_sweep import runs, write_spec


def test_compare_rows_skips_measured_times_and_names_what_differs():
    committed = {"key": "a", "accuracy": 0.9, "latency_ms": 3.0, "train_seconds": 10.0, "elapsed_s": 5.0,
                 "bytes": 1000, "note": "text", "gone": 1.0, "bits": float("nan"), "x": 2}
    now = {"key": "b", "accuracy": 0.9004, "latency_ms": 9.0, "train_seconds": 99.0, "elapsed_s": 1.0,
           "bytes": 1000, "note": "other", "new": 2.0, "bits": float("nan"), "x": 3}
    n, largest, column, diffs = reproduce.compare_rows(committed, now, rtol=1e-3, parameters=("x",))
    assert n == 2 and column == "accuracy" and abs(largest - 0.0004 / 0.9) < 1e-12
    # a value the new row lacks is a difference; a column the committed table never had is a record added since
    assert diffs == [("gone", 1.0, None)]
    _, _, _, diffs = reproduce.compare_rows({**committed, "new": float("nan")}, now, rtol=1e-3, parameters=("x",))
    assert [d[0] for d in diffs] == ["gone", "new"]  # NaN in a column the table has: a difference
    _, _, _, diffs = reproduce.compare_rows(committed, now, rtol=1e-5, ignore=["gone", "new"])
    assert diffs == [("accuracy", 0.9, 0.9004), ("x", 2.0, 3.0)]


def test_make_run_recomputes_the_reduced_points_and_says_whether_they_reproduced(tmp_path, capsys):
    path = write_spec(tmp_path, [{"x": x} for x in (1, 2, 3)])
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "reduced": {"points": [{"x": 1}, {"x": 3}]}}))
    spec = sweep.SweepSpec.load(path)
    sweep.run_sweep(spec, progress=False)  # the committed table
    shutil.rmtree(tmp_path / "out" / "points")  # a fresh clone
    outcomes = reproduce.reproduce([spec], progress=False)
    assert [runs(tmp_path, x) for x in (1, 2, 3)] == [2, 1, 2]
    assert [o.status for o in outcomes] == ["reproduced", "reproduced"] and all(o.compared == 1 for o in outcomes)
    assert reproduce.report(outcomes).splitlines()[-1] == "reproduced 2 of 2 points within tolerance, in 1 tables"
    # a committed number that the code no longer gives is named with both values
    shutil.rmtree(tmp_path / "out" / "points")
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    table.loc[table.x == 3, "square"] = 10
    table.to_csv(tmp_path / "out" / "results.csv", index=False)
    assert reproduce.main([str(path), "--summary", str(tmp_path / "reproduction.csv"), "--no-models"]) == 1
    out = capsys.readouterr().out
    assert "probe: 1 of 2 points reproduced" in out and "square: committed 10.0, now 9.0" in out
    assert "reproduced 1 of 2 points within tolerance" in out
    written = pd.read_csv(tmp_path / "reproduction.csv")
    assert list(written.status) == ["reproduced", "differs"] and written.differences[1] == "square: 10.0 -> 9.0"
    assert list(pd.read_csv(tmp_path / "out" / "results.csv").square) == [1, 4, 9]  # the table holds what was computed


def test_make_run_adds_no_rows_for_points_never_computed(tmp_path):
    # a grid still being computed elsewhere: its committed table holds x=1 and x=2 only
    path = write_spec(tmp_path, [{"x": x} for x in (1, 2)])
    sweep.run_sweep(sweep.SweepSpec.load(path), progress=False)
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "points": [{"x": x} for x in (1, 2, 3, 4)], "reduced": {"points": [{"x": 1}]}}))
    spec = sweep.SweepSpec.load(path)
    shutil.rmtree(tmp_path / "out" / "points")
    assert [o.status for o in reproduce.reproduce([spec], progress=False)] == ["reproduced"]
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(table.x) == [1, 2] and (table.status == "ok").all()
    assert list(sweep.gather(spec).status) == ["ok", "ok", "missing", "missing"]  # a sweep's gather says what is left


def test_a_spec_with_a_bad_tolerance_is_refused(tmp_path):
    import pytest
    path = write_spec(tmp_path, [{"x": 1}])
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "reproduce": {"rtol": -1}}))
    with pytest.raises(sweep.SweepSpecError, match="'reproduce' must map rtol and atol"):
        sweep.SweepSpec.load(path)


def test_a_known_difference_is_reported_with_its_reason_and_passes_only_in_its_profile(tmp_path, capsys):
    path = write_spec(tmp_path, [{"x": x} for x in (1, 2)])
    raw = yaml.safe_load(path.read_text())
    why = "the committed rows' model cannot be retrained bit for bit"
    path.write_text(yaml.safe_dump({**raw, "reduced": {"points": [{"x": 2}]},
                                    "reproduce": {"known_difference": {"smoke": {"reason": why}}}}))
    sweep.run_sweep(sweep.SweepSpec.load(path), progress=False)
    shutil.rmtree(tmp_path / "out" / "points")
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    table.loc[table.x == 2, "square"] = 5
    table.to_csv(tmp_path / "out" / "results.csv", index=False)
    summary = tmp_path / "reproduction.csv"
    assert reproduce.main([str(path), "--summary", str(summary), "--no-models", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert f"'x': 2}}: square: committed 5.0, now 4.0 (known: {why})" in out and "  known difference: {" in out
    assert ("reproduced 0 of 1 points within tolerance, in 1 tables; 1 known difference(s), each stated in its "
            "spec\n") in out
    assert pd.read_csv(summary).reason[0] == why
    # the same difference where the reason is stated for another profile, or for other points, fails the run
    for known in ({"default": {"reason": why}}, {"smoke": {"reason": why, "where": {"x": 1}}}):
        path.write_text(yaml.safe_dump({**raw, "reduced": {"points": [{"x": 2}]},
                                        "reproduce": {"known_difference": known}}))
        shutil.rmtree(tmp_path / "out" / "points")
        table.to_csv(tmp_path / "out" / "results.csv", index=False)
        assert reproduce.main([str(path), "--summary", str(summary), "--no-models", "--profile", "smoke"]) == 1
        assert pd.read_csv(summary).status[0] == "differs"


def test_a_known_difference_needs_a_profile_and_a_reason(tmp_path):
    import pytest
    path = write_spec(tmp_path, [{"x": 1}])
    raw = yaml.safe_load(path.read_text())
    for bad in ({"known_difference": "why"}, {"known_difference": {"nightly": {"reason": "why"}}},
                {"known_difference": {"default": {"reason": ""}}}, {"known_difference": {"default": "why"}},
                {"known_difference": {"default": {"reason": "why", "where": ["x"]}}}):
        path.write_text(yaml.safe_dump({**raw, "reproduce": bad}))
        with pytest.raises(sweep.SweepSpecError, match="known_difference to {profile: {reason: text, where"):
            sweep.SweepSpec.load(path)
