"""`make figures` rebuilds the committed figures from the committed results, with no model."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tcomp_utils import figures, sweep_spec

ROOT = Path(__file__).resolve().parents[1]


def test_figures_rebuild_from_committed_results_without_models(tmp_path):
    # an empty cache: any attempt to load a model or asset would fail
    env = {"PATH": "/usr/bin:/bin", "TCOMP_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1",
           "MPLCONFIGDIR": str(tmp_path / "mpl")}
    readme = tmp_path / "RESULTS.md"
    readme.write_text((ROOT / "RESULTS.md").read_text())
    code = ("import sys; from tcomp_utils import figures; figures.main(['--out', sys.argv[1], '--readme', sys.argv[2]]); "
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not heavy, f'figures imported {heavy}'")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "figs"), str(readme)], cwd=ROOT, env=env, check=True)
    assert readme.read_text() == (ROOT / "RESULTS.md").read_text()  # the committed RESULTS.md is in step
    for name in figures.FIGURES:
        png, csv = tmp_path / "figs" / f"{name}.png", tmp_path / "figs" / f"{name}.csv"
        assert png.stat().st_size > 10_000
        committed = ROOT / "figures" / f"{name}.csv"
        assert committed.is_file(), f"figures/{name}.csv is not committed"
        pd.testing.assert_frame_equal(pd.read_csv(csv), pd.read_csv(committed))
        assert (ROOT / "figures" / f"{name}.png").is_file()


def test_figures_with_bootstrap_bands_draw_the_same_bytes_on_every_build(tmp_path):
    # seaborn bootstraps its confidence bands: unseeded, every `make figures` would change the committed PNGs
    # (the T5's composable curves: the same drawing as the Transformer table's, on a sixth of the rows)
    names = ["composable_t5_curves", "student_table", "offline_compression_finetune"]
    first = figures.build(names, tmp_path / "a")
    second = figures.build(names, tmp_path / "b")
    pngs = [(a, b) for a, b in zip(first, second) if a.suffix == ".png"]
    assert len(pngs) == len(names) and all(a.read_bytes() == b.read_bytes() for a, b in pngs)


def _axes_without_no_skill(fig) -> list[str]:
    """The accuracy or F1 axes of ``fig`` that lack the no-skill line."""
    from tcomp_utils.figures.no_skill import NO_SKILL_GID
    missing = []
    for ax in fig.axes:
        label = f"{ax.get_xlabel()} {ax.get_ylabel()}"
        if re.search(r"accuracy|\bF1\b", label, re.IGNORECASE) and not any(
                line.get_gid() == NO_SKILL_GID for line in ax.lines):
            missing.append(label.strip() or ax.get_title())
    return missing


def test_every_accuracy_or_f1_axis_draws_the_no_skill_line():
    import matplotlib.pyplot as plt
    from tcomp_utils.figures.no_skill import no_skill_line
    from tcomp_utils.majority import majority_accuracy

    fig, (bare, marked) = plt.subplots(1, 2)  # the check itself: it finds a bare accuracy axis
    bare.set_ylabel("test accuracy (%)")
    marked.set_xlabel("macro F1")
    no_skill_line(marked, majority_accuracy("tweets3"), axis="x")
    assert _axes_without_no_skill(fig) == ["test accuracy (%)"]
    plt.close(fig)
    checked = 0
    for name, f in figures.FIGURES.items():
        try:
            fig, _ = f.draw(pd.read_csv(ROOT / f.source))
        except figures.NothingToDraw:
            continue
        assert not _axes_without_no_skill(fig), (name, _axes_without_no_skill(fig))
        checked += sum(bool(re.search("accuracy|F1", f"{ax.get_xlabel()} {ax.get_ylabel()}", re.I)) for ax in fig.axes)
        plt.close(fig)
    assert checked >= 10  # offline (2), GPTQ (2), structured pruning, students (2), atlas (3)


def test_every_figure_names_an_existing_sweep():
    for fig in figures.FIGURES.values():
        assert (ROOT / fig.sweep).is_file(), fig.sweep
        assert fig.source.startswith(f"papermill_runs/{Path(fig.sweep).stem}/")


def test_unknown_figure_and_missing_results(tmp_path):
    with pytest.raises(KeyError, match="unknown figure"):
        figures.build(["nope"], tmp_path)
    with pytest.raises(FileNotFoundError, match="run their sweeps first"):
        figures.build(None, tmp_path, root=tmp_path)


def test_the_readme_tables_are_those_of_the_committed_results(tmp_path, monkeypatch):
    from tcomp_utils.figures import readme
    tables = readme.readme_tables()  # rendered once (their paired bootstraps take most of a minute), then reused
    monkeypatch.setattr(readme, "readme_tables", lambda root=None: tables)
    assert figures.update_readme(ROOT / "RESULTS.md", check=True) == [], "run `make figures` and commit RESULTS.md"
    stale = tmp_path / "RESULTS.md"
    text = (ROOT / "RESULTS.md").read_text()
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


def test_three_class_offline_table_reads_macro_f1_with_values_only_pruning_and_fine_tuned_columns():
    from tcomp_utils.figures.no_skill import NO_SKILL_GID
    from tcomp_utils.majority import chance_macro_f1
    rows = []
    for method, count in (("svd", True), ("pruning", True), ("pruning", False)):
        for k, ratio in enumerate((3, 10)):
            f1 = 0.8 - 0.1 * k - (0.05 if not count else 0)
            base = dict(status="ok", model_name="minilm-l6-tweets3", method=method, mode="separated", roles="ffn",
                        ratio=ratio, count_indices=count, baseline_test_macro_f1=0.82, baseline_test_accuracy=0.83)
            rows.append(dict(base, finetune_steps=0, test_macro_f1=f1, test_macro_f1_lo=f1 - 0.02,
                             test_macro_f1_hi=f1 + 0.02, test_accuracy=f1 + 0.05, test_majority_share=0.4))
            rows.append(dict(base, finetune_steps=150, finetuned_test_macro_f1=f1 + 0.03))
    for ratio in (3, 10):  # at or below the no-skill macro-F1 (1/3): marked
        rows.append(dict(status="ok", model_name="minilm-l6-tweets3", method="kronecker", mode="separated",
                         roles="ffn", ratio=ratio, finetune_steps=0, test_macro_f1=0.2 + ratio / 100,
                         baseline_test_macro_f1=0.82, baseline_test_accuracy=0.83, test_majority_share=0.0))
    results = pd.DataFrame(rows)
    text = figures._offline_table(results).splitlines()
    assert [c.strip() for c in text[0].split("|")[1:-1]] == ["roles", "method", "mode", "×3", "×3 fine-tuned", "×10",
                                                             "×10 fine-tuned"]
    cells = {tuple(c.strip() for c in line.split("|")[1:4]): [c.strip() for c in line.split("|")[4:-1]]
             for line in text[2:]}
    assert cells[("ffn", "pruning", "values-only")] == ["75.0 (73.0–77.0)", "78.0", "65.0 (63.0–67.0)", "68.0"]
    assert cells[("ffn", "svd", "separated")][0] == "80.0 (78.0–82.0)"  # macro-F1, not the accuracy; a tie: no bold
    assert cells[("ffn", "kronecker", "separated")] == ["23.0‡", "", "30.0‡", ""]
    # values-only pruning stores its indices on top of the ratio: never bold as the best at equal budget
    lifted = results.assign(test_macro_f1=results.test_macro_f1 + 0.3 * (results.count_indices == False))  # noqa: E712
    lifted_cells = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in figures._offline_table(lifted).splitlines()}
    assert "105.0" in lifted_cells[("ffn", "pruning", "values-only")] and "**" not in lifted_cells[("ffn", "pruning", "values-only")]
    fig, _ = figures._offline_accuracy(results)
    line = next(x for x in fig.axes[0].lines if x.get_gid() == NO_SKILL_GID)
    assert line.get_ydata()[0] == pytest.approx(chance_macro_f1("tweets3"))
    fig, data = figures._offline_finetune(results)
    assert len(data) == 6 and data.offline_test_macro_f1.notna().all()


def test_offline_comparisons_are_paired_over_the_same_tweets_and_the_autoencoders_seeds(monkeypatch):
    from tcomp_utils.scores import encode_predictions, paired_interval
    labels = np.random.default_rng(0).integers(0, 3, 400)

    def preds(p_right: float, seed: int) -> np.ndarray:
        r = np.random.default_rng(seed)
        return np.where(r.random(len(labels)) < p_right, labels, (labels + 1) % 3)
    ae = [preds(0.5, s) for s in range(3)]
    cells = {("ae", "separated", True): ae, ("svd", "separated", True): [preds(0.8, 10)],
             ("pruning", "separated", True): [preds(0.7, 11)], ("pruning", "separated", False): [preds(0.7, 12)]}
    results = pd.DataFrame([dict(status="ok", model_name="minilm-l6-tweets3", method=m, mode=mode, count_indices=c,
                                 roles="ffn", ratio=3.0, finetune_steps=0, test_labels=encode_predictions(labels),
                                 test_predictions=";".join(encode_predictions(p) for p in runs))
                            for (m, mode, c), runs in cells.items()])
    d = figures.offline_paired(results).set_index("comparison")
    expected = paired_interval(labels, np.stack(ae), cells[("svd", "separated", True)][0], "macro_f1")
    assert d.loc["ae − svd", ["difference", "lo", "hi"]].tolist() == pytest.approx(
        [100 * expected.difference, 100 * expected.lo, 100 * expected.hi])
    assert d.loc["ae − svd", "verdict"] == "below"
    assert d.loc["values-only − CSR pruning", "verdict"] == "≈"  # both right 70 % of the time
    with pytest.raises(figures.NothingToDraw, match="predictions"):
        figures.offline_paired(results.drop(columns="test_predictions"))
    # after fine-tuning: one run per cell, against each other and against the offline twin's first seed
    tuned = {("ae", "separated"): preds(0.9, 20), ("svd", "separated"): preds(0.6, 21)}
    results = pd.concat([results, pd.DataFrame([
        dict(status="ok", model_name="minilm-l6-tweets3", method=m, mode=mode, count_indices=True, roles="ffn",
             ratio=3.0, finetune_steps=150, test_labels=encode_predictions(labels),
             finetuned_test_predictions=encode_predictions(p)) for (m, mode), p in tuned.items()])])
    d = figures.offline_paired(results)
    after = d[d.stage == "fine-tuned"].set_index(["comparison", "a"])
    assert set(after.index) == {("ae − svd", "ae separated"), ("fine-tuned − offline", "ae separated"),
                                ("fine-tuned − offline", "svd separated")}
    assert after.loc[("ae − svd", "ae separated"), "verdict"] == "above"
    expected = paired_interval(labels, tuned[("ae", "separated")], ae[0], "macro_f1")
    assert after.loc[("fine-tuned − offline", "ae separated"), "difference"] == pytest.approx(100 * expected.difference)
    dense = preds(0.95, 30)  # the uncompressed model's predictions: every fine-tuned cell against them too
    with_dense = figures.offline_paired(results, dense).set_index(["comparison", "a"])
    assert with_dense.loc[("fine-tuned − dense", "svd separated"), ["b", "verdict"]].tolist() == ["dense", "below"]
    assert with_dense.loc[("fine-tuned − dense", "ae separated"), "difference"] == pytest.approx(
        100 * paired_interval(labels, tuned[("ae", "separated")], dense, "macro_f1").difference)
    from tcomp_utils import majority
    from tcomp_utils.figures.offline import _offline_paired_readme
    monkeypatch.setattr(majority, "committed_dense_predictions", lambda task: dense)  # the README's reference
    table = _offline_paired_readme(results)
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()[2:]]
    assert ["fine-tuned", "ffn", "×3", "ae − svd"] in [r[:4] for r in rows]
    assert next(r for r in rows if r[:4] == ["fine-tuned", "ffn", "×3", "ae − svd"])[-1] == "a above b"
    assert ["fine-tuned", "ffn", "×3", "fine-tuned − dense"] in [r[:4] for r in rows]


def test_qat_cells_label_the_seed_rows_protocols_and_stored_bits():
    """Seed 003's rows (binary, b-bit of the seed's grid with its sign stored apart, RTN/GPTQ on
    theirs) per protocol, and the figure with one panel per target."""
    rows = [dict(protocol="fp32", quantizer="seed", bits=8, target="attention", ptq="signmag", weight_bits=32,
                 bytes_after=4e6, test_bleu=5.0, test_chrf=30.0),
            dict(protocol="fp32_finetune", quantizer="seed", bits=8, target="attention", ptq="signmag", weight_bits=32,
                 bytes_after=4e6, test_bleu=5.5, test_chrf=31.0)]
    for protocol in ("scratch", "finetune", "ptq"):
        rows += [dict(protocol=protocol, quantizer="binary", bits=8, target="linear", ptq="signmag", weight_bits=1,
                      bytes_after=1e6, test_bleu=0.5, test_chrf=10.0),
                 dict(protocol=protocol, quantizer="binary_scaled", bits=8, target="attention", ptq="signmag",
                      weight_bits=1, bytes_after=3e6, test_bleu=3.0, test_chrf=25.0),
                 dict(protocol=protocol, quantizer="seed", bits=4, target="attention+embeddings", ptq="signmag",
                      weight_bits=5, bytes_after=2e6, test_bleu=4.5, test_chrf=29.0)]
    rows.append(dict(protocol="ptq", quantizer="seed", bits=4, target="linear", ptq="gptq", weight_bits=4,
                     bytes_after=1.5e6, test_bleu=4.0, test_chrf=28.0))
    results = pd.DataFrame(rows).assign(status="ok")
    cells = figures._qat_cells(pd.concat([results, results.iloc[:1].assign(status="failed")]))
    assert len(cells) == len(results)
    label = {(r.row, r.target, r.protocol): r.stored_bits for r in cells.itertuples()}
    assert label[("fp32", "-", "fp32")] == label[("fp32", "-", "fp32 fine-tuning")] == 32
    assert label[("binary", "all linear", "QAT from scratch")] == 1
    assert label[("binary, row-scaled", "attention linear", "QAT fine-tuning")] == 1
    assert label[("4-bit", "attention + embeddings", "PTQ (seed's grid)")] == 5  # 4 magnitude bits + the sign
    assert label[("4-bit", "all linear", "PTQ GPTQ")] == 4
    fig, data = figures._qat_table(results)
    assert [ax.get_title() for ax in fig.axes] == list(figures.QAT_TARGETS.values())
    assert len(data) == len(results)
    table = figures._qat_readme(results).splitlines()
    binary = next(line for line in table if "| all linear" in line and "| binary " in line)
    assert [c.strip() for c in binary.split("|")[4:-1]] == ["1", "1.00", "0.50", "0.50", "0.50"]  # a tie: no bold
    gptq = next(line for line in table if "| GPTQ" in line)
    assert [c.strip() for c in gptq.split("|")[3:-1]] == ["4-bit", "4", "1.50", "", "", "4.00"]
    assert table[-3:] == ["fp32: BLEU 5.00, chrF 30.0, 4.00 MB.", "", "fp32 fine-tuning: BLEU 5.50, chrF 31.0, 4.00 MB."]


def test_composable_table_and_figures_show_both_arms_and_the_time_to_the_baseline():
    summary = pd.DataFrame([
        dict(configuration="a25-l30", attention="0.25", linear="0.3", units=30, shared_units=30, param_fraction=0.81,
             MB=3.1, val_bleu_before_baseline=1.0, val_bleu_after_baseline=3.0, test_bleu_baseline=3.2,
             train_seconds_baseline=120.0, val_bleu_before_composed=2.5, val_bleu_after_composed=3.4,
             test_bleu_composed=3.5, train_seconds_composed=118.0, steps_to_baseline=50, seconds_to_baseline=31.0,
             dense_test_bleu=3.9),
        dict(configuration="a50-l70", attention="0.5", linear="0.7", units=30, shared_units=30, param_fraction=0.52,
             MB=2.0, val_bleu_before_baseline=0.1, val_bleu_after_baseline=2.0, test_bleu_baseline=2.1,
             train_seconds_baseline=110.0, val_bleu_before_composed=0.4, val_bleu_after_composed=1.8,
             test_bleu_composed=1.9, train_seconds_composed=111.0, steps_to_baseline=float("nan"),
             seconds_to_baseline=float("nan"), dense_test_bleu=3.9)])
    table = figures._composable_readme(summary).splitlines()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in table[2:]]
    assert cells[0] == ["a25-l30", "0.25", "0.3", "30 (30)", "81.0 %", "3.10", "1.00 / 2.50", "3.20 / 3.50", "50",
                        "120 / 31"]
    assert cells[1][-2:] == ["never", "110 / 111"]  # never reached: the set counts all its seconds
    fig, data = figures.composable_bleu(summary)
    assert [ax.get_title() for ax in fig.axes][:2] == ["before model-level fine-tuning (validation)",
                                                      "after model-level fine-tuning (test)"]
    assert len(data) == 4 and set(data.arm) == set(figures.COMPOSABLE_ARMS.values())
    parts = pd.DataFrame([{"pipeline": "without composition", "part": "model-level (baselines)", "seconds": 230.0},
                          {"pipeline": "with composition", "part": "module-level (each unit once)", "seconds": 40.0}])
    fig, data = figures.composable_time(parts)
    assert data.seconds.sum() == 270.0


def test_composable_verdicts_pair_the_arms_by_seed_and_read_the_interval_over_seeds():
    from scipy import stats
    gaps = {"a25-l30": [0.5, 0.6, 0.7], "a50-l70": [-0.4, 0.5, -0.2]}  # composed - baseline, seeds 0..2
    summary = pd.DataFrame([dict(configuration=c, attention="0.25", linear="0.3", units=30, shared_units=30,
                                 param_fraction=0.9, MB=3.0, seed=seed, val_bleu_before_baseline=1.0,
                                 val_bleu_before_composed=2.0, test_bleu_baseline=10.0 + seed,
                                 test_bleu_composed=10.0 + seed + gap, train_seconds_baseline=100.0,
                                 train_seconds_composed=90.0, steps_to_baseline=200 if seed else float("nan"),
                                 seconds_to_baseline=80.0 if seed else float("nan"))
                            for c, g in gaps.items() for seed, gap in enumerate(g)])
    d = figures.composable_gaps(summary).set_index("configuration")
    half = stats.t.ppf(0.975, 2) * 0.1 / 3 ** 0.5
    assert d.loc["a25-l30", ["difference", "lo", "hi"]].tolist() == pytest.approx([0.6, 0.6 - half, 0.6 + half])
    assert d.loc["a25-l30", "verdict"] == "above" and d.loc["a50-l70", "verdict"] == "≈"
    assert d.loc["all 2", "difference"] == pytest.approx((0.05 + 0.55 + 0.25) / 3) and d.loc["all 2", "seeds"] == 3  # per-seed means
    row = next(line for line in figures._composable_readme(summary).splitlines() if line.startswith("| a25-l30"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[6:] == ["1.00 / 2.00", "11.00 / 11.60", f"+0.60 [+{0.6 - half:.2f}, +{0.6 + half:.2f}] above",
                         "never, 200, 200", "100 / 83"]  # 83: (90 + 80 + 80) / 3
    results = pd.DataFrame([dict(seed=s, status=st, without_s=w, with_s=w - v, saved_s=v, matched=6,
                                 n_configurations=6)
                            for s, st, w, v in ((0, "ok", 1000.0, 100.0), (1, "failed", float("nan"), float("nan")),
                                                (2, "ok", 1200.0, 140.0), (3, "ok", 1100.0, 120.0))])
    t = figures.composable_saving(results)
    assert t.seed.tolist() == ["0", "2", "3", "mean [95 % interval]"]  # the failed seed left out
    last = t.iloc[-1]
    assert last["saved (s)"] == pytest.approx(120.0) and last.verdict == "above"
    assert last.hi - last.lo == pytest.approx(2 * stats.t.ppf(0.975, 2) * 20 / 3 ** 0.5)
    assert "verdict" not in figures.composable_saving(results.iloc[:1])  # one seed: no interval to read


def test_student_table_takes_each_modes_best_beta_on_validation():
    rows = [dict(student="teacher", objective="none", beta=100.0, val_accuracy=0.90, test_accuracy=0.90,
                 param_fraction=1.0, mac_fraction=1.0, latency_ms=10.0, teacher_latency_ms=10.0,
                 teacher_test_accuracy=0.90)]
    for student, base in (("self_svd", 0.60), ("layers3", 0.70)):
        common = dict(student=student, param_fraction=0.8, mac_fraction=0.5)  # latency: the untrained cell's only
        rows += [dict(objective="none", beta=100.0, val_accuracy=base, test_accuracy=base, latency_ms=6.0,
                      teacher_latency_ms=10.0, teacher_test_accuracy=0.90, **common),
                 dict(objective="ce", beta=100.0, val_accuracy=base + 0.1, test_accuracy=base + 0.1, **common),
                 dict(objective="kd", beta=100.0, val_accuracy=base + 0.12, test_accuracy=base + 0.12, **common)]
        for beta, val, test in ((10.0, 0.85, 0.80), (100.0, 0.88, 0.84), (500.0, 0.88, 0.86), (1000.0, 0.70, 0.89)):
            rows.append(dict(objective="pkd", beta=beta, val_accuracy=val, test_accuracy=test, **common))
    results = pd.DataFrame(rows).assign(status="ok")
    cells = figures.student_cells(results).set_index("student")
    assert cells.loc["self_svd", "best β"] == 100.0  # a validation tie goes to the smaller beta
    assert cells.loc["self_svd", "PKD (best β)"] == pytest.approx(84.0)  # not the test-best 1000
    assert cells.loc["self_svd", "recovered"] == pytest.approx((84 - 60) / (90 - 60))
    assert cells.loc["layers3", "latency"] == pytest.approx(0.6)
    table = figures._student_readme(results).splitlines()
    svd = next(line for line in table if line.startswith("| self_svd"))
    assert [c.strip() for c in svd.split("|")[2:7]] == ["60.00", "70.00", "72.00", "**84.00**", "100"]
    assert table[-1] == "Teacher (`minilm-l6` fine-tuned on tweets): 90.00 %."
    fig, data = figures._student_table(results)
    assert len(data) == 2


def test_three_class_student_table_averages_seeds_and_pairs_pkd_with_kd():
    from tcomp_utils.figures.no_skill import NO_SKILL_GID
    from tcomp_utils.majority import chance_macro_f1
    from tcomp_utils.scores import decode_predictions, encode_predictions, macro_f1, paired_interval
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)

    def noisy(p_right: float, seed: int) -> np.ndarray:  # predictions right with probability p_right
        r = np.random.default_rng(seed)
        return np.where(r.random(len(labels)) < p_right, labels, (labels + 1) % 3)
    teacher = noisy(0.9, 99)
    rows = [dict(student="teacher", objective="none", test_predictions=encode_predictions(teacher),
                 test_macro_f1=macro_f1(labels, teacher), val_macro_f1=0.9, param_fraction=1.0, mac_fraction=1.0,
                 latency_ms=10.0, teacher_latency_ms=10.0)]
    common = dict(student="layers3", param_fraction=0.7, mac_fraction=0.5)
    rows.append(dict(objective="none", seed=0, val_macro_f1=0.3, test_macro_f1=0.3, latency_ms=5.0,
                     teacher_latency_ms=10.0, teacher_test_macro_f1=macro_f1(labels, teacher),
                     test_labels=encode_predictions(labels), **common))
    for seed in range(3):
        kd = noisy(0.6, seed)
        rows.append(dict(objective="kd", seed=seed, val_macro_f1=0.6, test_macro_f1=macro_f1(labels, kd),
                         test_predictions=encode_predictions(kd), **common))
        for beta, p_right, val in ((10.0, 0.8, 0.70 + 0.01 * seed), (100.0, 0.5, 0.72 - 0.02 * seed)):
            pk = noisy(p_right, 10 * seed + int(beta))
            rows.append(dict(objective="pkd", seed=seed, beta=beta, val_macro_f1=val, test_macro_f1=macro_f1(labels, pk),
                             test_predictions=encode_predictions(pk), **common))
    rows.append(dict(objective="none", student="self_falcon", fit="sgd", val_macro_f1=0.5, test_macro_f1=0.5,
                     param_fraction=0.9, mac_fraction=0.9, latency_ms=9.0, teacher_latency_ms=10.0))
    results = pd.DataFrame(rows).assign(status="ok")
    cells = figures.student_cells(results).set_index("student")
    assert cells.attrs["headline"] == "macro_f1" and list(cells.index) == ["layers3", "self_falcon (SGD fit)"]
    assert cells.loc["layers3", "best β"] == 10.0  # mean validation 0.71 against 0.70
    pkd10 = results[(results.objective == "pkd") & (results.beta == 10.0)].sort_values("seed")
    assert cells.loc["layers3", "PKD (best β)"] == pytest.approx(100 * pkd10.test_macro_f1.mean())
    assert cells.loc["layers3", "seeds"] == 3
    v = figures.student_verdicts(results).set_index("comparison")
    kd = results[results.objective == "kd"].sort_values("seed")
    stack = lambda d: np.stack([decode_predictions(p) for p in d.test_predictions])  # noqa: E731
    expected = paired_interval(labels, stack(pkd10), stack(kd), "macro_f1", paired_runs=True)
    assert v.loc["PKD − KD", ["difference", "lo", "hi"]].tolist() == pytest.approx(
        [100 * expected.difference, 100 * expected.lo, 100 * expected.hi])
    assert v.loc["PKD − KD", "verdict"] == "above"
    assert "KD − CE" not in v.index  # no CE cell
    assert v.loc["best trained (pkd) − teacher", "verdict"] == "below"
    table = figures._student_readme(results).splitlines()
    assert "PKD − KD [95 %]" in table[0] and "seeds" in table[0]
    assert table[-1].endswith("% macro-F1.")
    grid = figures.student_beta_grid(results).set_index(["objective", "beta"], drop=False)
    assert grid.objective.tolist() == ["kd", "pkd", "pkd"] and grid.seeds.tolist() == [3, 3, 3]
    row10 = grid[(grid.objective == "pkd") & (grid.beta == 10.0)].iloc[0]
    assert [row10.difference, row10.lo, row10.hi] == pytest.approx(list(v.loc["PKD − KD", ["difference", "lo", "hi"]]))
    assert row10.test_sd == pytest.approx(100 * pkd10.test_macro_f1.std(ddof=1))
    assert grid[grid.beta == 100.0].difference.iloc[0] < 0  # right half the time against KD's 60 %
    betas = figures._student_betas_readme(results).splitlines()
    assert len(betas) == 2 + 3 and betas[2].split("|")[2].strip() == "KD" and "above" in betas[3]
    fig, _ = figures._student_table(results)
    for ax in fig.axes:  # the no-skill line at the three-class majority's macro-F1
        line = next(x for x in ax.lines if x.get_gid() == NO_SKILL_GID)
        assert line.get_ydata()[0] == pytest.approx(chance_macro_f1("tweets3"))


def test_a_beta_grid_searched_at_one_seed_chooses_on_that_seed_and_pairs_each_beta_with_kd_at_its_seeds():
    """The seed's grid searched at seed 0 and the chosen beta run at seeds 1 and 2: the choice is read on
    seed 0 (where every beta ran), not on a mean over unequal seed sets; each beta meets KD at its own seeds."""
    from tcomp_utils.scores import decode_predictions, encode_predictions, macro_f1, paired_interval
    labels = np.random.default_rng(1).integers(0, 3, 200)

    def noisy(p_right: float, seed: int) -> np.ndarray:
        r = np.random.default_rng(seed)
        return np.where(r.random(len(labels)) < p_right, labels, (labels + 1) % 3)
    common = dict(student="layers3", param_fraction=0.7, mac_fraction=0.5)
    rows = [dict(objective="none", val_macro_f1=0.3, test_macro_f1=0.3, latency_ms=5.0, teacher_latency_ms=10.0,
                 teacher_test_macro_f1=0.9, test_labels=encode_predictions(labels), **common)]

    def cell(objective, seed, val, p_right, beta=float("nan")):
        pred = noisy(p_right, 100 * seed + int(np.nan_to_num(beta)))
        return dict(objective=objective, seed=seed, beta=beta, val_macro_f1=val, test_macro_f1=macro_f1(labels, pred),
                    test_predictions=encode_predictions(pred), **common)
    rows += [cell("kd", s, 0.70, 0.6) for s in range(3)] + [cell("ce", s, 0.65, 0.5) for s in range(3)]
    rows += [cell("pkd", 0, 0.71, 0.7, 10.0), cell("pkd", 0, 0.74, 0.7, 100.0)]  # seed 0 chooses 100
    rows += [cell("pkd", s, 0.60, 0.7, 100.0) for s in (1, 2)]  # lower at seeds 1, 2: the choice stays
    results = pd.DataFrame(rows).assign(status="ok")
    cells = figures.student_cells(results).set_index("student")
    assert cells.loc["layers3", "best β"] == 100.0 and cells.loc["layers3", "seeds"] == 3
    grid = figures.student_beta_grid(results).set_index(["objective", "beta"], drop=False)
    assert grid.seeds.tolist() == [3, 1, 3]
    disjoint = results[~((results.objective == "pkd") & (results.seed == 0) & (results.beta == 100.0))]
    with pytest.raises(ValueError, match=r"no common seed \(\{10.0: \[0\], 100.0: \[1, 2\]\}\)"):
        figures.student_cells(disjoint)
    kd0 = results[(results.objective == "kd") & (results.seed == 0)]
    pk10 = results[results.beta == 10.0]
    expected = paired_interval(labels, decode_predictions(pk10.test_predictions.iloc[0])[None],
                               decode_predictions(kd0.test_predictions.iloc[0])[None], "macro_f1", paired_runs=True)
    row10 = grid[grid.beta == 10.0].iloc[0]
    assert [row10.difference, row10.lo, row10.hi] == pytest.approx(
        [100 * expected.difference, 100 * expected.lo, 100 * expected.hi])
    stack = lambda o: np.stack([decode_predictions(p) for p in results[results.objective == o].sort_values("seed")  # noqa: E731
                                .test_predictions])
    kd_ce = paired_interval(labels, stack("kd"), stack("ce"), "macro_f1", paired_runs=True)
    v = figures.student_verdicts(results).set_index("comparison")
    assert v.loc["KD − CE", ["difference", "lo", "hi"]].tolist() == pytest.approx(
        [100 * kd_ce.difference, 100 * kd_ce.lo, 100 * kd_ce.hi]) and v.loc["KD − CE", "verdict"] == "above"


def test_composable_curves_read_kind_and_rate_from_the_unit_names():
    unit_log = pd.DataFrame({"unit": ["encoder.0.ffn_in@l10.3"] * 3 + ["decoder.1.cross_attn@heads0.25"] * 3,
                             "step": [1, 2, 3] * 2, "loss": [2.0, 1.0, 0.5, 4.0, 4.0, 2.0]})
    fig, data = figures.composable_units(unit_log)
    assert fig.axes[0].get_title() == "Module-level fine-tuning of the 2 units (median, IQR)"
    got = data.set_index(["units", "step"]).median_relative_mse
    assert got.to_dict() == {("L1 at 0.3", 1): 1.0, ("L1 at 0.3", 2): 0.5, ("L1 at 0.3", 3): 0.25,
                             ("heads at 0.25", 1): 1.0, ("heads at 0.25", 2): 1.0, ("heads at 0.25", 3): 0.5}
    model_log = pd.DataFrame([dict(configuration="a25-l30", arm=arm, kind=kind, step=step, loss=1.0 / step,
                                   val_bleu=2.0 if kind == "eval" else float("nan"))
                              for arm in figures.COMPOSABLE_ARMS for kind in ("train", "eval") for step in (1, 2)])
    _, data = figures.composable_curves(model_log)
    assert set(data.curve) == {"training loss (moving mean)", "validation BLEU"}
    assert data[data.curve == "training loss (moving mean)"].value.tolist() == [1.0, 0.75] * 2  # mean of the steps so far


def _results_with_missing_cells(root: Path, folder: str, keep) -> Path:
    from tcomp_utils import sweep

    """A copy of ``folder``'s tables under ``root`` in which only the ``ok`` rows that ``keep(i)`` picks
    (by their position among the ok rows) stay computed: the others become ``missing`` with their
    records blanked, as a sweep gathers cells it has not computed; derived tables lose their rows."""
    src, dst = ROOT / folder, root / folder
    dst.mkdir(parents=True)
    results = pd.read_csv(src / "results.csv")
    ok = results.index[results.status == "ok"]
    gone = [i for n, i in enumerate(ok) if not keep(n)]
    names = sweep.SweepSpec.load(ROOT / "papermill_runs" / f"{Path(folder).name}.yaml").parameter_names
    params = {"key", "profile", "status", "error"} | set(names)
    results = results.astype({c: object for c in results if c not in params})
    results.loc[gone, [c for c in results if c not in params]] = float("nan")
    results.loc[gone, "status"] = "missing"
    if not any(keep(n) for n in range(len(ok))):  # nothing computed: the record columns do not exist at all
        results = results[[c for c in results if c in params]]
    results.to_csv(dst / "results.csv", index=False)
    gone_keys = set(pd.read_csv(src / "results.csv").key[gone])
    for table in src.glob("*.csv"):
        if table.name in ("results.csv", "runs.csv"):
            continue
        frame = pd.read_csv(table)
        frame = frame[~frame.key.isin(gone_keys)] if "key" in frame else frame.iloc[[i for i in range(len(frame)) if keep(i)]]
        if len(frame):
            frame.to_csv(dst / table.name, index=False)
    return dst


@pytest.mark.parametrize("name", sorted(figures.FIGURES))
def test_a_figure_draws_from_a_table_with_missing_cells(name, tmp_path):
    """`make figures` after a sweep that computed only some cells: the figure draws what is there."""
    fig = figures.FIGURES[name]
    _results_with_missing_cells(tmp_path, str(Path(fig.source).parent), keep=lambda n: n % 3 != 1)
    written = figures.build([name], out=tmp_path / "figs", root=tmp_path)
    assert [p.name for p in written] == [f"{name}.png", f"{name}.csv"]
    assert len(pd.read_csv(tmp_path / "figs" / f"{name}.csv")) > 0


@pytest.mark.parametrize("name", sorted(figures.FIGURES))
def test_a_figure_of_a_table_with_no_computed_cell_is_skipped_and_says_so(name, tmp_path, capsys):
    fig = figures.FIGURES[name]
    _results_with_missing_cells(tmp_path, str(Path(fig.source).parent), keep=lambda n: False)
    assert figures.build([name], out=tmp_path / "figs", root=tmp_path) == []
    out = capsys.readouterr().out
    assert f"{name}: skipped" in out and fig.sweep in out


def test_a_readme_tables_footer_counts_the_specs_cells_not_only_the_rows(tmp_path):
    # a table holding only its computed rows (make run writes no row for a point never computed)
    (tmp_path / "papermill_runs" / "qat_table").mkdir(parents=True)
    rows = pd.read_csv(ROOT / "papermill_runs" / "qat_table" / "results.csv").head(5)
    rows.to_csv(tmp_path / "papermill_runs" / "qat_table" / "results.csv", index=False)
    footer = figures._provenance(figures.README_TABLES["qat_table"], tmp_path)
    assert "5 of 5 cells ok" in footer  # no spec beside the table: its rows
    (tmp_path / "papermill_runs" / "qat_table.yaml").write_text((ROOT / "papermill_runs" / "qat_table.yaml").read_text())
    points = len(sweep_spec.SweepSpec.load(tmp_path / "papermill_runs" / "qat_table.yaml").points)
    assert points > 5 and f"5 of {points} cells ok" in figures._provenance(figures.README_TABLES["qat_table"], tmp_path)


@pytest.mark.parametrize("name", sorted(figures.README_TABLES))
def test_a_readme_table_renders_from_a_table_with_missing_cells(name, tmp_path):
    table = figures.README_TABLES[name]
    _results_with_missing_cells(tmp_path, str(Path(table.source).parent), keep=lambda n: n % 3 != 1)
    text = figures.readme_tables(tmp_path, [name])[name]
    assert "|" in text and "cells ok" in text
    _results_with_missing_cells(tmp_path / "none", str(Path(table.source).parent), keep=lambda n: False)
    assert "No cell of this table has been computed" in figures.readme_tables(tmp_path / "none", [name])[name]


def _offline_rows(variants) -> pd.DataFrame:
    """Seed 000's offline cells (no fine-tuning) for each (method, mode, roles) of ``variants``."""
    return pd.DataFrame([dict(status="ok", method=method, mode=mode, roles=roles, ratio=ratio, finetune_steps=None,
                              test_accuracy=0.9 - 0.05 * k, baseline_test_accuracy=0.9)
                         for method, mode, roles in variants for k, ratio in enumerate((2, 10))])


def test_offline_figure_gives_each_method_one_colour_and_each_mode_one_line_style():
    import matplotlib.colors
    import matplotlib.pyplot as plt
    from tcomp_utils.figures.offline import VARIANT_GID

    variants = [(m, mode, roles) for roles in ("qkv", "ffn") for m in ("svd", "ae", "pruning", "tucker")
                for mode in ("separated", "concatenated")] + [("tucker", "qkv", "qkv"), ("asvd", "separated", "ffn")]
    fig, _ = figures._offline_accuracy(_offline_rows(variants))
    lines = {tuple(line.get_gid().split(":")[1:]): line for ax in fig.axes for line in ax.lines
             if (line.get_gid() or "").startswith(VARIANT_GID)}
    assert set(lines) == {(roles, m, mode) for m, mode, roles in variants}  # one line per variant and panel
    colour = {}
    style = {}
    for (_, method, mode), line in lines.items():
        colour.setdefault(method, set()).add(matplotlib.colors.to_hex(line.get_color()))
        style.setdefault(mode, set()).add((line.get_linestyle(), line.get_marker()))
    assert all(len(c) == 1 for c in colour.values()), colour  # one colour per method, in every panel and mode
    assert len({c.pop() for c in colour.values()}) == len(colour)  # and no two methods share one
    assert all(len(s) == 1 for s in style.values()), style  # one line style and marker per mode
    assert len({s.pop() for s in style.values()}) == len(style)
    plt.close(fig)
    with pytest.raises(ValueError, match=r"'nope'.*allowed: svd"):
        figures._offline_accuracy(_offline_rows([("nope", "separated", "ffn")]))


def test_atlas_perplexity_panel_clips_off_scale_points_at_the_edge_and_labels_them():
    import matplotlib.pyplot as plt
    from tcomp_utils import atlas
    from tcomp_utils.figures.atlas import CLIPPED_GID, PERPLEXITY_CLIP

    results = pd.read_csv(ROOT / "papermill_runs/atlas/results.csv")
    pts = atlas.points(results)
    for axis in figures.ATLAS_QUESTIONS:
        fig, _ = figures.atlas_figure(axis)(results)
        panels = 0
        for ax in fig.axes:
            g = pts[pts.model == ax.get_title()]
            if g.empty or not atlas.lower_is_better(g.quality_metric.iloc[0]):
                continue
            panels += 1
            clip = PERPLEXITY_CLIP * g.quality[g.pipeline == "dense"].iloc[0]
            over = g[g.quality > clip].sort_values(f"{axis}_frac")
            assert len(over) >= 3  # the committed SVD, ASVD and pruning points are off scale
            low, high = ax.get_ylim()
            assert high == pytest.approx(clip) and low <= g.quality.min()  # the informative range fills the axis
            assert f"{PERPLEXITY_CLIP:g}× dense" in ax.get_ylabel()  # the cut is stated
            marks = [c for c in ax.collections if c.get_gid() == CLIPPED_GID]
            assert len(marks) == 1
            xy = marks[0].get_offsets()
            assert sorted(xy[:, 0]) == pytest.approx(list(over[f"{axis}_frac"]))
            assert list(xy[:, 1]) == pytest.approx([clip] * len(over))  # drawn at the clip edge
            texts = sorted((t for t in ax.texts if t.get_gid() == CLIPPED_GID), key=lambda t: t.xy[0])
            assert [t.get_text() for t in texts] == [f"{q:.2g}" for q in over.quality]  # each labelled with its value
            for c in ax.collections:  # nothing else drawn above the clip
                if c.get_gid() != CLIPPED_GID and len(c.get_offsets()):
                    assert max(c.get_offsets()[:, 1]) <= clip
        assert panels == 1
        plt.close(fig)


def _composable_summary(**dense) -> pd.DataFrame:
    return pd.DataFrame([dict(configuration=c, val_bleu_before_baseline=1.0, val_bleu_before_composed=1.5,
                              test_bleu_baseline=3.2, test_bleu_composed=3.5, **dense) for c in ("a25-l30", "a50-l70")])


def test_composable_bleu_draws_each_split_against_the_dense_models_score_on_that_split():
    import matplotlib.pyplot as plt
    from tcomp_utils.figures.composable import DENSE_GID

    def references(fig) -> list[list[float]]:
        return [[line.get_ydata()[0] for line in ax.lines if line.get_gid() == DENSE_GID] for ax in fig.axes[:2]]

    fig, _ = figures.composable_bleu(_composable_summary(dense_val_bleu=2.1, dense_test_bleu=3.9))
    assert references(fig) == [[2.1], [3.9]]  # validation against validation, test against test
    plt.close(fig)
    fig, _ = figures.composable_bleu(_composable_summary(dense_test_bleu=3.9))  # the committed summary's columns
    assert references(fig) == [[], [3.9]]  # no test score drawn as the validation reference
    assert any("not recorded" in t.get_text() for t in fig.axes[0].texts)  # and the panel says why it has none
    plt.close(fig)


def _tweets3_results() -> pd.DataFrame:
    """A hand-made three-class pruning table: 200 test tweets; at mu 0.5 every ID draw gets 20 more tweets
    right than the Fisher draw with the same calibration, at mu 0.8 both make the same predictions."""
    import numpy as np
    from tcomp_utils import metrics
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    enc = metrics.encode_predictions
    rows = [dict(status="ok", method="dense", mu=1.0, test_labels=enc(labels), test_predictions=enc(labels))]
    for mu in (0.8, 0.5):
        for draw in range(3):
            base = labels.copy()
            wrong = rng.choice(200, 60, replace=False)
            base[wrong] = (base[wrong] + 1) % 3
            fisher = base.copy()
            if mu == 0.5:
                right = np.setdiff1d(np.arange(200), wrong)[:20]
                fisher[right] = (labels[right] + 2) % 3  # 20 more errors than ID
            for method, p in (("id", base), ("fisher", fisher), ("random", (base + draw) % 3)):
                rows.append(dict(status="ok", method=method, mu=mu, calibration_seed=draw, test_predictions=enc(p)))
        rows.append(dict(status="ok", method="fisher", mu=mu, calibration_examples=2000, test_predictions=enc(base)))
        rows.append(dict(status="ok", method="magnitude", mu=mu, test_predictions=enc((labels + 1) % 3)))
    t = pd.DataFrame(rows)
    for i, r in t.iterrows():
        p = metrics.decode_predictions(r.test_predictions)
        lo, hi = metrics.bootstrap_interval(labels, p, "macro_f1", n_resamples=100)
        t.loc[i, ["test_macro_f1", "test_macro_f1_lo", "test_macro_f1_hi", "test_accuracy", "test_mcc"]] = [
            metrics.macro_f1(labels, p), lo, hi, metrics.accuracy(labels, p), metrics.mcc(labels, p)]
    return t.assign(macs_ratio=t.mu - 0.003, block_macs_ratio=t.mu - 0.002, prune_seconds=1.5, test_majority_share=0.4)


def test_three_class_pruning_table_reads_verdicts_from_paired_intervals_and_draws_points():
    import matplotlib.pyplot as plt
    from tcomp_utils.figures import pruning

    results = _tweets3_results()
    d = pruning.paired_differences(results, "id", "fisher").set_index("mu")
    assert d.verdict[0.5] == "above" and d.difference[0.5] > 0 and d.verdict[0.8] == "≈" and d.difference[0.8] == 0
    assert (d.draws_a == 3).all() and (d.draws_b == 3).all()
    fig, data = pruning._pruning_encoder(results)
    assert not _axes_without_no_skill(fig)
    assert len(fig.axes[0].collections) == 5  # the draws of five variants as points
    assert set(data.variant) == {"dense", "id", "fisher", "fisher-2k", "magnitude", "random"}
    plt.close(fig)
    text = pruning._pruning_encoder_table(results)
    paired = next(line for line in text.splitlines() if line.startswith("| ID − Fisher (paired"))
    assert "above" in paired and "≈" in paired
    to_dense = pruning.paired_differences(results, "id", "dense").set_index("mu")
    assert list(to_dense.index) == [0.8, 0.5] and (to_dense.verdict == "below").all()  # 60 of 200 wrong, dense none
    assert (to_dense.draws_b == 1).all() and "| ID − dense (paired" in text
    assert "Fisher masks, 2,000 calibration tweets" in text and "MACs kept over the blocks only" in text
    assert f"macro-F1 {pruning.majority_macro_f1('tweets3'):.1f} %" in text
    with pytest.raises(ValueError, match="dense cell with its recorded test labels"):
        pruning.paired_differences(results[results.method != "dense"], "id", "fisher")


def test_gptq_three_class_cells_carry_their_paired_difference_to_fp32():
    """Hand-made three-class GPTQ cells on 300 test tweets: RTN 3-bit gets 45 more tweets wrong than fp32
    (below), GPTQ 8-bit predicts as fp32 (≈); the figure gets a macro-F1 panel with its no-skill line."""
    import matplotlib.pyplot as plt
    import numpy as np
    from tcomp_utils import metrics
    from tcomp_utils.figures import gptq

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    fp32 = labels.copy()
    fp32[:60] = (fp32[:60] + 1) % 3
    worse = fp32.copy()
    worse[100:145] = (labels[100:145] + 2) % 3
    enc = metrics.encode_predictions
    rows = [dict(model_name="minilm-l6-tweets3", model="minilm-l6-tweets3", method="fp32", weight_bits=32,
                 test_labels=enc(labels), test_predictions=enc(fp32))]
    for method, bits, preds in (("rtn", 3, worse), ("gptq", 8, fp32)):
        rows.append(dict(model_name="minilm-l6-tweets3", model="minilm-l6-tweets3", method=method, bits=bits,
                         weight_bits=bits, group_size=0, act_order=True if method == "gptq" else None,
                         test_predictions=enc(preds)))
    t = pd.DataFrame(rows).assign(status="ok")
    t["test_macro_f1"] = [metrics.macro_f1(labels, metrics.decode_predictions(p)) for p in t.test_predictions]
    d = gptq.paired_to_fp32(t, "minilm-l6-tweets3").set_index(["variant", "bits"])
    assert d.verdict[("RTN", 3)] == "below" and d.difference[("RTN", 3)] < -5
    assert d.verdict[("GPTQ + act-order", 8)] == "≈" and d.difference[("GPTQ + act-order", 8)] == 0
    text = gptq._gptq_readme(t)
    assert "three-class tweet model" in text and "below)" in text and "(+0.0 [+0.0, +0.0] ≈)" in text
    fig, _ = gptq._gptq_table(t)
    assert len(fig.axes) == 1 and not _axes_without_no_skill(fig)
    plt.close(fig)
    with pytest.raises(ValueError, match="fp32 cell of minilm-l6-tweets3 with its recorded test labels"):
        gptq.paired_to_fp32(t.drop(columns="test_labels"), "minilm-l6-tweets3")
