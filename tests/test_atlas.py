"""The atlas's reading of its results: fractions of dense, fronts and winners on hand-made points."""
import pandas as pd
import pytest

from tcomp_utils import atlas


def _results():
    rows = []
    def add(model, pipeline, family, quality, nbytes, macs, latency, metric):
        rows.append(dict(model=model, pipeline=pipeline, family=family, quality=quality, quality_metric=metric,
                         bytes=nbytes, dense_bytes=100.0, macs_per_token=macs, dense_macs_per_token=10.0,
                         latency_ms=latency, dense_latency_ms=5.0, peak_mb=50.0, dense_peak_mb=100.0, status="ok"))
    acc, ppl = "test accuracy (%)", "perplexity (novel)"
    add("enc", "dense", "dense", 90.0, 100, 10, 5.0, acc)
    add("enc", "a", "quantization", 89.5, 25, 10, 5.0, acc)    # 4x fewer bytes, same MACs
    add("enc", "b", "quantization", 85.0, 12, 10, 5.5, acc)    # 8x+ fewer bytes
    add("enc", "c", "factorization", 89.0, 50, 5, 4.0, acc)    # dominated on bytes by a, on the front for MACs
    add("enc", "d", "factorization", 80.0, 60, 6, 4.5, acc)    # dominated everywhere by c
    add("dec", "dense", "dense", 20.0, 100, 10, 5.0, ppl)
    add("dec", "e", "quantization", 22.0, 30, 10, 5.0, ppl)
    add("dec", "f", "pruning", 30.0, 45, 4.5, 3.0, ppl)
    rows.append(dict(rows[-1], pipeline="broken", status="error"))
    return pd.DataFrame(rows)


def test_points_are_read_against_their_models_dense_point():
    pts = atlas.points(_results()).set_index("pipeline")
    assert "broken" not in pts.index
    assert pts.loc["a", "bytes_frac"] == 0.25 and pts.loc["c", "macs_frac"] == 0.5 and pts.loc["f", "latency_frac"] == 0.6
    assert pts.loc["a", "quality_loss"] == pytest.approx(0.5)     # accuracy: points lost
    assert pts.loc["e", "quality_loss"] == pytest.approx(10.0)    # perplexity: % increase
    assert pts.loc["dense", "quality_loss"].tolist() == [0.0, 0.0]


def test_fronts_keep_only_the_undominated_points_of_each_model():
    pts = atlas.points(_results())
    by_bytes = atlas.front(pts, "bytes")
    assert by_bytes[by_bytes.model == "enc"].pipeline.tolist() == ["b", "a", "dense"]
    assert by_bytes[by_bytes.model == "dec"].pipeline.tolist() == ["e", "dense"]  # f: more bytes and worse
    by_macs = atlas.front(pts, "macs")
    assert by_macs[by_macs.model == "enc"].pipeline.tolist() == ["c", "dense"]
    assert by_macs[by_macs.model == "dec"].pipeline.tolist() == ["f", "dense"]
    with pytest.raises(KeyError, match="unknown axis 'flops'"):
        atlas.front(pts, "flops")


def test_winners_take_the_best_quality_within_each_budget_and_leave_unreached_ones_empty():
    won = atlas.winners(atlas.points(_results()), "bytes", [2, 4, 8, 20]).set_index(["model", "factor"])
    assert won.loc[("enc", 2), "pipeline"] == "a" and won.loc[("enc", 4), "pipeline"] == "a"
    assert won.loc[("enc", 8), "pipeline"] == "b"
    assert pd.isna(won.loc[("enc", 20), "pipeline"])
    assert won.loc[("dec", 2), "pipeline"] == "e"  # lower perplexity wins


def test_a_point_at_or_below_no_skill_is_never_on_a_front_nor_a_winner():
    """An encoder point at the majority class's accuracy with the fewest bytes and MACs of all would
    head both fronts and win every budget; it learnt nothing, so it does neither (and is flagged)."""
    from tcomp_utils.majority import majority_accuracy

    results = _results()
    dead = dict(results.iloc[1], pipeline="collapsed", quality=majority_accuracy(), bytes=2.0, macs_per_token=1.0)
    pts = atlas.points(pd.concat([results, pd.DataFrame([dead])], ignore_index=True))
    assert pts.set_index("pipeline").no_skill.to_dict() == {p: p == "collapsed" for p in pts.pipeline}
    for axis in ("bytes", "macs"):
        assert "collapsed" not in set(atlas.front(pts, axis).pipeline)
    won = atlas.winners(pts, "bytes", [8, 20]).set_index(["model", "factor"])
    assert won.loc[("enc", 8), "pipeline"] == "b" and pd.isna(won.loc[("enc", 20), "pipeline"])


def test_the_atlas_figures_and_readme_table_render_from_the_points():
    from tcomp_utils import figures

    results = _results()
    for axis in ("bytes", "macs", "latency"):
        fig, front = figures.atlas_figure(axis)(results)
        assert len(fig.axes[0].collections) >= 1 and set(front.model) == {"enc", "dec"}
    table = figures._atlas_readme(results).splitlines()
    enc8 = next(line for line in table if line.startswith("| enc") and "≥ 8× fewer stored bytes" in line)
    assert "`b`" in enc8 and "-5.00 pts" in enc8
    dec2 = next(line for line in table if line.startswith("| dec") and "≥ 2× fewer MACs" in line)
    assert "`f`" in dec2 and "+50.0 %" in dec2
    assert any("none reaches it" in line for line in table)


def test_every_committed_atlas_point_was_recounted_from_its_saved_model_and_agrees():
    """The atlas's matched budgets hold: each point's parameters, stored bytes and MACs were counted
    again by the probe on the saved model, reloaded in a fresh process, and equal the counts of the
    model compressed in the notebook; every point carries its family, settings, footprint and quality."""
    from pathlib import Path

    results = pd.read_csv(Path(__file__).resolve().parents[1] / "papermill_runs/atlas/results.csv")
    ok = results[results.status == "ok"]
    assert len(ok) >= 5 and set(ok.model) >= {"minilm-l6-tweets3"}
    for col in ("family", "pipeline", "params", "bytes", "macs_per_token", "latency_ms", "peak_mb", "quality",
                "compress_seconds"):
        assert ok[col].notna().all(), col
    assert (ok.saved_params == ok.params).all() and (ok.saved_bytes == ok.bytes).all()
    assert (ok.saved_macs == ok.macs_per_token).all()
    # the dense point of each model is its own reference
    dense = ok[ok.pipeline == "dense"]
    assert (dense.bytes == dense.dense_bytes).all() and (dense.macs_per_token == dense.dense_macs_per_token).all()
    # every compressed point stores less than its dense model or computes less per token
    compressed = ok[ok.pipeline != "dense"]
    assert ((compressed.bytes < compressed.dense_bytes) | (compressed.macs_per_token < compressed.dense_macs_per_token)).all()


def test_paired_differences_and_ties_on_the_same_test_examples():
    """A three-class model's points, paired on the same 300 hand-made labels: ``x`` misses 90 of them more
    than dense (far below), ``y`` differs from ``x`` on 2 examples (not distinguishable), and the byte
    winner's ties are exactly the points the paired interval cannot separate from it."""
    import numpy as np

    from tcomp_utils.scores import encode_predictions

    labels = np.tile([0, 1, 2], 100)
    wrong = lambda n: np.where(np.arange(300) < n, (labels + 1) % 3, labels)  # noqa: E731: the first n missed
    rows = []
    for pipeline, preds, nbytes in (("dense", labels, 100), ("x", wrong(90), 20), ("y", wrong(92), 20),
                                    ("x + y", wrong(300), 10)):
        rows.append(dict(model="m3", pipeline=pipeline, family=pipeline, quality=0.0, quality_metric="test macro-F1 (%)",
                         bytes=nbytes, dense_bytes=100.0, macs_per_token=10, dense_macs_per_token=10.0, latency_ms=1.0,
                         dense_latency_ms=1.0, peak_mb=1.0, dense_peak_mb=1.0, status="ok",
                         test_predictions=encode_predictions(preds)))
    from tcomp_utils import scores
    results = pd.DataFrame(rows)
    results["quality"] = [100 * scores.macro_f1(labels, scores.decode_predictions(p)) for p in results.test_predictions]
    pts = atlas.points(results)
    pairs = atlas.paired(pts, {"m3": labels}, n_resamples=300).set_index(["kind", "a", "b"])
    x = pairs.loc[("vs dense", "x", "dense")]
    assert x.difference == pytest.approx(-30.0, abs=0.5) and x.hi < 0 and x.verdict == "below"
    assert pairs.loc[("combination vs part", "x + y", "x")].verdict == "below"  # scores 0: everything missed
    assert "x + y" not in set(atlas.front(pts, "bytes").pipeline)  # below no skill (1/3 macro-F1)
    won = atlas.winners(pts, "bytes", [4])
    assert won.pipeline.tolist() == ["x"]
    assert atlas.ties(pts, won, "bytes", {"m3": labels}, n_resamples=300) == [["y"]]
    assert atlas.paired(pts, {}).empty  # no labels, no pairs
