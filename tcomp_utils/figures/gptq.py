"""Post-training quantization, RTN vs GPTQ: the figure and the README table."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..majority import majority_accuracy
from .markdown import _bold_best, _markdown
from .no_skill import no_skill_line


def _bits(ok: pd.DataFrame) -> pd.Series:
    """Bits per stored weight: the recorded ``weight_bits`` (32 for fp32 rows, whose ``bits`` parameter is unset)."""
    return (ok.weight_bits if "weight_bits" in ok else ok.bits).astype(int)


def _gptq_variant(ok: pd.DataFrame) -> pd.Series:
    """RTN, GPTQ (original column order) or GPTQ + act-order; fp32 rows keep ``fp32``."""
    order = ok.act_order.fillna(False).astype(bool) if "act_order" in ok else pd.Series(False, index=ok.index)
    return ok.method.map({"rtn": "RTN", "gptq": "GPTQ", "fp32": "fp32"}).where(
        ~((ok.method == "gptq") & order), "GPTQ + act-order")


GPTQ_METRICS = (("smollm2-135m", "perplexity", "perplexity, novel", True),
                ("smollm2-135m", "perplexity_jargon", "perplexity, Jargon File", True),
                ("minilm-l6-tweets", "test_accuracy", "tweet test accuracy (%)", False))
GPTQ_VARIANTS = ["RTN", "GPTQ", "GPTQ + act-order"]


def _gptq_long(results: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and metric: model, variant, grid, bits, metric label, value (accuracy in %)."""
    ok = results[results.status == "ok"].copy()
    ok["bits"] = _bits(ok)
    ok["variant"] = _gptq_variant(ok)
    ok["grid"] = ok.group_size.map(lambda g: "per channel" if g == 0 else f"g{g:g}").where(ok.method != "fp32", "-")
    parts = []
    for model, column, label, _ in GPTQ_METRICS:
        if column in ok:
            d = ok[ok.model == model][["model", "variant", "grid", "bits"]].assign(metric=label, value=ok[column])
            parts.append(d.assign(value=100 * d.value if column == "test_accuracy" else d.value))
    return pd.concat(parts, ignore_index=True).dropna(subset=["value"])


def _gptq_table(results: pd.DataFrame):
    """Perplexity on both test texts (decoder) and test accuracy (task model) against bits, for RTN,
    GPTQ and GPTQ + act-order, by grouping."""
    long = _gptq_long(results)
    base = long[long.variant == "fp32"].set_index("metric").value
    q = long[long.variant != "fp32"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.9))
    for ax, (model, _, label, lower) in zip(axes, GPTQ_METRICS):
        d = q[q.metric == label]
        sns.lineplot(data=d, x="bits", y="value", hue="variant", style="grid", markers=True, ax=ax,
                     hue_order=GPTQ_VARIANTS, style_order=["per channel", "g128"])
        if label in base:  # the fp32 cell of this model (absent while it is not computed)
            ax.axhline(base[label], color="0.3", ls="--", lw=1)
            ax.text(8, base[label], "fp32", fontsize=8, va="bottom", ha="right", color="0.3")
        ax.set(xticks=sorted(d.bits.unique()), xlabel="bits per weight (codes)", ylabel=label, title=model)
        if lower:
            ax.set_yscale("log")
        else:  # the task model's accuracy
            no_skill_line(ax, majority_accuracy())
    for ax in axes[1:]:
        ax.get_legend().remove()
    fig.suptitle("Post-training quantization: RTN vs GPTQ (all linear layers; embeddings in fp32)", y=1.02)
    table = long.pivot_table(index=["model", "metric", "variant", "grid"], columns="bits", values="value").round(3)
    table.columns = [f"bits_{b:g}" for b in table.columns]
    return fig, table.reset_index()


def _gptq_readme(results: pd.DataFrame) -> str:
    """Rows model × test metric × grid × method, columns bits; the best of each block of three
    methods (per metric, grid and bit width) in bold."""
    long = _gptq_long(results)
    long = long[long.variant != "fp32"]
    parts = []
    for model, _, label, lower in GPTQ_METRICS:
        name = "`smollm2-135m`" if model == "smollm2-135m" else "tweet task model"
        for grid in ("per channel", "g128"):
            t = long[(long.metric == label) & (long.grid == grid)].pivot_table(index="variant", columns="bits",
                                                                               values="value")
            t = t.reindex(GPTQ_VARIANTS)[[b for b in (8, 4, 3) if b in t]]
            cells = _bold_best(t, lower=lower, fmt="{:.2f}")
            cells.columns = [f"{b} bits" for b in t.columns]
            parts.append(pd.concat([pd.DataFrame({"model": name, "metric": label.split(", ")[-1], "grid": grid,
                                                  "method": GPTQ_VARIANTS}), cells.reset_index(drop=True)], axis=1))
    return _markdown(pd.concat(parts), numeric=3)
