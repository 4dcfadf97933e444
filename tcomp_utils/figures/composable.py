"""Composable fine-tuning (seed 002): the four figures (BLEU, time, curves, units) and the README table."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..scores import seed_interval
from .markdown import _markdown


COMPOSABLE_ARMS = {"baseline": "pruned, model-level only", "composed": "composed from module-level fine-tuned units"}
DENSE_GID = "dense-reference"  # the gid of a panel's dense-model line, by which a test finds it


def composable_bleu(summary: pd.DataFrame):
    """Seed 002's table as a figure: per configuration, validation BLEU before model-level
    fine-tuning and test BLEU after it, for the baseline and the composed model (bars: the mean over
    seeds, points: each seed); each panel's dashed
    line is the dense model's BLEU on that panel's split (``dense_val_bleu``, ``dense_test_bleu``),
    and a panel whose dense score the summary lacks says so instead of drawing another split's."""
    long = pd.concat([_seeds(summary).assign(arm=arm, before=summary[f"val_bleu_before_{arm}"],
                                     after=summary[f"test_bleu_{arm}"])
                      for arm in COMPOSABLE_ARMS], ignore_index=True)
    long["arm"] = long.arm.map(COMPOSABLE_ARMS)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, col, split, dense in ((axes[0], "before", "validation", "dense_val_bleu"),
                                  (axes[1], "after", "test", "dense_test_bleu")):
        sns.barplot(data=long, x="configuration", y=col, hue="arm", ax=ax, hue_order=list(COMPOSABLE_ARMS.values()),
                    errorbar=None, alpha=0.8)
        if long.seed.nunique() > 1:  # each seed a point on its bar
            sns.stripplot(data=long, x="configuration", y=col, hue="arm", ax=ax, dodge=True, legend=False,
                          hue_order=list(COMPOSABLE_ARMS.values()), palette=["0.15", "0.15"], size=3, jitter=False)
        if dense in summary and summary[dense].notna().any():
            ax.axhline(summary[dense].dropna().iloc[0], color="0.3", ls="--", lw=1, label=f"dense model ({split})",
                       gid=DENSE_GID)
        else:
            ax.text(0.01, 0.98, f"dense model's {split} BLEU not recorded", transform=ax.transAxes, ha="left",
                    va="top", fontsize=8, color="0.3")
        ax.set(xlabel="configuration (attention rate, linear rate)", ylabel="BLEU",
               title=f"{col} model-level fine-tuning ({split})")
        ax.tick_params(axis="x", rotation=30)
    axes[0].get_legend().remove()
    axes[1].legend(fontsize=8, loc="lower left")
    fig.suptitle("Does composing module-level fine-tuned units start and end better than pruning alone?", y=1.02)
    return fig, long[["configuration", "seed", "arm", "before", "after"]].round(3)


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
    wide = max(1.1, 3.0 / long.configuration.nunique())  # one or two configurations: panels as wide as the legend
    grid = sns.relplot(data=long, x="step", y="value", hue="arm", col="configuration", row="curve", kind="line",
                       height=2.3, aspect=wide, facet_kws=dict(sharey="row", margin_titles=True),
                       hue_order=list(COMPOSABLE_ARMS.values()), seed=0)  # seed: the same bootstrap bands on every build
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


def _seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with a ``seed`` column (a single-seed table from before seeds were swept counts as seed 0)."""
    return frame if "seed" in frame else frame.assign(seed=0)


def composable_gaps(summary: pd.DataFrame) -> pd.DataFrame:
    """Per configuration, the composed model's test BLEU minus its baseline's, paired by seed (both arms
    of a seed share data order and dropout), with the t interval over seeds and its verdict; a row
    ``all six`` holds each seed's mean over the configurations. Columns: configuration, seeds,
    difference, lo, hi, verdict (needs two seeds or more)."""
    s = _seeds(summary).assign(gap=lambda d: d.test_bleu_composed - d.test_bleu_baseline)
    groups = [(c, g.gap) for c, g in s.groupby("configuration", sort=False)]
    groups.append((f"all {s.configuration.nunique()}", s.groupby("seed").gap.mean()))
    rows = []
    for name, gaps in groups:
        iv = seed_interval(gaps.to_numpy())
        rows.append({"configuration": name, "seeds": len(gaps), "difference": iv.difference, "lo": iv.lo,
                     "hi": iv.hi, "verdict": iv.verdict})
    return pd.DataFrame(rows)


def composable_saving(results: pd.DataFrame) -> pd.DataFrame:
    """The whole set's training seconds without and with composition per seed, and a last row with
    the mean seconds saved and its t interval over seeds (``verdict`` read from it)."""
    r = _seeds(results)
    r = r[r.status == "ok"].sort_values("seed") if "status" in r else r.sort_values("seed")
    rows = [{"seed": str(x.seed), "without composition (s)": x.without_s, "with composition (s)": x.with_s,
             "saved (s)": x.saved_s, "saved (%)": 100 * x.saved_s / x.without_s,
             "reached baseline": f"{int(x.matched)} of {int(x.n_configurations)}"} for x in r.itertuples()]
    if len(r) < 2:
        return pd.DataFrame(rows)
    iv = seed_interval(r.saved_s.to_numpy())
    rows.append({"seed": "mean [95 % interval]", "without composition (s)": r.without_s.mean(),
                 "with composition (s)": r.with_s.mean(), "saved (s)": iv.difference, "lo": iv.lo, "hi": iv.hi,
                 "saved (%)": 100 * iv.difference / r.without_s.mean(), "verdict": iv.verdict,
                 "reached baseline": f"{int(r.matched.sum())} of {int(r.n_configurations.sum())}"})
    return pd.DataFrame(rows)


def _signed(x: float, fmt: str = "{:+.2f}") -> str:
    return fmt.format(x).replace("-", "−")


def _composable_readme(summary: pd.DataFrame) -> str:
    """One row per configuration: its rates, shared units, stored size, the mean over seeds of BLEU
    before and after model-level fine-tuning (baseline / composed), the composed − baseline test BLEU
    with its t interval over seeds and verdict (with two seeds or more), per seed the steps the
    composed model needed to reach its baseline's final validation BLEU ("never": not within its
    steps), and the mean training seconds of the baseline and of the composed model until it reached
    the baseline (all its seconds where it never did, as the set's accounting counts them)."""
    s = _seeds(summary)
    gaps = composable_gaps(s).set_index("configuration") if s.seed.nunique() > 1 else None

    def pair(a: float, b: float, fmt: str = "{:.2f}") -> str:
        return f"{fmt.format(a)} / {fmt.format(b)}"
    rows = []
    for name, g in s.groupby("configuration", sort=False):
        r = g.iloc[0]
        steps = ", ".join("never" if pd.isna(x) else f"{x:.0f}" for x in g.sort_values("seed").steps_to_baseline)
        to_baseline = g.seconds_to_baseline.fillna(g.train_seconds_composed)  # never reached: all its seconds
        row = {"configuration": name, "attention": r.attention, "linear": r.linear,
               "units (shared)": f"{int(r.units)} ({int(r.shared_units)})",
               "stored numbers": f"{100 * r.param_fraction:.1f} %", "MB": f"{r.MB:.2f}",
               "val BLEU before": pair(g.val_bleu_before_baseline.mean(), g.val_bleu_before_composed.mean()),
               "test BLEU after": pair(g.test_bleu_baseline.mean(), g.test_bleu_composed.mean())}
        if gaps is not None:
            d = gaps.loc[name]
            row["composed − baseline [95 %]"] = f"{_signed(d.difference)} [{_signed(d.lo)}, {_signed(d.hi)}] {d.verdict}"
        row["steps to baseline" + (" (per seed)" if gaps is not None else "")] = steps
        row["seconds: baseline / composed to baseline"] = pair(g.train_seconds_baseline.mean(), to_baseline.mean(),
                                                              "{:.0f}")
        rows.append(row)
    return _markdown(pd.DataFrame(rows), numeric=len(rows[0]) - 3)


def _composable_set_readme(results: pd.DataFrame) -> str:
    """The set's time with and without composition per seed and the mean saving with its interval."""
    t = composable_saving(results).reindex(columns=["seed", "without composition (s)", "with composition (s)",
                                                     "saved (s)", "lo", "hi", "verdict", "saved (%)",
                                                     "reached baseline"])
    saved = [_signed(x, "{:+.0f}") + ("" if pd.isna(lo) else f" [{_signed(lo, '{:+.0f}')}, {_signed(hi, '{:+.0f}')}] {v}")
             for x, lo, hi, v in zip(t["saved (s)"], t.lo, t.hi, t.verdict)]
    out = pd.DataFrame({"seed": t.seed,
                        "without composition (s)": t["without composition (s)"].map("{:.0f}".format),
                        "with composition (s)": t["with composition (s)"].map("{:.0f}".format),
                        "saved (s)": saved, "saved (%)": t["saved (%)"].map(lambda v: _signed(v, "{:+.1f}")),
                        "reached baseline": t["reached baseline"]})
    return _markdown(out, numeric=5)
