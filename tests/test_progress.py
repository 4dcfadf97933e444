"""Progress a person can see: bars report to a status file whether shown or not, and a sweep prints
which point runs, for how long, and its latest bar."""
import time

from tcomp_utils import progress, sweep
from test_sweep import write_spec


def test_a_disabled_bar_reports_its_count_total_and_postfix_to_the_status_file(tmp_path, monkeypatch):
    status = progress.started(tmp_path / f"job{progress.SUFFIX}", "train the model")
    monkeypatch.setenv(progress.ENV, str(status))
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    bar = progress.Bar(total=10, desc="train", disable=True)
    for _ in range(3):
        bar.update()
    bar.set_postfix(loss="2.500")
    bar.update(2)
    label, start, line = progress.read(status)
    assert label == "train the model" and abs(time.time() - start) < 60
    assert line.startswith("train: 5/10, ") and "s/it" in line and line.endswith("loss=2.500")
    bar.close()
    assert [*progress.read(status)][2].startswith("train: 5/10")
    # an iterated bar counts the items the loop has taken
    for i in progress.Bar(range(4), desc="blocks", disable=True):
        if i == 2:
            assert progress.read(status)[2].startswith("blocks: 2/4")
    assert progress.read(status)[2].startswith("blocks: 4/4")


def test_a_bar_writes_at_most_every_interval_and_nothing_without_a_status_file(tmp_path, monkeypatch):
    status = progress.started(tmp_path / f"job{progress.SUFFIX}", "job")
    monkeypatch.setenv(progress.ENV, str(status))
    monkeypatch.setattr(progress, "INTERVAL_S", 3600.0)
    bar = progress.Bar(total=5, desc="slow", disable=True)  # the first report is forced
    bar.update(4)
    assert progress.read(status)[2] == "slow: 0/5"  # throttled
    bar.close()  # the last one too
    assert progress.read(status)[2].startswith("slow: 4/5")
    monkeypatch.delenv(progress.ENV)
    before = sorted(p.name for p in tmp_path.iterdir())
    for _ in progress.Bar(range(3), disable=True):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_watch_prints_one_line_per_running_job(tmp_path):
    progress.started(tmp_path / f"a{progress.SUFFIX}", "qat_table {'bits': 2}")
    (tmp_path / f"b{progress.SUFFIX}").write_text("half a head")  # being written: skipped
    said = []
    with progress.watch([tmp_path], said.append, every=0.05):
        time.sleep(0.3)
    assert said and all(line.startswith("running qat_table {'bits': 2} · 0:0") and line.endswith("· starting")
                        for line in said)
    assert progress.lines([tmp_path / "none"]) == []


def test_a_sweep_shows_the_running_point_and_the_bar_inside_its_notebook(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress, "WATCH_S", 0.2)
    spec = sweep.SweepSpec.load(write_spec(tmp_path, [{"x": 1, "bar_steps": 4, "delay": 3.0}]))
    results = sweep.run_sweep(spec, progress=False)
    assert list(results.status) == ["ok"]
    # the kernel found its status file under the sweep's label (the spec and the point), and its disabled bar
    # wrote to it
    header, _, bar = results.status_seen[0].splitlines()
    assert header.startswith("probe {") and "'x': 1" in header and bar.startswith("probe loop: 4/4")
    out = capsys.readouterr().out
    assert f"running {header} · 0:0" in out and "· probe loop: " in out
    assert not list((tmp_path / "out" / "points").glob(f"*{progress.SUFFIX}"))  # removed when the point ended
