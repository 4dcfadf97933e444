"""Structured pruning of the encoder (tweet task model) and of the decoder (smollm2-135m): the
figures and the README tables."""
from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns

from .. import scores  # torch-free: figures load no model
from ..majority import chance_macro_f1, majority_macro_f1
from .markdown import _bold_best, _markdown
from .no_skill import LABELS, no_skill_line


PRUNING_ORDER = ["id", "fisher", "magnitude", "random"]
PRUNING_LABELS = {"id": "ID (STAT)", "fisher": "Fisher masks (Kwon)", "magnitude": "magnitude", "random": "random"}


def _budget_axes(axes, xlabel: str, ylabel: str, title: str) -> None:
    """Label an encoder figure's two panels: quality against the MAC fraction kept, and the seconds each
    pruning took (log); both with the budget falling to the right."""
    axes[0].set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes[0].legend(fontsize=8)
    axes[1].set(xlabel="MACs kept (fraction)", ylabel="seconds to prune", yscale="log", title="Time to prune")
    for ax in axes:
        ax.invert_xaxis()


# ---- the encoder: the three-class tweet model, calibration draws as points, paired verdicts between methods ----
TWEETS3_ORDER = ["id", "fisher", "fisher-2k", "magnitude", "random"]
TWEETS3_LABELS = {**PRUNING_LABELS, "fisher-2k": "Fisher masks, 2,000 calibration tweets"}


def _tweets3_cells(results: pd.DataFrame) -> pd.DataFrame:
    """The computed cells with ``variant`` (Kwon's masks on 2,000 calibration tweets apart) and ``draw``."""
    ok = results[results.status == "ok"].copy()
    big = ok.get("calibration_examples", pd.Series(index=ok.index, dtype=float)).fillna(0) >= 2000
    ok["variant"] = ok.method.where(~((ok.method == "fisher") & big), "fisher-2k")
    ok["draw"] = ok.get("calibration_seed", pd.Series(0, index=ok.index)).fillna(0).astype(int)
    return ok


def paired_differences(results: pd.DataFrame, a: str, b: str, metric: str = "macro_f1",
                       n_resamples: int = 1000) -> pd.DataFrame:
    """Per mu, variant ``a`` minus variant ``b`` in test ``metric`` (points) with the paired bootstrap
    interval over the same test tweets and over the calibration draws (run i of both shares draw i
    where both have the same draws), read from the recorded predictions and the dense cell's labels;
    ``b="dense"``: against the dense model at every mu of ``a``.
    Columns ``mu``, ``difference``, ``lo``, ``hi`` (points), ``verdict``, ``draws_a``, ``draws_b``."""
    cells = _tweets3_cells(results)
    dense = cells[cells.method == "dense"]
    if dense.empty or "test_labels" not in dense or dense.test_labels.isna().all():
        raise ValueError("the dense cell with its recorded test labels is needed for paired differences")
    labels = scores.decode_predictions(dense.test_labels.dropna().iloc[0])
    rows = []
    mus = set(cells[cells.variant == a].mu) - {1.0} if b == "dense" else \
        set(cells[cells.variant == a].mu) & set(cells[cells.variant == b].mu)
    for mu in sorted(mus, reverse=True):
        runs = {v: cells[(cells.variant == v) & ((cells.mu == mu) | (v == "dense"))].sort_values("draw") for v in (a, b)}
        preds = {v: np.stack([scores.decode_predictions(p) for p in d.test_predictions]) for v, d in runs.items()}
        same_draws = list(runs[a].draw) == list(runs[b].draw)
        r = scores.paired_interval(labels, preds[a], preds[b], metric, n_resamples=n_resamples, paired_runs=same_draws)
        rows.append(dict(mu=mu, difference=100 * r.difference, lo=100 * r.lo, hi=100 * r.hi, verdict=r.verdict,
                         draws_a=len(preds[a]), draws_b=len(preds[b])))
    return pd.DataFrame(rows)


def _pruning_encoder(results: pd.DataFrame):
    """Structured pruning of the three-class task model: test macro-F1 against the MAC fraction kept, every
    calibration draw a point and the mean over draws a line, one colour per method (Kwon's masks on 2,000
    tweets dashed in theirs); the dense model and the no-skill level (a guess in the class shares) as lines; and the time each
    pruning took."""
    ok = _tweets3_cells(results)
    dense, pruned = ok[ok.method == "dense"], ok[ok.method != "dense"]
    colors = {v: sns.color_palette()[PRUNING_ORDER.index(v.split("-")[0])] for v in TWEETS3_ORDER}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    for variant in [v for v in TWEETS3_ORDER if v in set(pruned.variant)]:
        d = pruned[pruned.variant == variant]
        mean = d.groupby("mu")[["macs_ratio", "test_macro_f1", "prune_seconds"]].mean().sort_index()
        style = "--" if variant.endswith("2k") else "-"
        axes[0].plot(mean.macs_ratio, 100 * mean.test_macro_f1, style, color=colors[variant], label=TWEETS3_LABELS[variant])
        axes[0].scatter(d.macs_ratio, 100 * d.test_macro_f1, s=14, color=colors[variant], alpha=0.7,
                        marker="s" if variant.endswith("2k") else "o")
        axes[1].plot(mean.macs_ratio, mean.prune_seconds, "o" + style, color=colors[variant])
    for f1 in dense.test_macro_f1[:1]:
        axes[0].axhline(100 * f1, color="0.3", ls="--", lw=1, label="dense")
    no_skill_line(axes[0], chance_macro_f1("tweets3"), label=LABELS["macro_f1"])
    _budget_axes(axes, "MACs per token kept (fraction of the whole model's, 128 tokens)", "test macro-F1 (%)",
                 "Macro-F1 vs MAC budget, no retraining (points: calibration draws)")
    fig.suptitle("Structured pruning of the three-class tweet model (heads and FFN neurons removed physically)", y=1.02)
    cols = ["variant", "method", "mu", "draw", "macs_ratio", "block_macs_ratio", "test_macro_f1", "test_macro_f1_lo",
            "test_macro_f1_hi", "test_accuracy", "test_mcc", "test_majority_share", "prune_seconds"]
    return fig, ok.reindex(columns=cols).sort_values(["variant", "mu", "draw"], ascending=[True, False, True]).round(4)


def _pruning_encoder_table(results: pd.DataFrame) -> str:
    """Rows method, columns mu: mean test macro-F1 (%) over the calibration draws with their range (the best
    mean of each budget in bold), the median seconds to prune; then ID minus the Fisher masks and ID minus the
    dense model, paired over the same test tweets and draws, with the verdict read from the interval; the MAC
    fraction over the blocks beside the whole model's; the dense model and the no-skill level."""
    _, t = _pruning_encoder(results)
    pruned = t[t.method != "dense"]
    order = [v for v in TWEETS3_ORDER if v in set(pruned.variant)]
    g = pruned.groupby(["variant", "mu"]).test_macro_f1
    mean, low, high = (g.agg(f).unstack().reindex(order) for f in ("mean", "min", "max"))
    count = g.size().unstack().reindex(order)
    mus = sorted(mean.columns, reverse=True)
    cells = _bold_best(100 * mean[mus], lower=False, fmt="{:.1f}")
    for m in mus:
        cells[m] = [v if n == 1 or pd.isna(n) else f"{v} ({100 * a:.1f}–{100 * b:.1f})"
                    for v, a, b, n in zip(cells[m], low[m], high[m], count[m])]
    cells.columns = [f"μ = {m:g}" for m in mus]
    seconds = pruned.groupby("variant").prune_seconds.median().reindex(order)
    frame = pd.concat([pd.DataFrame({"method": [TWEETS3_LABELS[v] for v in order]}), cells.reset_index(drop=True),
                       pd.DataFrame({"seconds to prune": [f"{v:.1f}" for v in seconds]})], axis=1)
    labelled = "test_labels" in results and results.test_labels.notna().any()  # the dense cell's, for pairing
    for a, b, label in (("id", "fisher", "ID − Fisher"), ("id", "dense", "ID − dense")):
        if labelled and a in order and (b in order or b == "dense"):
            d = paired_differences(results, a, b).set_index("mu")
            frame.loc[len(frame)] = [f"{label} (paired Δ macro-F1, points)", *[
                f"{d.difference[m]:+.1f} [{d.lo[m]:+.1f}, {d.hi[m]:+.1f}] {d.verdict[m]}".replace("-", "−")
                if m in d.index else "" for m in mus], ""]
    blocks = pruned.groupby("mu").block_macs_ratio.mean()
    frame.loc[len(frame)] = ["MACs kept over the blocks only", *[f"{blocks[m]:.3f}" for m in mus], ""]
    dense = [f"\n\nDense: macro-F1 {100 * d.test_macro_f1:.1f} % ({100 * d.test_macro_f1_lo:.1f}–"
             f"{100 * d.test_macro_f1_hi:.1f}), accuracy {100 * d.test_accuracy:.1f} %; always the majority class: "
             f"macro-F1 {majority_macro_f1('tweets3'):.1f} % (a guess in the class shares: "
             f"{chance_macro_f1('tweets3'):.1f} %, the no-skill level). μ counts the whole model's MACs."
             for d in t[t.method == "dense"].head(1).itertuples()]
    return _markdown(frame, numeric=len(mus) + 1) + "".join(dense)


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
