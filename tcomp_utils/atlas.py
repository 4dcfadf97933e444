"""The atlas's results read together: each point against its model's dense one, Pareto fronts and
the winner at each budget. Quality is "higher is better" for accuracy and "lower" for perplexity.

    points = atlas.points(pd.read_csv("papermill_runs/atlas/results.csv"))
    atlas.front(points, "bytes")              # the points no other beats on bytes and quality at once
    atlas.winners(points, "bytes", [2, 4, 8]) # the best quality with at least 2x, 4x, 8x fewer bytes
    atlas.paired(points, labels)              # differences between a classifier's points on the same tweets
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .majority import committed_test_labels, no_skill_quality
from .pareto import pareto_mask
from .scores import PairedInterval, decode_predictions, paired_interval

# footprint axis -> (column, its dense column, label of the fraction of dense)
AXES = {"bytes": ("bytes", "dense_bytes", "stored bytes / dense"),
        "macs": ("macs_per_token", "dense_macs_per_token", "MACs per token / dense"),
        "latency": ("latency_ms", "dense_latency_ms", "measured latency / dense (1 thread)"),
        "memory": ("peak_mb", "dense_peak_mb", "measured peak memory / dense")}
LOWER_IS_BETTER = ("perplexity",)


def lower_is_better(metric: str) -> bool:
    """Whether a quality metric (e.g. ``"perplexity (novel)"``) improves downwards."""
    return metric.startswith(LOWER_IS_BETTER)


def points(results: pd.DataFrame) -> pd.DataFrame:
    """The ``ok`` rows with each footprint as a fraction of the dense model's (``bytes_frac``,
    ``macs_frac``, ``latency_frac``, ``memory_frac``), ``quality_loss``: how much worse than the
    dense point of the same model (accuracy points lost, or perplexity increase in %), and
    ``no_skill``: an accuracy at or below the majority class's (such a point learnt nothing: it is
    never on a front nor a winner)."""
    ok = results[results.status == "ok"].copy()
    for axis, (col, dense, _) in AXES.items():
        ok[f"{axis}_frac"] = ok[col] / ok[dense]
    dense_quality = ok[ok.pipeline == "dense"].set_index("model").quality
    base = ok.model.map(dense_quality)
    lower = ok.quality_metric.map(lower_is_better)
    ok["quality_loss"] = (ok.quality / base - 1).mul(100).where(lower, base - ok.quality)
    floor = ok.quality_metric.map(no_skill_quality)
    ok["no_skill"] = floor.notna() & (ok.quality <= floor)
    return ok.reset_index(drop=True)


def front(pts: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The Pareto front of each model on ``axis`` (a key of :data:`AXES`) against quality, sorted by
    the axis: the points above no skill that no other point of the same model beats on both."""
    if axis not in AXES:
        raise KeyError(f"unknown axis {axis!r}; allowed: {', '.join(AXES)}")
    out = []
    for _, g in pts[~pts.no_skill].groupby("model", sort=False):
        lower = lower_is_better(g.quality_metric.iloc[0])
        mask = pareto_mask(g, minimize=[f"{axis}_frac"] + (["quality"] if lower else []),
                           maximize=[] if lower else ["quality"])
        out.append(g[mask].sort_values(f"{axis}_frac"))
    return pd.concat(out, ignore_index=True) if out else pts.iloc[:0]


def winners(pts: pd.DataFrame, axis: str, factors: Sequence[float]) -> pd.DataFrame:
    """For each model and each factor k, the point of best quality among those with at least k times
    less of ``axis`` than the dense model (``axis_frac <= 1/k``); a factor no point reaches gets a
    row with no pipeline. Columns: model, factor, pipeline, family, quality, quality_loss, the fraction."""
    if axis not in AXES:
        raise KeyError(f"unknown axis {axis!r}; allowed: {', '.join(AXES)}")
    rows = []
    for model, g in pts.groupby("model", sort=False):
        lower = lower_is_better(g.quality_metric.iloc[0])
        for k in factors:
            within = g[(g[f"{axis}_frac"] <= 1 / k + 1e-9) & ~g.no_skill]
            if within.empty:
                rows.append({"model": model, "factor": k})
                continue
            best = within.loc[within.quality.idxmin() if lower else within.quality.idxmax()]
            rows.append({"model": model, "factor": k, **best[["pipeline", "family", "quality", "quality_loss",
                                                              f"{axis}_frac"]].to_dict()})
    return pd.DataFrame(rows)


# a classifier's quality metric -> (its task, whose committed test labels pair its points; the scores metric)
PAIRED_METRICS = {"test macro-F1 (%)": ("tweets3", "macro_f1")}
# same-budget rivals compared head to head: (a, b) pipeline templates and the values filled in
RIVALS = ((("structured(criterion='id', mu={})", "fisher_pruning(mu={})"), (0.9, 0.7, 0.5)),
          (("gptq(bits={}, roles=['linear', 'embeddings'])", "rtn(bits={}, roles=['linear', 'embeddings'])"), (8, 4, 3)))


def test_labels(pts: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per model whose quality metric is in :data:`PAIRED_METRICS`, its test labels: the task's committed
    ones, cut to the examples its points were scored on (a smoke point scores the first 128 or 256)."""
    out = {}
    for model, g in pts.groupby("model", sort=False):
        task = PAIRED_METRICS.get(g.quality_metric.iloc[0])
        if task is None or "test_predictions" not in g or g.test_predictions.isna().any():
            continue
        n = len(decode_predictions(g.test_predictions.iloc[0]))
        out[model] = committed_test_labels(task[0])[:n]
    return out


def paired(pts: pd.DataFrame, labels: dict[str, np.ndarray] | None = None, n_resamples: int = 1000) -> pd.DataFrame:
    """Paired bootstrap differences between points of the same classifier on the same test examples,
    in quality points (macro-F1 × 100): every point against ``dense`` (``kind`` "vs dense"), the
    :data:`RIVALS` at the same budget ("rivals"), and each combination against each of its parts
    ("combination vs part"). Columns: model, kind, a, b, difference, lo, hi, verdict (≈ when the 95 %
    interval covers 0). ``labels`` defaults to :func:`test_labels`; a model without them is left out."""
    labels = test_labels(pts) if labels is None else labels
    rows = []
    for model, y in labels.items():
        g = pts[pts.model == model].set_index("pipeline")
        metric = PAIRED_METRICS[g.quality_metric.iloc[0]][1]
        pairs = [("vs dense", p, "dense") for p in g.index if p != "dense"]
        pairs += [("rivals", a.format(v), b.format(v)) for (a, b), values in RIVALS for v in values]
        pairs += [("combination vs part", c, part.strip()) for c in g.index for part in c.split(" + ") if " + " in c]
        for kind, a, b in pairs:
            if a not in g.index or b not in g.index:
                continue
            iv: PairedInterval = paired_interval(y, decode_predictions(g.loc[a, "test_predictions"]),
                                                 decode_predictions(g.loc[b, "test_predictions"]), metric,
                                                 n_resamples=n_resamples)
            rows.append({"model": model, "kind": kind, "a": a, "b": b, "difference": 100 * iv.difference,
                         "lo": 100 * iv.lo, "hi": 100 * iv.hi, "verdict": iv.verdict})
    return pd.DataFrame(rows, columns=["model", "kind", "a", "b", "difference", "lo", "hi", "verdict"])


def ties(pts: pd.DataFrame, won: pd.DataFrame, axis: str, labels: dict[str, np.ndarray] | None = None,
         n_resamples: int = 1000) -> list[list[str]]:
    """For each row of ``won`` (:func:`winners` on ``axis``), the other points within its budget (above no
    skill) that the paired interval does not tell apart from the winner (it covers 0): their pipelines,
    best first; empty for a model without labels (:func:`test_labels`) or a budget no point reaches."""
    labels = test_labels(pts) if labels is None else labels
    out = []
    for r in won.itertuples():
        g = pts[(pts.model == r.model) & ~pts.no_skill].set_index("pipeline")
        if r.model not in labels or not isinstance(getattr(r, "pipeline", None), str):
            out.append([])
            continue
        metric = PAIRED_METRICS[g.quality_metric.iloc[0]][1]
        best = decode_predictions(g.loc[r.pipeline, "test_predictions"])
        within = g[(g[f"{axis}_frac"] <= 1 / r.factor + 1e-9) & (g.index != r.pipeline)].sort_values("quality",
                                                                                                   ascending=False)
        out.append([p for p in within.index
                    if paired_interval(labels[r.model], best, decode_predictions(within.loc[p, "test_predictions"]),
                                       metric, n_resamples=n_resamples).verdict == "≈"])
    return out
