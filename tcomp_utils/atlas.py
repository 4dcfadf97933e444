"""The atlas's results read together: each point against its model's dense one, Pareto fronts and
the winner at each budget. Quality is "higher is better" for accuracy and "lower" for perplexity.

    points = atlas.points(pd.read_csv("papermill_runs/atlas/results.csv"))
    atlas.front(points, "bytes")              # the points no other beats on bytes and quality at once
    atlas.winners(points, "bytes", [2, 4, 8]) # the best quality with at least 2x, 4x, 8x fewer bytes
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .majority import no_skill_quality
from .pareto import pareto_mask

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
