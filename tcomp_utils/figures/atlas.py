"""The atlas of every family on one footprint axis: the three figures (bytes, MACs, latency) and
the README table of its verdicts."""
from __future__ import annotations

import math
from typing import Callable

import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
import seaborn as sns

from ..majority import no_skill_quality
from .markdown import _markdown
from .no_skill import LABELS, no_skill_line


# A perplexity panel's axis ends at 4x its dense model's perplexity, i.e. 2 bits more cross-entropy per token
# than dense (log2 4): a model that far off has lost most of what dense predicts, and only how far matters, so
# a point beyond is drawn at that edge as an up-triangle with its value printed (gid CLIPPED_GID) and the
# panel's axis spans the points still worth comparing.
PERPLEXITY_CLIP = 4.0
CLIPPED_GID = "off-scale"

ATLAS_QUESTIONS = {"bytes": "Which family keeps the most quality per stored byte?",
                   "macs": "Which family keeps the most quality per MAC?",
                   "latency": "Which compressed models are really faster on a CPU (one thread)?"}


def atlas_figure(axis: str) -> Callable[[pd.DataFrame], tuple[plt.Figure, pd.DataFrame]]:
    """The atlas on one footprint ``axis`` (bytes, macs or latency, as a fraction of the dense
    model's): quality against it, one panel per model, one colour per family, the Pareto front
    dashed; a perplexity axis ends at :data:`PERPLEXITY_CLIP` × the dense model's, the points beyond
    drawn at that edge with their values; returns the figure and the front's points."""
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
            dense = g.quality[g.pipeline == "dense"]
            clip = PERPLEXITY_CLIP * dense.iloc[0] if atlas.lower_is_better(metric) and len(dense) else None
            over = g[g.quality > clip] if clip is not None else g.iloc[:0]  # off scale: drawn at the edge
            shown = g.drop(over.index)
            sns.scatterplot(data=shown, x=x, y="quality", hue="family", hue_order=families, palette=palette, s=45,
                            ax=ax, legend=i == len(models) - 1)
            ax.plot(f[x], f.quality.clip(upper=clip), color="0.25", lw=1, ls="--", zorder=0, label="Pareto front")
            ax.set(xscale="log", xlabel=atlas.AXES[axis][2], ylabel=metric, title=model)
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(plain)
            if atlas.lower_is_better(metric):
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(plain)
                ax.yaxis.set_minor_formatter(plain)
                if clip is not None:
                    _clip_panel(ax, shown.quality.min(), over, x, clip, palette)
            elif no_skill_quality(metric) is not None:  # a classifier's panel
                no_skill_line(ax, no_skill_quality(metric), label=LABELS["macro_f1" if "F1" in metric else "accuracy"])
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


def _clip_panel(ax: plt.Axes, low: float, over: pd.DataFrame, x: str, clip: float, palette: dict) -> None:
    """End the perplexity axis at ``clip``; draw the points ``over`` it at that edge, each an
    up-triangle in its family's colour with its perplexity printed below (staggered: neighbours may
    sit close on the x axis), and say so in the axis label."""
    ax.set_ylim(low / 1.1, clip)
    ax.grid(True, which="minor", axis="y")  # within one decade the log axis has no major tick to grid
    ax.set_ylabel(f"{ax.get_ylabel()}\n▲ off scale: above {PERPLEXITY_CLIP:g}× dense "
                  f"(+{math.log2(PERPLEXITY_CLIP):g} bits/token)")
    if over.empty:
        return
    over = over.sort_values(x)
    ax.scatter(over[x], [clip] * len(over), marker="^", s=70, c=[palette[f] for f in over.family], edgecolors="0.2",
               zorder=4, clip_on=False, gid=CLIPPED_GID, label=f"off scale (> {PERPLEXITY_CLIP:g}× dense)")
    for k, (xv, q) in enumerate(zip(over[x], over.quality)):
        ax.annotate(f"{q:.2g}", (xv, clip), xytext=(0, -8 - 9 * (k % 2)), textcoords="offset points", ha="center",
                    va="top", fontsize=7, color="0.2", gid=CLIPPED_GID)


ATLAS_BUDGETS = (("bytes", (2, 4, 8), "fewer stored bytes"), ("macs", (1.5, 2), "fewer MACs per token"))


def _atlas_readme(results: pd.DataFrame) -> str:
    """The atlas's verdicts: for each model, the best point with at least 2, 4, 8 times fewer bytes
    and 1.5, 2 times fewer MACs (its pipeline, quality, loss against dense, and what it measured). For a
    classifier the loss is a paired interval on the same test tweets, and the points of that budget it
    cannot be told apart from are counted by family."""
    from .. import atlas

    pts = atlas.points(results)
    labels = atlas.test_labels(pts)
    pairs = atlas.paired(pts, labels)
    rows = []
    for axis, factors, label in ATLAS_BUDGETS:
        won = atlas.winners(pts, axis, factors)
        for r, tied in zip(won.itertuples(), atlas.ties(pts, won, axis, labels)):
            hit = isinstance(r.pipeline, str)
            p = pts[(pts.model == r.model) & (pts.pipeline == r.pipeline)].iloc[0] if hit else None
            loss = "" if not hit else (f"{r.quality_loss:+.1f} %" if atlas.lower_is_better(p.quality_metric)
                                       else f"{-r.quality_loss + 0.0:+.2f} pts")  # + 0.0: no "-0.00"
            d = pairs[(pairs.model == r.model) & (pairs.a == r.pipeline) & (pairs.b == "dense")] if hit else pairs[:0]
            if len(d):
                d = d.iloc[0]
                loss = f"{d.difference:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}] {d.verdict}"
            families = pts[(pts.model == r.model) & pts.pipeline.isin(tied)].family.value_counts()
            rows.append({"model": r.model, "budget": f"≥ {r.factor:g}× {label}",
                         "best point": f"`{r.pipeline}`" if hit else "none reaches it",
                         "family": r.family if hit else "",
                         "≈ best (paired)": ", ".join(f"{f} ×{n}" if n > 1 else f for f, n in families.items()),
                         "quality": f"{r.quality:.2f}" if hit else "", "vs dense": loss,
                         "bytes": f"{p.bytes_frac:.2f}" if hit else "",
                         "MACs": f"{p.macs_frac:.2f}" if hit else "", "latency": f"{p.latency_frac:.2f}" if hit else ""})
    return _markdown(pd.DataFrame(rows), numeric=5)


def _atlas_paired_readme(results: pd.DataFrame) -> str:
    """The atlas's head-to-head verdicts on the classifier: same-budget rivals (ID against Kwon's Fisher
    masks at each MAC fraction, GPTQ against RTN at each width) and each combination against each of its
    parts, the difference in quality points with its paired 95 % interval on the same test tweets."""
    from .. import atlas

    pairs = atlas.paired(atlas.points(results))
    pairs = pairs[pairs.kind != "vs dense"]
    rows = [{"model": r.model, "comparison": r.kind, "a": f"`{r.a}`", "b": f"`{r.b}`",
             "a − b (pts)": f"{r.difference:+.2f}", "95 % paired interval": f"[{r.lo:+.2f}, {r.hi:+.2f}]",
             "verdict": {"above": "a above b", "below": "a below b", "≈": "not distinguishable"}[r.verdict]}
            for r in pairs.itertuples()]
    return _markdown(pd.DataFrame(rows, columns=["model", "comparison", "a", "b", "a − b (pts)",
                                                 "95 % paired interval", "verdict"]), numeric=0)
