"""Figures and README tables from results tables only: no model is loaded, so ``make figures``
takes seconds.

Each figure reads a results CSV that a sweep wrote under ``papermill_runs/``, draws it in the
project's one style and writes ``figures/<name>.png`` with ``figures/<name>.csv`` (the exact
data plotted) beside it. Each README table is rendered from its results CSV into ``README.md``
between ``<!-- table: NAME -->`` and ``<!-- /table -->`` with a line naming its source, profile,
cells and package code, so the README cannot drift from the results (a test checks it is in step).

    python -m tcomp_utils.figures [--out figures] [--readme README.md] [NAME ...]
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def style() -> None:
    """The one style of every figure."""
    sns.set_theme(style="whitegrid", context="paper", palette="colorblind", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 120, "savefig.dpi": 150, "savefig.bbox": "tight",
                         "axes.titleweight": "bold", "legend.frameon": False})


@dataclass(frozen=True)
class Figure:
    """A figure: its source table (relative to the repo), the sweep that makes it, and how to draw it.

    ``draw(table) -> (fig, data)`` returns the matplotlib figure and the tidy data it plots.
    """

    name: str
    source: str
    sweep: str
    draw: Callable[[pd.DataFrame], tuple[plt.Figure, pd.DataFrame]]


def _budget_axis(results: pd.DataFrame):
    data = results[results.status == "ok"][["model", "seq_len", "params", "macs_per_token", "attention_core_macs_share"]].copy()
    data["MMACs_per_token"] = data.macs_per_token / 1e6
    data["attention_core_%"] = 100 * data.attention_core_macs_share
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    sns.lineplot(data=data, x="seq_len", y="MMACs_per_token", hue="model", marker="o", ax=axes[0])
    sns.lineplot(data=data, x="seq_len", y="attention_core_%", hue="model", marker="o", ax=axes[1], legend=False)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length s (tokens)")
    axes[0].set(ylabel="MMACs per token", title="Compute per token")
    axes[1].set(ylabel="attention core share of MACs (%)", title="Share of the s² term (2·s·d per head)")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].get_legend().remove()
    fig.legend(handles, labels, title="model", loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig, data[["model", "seq_len", "params", "MMACs_per_token", "attention_core_%"]]


def _baselines_by_role(by_role: pd.DataFrame):
    seq_len = int(by_role.seq_len.iloc[0])
    data = by_role[["model", "role", "params_%", "macs_per_token_%"]]
    long = data.melt(id_vars=["model", "role"], var_name="axis", value_name="share_%")
    long["axis"] = long["axis"].map({"params_%": "parameters", "macs_per_token_%": f"MACs per token (s={seq_len})"})
    grid = sns.catplot(data=long, kind="bar", y="model", x="share_%", hue="role", col="axis",
                       height=3.4, aspect=1.5, sharex=True)
    grid.set_titles("{col_name}")
    grid.set_axis_labels("share of the model (%)", "")
    grid.figure.suptitle("Where the parameters and the compute are, by module role", y=1.03)
    return grid.figure, long


def _label(results: pd.DataFrame) -> pd.Series:
    return results.method + " (" + results["mode"] + ")"


def _finetune_steps(results: pd.DataFrame) -> pd.Series:
    """The fine-tuning steps parameter of each cell (absent: 0, offline only)."""
    return results["finetune_steps"].fillna(0) if "finetune_steps" in results else pd.Series(0, index=results.index)


ROLE_ORDER = ["qkv", "ffn", "embeddings"]


def _offline_accuracy(results: pd.DataFrame):
    """Seed 000's table: test accuracy with no fine-tuning, rows method × roles × mode, columns ratio;
    error bars: the cell's 95 % bootstrap interval (where recorded)."""
    ok = results[(results.status == "ok") & (_finetune_steps(results) == 0)].copy()
    ok["variant"] = _label(ok)
    ok["test accuracy (%)"] = 100 * ok.test_accuracy
    baseline = 100 * ok.baseline_test_accuracy.iloc[0]
    ratios = sorted(ok.ratio.unique())
    cols = [r for r in ROLE_ORDER if r in set(ok.roles)]
    grid = sns.relplot(data=ok, x="ratio", y="test accuracy (%)", hue="variant", style="variant", col="roles",
                       col_order=cols, kind="line", markers=True, dashes=False, height=3.6, aspect=1.15)
    has_ci = "test_accuracy_lo" in ok and ok.test_accuracy_lo.notna().any()
    palette = {t.get_text(): h.get_color() for t, h in zip(grid.legend.texts, grid.legend.legend_handles)} if has_ci else {}
    for role, ax in zip(cols, grid.axes.flat):
        ax.axhline(baseline, color="0.3", ls="--", lw=1)
        ax.text(ratios[-1], baseline, " uncompressed", va="bottom", ha="right", fontsize=8, color="0.3")
        if has_ci:
            for variant, d in ok[(ok.roles == role) & ok.test_accuracy_lo.notna()].groupby("variant"):
                d = d.sort_values("ratio")
                ax.fill_between(d.ratio, 100 * d.test_accuracy_lo, 100 * d.test_accuracy_hi, alpha=0.12,
                                color=palette.get(variant), lw=0)
        ax.set_xscale("log")
        ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
        ax.minorticks_off()
    grid.set_titles("{col_name}")
    grid.set_axis_labels("compression ratio of stored numbers", "test accuracy (%)")
    grid.figure.suptitle("Offline compression of the tweet-sentiment task model: accuracy vs ratio, no fine-tuning"
                         + (" (bands: 95 % bootstrap intervals)" if has_ci else ""), y=1.04)
    values = ["test_accuracy"] + [c for c in ("test_accuracy_lo", "test_accuracy_hi", "test_accuracy_std",
                                              "test_macro_f1", "test_majority_share") if c in ok]
    table = ok.pivot_table(index=["roles", "method", "mode"], columns="ratio", values=values).round(4)
    table.columns = [f"ratio_{r:g}" if v == "test_accuracy" else f"ratio_{r:g}_{v[len('test_'):]}" for v, r in table.columns]
    return grid.figure, table.reset_index()


def offline_twin_accuracy(results: pd.DataFrame, cells: pd.DataFrame) -> pd.Series:
    """The test accuracy before fine-tuning of each fine-tuned cell in ``cells``: that of its offline
    twin in ``results`` (same method, mode, roles and ratio, no fine-tuning), first seed (the model a
    fine-tuned cell trains); NaN where the twin is missing."""
    off = results[(results.status == "ok") & (_finetune_steps(results) == 0)]
    first = off.test_accuracy_seeds.astype(str).str.split(";").str[0].astype(float)
    key = ["method", "mode", "roles", "ratio"]
    lookup = dict(zip(map(tuple, off[key].itertuples(index=False)), first))
    return pd.Series([lookup.get(tuple(k), float("nan")) for k in cells[key].itertuples(index=False)], index=cells.index)


def _offline_finetune(results: pd.DataFrame):
    """The seed's downstream protocol on the smaller grid: offline (the twin cell) vs after a short fine-tuning."""
    tuned = results[(results.status == "ok") & (_finetune_steps(results) > 0)].copy()
    tuned["variant"] = _label(tuned) + " " + tuned.roles + " ×" + tuned.ratio.map("{:g}".format)
    tuned["offline_test_accuracy"] = offline_twin_accuracy(results, tuned)
    data = tuned[["variant", "method", "mode", "roles", "ratio", "finetune_steps", "offline_test_accuracy",
                  "finetuned_test_accuracy"]].sort_values("finetuned_test_accuracy").reset_index(drop=True)
    long = data.melt(id_vars="variant", value_vars=["offline_test_accuracy", "finetuned_test_accuracy"],
                     var_name="when", value_name="accuracy")
    long["when"] = long.when.map({"offline_test_accuracy": "offline", "finetuned_test_accuracy":
                                  f"after {int(data.finetune_steps.iloc[0])} fine-tuning steps"})
    long["test accuracy (%)"] = 100 * long.accuracy
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(data) + 1.2))
    sns.barplot(data=long, y="variant", x="test accuracy (%)", hue="when", ax=ax)
    ax.axvline(100 * tuned.baseline_test_accuracy.iloc[0], color="0.3", ls="--", lw=1, label="uncompressed")
    ax.set(ylabel="", xlim=(40, 100), title="Short fine-tuning recovers what offline compression loses")
    ax.legend(loc="lower right", fontsize=8)
    return fig, data


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
    for ax in axes[1:]:
        ax.get_legend().remove()
    fig.suptitle("Post-training quantization: RTN vs GPTQ (all linear layers; embeddings in fp32)", y=1.02)
    table = long.pivot_table(index=["model", "metric", "variant", "grid"], columns="bits", values="value").round(3)
    table.columns = [f"bits_{b:g}" for b in table.columns]
    return fig, table.reset_index()


PRUNING_ORDER = ["id", "fisher", "magnitude", "random"]
PRUNING_LABELS = {"id": "ID (STAT)", "fisher": "Fisher masks (Kwon)", "magnitude": "magnitude", "random": "random"}


def _pruning_encoder(results: pd.DataFrame):
    """Structured pruning of the task model: test accuracy against the MAC fraction kept, one line
    per method (bands: 95 % bootstrap intervals), and the time each pruning took."""
    ok = results[results.status == "ok"].copy()
    dense = ok[ok.method == "dense"].iloc[0]
    pruned = ok[ok.method != "dense"].assign(method=lambda d: pd.Categorical(d.method, PRUNING_ORDER, ordered=True))
    pruned = pruned.sort_values(["method", "mu"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    for i, (method, d) in enumerate(pruned.groupby("method", observed=True)):
        color = sns.color_palette()[i]
        axes[0].plot(d.macs_ratio, 100 * d.test_accuracy, "o-", color=color, label=PRUNING_LABELS[method])
        axes[0].fill_between(d.macs_ratio, 100 * d.test_accuracy_lo, 100 * d.test_accuracy_hi, color=color, alpha=0.15, lw=0)
        axes[1].plot(d.macs_ratio, d.prune_seconds, "o-", color=color)
    axes[0].axhline(100 * dense.test_accuracy, color="0.3", ls="--", lw=1)
    axes[0].set(xlabel="MACs per token kept (fraction of dense, 128 tokens)", ylabel="test accuracy (%)",
                title="Accuracy vs MAC budget, no retraining")
    axes[0].invert_xaxis()
    axes[0].legend(fontsize=8)
    axes[1].set(xlabel="MACs kept (fraction)", ylabel="seconds to prune", yscale="log", title="Time to prune")
    axes[1].invert_xaxis()
    fig.suptitle("Structured pruning of the tweet task model (heads and FFN neurons removed physically)", y=1.02)
    cols = ["method", "mu", "macs_ratio", "test_accuracy", "test_accuracy_lo", "test_accuracy_hi", "test_macro_f1",
            "test_majority_share", "prune_seconds"]
    return fig, ok[cols].sort_values(["method", "mu"], ascending=[True, False]).round(4)



DECODER_TEXTS = {"novel": "Pride and Prejudice (novel)", "jargon": "Jargon File"}


def _pruning_decoder(results: pd.DataFrame):
    """Structured pruning of smollm2-135m: held-out perplexity of each text against the MAC fraction
    kept, one line per method, solid without and dashed with 4-bit GPTQ on top (dense: grey); and
    perplexity against the bytes stored, where pruning, quantization and both meet."""
    ok = results[results.status == "ok"].copy()
    ok["MB"] = ok.bytes_after / 1e6
    ok["gptq_bits"] = ok.gptq_bits.astype(int)
    dense = ok[ok.method == "dense"].set_index("gptq_bits")
    pruned = ok[ok.method != "dense"].sort_values(["method", "gptq_bits", "mu"])
    colors = {m: sns.color_palette()[i] for i, m in enumerate(PRUNING_ORDER)}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.0))
    for ax, (text, title) in zip(axes, DECODER_TEXTS.items()):
        for (method, bits), d in pruned.groupby(["method", "gptq_bits"]):
            ax.plot(d.macs_ratio, d[f"perplexity_{text}"], "o-" if not bits else "s--", color=colors[method],
                    label=PRUNING_LABELS[method] + (f" + GPTQ {bits}-bit" if bits else ""))
        for bits, row in dense.iterrows():
            ax.axhline(row[f"perplexity_{text}"], color="0.3", ls="-" if not bits else "--", lw=1)
            ax.text(0.99, row[f"perplexity_{text}"], "dense" + (f" + GPTQ {bits}-bit" if bits else ""), fontsize=8,
                    color="0.3", va="bottom", ha="right", transform=ax.get_yaxis_transform())
        ax.set(xlabel="MACs per token kept (fraction of dense, 128 tokens)", ylabel="perplexity", yscale="log",
               title=title)
        ax.invert_xaxis()
    axes[0].legend(fontsize=8)
    for (method, bits), d in ok.groupby(["method", "gptq_bits"]):
        axes[2].plot(d.MB, d.perplexity_novel, "o-" if not bits else "s--", color=colors.get(method, "0.3"))
    axes[2].set(xlabel="MB stored", ylabel="perplexity (novel)", xscale="log", yscale="log",
                title="Perplexity vs bytes: prune, quantize, both")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    sparse = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else "")
    for axis in [ax.yaxis for ax in axes] + [axes[2].xaxis]:
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(sparse)
    fig.suptitle("Structured pruning of smollm2-135m, no retraining (heads and FFN neurons removed physically)", y=1.02)
    cols = ["method", "gptq_bits", "mu", "macs_ratio", "params_ratio", "MB", "perplexity_novel", "perplexity_jargon",
            "prune_seconds", "gptq_seconds"]
    table = ok.reindex(columns=cols).sort_values(["method", "gptq_bits", "mu"], ascending=[True, True, False])
    return fig, table.round(4)


QAT_TARGETS = {"attention": "attention linear", "linear": "all linear", "attention+embeddings": "attention + embeddings"}
QAT_PROTOCOLS = ["QAT from scratch", "QAT fine-tuning", "PTQ (seed's grid)", "PTQ RTN", "PTQ GPTQ"]
QAT_FLOAT = {"fp32": "fp32", "fp32_finetune": "fp32 fine-tuning"}  # the trained model; the same epochs, no quantizer


def _qat_cells(results: pd.DataFrame) -> pd.DataFrame:
    """The QAT table's cells with labels: ``row`` (the seed's row: fp32, binary, row-scaled binary or
    b-bit), ``target`` (its label), ``protocol`` (one of :data:`QAT_PROTOCOLS` or :data:`QAT_FLOAT`), ``stored_bits``
    (bits a quantized weight takes: b + 1 for the seed's b-bit grid, whose sign is stored apart),
    BLEU, chrF and MB of the whole model as stored."""
    ok = results[results.status == "ok"].copy()
    ptq = ok.ptq.fillna("signmag") if "ptq" in ok else pd.Series("signmag", index=ok.index)
    seed_grid = ok.protocol.isin(["scratch", "finetune"]) | ((ok.protocol == "ptq") & (ptq == "signmag"))
    bits = ok.bits.astype("Int64").astype(str)
    float_ = ok.protocol.isin(list(QAT_FLOAT))
    ok["row"] = ok.quantizer.map({"binary": "binary", "binary_scaled": "binary, row-scaled"}).where(
        seed_grid & (ok.quantizer != "seed"), bits + "-bit").where(~float_, "fp32")
    ok["target"] = ok.target.map(QAT_TARGETS).where(~float_, "-")
    ok["protocol"] = ok.protocol.map({"scratch": QAT_PROTOCOLS[0], "finetune": QAT_PROTOCOLS[1], **QAT_FLOAT}).where(
        ok.protocol != "ptq", ptq.map({"signmag": QAT_PROTOCOLS[2], "rtn": QAT_PROTOCOLS[3], "gptq": QAT_PROTOCOLS[4]}))
    ok["stored_bits"] = ok.weight_bits.astype(int)
    ok["MB"] = ok.bytes_after / 1e6
    return ok[["row", "target", "protocol", "stored_bits", "test_bleu", "test_chrf", "MB"]].reset_index(drop=True)


def _qat_table(results: pd.DataFrame):
    """Seed 003's table: test BLEU against the bits a quantized weight is stored in, per target, for
    QAT from scratch (the seed's protocol), QAT fine-tuning of the trained model and post-training
    quantization; the fp32 model as a dashed line, the fp32 model fine-tuned as long as QAT fine-tuning
    (no quantizer) as a dotted one."""
    cells = _qat_cells(results)
    floats = cells[cells.row == "fp32"].set_index("protocol").test_bleu
    floats = floats.reindex([p for p in QAT_FLOAT.values() if p in floats.index])
    q = cells[cells.row != "fp32"]
    targets = [t for t in QAT_TARGETS.values() if t in set(q.target)]
    fig, axes = plt.subplots(1, len(targets), figsize=(4.6 * len(targets), 3.8), sharey=True, squeeze=False)
    for ax, target in zip(axes[0], targets):
        d = q[q.target == target]
        binary = d.row.str.startswith("binary")
        kw = dict(x="stored_bits", y="test_bleu", hue="protocol", style="protocol", ax=ax, hue_order=QAT_PROTOCOLS,
                  style_order=QAT_PROTOCOLS)
        if (~binary).any():  # the b-bit grids as lines, binary weights as points at 1 bit
            sns.lineplot(data=d[~binary], markers=True, dashes=False, markersize=8, **kw)
        sns.scatterplot(data=d[binary], s=60, legend=(~binary).sum() == 0, **kw)
        for _, r in d[binary].iterrows():
            ax.annotate("scaled" if "scaled" in r.row else "sign", (r.stored_bits, r.test_bleu), fontsize=7,
                        xytext=(4, 0), textcoords="offset points", va="center")
        for (protocol, bleu), ls in zip(floats.items(), ("--", ":")):
            ax.axhline(bleu, color="0.3", ls=ls, lw=1, label=protocol)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set(xticks=sorted(d.stored_bits.unique()), xlabel="stored bits per quantized weight",
               ylabel="test BLEU", title=target)
    axes[0][0].legend(*axes[0][0].get_legend_handles_labels(), fontsize=8)  # the protocols and the fp32 lines
    for ax in axes[0][1:]:
        if ax.get_legend():
            ax.get_legend().remove()
    fig.suptitle("Quantization-aware training vs post-training quantization (German→English)", y=1.02)
    return fig, cells.sort_values(["target", "row", "protocol"]).round(3)


COMPOSABLE_ARMS = {"baseline": "pruned, model-level only", "composed": "composed from module-level fine-tuned units"}


def composable_bleu(summary: pd.DataFrame):
    """Seed 002's table as a figure: per configuration, validation BLEU before model-level
    fine-tuning and test BLEU after it, for the baseline and the composed model; the dense model's
    test BLEU dashed."""
    long = pd.concat([summary.assign(arm=arm, before=summary[f"val_bleu_before_{arm}"],
                                     after=summary[f"test_bleu_{arm}"])
                      for arm in COMPOSABLE_ARMS], ignore_index=True)
    long["arm"] = long.arm.map(COMPOSABLE_ARMS)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, col, title in ((axes[0], "before", "before model-level fine-tuning (validation)"),
                           (axes[1], "after", "after model-level fine-tuning (test)")):
        sns.barplot(data=long, x="configuration", y=col, hue="arm", ax=ax, hue_order=list(COMPOSABLE_ARMS.values()))
        if "dense_test_bleu" in summary:
            ax.axhline(summary.dense_test_bleu.iloc[0], color="0.3", ls="--", lw=1)
        ax.set(xlabel="configuration (attention rate, linear rate)", ylabel="BLEU", title=title)
        ax.tick_params(axis="x", rotation=30)
    axes[0].get_legend().remove()
    axes[1].legend(fontsize=8, loc="lower left")
    fig.suptitle("Does composing module-level fine-tuned units start and end better than pruning alone?", y=1.02)
    return fig, long[["configuration", "arm", "before", "after"]].round(3)


def composable_time(parts: pd.DataFrame):
    """The set's training seconds with and without composition, by part."""
    wide = parts.pivot_table(index="pipeline", columns="part", values="seconds", sort=False).fillna(0)
    fig, ax = plt.subplots(figsize=(9, 2.6))
    wide.plot.barh(stacked=True, ax=ax)
    ax.set(xlabel="training seconds (evaluations excluded)", ylabel="",
           title="Fine-tuning time for the whole set of configurations: is composing faster?")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig, parts


def composable_curves(model_log: pd.DataFrame):
    """Model-level fine-tuning per configuration, the composed model against its baseline: the
    training loss (moving mean of 20 steps) and validation BLEU by step."""
    log = model_log.assign(arm=model_log.arm.map(COMPOSABLE_ARMS))
    train = log[log.kind == "train"].copy()
    train["value"] = train.groupby(["configuration", "arm"]).loss.transform(lambda s: s.rolling(20, min_periods=1).mean())
    evals = log[log.kind == "eval"].assign(value=lambda d: d.val_bleu)
    long = pd.concat([train.assign(curve="training loss (moving mean)"), evals.assign(curve="validation BLEU")])
    grid = sns.relplot(data=long, x="step", y="value", hue="arm", col="configuration", row="curve", kind="line",
                       height=2.3, aspect=1.1, facet_kws=dict(sharey="row", margin_titles=True),
                       hue_order=list(COMPOSABLE_ARMS.values()))
    grid.set_titles(col_template="{col_name}", row_template="{row_name}")
    grid.set_axis_labels("model-level step", "")
    sns.move_legend(grid, "lower center", bbox_to_anchor=(0.45, -0.08), ncol=2, title=None)
    grid.figure.suptitle("Model-level fine-tuning: composed from fine-tuned units vs pruned only", y=1.03)
    return grid.figure, long[["configuration", "arm", "curve", "step", "value"]].round(4)


def composable_units(unit_log: pd.DataFrame):
    """Module-level fine-tuning: each unit's MSE to the original module's output relative to its
    first step, the median and interquartile range over the units of one kind and rate."""
    kind_rate = unit_log.unit.str.extract(r"@(?P<kind>.+?)(?P<rate>0\.\d+|0)$")
    log = unit_log.assign(kind=kind_rate.kind, rate=kind_rate.rate.astype(float))
    first = log.sort_values("step").groupby("unit").loss.transform("first")
    log["relative MSE"] = log.loss / first
    log["units"] = log.kind.map({"heads": "heads", "l1": "L1"}).fillna(log.kind) + " at " + log.rate.map("{:g}".format)
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    sns.lineplot(data=log, x="step", y="relative MSE", hue="units", hue_order=sorted(log.units.unique()),
                 estimator="median", errorbar=("pi", 50), ax=ax)
    ax.set(yscale="log", xlabel="module-level step", ylabel="MSE / MSE at step 1",
           title=f"Module-level fine-tuning of the {log.unit.nunique()} units (median, IQR)")
    ax.legend(fontsize=7, ncol=2)
    table = log.groupby(["units", "step"])["relative MSE"].median().rename("median_relative_mse").reset_index()
    return fig, table.round(4)


STUDENT_OBJECTIVES = {"none": "untrained", "ce": "CE", "kd": "KD", "pkd": "PKD (best β)"}


def student_cells(results: pd.DataFrame) -> pd.DataFrame:
    """One row per student: test accuracy (%) untrained, after CE, KD and PKD at the ``beta`` with
    the best validation accuracy (ties: the smaller beta), that beta, the share of the untrained
    student's loss against the teacher that PKD recovers, and the footprint against the teacher
    (stored numbers, MACs per token, measured latency)."""
    ok = results[results.status == "ok"]
    teacher = ok[ok.student == "teacher"]
    teacher_acc = float(teacher.test_accuracy.iloc[0]) if len(teacher) else float(ok.teacher_test_accuracy.median())
    rows = []
    for name, g in ok[ok.student != "teacher"].groupby("student", sort=False):
        by = {o: g[g.objective == o] for o in STUDENT_OBJECTIVES}
        pkd = by["pkd"].sort_values(["val_accuracy", "beta"], ascending=[False, True]).head(1)
        acc = {o: (100 * float(d.test_accuracy.iloc[0]) if len(d) else float("nan"))
               for o, d in {**by, "pkd": pkd}.items()}
        ref = (by["none"] if len(by["none"]) else g).iloc[0]  # latency is measured in the untrained cell
        rows.append({"student": name, **{STUDENT_OBJECTIVES[o]: v for o, v in acc.items()},
                     "best β": float(pkd.beta.iloc[0]) if len(pkd) else float("nan"),
                     "recovered": (acc["pkd"] - acc["none"]) / (100 * teacher_acc - acc["none"]),
                     "params": 100 * ref.param_fraction, "MACs": 100 * ref.mac_fraction,
                     "latency": ref.latency_ms / ref.teacher_latency_ms})
    out = pd.DataFrame(rows)
    out.attrs["teacher_accuracy"] = 100 * teacher_acc
    return out


def _student_table(results: pd.DataFrame):
    """Seed 004's students: test accuracy by training objective, and where PKD leaves each student
    against its measured latency."""
    cells = student_cells(results)
    long = cells.melt(id_vars="student", value_vars=list(STUDENT_OBJECTIVES.values()), var_name="objective",
                      value_name="test accuracy (%)")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1.7, 1]})
    sns.barplot(data=long, x="student", y="test accuracy (%)", hue="objective", ax=axes[0])
    axes[0].tick_params(axis="x", rotation=30)
    lo = max(0.0, long["test accuracy (%)"].min() - 5)
    axes[0].set(ylim=(lo, 101), xlabel="", title="accuracy by training objective")
    # one row above the bars (the best reach the teacher's line, about 90 %)
    sns.move_legend(axes[0], "upper center", ncol=4, fontsize=8, title=None, frameon=True)
    pkd = cells["PKD (best β)"]
    axes[1].scatter(cells.latency, pkd)
    # neighbours in latency sit at about the same accuracy: labels alternate above and below, slanted
    for i, (_, r) in enumerate(cells.sort_values("latency").iterrows()):
        up = i % 2 == 0
        axes[1].annotate(r.student, (r.latency, r["PKD (best β)"]), fontsize=7, rotation=25 if up else -25,
                         xytext=(3, 3) if up else (3, -3), textcoords="offset points", va="bottom" if up else "top")
    axes[1].set(xlabel="latency / teacher (CPU, 1 thread)", ylabel="PKD test accuracy (%)", title="accuracy vs time",
                ylim=(pkd.min() - 3, pkd.max() + 4), xlim=(cells.latency.min() - 0.1, cells.latency.max() + 0.35))
    for ax in axes:
        ax.axhline(cells.attrs["teacher_accuracy"], color="0.3", ls="--", lw=1)
    fig.suptitle("Which low-rank student keeps the teacher's accuracy once distilled, and at what speed?", y=1.02)
    return fig, cells.round(4)



ATLAS_QUESTIONS = {"bytes": "Which family keeps the most quality per stored byte?",
                   "macs": "Which family keeps the most quality per MAC?",
                   "latency": "Which compressed models are really faster on a CPU (one thread)?"}


def atlas_figure(axis: str) -> Callable[[pd.DataFrame], tuple[plt.Figure, pd.DataFrame]]:
    """The atlas on one footprint ``axis`` (bytes, macs or latency, as a fraction of the dense
    model's): quality against it, one panel per model, one colour per family, the Pareto front
    dashed; returns the figure and the front's points."""
    from . import atlas

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
    from . import atlas

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


FIGURES = {f.name: f for f in [
    Figure("budget_axis_macs", "papermill_runs/budget_axis/results.csv", "papermill_runs/budget_axis.yaml", _budget_axis),
    Figure("baselines_by_role", "papermill_runs/baselines/by_role.csv", "papermill_runs/baselines.yaml", _baselines_by_role),
    Figure("offline_compression_accuracy", "papermill_runs/offline_compression/results.csv",
           "papermill_runs/offline_compression.yaml", _offline_accuracy),
    Figure("offline_compression_finetune", "papermill_runs/offline_compression/results.csv",
           "papermill_runs/offline_compression.yaml", _offline_finetune),
    Figure("gptq_table", "papermill_runs/gptq_table/results.csv", "papermill_runs/gptq_table.yaml", _gptq_table),
    Figure("structured_pruning_encoder", "papermill_runs/structured_pruning_encoder/results.csv",
           "papermill_runs/structured_pruning_encoder.yaml", _pruning_encoder),
    Figure("structured_pruning_decoder", "papermill_runs/structured_pruning_decoder/results.csv",
           "papermill_runs/structured_pruning_decoder.yaml", _pruning_decoder),
    Figure("qat_table", "papermill_runs/qat_table/results.csv", "papermill_runs/qat_table.yaml", _qat_table),
    Figure("composable_bleu", "papermill_runs/composable_table/summary.csv", "papermill_runs/composable_table.yaml",
           composable_bleu),
    Figure("composable_time", "papermill_runs/composable_table/time_parts.csv", "papermill_runs/composable_table.yaml",
           composable_time),
    Figure("composable_curves", "papermill_runs/composable_table/model_log.csv", "papermill_runs/composable_table.yaml",
           composable_curves),
    Figure("composable_units", "papermill_runs/composable_table/unit_log.csv", "papermill_runs/composable_table.yaml",
           composable_units),
    Figure("student_table", "papermill_runs/student_table/results.csv", "papermill_runs/student_table.yaml", _student_table),
    *[Figure(f"atlas_{axis}", "papermill_runs/atlas/results.csv", "papermill_runs/atlas.yaml", atlas_figure(axis))
      for axis in ATLAS_QUESTIONS],
]}


def computed_cells(source: str, root: Path = REPO_ROOT) -> int:
    """How many ``ok`` cells the results table beside ``source`` holds (a figure or README table
    with none is skipped, not drawn from an empty frame)."""
    results = root / source.rsplit("/", 1)[0] / "results.csv"
    if not results.is_file():
        raise FileNotFoundError(f"missing results table {results.relative_to(root)}: run its sweep first (make run)")
    table = pd.read_csv(results)
    return int((table.status == "ok").sum()) if "status" in table and (root / source).is_file() else 0


def build(names: list[str] | None = None, out: Path | None = None, root: Path = REPO_ROOT) -> list[Path]:
    """Draw the named figures (all by default) from their results tables into ``out``; a figure
    whose sweep has no computed cell yet is skipped with a line saying which sweep makes it."""
    out = Path(out or root / "figures")
    unknown = [n for n in names or [] if n not in FIGURES]
    if unknown:
        raise KeyError(f"unknown figure(s) {unknown}; known: {', '.join(FIGURES)}")
    chosen = [FIGURES[n] for n in (names or FIGURES)]
    missing = sorted({f.source.rsplit("/", 1)[0] + "/results.csv" for f in chosen
                      if not (root / f.source.rsplit("/", 1)[0] / "results.csv").is_file()})
    if missing:
        raise FileNotFoundError(f"missing results table(s) {missing}: run their sweeps first (make run)")
    style()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fig_spec in chosen:
        if not computed_cells(fig_spec.source, root):
            print(f"{fig_spec.name}: skipped, no computed cell in {fig_spec.source} yet "
                  f"(make sweep SPEC={fig_spec.sweep})")
            continue
        fig, data = fig_spec.draw(pd.read_csv(root / fig_spec.source))
        png, csv = out / f"{fig_spec.name}.png", out / f"{fig_spec.name}.csv"
        fig.savefig(png.with_name(f".{png.name}.tmp.png"))
        png.with_name(f".{png.name}.tmp.png").replace(png)
        data.to_csv(csv.with_name(f".{csv.name}.tmp"), index=False, float_format="%.6g")
        csv.with_name(f".{csv.name}.tmp").replace(csv)
        plt.close(fig)
        written += [png, csv]
    return written


# ---- README tables ---------------------------------------------------------------------------

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


def _baselines_table(results: pd.DataFrame) -> str:
    r = results[results.status == "ok"].iloc[0]
    rows = [
        ("`minilm-l6` fine-tuned on tweet sentiment, test accuracy (2,000 tweets)",
         f"**{100 * r.task_model_test_accuracy:.2f} %** (F1 {r.task_model_test_f1:.3f}, MCC {r.task_model_test_mcc:.3f}; "
         f"validation {100 * r.task_model_validation_accuracy:.1f} %)", "`task_model_test_accuracy`"),
        ("logistic regression on frozen mean-pooled `minilm-l6` embeddings (4,000 training tweets)",
         f"{100 * r.frozen_probe_test_accuracy:.1f} %", "`frozen_probe_test_accuracy`"),
        ("majority class", f"{100 * r.majority_test_accuracy:.1f} %", "`majority_test_accuracy`"),
        ("`smollm2-135m` perplexity, Pride and Prejudice (held-out test novel), first 16,384 tokens in 512-token windows",
         f"**{r.decoder_test_perplexity:.2f}** ({int(r.decoder_test_tokens):,} tokens scored)", "`decoder_test_perplexity`"),
    ]
    return _markdown(pd.DataFrame(rows, columns=["what", "value", "column"]))


def _footprints_table(footprints: pd.DataFrame) -> str:
    names = {"minilm-l6 (base)": "`minilm-l6` (encoder, no head)", "minilm-l6 task model": "`minilm-l6` tweet task model",
             "smollm2-135m": "`smollm2-135m` (tied embeddings counted once)"}
    frame = pd.DataFrame({"model": footprints.model.map(lambda m: names.get(m, f"`{m}`")),
                          "parameters": footprints.params.map("{:,}".format),
                          "MB (fp32)": footprints.MB.map("{:.2f}".format),
                          "MMACs / token": footprints.MMACs_per_token.map("{:.2f}".format)})
    return _markdown(frame, numeric=3)


METHOD_ORDER = ["svd", "ae", "pruning", "asvd", "fwsvd", "tucker", "kronecker", "falcon"]
MODE_ORDER = ["separated", "concatenated", "qkv", "qkv-concatenated"]


def _offline_table(results: pd.DataFrame) -> str:
    """Rows roles × method × mode, columns ratio: test accuracy (%) with its 95 % bootstrap interval
    (for the autoencoder, of the mean over its seeds) where recorded; † where every prediction is the
    majority class; the best of each role group and ratio in bold."""
    _, table = _offline_accuracy(results)
    table = table.assign(r=table.roles.map({r: i for i, r in enumerate(["ffn", "qkv", "embeddings"])}),
                         m=table.method.map(METHOD_ORDER.index),
                         o=table["mode"].map(MODE_ORDER.index)).sort_values(["r", "m", "o"])
    ratios = [c for c in table if c.startswith("ratio_") and c.removeprefix("ratio_").replace(".", "").isdigit()]
    parts = []
    for _, group in table.groupby("r", sort=True):
        cells = _bold_best(100 * group[ratios], lower=False, fmt="{:.1f}")
        for c in ratios:
            if f"{c}_accuracy_lo" in group:
                lo, hi = 100 * group[f"{c}_accuracy_lo"], 100 * group[f"{c}_accuracy_hi"]
                cells[c] = [v if pd.isna(a) else f"{v} ({a:.1f}–{b:.1f})" for v, a, b in zip(cells[c], lo, hi)]
            if f"{c}_majority_share" in group:
                cells[c] = [v + "†" if share >= 1 else v for v, share in zip(cells[c], group[f"{c}_majority_share"])]
        parts.append(pd.concat([group[["roles", "method", "mode"]], cells], axis=1))
    frame = pd.concat(parts).rename(columns={c: "×" + c.removeprefix("ratio_") for c in ratios})
    return _markdown(frame, numeric=len(ratios))


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


def _pruning_encoder_table(results: pd.DataFrame) -> str:
    """Rows method, columns mu: test accuracy (%) with its 95 % bootstrap interval (the best of each
    budget in bold), and the median seconds each method took to prune."""
    _, t = _pruning_encoder(results)
    pruned = t[t.method != "dense"]
    acc = pruned.pivot_table(index="method", columns="mu", values="test_accuracy").reindex(PRUNING_ORDER)
    lo = pruned.pivot_table(index="method", columns="mu", values="test_accuracy_lo").reindex(PRUNING_ORDER)
    hi = pruned.pivot_table(index="method", columns="mu", values="test_accuracy_hi").reindex(PRUNING_ORDER)
    mus = sorted(acc.columns, reverse=True)
    cells = _bold_best(100 * acc[mus], lower=False, fmt="{:.1f}")
    for m in mus:
        cells[m] = [f"{v} ({100 * a:.1f}–{100 * b:.1f})" for v, a, b in zip(cells[m], lo[m], hi[m])]
    cells.columns = [f"μ = {m:g}" for m in mus]
    seconds = pruned.groupby("method").prune_seconds.median().reindex(PRUNING_ORDER)
    frame = pd.concat([pd.DataFrame({"method": [PRUNING_LABELS[m] for m in PRUNING_ORDER]}),
                       cells.reset_index(drop=True),
                       pd.DataFrame({"seconds to prune": [f"{v:.1f}" for v in seconds]})], axis=1)
    dense = t[t.method == "dense"].iloc[0]
    return (_markdown(frame, numeric=len(mus) + 1)
            + f"\n\nDense: {100 * dense.test_accuracy:.1f} % ({100 * dense.test_accuracy_lo:.1f}–"
              f"{100 * dense.test_accuracy_hi:.1f}).")



def _pruning_decoder_table(results: pd.DataFrame) -> str:
    """Rows text × GPTQ bits × method, columns mu: held-out perplexity (the best of each budget, text
    and bit width in bold), then the MB stored at the smallest budget and the median seconds to prune; the
    dense model, with and without GPTQ, below."""
    _, t = _pruning_decoder(results)
    pruned = t[t.method != "dense"].assign(variant=lambda d: [
        PRUNING_LABELS[m] + (f" + GPTQ {b}-bit" if b else "") for m, b in zip(d.method, d.gptq_bits)])
    mus = sorted(pruned.mu.unique(), reverse=True)
    parts = []
    for text in DECODER_TEXTS:
        for _, same_bits in pruned.groupby("gptq_bits"):
            order = [v for m in PRUNING_ORDER for v in same_bits[same_bits.method == m].variant.unique()]
            ppl = same_bits.pivot_table(index="variant", columns="mu", values=f"perplexity_{text}").reindex(order)[mus]
            cells = _bold_best(ppl, lower=True, fmt="{:.2f}")
            cells.columns = [f"μ = {m:g}" for m in mus]
            parts.append(pd.concat([pd.DataFrame({"text": text, "method": order}), cells.reset_index(drop=True)],
                                   axis=1))
    frame = pd.concat(parts, ignore_index=True)
    low = pruned[pruned.mu == mus[-1]].set_index("variant")
    frame[f"MB at μ = {mus[-1]:g}"] = [f"{low.MB[v]:.1f}" if v in low.index else "-" for v in frame.method]
    seconds = pruned.groupby("variant").prune_seconds.median()
    frame["seconds to prune"] = [f"{seconds[v]:.0f}" if v in seconds else "-" for v in frame.method]
    dense = t[t.method == "dense"].set_index("gptq_bits")
    line = "; ".join(f"{'fp32' if not b else f'GPTQ {b}-bit'} {r.perplexity_novel:.2f} (novel), "
                     f"{r.perplexity_jargon:.2f} (Jargon File), {r.MB:.1f} MB" for b, r in dense.iterrows())
    return _markdown(frame, numeric=len(mus) + 2) + f"\n\nDense: {line}."


def _qat_readme(results: pd.DataFrame) -> str:
    """Seed 003's rows (target × row), columns the stored bits, the model's MB and test BLEU per
    protocol (the best of each row in bold); RTN and GPTQ rows below with their BLEU under PTQ;
    the fp32 model and its fine-tuned control in lines under the table."""
    cells = _qat_cells(results)
    floats = cells[cells.row == "fp32"]
    q = cells[cells.row != "fp32"].copy()
    on_seed_grid = ~q.protocol.isin(QAT_PROTOCOLS[3:])
    q["method"] = q.protocol.str.removeprefix("PTQ ").where(~on_seed_grid, "QAT / PTQ")
    q["column"] = q.protocol.where(on_seed_grid, QAT_PROTOCOLS[2]).replace({QAT_PROTOCOLS[2]: "PTQ"})
    columns = [c for c in [*QAT_PROTOCOLS[:2], "PTQ"] if c in set(q.column)]
    # rows: targets in the seed's order, the seed's grid before RTN and GPTQ, binary before b-bit (most bits first)
    order = {"target": list(QAT_TARGETS.values()).index, "method": ["QAT / PTQ", "RTN", "GPTQ"].index,
             "row": lambda r: (0, r) if r.startswith("binary") else (1, -int(r.split("-")[0]))}
    bleu = q.pivot_table(index=list(order), columns="column", values="test_bleu")[columns]
    bleu = bleu.sort_index(key=lambda level: level.map(order[level.name]))
    cells_ = _bold_best(bleu.T, lower=False, fmt="{:.2f}").T  # a row's best protocol in bold
    single = bleu.notna().sum(axis=1) < 2
    cells_[single] = bleu[single].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    meta = q.groupby(list(order)).agg(bits=("stored_bits", "first"), MB=("MB", "median")).loc[bleu.index]
    frame = pd.concat([bleu.index.to_frame(index=False).rename(columns={"row": "weights"}),
                       pd.DataFrame({"stored bits": meta.bits.astype(str).tolist(),
                                     "MB": [f"{v:.2f}" for v in meta.MB]}),
                       cells_.reset_index(drop=True)], axis=1)
    out = _markdown(frame, numeric=2 + len(columns))
    for r in floats.itertuples():
        out += f"\n\n{r.protocol}: BLEU {r.test_bleu:.2f}, chrF {r.test_chrf:.1f}, {r.MB:.2f} MB."
    return out


def _composable_readme(summary: pd.DataFrame) -> str:
    """One row per configuration: its rates, shared units, stored size, BLEU before and after
    model-level fine-tuning (baseline / composed), and the steps and training seconds the composed
    model needed to reach its baseline's final validation BLEU."""
    def pair(a: float, b: float, fmt: str = "{:.2f}") -> str:
        return f"{fmt.format(a)} / {fmt.format(b)}"
    rows = [{"configuration": r.configuration, "attention": r.attention, "linear": r.linear,
             "units (shared)": f"{int(r.units)} ({int(r.shared_units)})", "stored numbers": f"{100 * r.param_fraction:.1f} %",
             "MB": f"{r.MB:.2f}",
             "val BLEU before": pair(r.val_bleu_before_baseline, r.val_bleu_before_composed),
             "test BLEU after": pair(r.test_bleu_baseline, r.test_bleu_composed),
             "steps to baseline": "not reached" if pd.isna(r.steps_to_baseline) else f"{int(r.steps_to_baseline)}",
             "seconds: baseline / composed to baseline": pair(r.train_seconds_baseline, r.seconds_to_baseline, "{:.0f}")
             if not pd.isna(r.seconds_to_baseline) else f"{r.train_seconds_baseline:.0f} / -"}
            for r in summary.itertuples()]
    return _markdown(pd.DataFrame(rows), numeric=7)


def _student_readme(results: pd.DataFrame) -> str:
    """Students by row: test accuracy untrained / CE / KD / PKD (best β on validation, the best
    trained objective of each row in bold), PKD's share of the loss recovered, footprint against the
    teacher; the teacher in a line under the table."""
    cells = student_cells(results)
    acc = cells[list(STUDENT_OBJECTIVES.values())]
    shown = acc.copy()
    shown[acc.columns[1:]] = _bold_best(acc[acc.columns[1:]].T, lower=False, fmt="{:.2f}").T
    shown[acc.columns[0]] = acc[acc.columns[0]].map("{:.2f}".format)
    frame = pd.concat([cells[["student"]], shown,
                       pd.DataFrame({"best β": cells["best β"].map("{:g}".format),
                                     "PKD recovers": cells.recovered.map("{:.0%}".format),
                                     "params": cells.params.map("{:.1f} %".format),
                                     "MACs": cells.MACs.map("{:.1f} %".format),
                                     "latency": cells.latency.map("{:.2f}×".format)})], axis=1)
    return (_markdown(frame, numeric=frame.shape[1] - 1)
            + f"\n\nTeacher (`minilm-l6` fine-tuned on tweets): {cells.attrs['teacher_accuracy']:.2f} %.")


@dataclass(frozen=True)
class ReadmeTable:
    """A README table rendered from one results CSV (relative to the repo)."""

    name: str
    source: str
    render: Callable[[pd.DataFrame], str]


README_TABLES = {t.name: t for t in [
    ReadmeTable("baselines", "papermill_runs/baselines/results.csv", _baselines_table),
    ReadmeTable("footprints", "papermill_runs/baselines/footprints.csv", _footprints_table),
    ReadmeTable("offline_compression", "papermill_runs/offline_compression/results.csv", _offline_table),
    ReadmeTable("gptq_table", "papermill_runs/gptq_table/results.csv", _gptq_readme),
    ReadmeTable("structured_pruning_encoder", "papermill_runs/structured_pruning_encoder/results.csv",
                _pruning_encoder_table),
    ReadmeTable("structured_pruning_decoder", "papermill_runs/structured_pruning_decoder/results.csv",
                _pruning_decoder_table),
    ReadmeTable("qat_table", "papermill_runs/qat_table/results.csv", _qat_readme),
    ReadmeTable("composable_table", "papermill_runs/composable_table/summary.csv", _composable_readme),
    ReadmeTable("student_table", "papermill_runs/student_table/results.csv", _student_readme),
    ReadmeTable("atlas", "papermill_runs/atlas/results.csv", _atlas_readme),
]}
_BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def _provenance(table: ReadmeTable, root: Path) -> str:
    """Where a table's numbers come from: its results CSV's profile, cells and package code."""
    results_csv = root / table.source.rsplit("/", 1)[0] / "results.csv"
    results = pd.read_csv(results_csv)
    ok = results[results.status == "ok"]
    profiles = ", ".join(sorted(ok.profile.dropna().unique())) if "profile" in ok else "unrecorded"
    hashes = sorted(ok.code_hash.dropna().unique()) if "code_hash" in ok else []
    return (f"<sub>Generated by `make figures` from [`{table.source}`]({table.source}): profile {profiles}, "
            f"{len(ok)} of {len(results)} cells ok, package code {', '.join(f'`{h}`' for h in hashes) or 'unrecorded'}.</sub>")


def readme_tables(root: Path = REPO_ROOT, names: list[str] | None = None) -> dict[str, str]:
    """Every README table (or the ``names``) as the markdown ``make figures`` writes between its
    markers; a table whose sweep has no computed cell yet says so and which sweep makes it."""
    def body(t: ReadmeTable) -> str:
        if computed_cells(t.source, root):
            return t.render(pd.read_csv(root / t.source))
        return (f"_No cell of this table has been computed yet: run `make sweep SPEC=papermill_runs/"
                f"{t.source.split('/')[1]}.yaml`._")
    return {name: f"{body(t)}\n\n{_provenance(t, root)}\n"
            for name, t in README_TABLES.items() if names is None or name in names}


def update_readme(readme: Path, root: Path = REPO_ROOT, check: bool = False) -> list[str]:
    """Write each table between its markers in ``readme`` (``check``: write nothing). Returns the
    names of the tables that were out of step. Raises if a table's markers are missing."""
    text = readme.read_text(encoding="utf-8")
    tables = readme_tables(root)
    missing = sorted(set(tables) - {m["name"] for m in _BLOCK.finditer(text)})
    if missing:
        raise ValueError(f"{readme} has no markers for table(s) {missing}: add "
                         "'<!-- table: NAME -->' and '<!-- /table -->' lines where each belongs")
    changed = [m["name"] for m in _BLOCK.finditer(text) if m["name"] in tables and m["body"] != tables[m["name"]]]
    if changed and not check:
        new = _BLOCK.sub(lambda m: m[1] + tables.get(m["name"], m["body"]) + m[4], text)
        tmp = readme.with_name(f".{readme.name}.tmp")
        tmp.write_text(new, encoding="utf-8")
        tmp.replace(readme)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcomp_utils.figures", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"figures to build (default all: {', '.join(FIGURES)})")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default figures/)")
    parser.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md",
                        help="README whose marked tables are rewritten from the results (default README.md)")
    args = parser.parse_args(argv)
    for path in build(args.names or None, args.out):
        print(path)
    if not args.names:
        for name in update_readme(args.readme):
            print(f"{args.readme}: table {name} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
