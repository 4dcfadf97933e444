"""Post-training quantization, RTN vs GPTQ: the figure and the README table."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .. import scores  # torch-free: figures load no model
from ..majority import no_skill
from .markdown import _bold_best, _markdown
from .no_skill import LABELS, no_skill_line


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
                ("minilm-l6-tweets", "test_accuracy", "tweet test accuracy (%)", False),
                ("minilm-l6-tweets3", "test_macro_f1", "three-class tweet macro-F1 (%)", False))
GPTQ_NO_SKILL = {"minilm-l6-tweets": ("accuracy", "tweets"), "minilm-l6-tweets3": ("macro_f1", "tweets3")}
GPTQ_MODEL_NAMES = {"smollm2-135m": "`smollm2-135m`", "minilm-l6-tweets": "tweet task model",
                    "minilm-l6-tweets3": "three-class tweet model"}
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
            parts.append(d.assign(value=100 * d.value if column.startswith("test_") else d.value))
    return pd.concat(parts, ignore_index=True).dropna(subset=["value"])


def _gptq_table(results: pd.DataFrame):
    """Perplexity on both test texts (decoder) and test accuracy (task model) against bits, for RTN,
    GPTQ and GPTQ + act-order, by grouping."""
    long = _gptq_long(results)
    base = long[long.variant == "fp32"].set_index("metric").value
    q = long[long.variant != "fp32"]
    panels = [m for m in GPTQ_METRICS if m[2] in set(long.metric)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.9), squeeze=False)
    axes = axes[0]
    for ax, (model, _, label, lower) in zip(axes, panels):
        d = q[q.metric == label]
        sns.lineplot(data=d, x="bits", y="value", hue="variant", style="grid", markers=True, ax=ax,
                     hue_order=GPTQ_VARIANTS, style_order=["per channel", "g128"], seed=0)
        if label in base:  # the fp32 cell of this model (absent while it is not computed)
            ax.axhline(base[label], color="0.3", ls="--", lw=1)
            ax.text(8, base[label], "fp32", fontsize=8, va="bottom", ha="right", color="0.3")
        ax.set(xticks=sorted(d.bits.unique()), xlabel="bits per weight (codes)", ylabel=label, title=model)
        if lower:
            ax.set_yscale("log")
        else:  # a task model's accuracy or macro-F1: its no-skill level
            headline, task = GPTQ_NO_SKILL[model]
            no_skill_line(ax, no_skill(headline, task), label=LABELS[headline])
    for ax in axes[1:]:
        ax.get_legend().remove()
    fig.suptitle("Post-training quantization: RTN vs GPTQ (all linear layers; embeddings in fp32)", y=1.02)
    table = long.pivot_table(index=["model", "metric", "variant", "grid"], columns="bits", values="value").round(3)
    table.columns = [f"bits_{b:g}" for b in table.columns]
    return fig, table.reset_index()


def paired_to_fp32(results: pd.DataFrame, model: str, metric: str = "macro_f1", n_resamples: int = 1000) -> pd.DataFrame:
    """Each quantized cell of ``model`` minus its fp32 cell in test ``metric`` (points), with the paired
    bootstrap interval over the same test examples (from the recorded predictions and the fp32 cell's
    labels) and the verdict read from it. Columns variant, grid, bits, difference, lo, hi, verdict."""
    ok = results[(results.status == "ok") & (results.model_name == model)].copy()
    fp32 = ok[ok.method == "fp32"]
    if fp32.empty or "test_labels" not in fp32 or fp32.test_labels.isna().all():
        raise ValueError(f"the fp32 cell of {model} with its recorded test labels is needed for paired differences")
    labels = scores.decode_predictions(fp32.test_labels.dropna().iloc[0])
    base = scores.decode_predictions(fp32.test_predictions.iloc[0])
    ok["bits"], ok["variant"] = _bits(ok), _gptq_variant(ok)
    rows = []
    for r in ok[ok.method != "fp32"].itertuples():
        d = scores.paired_interval(labels, scores.decode_predictions(r.test_predictions), base, metric,
                                   n_resamples=n_resamples)
        rows.append(dict(variant=r.variant, grid="per channel" if r.group_size == 0 else f"g{r.group_size:g}",
                         bits=r.bits, difference=100 * d.difference, lo=100 * d.lo, hi=100 * d.hi, verdict=d.verdict))
    return pd.DataFrame(rows)


def _with_paired(cell: str, paired: pd.DataFrame, at: tuple) -> str:
    """A table cell followed by its paired difference to fp32, interval and verdict (points)."""
    if at not in paired.index:
        return cell
    d = paired.loc[at]
    return f"{cell} ({d.difference:+.1f} [{d.lo:+.1f}, {d.hi:+.1f}] {d.verdict})".replace("-", "−")


def _gptq_readme(results: pd.DataFrame) -> str:
    """Rows model × test metric × grid × method, columns bits; the best of each block of three
    methods (per metric, grid and bit width) in bold; for the three-class model each cell also gives
    its paired difference to fp32 with the interval and the verdict."""
    long = _gptq_long(results)
    long = long[long.variant != "fp32"]
    parts = []
    for model, _, label, lower in GPTQ_METRICS:
        if label not in set(long.metric):
            continue
        name = GPTQ_MODEL_NAMES[model]
        paired = (paired_to_fp32(results, model).set_index(["variant", "grid", "bits"])
                  if model == "minilm-l6-tweets3" else None)
        for grid in ("per channel", "g128"):
            t = long[(long.metric == label) & (long.grid == grid)].pivot_table(index="variant", columns="bits",
                                                                               values="value")
            t = t.reindex(GPTQ_VARIANTS)[[b for b in (8, 4, 3) if b in t]]
            cells = _bold_best(t, lower=lower, fmt="{:.2f}")
            if paired is not None:
                for b in t.columns:
                    cells[b] = [_with_paired(v, paired, (var, grid, b)) for var, v in zip(t.index, cells[b])]
            cells.columns = [f"{b} bits" for b in t.columns]
            parts.append(pd.concat([pd.DataFrame({"model": name, "metric": label.split(", ")[-1], "grid": grid,
                                                  "method": GPTQ_VARIANTS}), cells.reset_index(drop=True)], axis=1))
    return _markdown(pd.concat(parts), numeric=3)
