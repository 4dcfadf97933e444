"""Figures from results tables only: no model is loaded, so ``make figures`` takes seconds.

Each figure reads a results CSV that a sweep wrote under ``papermill_runs/``, draws it in the
project's one style and writes ``figures/<name>.png`` with ``figures/<name>.csv`` (the exact
data plotted) beside it.

    python -m tcomp_utils.figures [--out figures] [NAME ...]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
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


def _offline_accuracy(results: pd.DataFrame):
    """Seed 000's table: test accuracy with no fine-tuning, rows method × roles × mode, columns ratio."""
    ok = results[(results.status == "ok") & (_finetune_steps(results) == 0)].copy()
    ok["variant"] = _label(ok)
    ok["test accuracy (%)"] = 100 * ok.test_accuracy
    baseline = 100 * ok.baseline_test_accuracy.iloc[0]
    ratios = sorted(ok.ratio.unique())
    grid = sns.relplot(data=ok, x="ratio", y="test accuracy (%)", hue="variant", style="variant", col="roles",
                       col_order=["qkv", "ffn"], kind="line", markers=True, dashes=False, height=3.6, aspect=1.15)
    for ax in grid.axes.flat:
        ax.axhline(baseline, color="0.3", ls="--", lw=1)
        ax.text(ratios[-1], baseline, " uncompressed", va="bottom", ha="right", fontsize=8, color="0.3")
        ax.set_xscale("log")
        ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
        ax.minorticks_off()
    grid.set_titles("{col_name}")
    grid.set_axis_labels("compression ratio of stored numbers", "test accuracy (%)")
    grid.figure.suptitle("Offline compression of the tweet-sentiment task model: accuracy vs ratio, no fine-tuning", y=1.04)
    table = ok.pivot_table(index=["roles", "method", "mode"], columns="ratio", values="test_accuracy").round(4)
    table.columns = [f"ratio_{r:g}" for r in table.columns]
    return grid.figure, table.reset_index()


def _offline_finetune(results: pd.DataFrame):
    """The seed's downstream protocol on the smaller grid: offline vs after a short fine-tuning."""
    tuned = results[(results.status == "ok") & (_finetune_steps(results) > 0)].copy()
    tuned["variant"] = _label(tuned) + " " + tuned.roles + " ×" + tuned.ratio.map("{:g}".format)
    data = tuned[["variant", "method", "mode", "roles", "ratio", "finetune_steps", "test_accuracy",
                  "finetuned_test_accuracy"]].sort_values("finetuned_test_accuracy").reset_index(drop=True)
    long = data.melt(id_vars="variant", value_vars=["test_accuracy", "finetuned_test_accuracy"],
                     var_name="when", value_name="accuracy")
    long["when"] = long.when.map({"test_accuracy": "offline", "finetuned_test_accuracy":
                                  f"after {int(data.finetune_steps.iloc[0])} fine-tuning steps"})
    long["test accuracy (%)"] = 100 * long.accuracy
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(data) + 1.2))
    sns.barplot(data=long, y="variant", x="test accuracy (%)", hue="when", ax=ax)
    ax.axvline(100 * tuned.baseline_test_accuracy.iloc[0], color="0.3", ls="--", lw=1, label="uncompressed")
    ax.set(ylabel="", xlim=(40, 100), title="Short fine-tuning recovers what offline compression loses")
    ax.legend(loc="lower right", fontsize=8)
    return fig, data


def _gptq_table(results: pd.DataFrame):
    """Perplexity (decoder) and test accuracy (task model) against bits, RTN vs GPTQ, by grouping."""
    ok = results[results.status == "ok"].copy()
    ok["grid"] = ok.group_size.map(lambda g: "per channel" if g == 0 else f"g{g:g}").where(ok.method != "fp32", "-")
    ok["metric"] = ok.perplexity.where(ok.model == "smollm2-135m", 100 * ok.test_accuracy)
    base = ok[ok.method == "fp32"].set_index("model").metric
    q = ok[ok.method != "fp32"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, model, ylabel in zip(axes, ("smollm2-135m", "minilm-l6-tweets"),
                                 ("perplexity (held-out prose)", "test accuracy (%)")):
        d = q[q.model == model]
        sns.lineplot(data=d, x="bits", y="metric", hue="method", style="grid", markers=True, ax=ax,
                     hue_order=["rtn", "gptq"], style_order=["per channel", "g128"])
        ax.axhline(base[model], color="0.3", ls="--", lw=1)
        ax.text(8, base[model], "fp32", fontsize=8, va="bottom", ha="right", color="0.3")
        ax.set(xticks=sorted(d.bits.unique()), xlabel="bits per weight (codes)", ylabel=ylabel, title=model)
        if model == "smollm2-135m":
            ax.set_yscale("log")
    axes[1].get_legend().remove()
    fig.suptitle("Post-training quantization: RTN vs GPTQ (all linear layers; embeddings in fp32)", y=1.02)
    table = ok.pivot_table(index=["model", "method", "grid"], columns="bits", values="metric").round(3)
    table.columns = [f"bits_{b:g}" for b in table.columns]
    return fig, table.reset_index()


FIGURES = {f.name: f for f in [
    Figure("budget_axis_macs", "papermill_runs/budget_axis/results.csv", "papermill_runs/budget_axis.yaml", _budget_axis),
    Figure("baselines_by_role", "papermill_runs/baselines/by_role.csv", "papermill_runs/baselines.yaml", _baselines_by_role),
    Figure("offline_compression_accuracy", "papermill_runs/offline_compression/results.csv",
           "papermill_runs/offline_compression.yaml", _offline_accuracy),
    Figure("offline_compression_finetune", "papermill_runs/offline_compression/results.csv",
           "papermill_runs/offline_compression.yaml", _offline_finetune),
    Figure("gptq_table", "papermill_runs/gptq_table/results.csv", "papermill_runs/gptq_table.yaml", _gptq_table),
]}


def build(names: list[str] | None = None, out: Path | None = None, root: Path = REPO_ROOT) -> list[Path]:
    """Draw the named figures (all by default) from their results tables into ``out``."""
    out = Path(out or root / "figures")
    unknown = [n for n in names or [] if n not in FIGURES]
    if unknown:
        raise KeyError(f"unknown figure(s) {unknown}; known: {', '.join(FIGURES)}")
    missing = [f.source for f in FIGURES.values() if (not names or f.name in names) and not (root / f.source).is_file()]
    if missing:
        raise FileNotFoundError(f"missing results table(s) {missing}: run their sweeps first (make run)")
    style()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fig_spec in (FIGURES[n] for n in (names or FIGURES)):
        fig, data = fig_spec.draw(pd.read_csv(root / fig_spec.source))
        png, csv = out / f"{fig_spec.name}.png", out / f"{fig_spec.name}.csv"
        fig.savefig(png.with_name(f".{png.name}.tmp.png"))
        png.with_name(f".{png.name}.tmp.png").replace(png)
        data.to_csv(csv.with_name(f".{csv.name}.tmp"), index=False, float_format="%.6g")
        csv.with_name(f".{csv.name}.tmp").replace(csv)
        plt.close(fig)
        written += [png, csv]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcomp_utils.figures", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"figures to build (default all: {', '.join(FIGURES)})")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default figures/)")
    args = parser.parse_args(argv)
    for path in build(args.names or None, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
