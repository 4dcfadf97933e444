"""`make figures` rebuilds the committed figures from the committed results, with no model."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tcomp_utils import figures

ROOT = Path(__file__).resolve().parents[1]


def test_figures_rebuild_from_committed_results_without_models(tmp_path):
    # an empty cache: any attempt to load a model or asset would fail
    env = {"PATH": "/usr/bin:/bin", "TCOMP_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1",
           "MPLCONFIGDIR": str(tmp_path / "mpl")}
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    code = ("import sys; from tcomp_utils import figures; figures.main(['--out', sys.argv[1], '--readme', sys.argv[2]]); "
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not heavy, f'figures imported {heavy}'")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "figs"), str(readme)], cwd=ROOT, env=env, check=True)
    assert readme.read_text() == (ROOT / "README.md").read_text()  # the committed README is in step
    for name in figures.FIGURES:
        png, csv = tmp_path / "figs" / f"{name}.png", tmp_path / "figs" / f"{name}.csv"
        assert png.stat().st_size > 10_000
        committed = ROOT / "figures" / f"{name}.csv"
        assert committed.is_file(), f"figures/{name}.csv is not committed"
        pd.testing.assert_frame_equal(pd.read_csv(csv), pd.read_csv(committed))
        assert (ROOT / "figures" / f"{name}.png").is_file()


def test_every_figure_names_an_existing_sweep():
    for fig in figures.FIGURES.values():
        assert (ROOT / fig.sweep).is_file(), fig.sweep
        assert fig.source.startswith(f"papermill_runs/{Path(fig.sweep).stem}/")


def test_unknown_figure_and_missing_results(tmp_path):
    with pytest.raises(KeyError, match="unknown figure"):
        figures.build(["nope"], tmp_path)
    with pytest.raises(FileNotFoundError, match="run their sweeps first"):
        figures.build(None, tmp_path, root=tmp_path)


def test_the_readme_tables_are_those_of_the_committed_results(tmp_path):
    assert figures.update_readme(ROOT / "README.md", check=True) == [], "run `make figures` and commit README.md"
    stale = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    stale.write_text(text.replace("| 90.25 |", "| 90.26 |", 1).replace("**90.25 %**", "**90.26 %**", 1))
    assert set(figures.update_readme(stale, check=True)) >= {"baselines"}
    assert stale.read_text() != text  # check=True writes nothing
    assert "baselines" in figures.update_readme(stale)
    assert stale.read_text() == text  # the tables rewritten from the results, the prose untouched
    stale.write_text(text.replace("<!-- table: gptq_table -->\n", ""))
    with pytest.raises(ValueError, match=r"no markers for table\(s\) \['gptq_table'\]"):
        figures.update_readme(stale)


def test_offline_table_carries_intervals_and_the_embedding_column():
    rows = []
    for method, mode, roles in [("svd", "separated", "qkv"), ("ae", "separated", "qkv"), ("ae", "separated", "embeddings"),
                                ("pruning", "concatenated", "ffn")]:
        for k, ratio in enumerate((3, 10, 25)):
            acc = 0.9 - 0.1 * k
            rows.append(dict(status="ok", method=method, mode=mode, roles=roles, ratio=ratio, finetune_steps=None,
                             test_accuracy=acc, test_accuracy_lo=acc - 0.02, test_accuracy_hi=acc + 0.01,
                             test_macro_f1=acc - 0.1, test_majority_share=0.7, baseline_test_accuracy=0.9))
    fig, table = figures._offline_accuracy(pd.DataFrame(rows))
    assert [ax.get_title() for ax in fig.axes[:3]] == ["qkv", "ffn", "embeddings"]
    row = table.set_index(["roles", "method", "mode"]).loc[("embeddings", "ae", "separated")]
    assert row["ratio_10"] == pytest.approx(0.8) and row["ratio_10_accuracy_lo"] == pytest.approx(0.78)
    assert row["ratio_25_accuracy_hi"] == pytest.approx(0.71) and row["ratio_3_majority_share"] == pytest.approx(0.7)
    assert any(c.get_paths() for ax in fig.axes for c in ax.collections)  # the interval bands are drawn
    frame = pd.DataFrame(rows)
    frame.loc[(frame.method == "svd") & (frame.ratio == 25), "test_majority_share"] = 1.0
    text = figures._offline_table(frame)
    lines = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in text.splitlines()[2:]}
    assert "**80.0** (78.0–81.0)" in lines[("embeddings", "ae", "separated")]  # alone in its group: the best
    assert "70.0 (68.0–71.0)†" in lines[("qkv", "svd", "separated")]  # a collapse onto the majority class
    assert list(lines)[0][0] == "ffn" and list(lines)[-1][0] == "embeddings"
