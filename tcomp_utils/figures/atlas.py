"""The atlas of every family on one footprint axis: the three figures (bytes, MACs, latency) and
the README table of its verdicts."""
from __future__ import annotations

from typing import Callable

import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
import seaborn as sns

from ..majority import majority_accuracy
from .markdown import _markdown
from .no_skill import no_skill_line


ATLAS_QUESTIONS = {"bytes": "Which family keeps the most quality per stored byte?",
                   "macs": "Which family keeps the most quality per MAC?",
                   "latency": "Which compressed models are really faster on a CPU (one thread)?"}


def atlas_figure(axis: str) -> Callable[[pd.DataFrame], tuple[plt.Figure, pd.DataFrame]]:
    """The atlas on one footprint ``axis`` (bytes, macs or latency, as a fraction of the dense
    model's): quality against it, one panel per model, one colour per family, the Pareto front
    dashed; returns the figure and the front's points."""
    from .. import atlas

    def draw(results: pd.DataFrame):
        pts = atlas.points(results)
        fr = atlas.front(pts, axis)
        models = list(pts.model.unique())
        families = sorted(pts.family.unique(), key=lambda f: (f != "dense", " → " in f, f))
        palette = dict(zip(families, sns.color_palette("tab10" if len(families) <= 10 else "tab20", len(families))))
        fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.4), squeeze=False)
        x = f"{axis}_frac"
        for i, (ax, model) in enumerate(zip(axes[0], models)):
            g, f = pts[pts.model == model], fr[fr.model == model]
            metric = g.quality_metric.iloc[0]
            sns.scatterplot(data=g, x=x, y="quality", hue="family", hue_order=families, palette=palette, s=45, ax=ax,
                            legend=i == len(models) - 1)
            ax.plot(f[x], f.quality, color="0.25", lw=1, ls="--", zorder=0, label="Pareto front")
            ax.set(xscale="log", xlabel=atlas.AXES[axis][2], ylabel=metric, title=model)
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(plain)
            if atlas.lower_is_better(metric):
                ax.set_yscale("log")
            elif "accuracy" in metric:  # a classifier's panel
                no_skill_line(ax, majority_accuracy())
            dead = g[g.no_skill]
            if len(dead):  # learnt nothing: marked, never on the front
                ax.scatter(dead[x], dead.quality, marker="x", color="0.2", s=40, zorder=3,
                           label=f"at or below no skill ({len(dead)})")
            ax.axvline(1, color="0.6", lw=0.8)
        if len(families) > 1:
            axes[0][-1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
        fig.suptitle(ATLAS_QUESTIONS[axis], y=1.02)
        fig.tight_layout()
        return fig, fr[["model", "family", "pipeline", x, "quality", "quality_loss"]].round(4)
    return draw


ATLAS_BUDGETS = (("bytes", (2, 4, 8), "fewer stored bytes"), ("macs", (1.5, 2), "fewer MACs per token"))


def _atlas_readme(results: pd.DataFrame) -> str:
    """The atlas's verdicts: for each model, the best point with at least 2, 4, 8 times fewer bytes
    and 1.5, 2 times fewer MACs (its pipeline, quality, loss against dense, and what it measured)."""
    from .. import atlas

    pts = atlas.points(results)
    rows = []
    for axis, factors, label in ATLAS_BUDGETS:
        won = atlas.winners(pts, axis, factors)
        for r in won.itertuples():
            hit = isinstance(r.pipeline, str)
            p = pts[(pts.model == r.model) & (pts.pipeline == r.pipeline)].iloc[0] if hit else None
            loss = "" if not hit else (f"{r.quality_loss:+.1f} %" if atlas.lower_is_better(p.quality_metric)
                                       else f"{-r.quality_loss + 0.0:+.2f} pts")  # + 0.0: no "-0.00"
            rows.append({"model": r.model, "budget": f"≥ {r.factor:g}× {label}",
                         "best point": f"`{r.pipeline}`" if hit else "none reaches it",
                         "family": r.family if hit else "", "quality": f"{r.quality:.2f}" if hit else "",
                         "vs dense": loss, "bytes": f"{p.bytes_frac:.2f}" if hit else "",
                         "MACs": f"{p.macs_frac:.2f}" if hit else "", "latency": f"{p.latency_frac:.2f}" if hit else ""})
    return _markdown(pd.DataFrame(rows), numeric=5)
