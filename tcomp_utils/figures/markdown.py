"""Markdown helpers of the README tables: a GitHub table, numbers with the best of each column in bold."""
from __future__ import annotations

import pandas as pd


def _markdown(frame: pd.DataFrame, numeric: int = 0) -> str:
    """A GitHub table; the last ``numeric`` columns right-aligned."""
    align = ["left"] * (frame.shape[1] - numeric) + ["right"] * numeric
    return frame.to_markdown(index=False, colalign=align, disable_numparse=True)


def _bold_best(values: pd.DataFrame, lower: bool, fmt: str) -> pd.DataFrame:
    """Format every number with ``fmt``; bold the unique best of each column (``lower``: smallest)."""
    out = values.map(lambda v: "" if pd.isna(v) else fmt.format(v))
    for col in values:
        shown = values[col].round(int(fmt.split(".")[1][0]) if "." in fmt else 0)
        best = shown.min() if lower else shown.max()
        if (shown == best).sum() == 1:
            out.loc[shown == best, col] = "**" + out.loc[shown == best, col] + "**"
    return out
