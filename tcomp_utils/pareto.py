"""Pareto fronts of compressed models: the points no other point beats on every axis at once
(fewer bytes, fewer MACs or less time, and better quality). The atlas draws and tables them.

Written here rather than taken from a library: it is a dozen lines of numpy, and the packages that
offer it (``paretoset``, ``pymoo``) would add a dependency for one function."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def pareto_mask(frame: pd.DataFrame, minimize: Sequence[str] = (), maximize: Sequence[str] = ()) -> pd.Series:
    """True for the rows of ``frame`` that no other row dominates: another row dominates one when it
    is at least as good on every column (lower on ``minimize``, higher on ``maximize``) and strictly
    better on one. Ties are all kept (two identical points are both on the front). Rows with a
    missing value in any of the columns are never on the front and never dominate.

    ``frame``: one row per point; returns a boolean Series on ``frame.index``."""
    columns = [*minimize, *maximize]
    if not columns:
        raise ValueError("give at least one column to minimize or maximize")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"unknown column(s) {missing}; the frame has {list(frame.columns)}")
    both = set(minimize) & set(maximize)
    if both:
        raise ValueError(f"column(s) {sorted(both)} cannot be both minimized and maximized")
    # lower is better on every axis of ``cost``
    cost = np.column_stack([frame[c].to_numpy(float) for c in minimize] + [-frame[c].to_numpy(float) for c in maximize])
    valid = ~np.isnan(cost).any(axis=1)
    front = valid.copy()
    points = cost[valid]
    for i in np.flatnonzero(valid):
        no_worse = (points <= cost[i]).all(axis=1)
        better = (points < cost[i]).any(axis=1)
        front[i] = not (no_worse & better).any()
    return pd.Series(front, index=frame.index, name="on_front")


def pareto_front(frame: pd.DataFrame, minimize: Sequence[str] = (), maximize: Sequence[str] = ()) -> pd.DataFrame:
    """The rows of ``frame`` on the front (:func:`pareto_mask`), sorted by the first axis."""
    front = frame[pareto_mask(frame, minimize, maximize)]
    return front.sort_values([*minimize, *maximize][0])
