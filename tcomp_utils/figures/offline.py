"""Offline compression of the tweet task model (seed 000): the accuracy-vs-ratio and fine-tuning
figures and the README table."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from ..majority import no_skill
from .errors import NothingToDraw
from .markdown import _bold_best, _markdown
from .no_skill import LABELS, no_skill_line


def _label(results: pd.DataFrame) -> pd.Series:
    return results.method + " (" + results["mode"] + ")"


def _finetune_steps(results: pd.DataFrame) -> pd.Series:
    """The fine-tuning steps parameter of each cell (absent: 0, offline only)."""
    return results["finetune_steps"].fillna(0) if "finetune_steps" in results else pd.Series(0, index=results.index)


ROLE_ORDER = ["qkv", "ffn", "embeddings"]
METHOD_ORDER = ["svd", "ae", "pruning", "asvd", "fwsvd", "tucker", "kronecker", "falcon"]
MODE_ORDER = ["separated", "concatenated", "qkv", "qkv-concatenated", "values-only"]
# one colour per method, the same in every panel and run: tab10 without its grey (the reference lines' colour)
# and olive (near green); the colorblind palette's orange/vermillion and two pinks read as one at this size.
# One line style and marker per mode.
METHOD_COLOURS = dict(zip(METHOD_ORDER, [sns.color_palette("tab10")[i] for i in (0, 1, 2, 3, 4, 5, 6, 9)]))
MODE_STYLES = {"separated": ("-", "o"), "concatenated": ("--", "s"), "qkv": (":", "^"),
               "qkv-concatenated": ("-.", "D"), "values-only": (":", "x")}
HEADLINE_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1"}


def offline_headline(results: pd.DataFrame) -> str:
    """The table's headline metric: ``macro_f1`` for cells of the three-class task model
    (``model_name`` minilm-l6-tweets3), else ``accuracy`` (the binary one, the committed default)."""
    names = results.model_name.dropna().astype(str) if "model_name" in results else pd.Series(dtype=str)
    return "macro_f1" if names.str.contains("tweets3").any() else "accuracy"


def _no_skill(headline: str) -> float:
    return no_skill(headline, "tweets3" if headline == "macro_f1" else "tweets")


def _with_modes(cells: pd.DataFrame) -> pd.DataFrame:
    """``cells`` with pruning under the seed's values-only count (``count_indices`` False) in a mode of its own."""
    out = cells.copy()
    if "count_indices" in out:
        values_only = out.count_indices.astype(str).str.lower().isin(["false", "0", "0.0"])
        out.loc[values_only, "mode"] = "values-only"
    return out
VARIANT_GID = "offline-variant"  # a variant's line has the gid "offline-variant:<roles>:<method>:<mode>"


def _check_known(cells: pd.DataFrame) -> None:
    """Raise, naming them, on methods or modes the figure has no colour or line style for."""
    for column, known in (("method", METHOD_ORDER), ("mode", MODE_ORDER)):
        unknown = sorted(set(cells[column]) - set(known))
        if unknown:
            raise ValueError(f"offline results hold {column}(s) {unknown}; allowed: {', '.join(known)}")


def _offline_accuracy(results: pd.DataFrame):
    """Seed 000's table: the headline test metric (:func:`offline_headline`) with no fine-tuning, rows
    method × roles × mode, columns ratio; one colour per method, one line style and marker per mode;
    bands: the cell's 95 % bootstrap interval (where recorded)."""
    h = offline_headline(results)
    ok = _with_modes(results[(results.status == "ok") & (_finetune_steps(results) == 0)])
    _check_known(ok)
    metric = f"test {HEADLINE_LABELS[h]} (%)"
    ok[metric] = 100 * ok[f"test_{h}"]
    baseline = 100 * ok[f"baseline_test_{h}"].iloc[0]
    ratios = sorted(ok.ratio.unique())
    cols = [r for r in ROLE_ORDER if r in set(ok.roles)]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.15 * len(cols), 3.6), sharey=True, squeeze=False)
    has_ci = f"test_{h}_lo" in ok and ok[f"test_{h}_lo"].notna().any()
    majority = _no_skill(h)
    for role, ax in zip(cols, axes[0]):
        ax.axhline(baseline, color="0.3", ls="--", lw=1)
        ax.text(ratios[-1], baseline, " uncompressed", va="bottom", ha="right", fontsize=8, color="0.3")
        no_skill_line(ax, majority, label=LABELS[h])
        ax.text(ratios[-1], majority, " no skill", va="bottom", ha="right", fontsize=8, color="0.45")
        for (method, mode), d in ok[ok.roles == role].groupby(["method", "mode"]):
            d = d.groupby("ratio", as_index=False).mean(numeric_only=True)  # a cell measured twice: its mean
            ls, marker = MODE_STYLES[mode]
            ax.plot(d.ratio, d[metric], ls=ls, marker=marker, color=METHOD_COLOURS[method], lw=1.4,
                    ms=5, gid=f"{VARIANT_GID}:{role}:{method}:{mode}")
            if has_ci and d[f"test_{h}_lo"].notna().any():
                d = d[d[f"test_{h}_lo"].notna()]
                ax.fill_between(d.ratio, 100 * d[f"test_{h}_lo"], 100 * d[f"test_{h}_hi"], alpha=0.12,
                                color=METHOD_COLOURS[method], lw=0)
        ax.set_xscale("log")
        ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
        ax.minorticks_off()
        ax.set(title=role, xlabel="compression ratio of stored numbers")
    axes[0][0].set_ylabel(metric)
    methods = [m for m in METHOD_ORDER if m in set(ok.method)]
    modes = [m for m in MODE_ORDER if m in set(ok["mode"])]
    fig.tight_layout()
    legend = dict(fontsize=8, title_fontsize=9, frameon=False)
    fig.legend([Line2D([], [], color=METHOD_COLOURS[m], lw=2) for m in methods], methods, title="method (colour)",
               loc="upper left", bbox_to_anchor=(1.0, 0.95), **legend)
    fig.legend([Line2D([], [], color="0.2", ls=MODE_STYLES[m][0], marker=MODE_STYLES[m][1], lw=1.4) for m in modes],
               modes, title="mode (line, marker)", loc="lower left", bbox_to_anchor=(1.0, 0.05), **legend)
    fig.suptitle(f"Offline compression of the tweet-sentiment task model: {HEADLINE_LABELS[h]} vs ratio, no fine-tuning"
                 + (" (bands: 95 % bootstrap intervals)" if has_ci else ""), y=1.04)
    extra = ("accuracy", "accuracy_lo", "accuracy_hi", "accuracy_std", "macro_f1", "macro_f1_lo", "macro_f1_hi",
             "macro_f1_std", "majority_share")
    values = [f"test_{h}"] + [f"test_{c}" for c in extra if f"test_{c}" in ok and c != h]
    table = ok.pivot_table(index=["roles", "method", "mode"], columns="ratio", values=values)
    table.columns = [f"ratio_{r:g}" if v == f"test_{h}" else f"ratio_{r:g}_{v[len('test_'):]}" for v, r in table.columns]
    table.attrs["headline"] = h
    return fig, table.reset_index()


def offline_twin_accuracy(results: pd.DataFrame, cells: pd.DataFrame, headline: str = "accuracy") -> pd.Series:
    """The headline test score before fine-tuning of each fine-tuned cell in ``cells``: that of its
    offline twin in ``results`` (same method, mode, roles and ratio, no fine-tuning), first seed (the
    model a fine-tuned cell trains); NaN where the twin is missing."""
    off = _with_modes(results[(results.status == "ok") & (_finetune_steps(results) == 0)])
    column = f"test_{headline}_seeds" if f"test_{headline}_seeds" in off else f"test_{headline}"
    first = off[column].astype(str).str.split(";").str[0].astype(float)
    key = ["method", "mode", "roles", "ratio"]
    lookup = dict(zip(map(tuple, off[key].itertuples(index=False)), first))
    cells = _with_modes(cells)
    return pd.Series([lookup.get(tuple(k), float("nan")) for k in cells[key].itertuples(index=False)], index=cells.index)


def _offline_finetune(results: pd.DataFrame):
    """The seed's downstream protocol: offline (the twin cell) vs after a short fine-tuning."""
    h = offline_headline(results)
    tuned = _with_modes(results[(results.status == "ok") & (_finetune_steps(results) > 0)])
    if tuned.empty:
        raise NothingToDraw("no fine-tuned cell")
    tuned["variant"] = _label(tuned) + " " + tuned.roles + " ×" + tuned.ratio.map("{:g}".format)
    tuned[f"offline_test_{h}"] = offline_twin_accuracy(results, tuned, h)
    data = tuned[["variant", "method", "mode", "roles", "ratio", "finetune_steps", f"offline_test_{h}",
                  f"finetuned_test_{h}"]].sort_values(f"finetuned_test_{h}").reset_index(drop=True)
    long = data.melt(id_vars="variant", value_vars=[f"offline_test_{h}", f"finetuned_test_{h}"],
                     var_name="when", value_name="score")
    long["when"] = long.when.map({f"offline_test_{h}": "offline", f"finetuned_test_{h}":
                                  f"after {int(data.finetune_steps.iloc[0])} fine-tuning steps"})
    metric = f"test {HEADLINE_LABELS[h]} (%)"
    long[metric] = 100 * long.score
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(data) + 1.2))
    sns.barplot(data=long, y="variant", x=metric, hue="when", ax=ax, seed=0)
    ax.axvline(100 * tuned[f"baseline_test_{h}"].iloc[0], color="0.3", ls="--", lw=1, label="uncompressed")
    majority = _no_skill(h)
    no_skill_line(ax, majority, axis="x", label=LABELS[h])
    ax.set(ylabel="", xlim=(min(40, majority - 5, long[metric].min() - 5), 100),
           title="Short fine-tuning recovers what offline compression loses")
    ax.legend(loc="lower right", fontsize=8)
    return fig, data


def _offline_table(results: pd.DataFrame) -> str:
    """Rows roles × method × mode, columns ratio: the headline test metric (%) with its 95 % bootstrap
    interval (for the autoencoder, of the mean over its seeds) where recorded; † where every prediction
    is the majority class, ‡ where the score is at or below the no-skill level (percent, as
    :func:`~tcomp_utils.majority.no_skill`); the best of each role group and ratio at equal budget (not
    values-only pruning, whose indices come on top) in bold; where a ratio has fine-tuned cells, a column
    beside it with the score after fine-tuning (the first seed's model)."""
    _, table = _offline_accuracy(results)
    h = table.attrs["headline"]
    floor = _no_skill(h)
    table = table.assign(r=table.roles.map({r: i for i, r in enumerate(["ffn", "qkv", "embeddings"])}),
                         m=table.method.map(METHOD_ORDER.index),
                         o=table["mode"].map(MODE_ORDER.index)).sort_values(["r", "m", "o"])
    ratios = [c for c in table if c.startswith("ratio_") and c.removeprefix("ratio_").replace(".", "").isdigit()]
    tuned = _with_modes(results[(results.status == "ok") & (_finetune_steps(results) > 0)])
    tuned_at = tuned.set_index(["roles", "method", "mode", "ratio"])[f"finetuned_test_{h}"] if len(tuned) else None
    parts = []
    for _, group in table.groupby("r", sort=True):
        # the best at equal budget in bold: values-only pruning stores its indices on top of the ratio
        equal = group["mode"] != "values-only"
        cells = pd.concat([_bold_best(100 * group.loc[equal, ratios], lower=False, fmt="{:.1f}"),
                           (100 * group.loc[~equal, ratios]).map(lambda v: "" if pd.isna(v) else f"{v:.1f}")]
                          ).loc[group.index]
        for c in ratios:
            if f"{c}_{h}_lo" in group:
                lo, hi = 100 * group[f"{c}_{h}_lo"], 100 * group[f"{c}_{h}_hi"]
                cells[c] = [v if pd.isna(a) else f"{v} ({a:.1f}–{b:.1f})" for v, a, b in zip(cells[c], lo, hi)]
            if f"{c}_majority_share" in group:
                cells[c] = [v + "†" if share >= 1 else v for v, share in zip(cells[c], group[f"{c}_majority_share"])]
            cells[c] = [v + "‡" if 100 * score <= floor else v for v, score in zip(cells[c], group[c])]
        columns = {}
        for c in ratios:
            columns[c] = cells[c]
            ratio = float(c.removeprefix("ratio_"))
            if tuned_at is not None and (tuned.ratio == ratio).any():
                columns[f"{c} fine-tuned"] = [
                    f"{100 * tuned_at[k]:.1f}" if k in tuned_at.index else ""
                    for k in zip(group.roles, group.method, group["mode"], [ratio] * len(group))]
        parts.append(pd.concat([group[["roles", "method", "mode"]], pd.DataFrame(columns, index=group.index)], axis=1))
    frame = pd.concat(parts)
    frame = frame.rename(columns={c: "×" + c.removeprefix("ratio_") for c in frame if c.startswith("ratio_")})
    return _markdown(frame, numeric=frame.shape[1] - 3)


# seed 000's comparisons, each "a − b" at the same role group and ratio: (name, a, b) as (method, mode)
OFFLINE_COMPARISONS = [("ae − svd", ("ae", "separated"), ("svd", "separated")),
                       ("ae − svd (both stacked)", ("ae", "concatenated"), ("svd", "concatenated")),
                       ("asvd − svd", ("asvd", "separated"), ("svd", "separated")),
                       ("fwsvd − svd", ("fwsvd", "separated"), ("svd", "separated")),
                       ("stacked − per-module svd", ("svd", "concatenated"), ("svd", "separated")),
                       ("values-only − CSR pruning", ("pruning", "values-only"), ("pruning", "separated"))]
# after fine-tuning: the seed's claim (its autoencoder against every factorization and pruning), and whether a
# data-aware start still matters once the factors are trained
FINETUNED_COMPARISONS = [("ae − svd", ("ae", "separated"), ("svd", "separated")),
                         ("ae − asvd", ("ae", "separated"), ("asvd", "separated")),
                         ("ae − fwsvd", ("ae", "separated"), ("fwsvd", "separated")),
                         ("ae − kronecker", ("ae", "separated"), ("kronecker", "separated")),
                         ("ae − tucker (stacked)", ("ae", "separated"), ("tucker", "concatenated")),
                         ("ae − pruning", ("ae", "separated"), ("pruning", "separated")),
                         ("asvd − svd", ("asvd", "separated"), ("svd", "separated")),
                         ("fwsvd − svd", ("fwsvd", "separated"), ("svd", "separated"))]


def offline_paired(results: pd.DataFrame, dense: np.ndarray | None = None) -> pd.DataFrame:
    """Seed 000's comparisons read from paired intervals, per role group and ratio: offline
    (:data:`OFFLINE_COMPARISONS`; the autoencoder's seeds as runs, so the interval holds their spread
    too), after fine-tuning (:data:`FINETUNED_COMPARISONS`, one fine-tuning run per cell, so the interval
    is over test tweets only), and each fine-tuned cell against its offline twin's first seed (the model
    it fine-tuned: "fine-tuned − offline") and, given the uncompressed model's ``dense`` test predictions
    (examples,), against those ("fine-tuned − dense"). The headline metric in points with its paired
    bootstrap 95 % interval over the same test examples. Columns: stage (offline | fine-tuned), roles, ratio, comparison,
    a, b, difference, lo, hi, verdict (above | below | ≈)."""
    from ..scores import decode_predictions, paired_interval
    h = offline_headline(results)
    ok = _with_modes(results[results.status == "ok"])
    if "test_predictions" not in ok or "test_labels" not in ok:
        raise NothingToDraw("no offline cell kept its predictions")
    steps = _finetune_steps(ok)
    off, tuned = ok[(steps == 0) & ok.test_predictions.notna()], ok[steps > 0]
    tuned = tuned[tuned.finetuned_test_predictions.notna()] if "finetuned_test_predictions" in tuned else None
    labels = decode_predictions(ok.test_labels.dropna().iloc[0])
    key = ["roles", "method", "mode", "ratio"]
    offline_runs = {k: np.stack([decode_predictions(p) for p in str(v).split(";")])
                    for k, v in zip(map(tuple, off[key].itertuples(index=False)), off.test_predictions)}
    tuned_runs = {} if tuned is None else {
        k: decode_predictions(v)[None]
        for k, v in zip(map(tuple, tuned[key].itertuples(index=False)), tuned.finetuned_test_predictions)}
    rows = []

    def compare(stage: str, name: str, a: tuple, b: tuple, runs_a: dict, runs_b: dict, b_label: str = "") -> None:
        if a in runs_a and b in runs_b:
            iv = paired_interval(labels, runs_a[a], runs_b[b], h)
            rows.append({"stage": stage, "roles": a[0], "ratio": a[3], "comparison": name,
                         "a": " ".join(a[1:3]), "b": b_label or " ".join(b[1:3]), "difference": 100 * iv.difference,
                         "lo": 100 * iv.lo, "hi": 100 * iv.hi, "verdict": iv.verdict})
    for (roles, ratio), _ in off.groupby(["roles", "ratio"]):
        for name, a, b in OFFLINE_COMPARISONS:
            compare("offline", name, (roles, *a, ratio), (roles, *b, ratio), offline_runs, offline_runs)
    for roles, ratio in sorted({(k[0], k[3]) for k in tuned_runs}):
        for name, a, b in FINETUNED_COMPARISONS:
            compare("fine-tuned", name, (roles, *a, ratio), (roles, *b, ratio), tuned_runs, tuned_runs)
    first_seed = {k: v[:1] for k, v in offline_runs.items()}
    for k in tuned_runs:
        compare("fine-tuned", "fine-tuned − offline", k, k, tuned_runs, first_seed)
        if dense is not None:
            compare("fine-tuned", "fine-tuned − dense", k, k, tuned_runs, {k: np.asarray(dense)[None]}, "dense")
    if not rows:
        raise NothingToDraw("no pair of cells to compare")
    return pd.DataFrame(rows)


def _offline_paired_readme(results: pd.DataFrame) -> str:
    """The paired verdicts of :func:`offline_paired` as a README table (the three-class model's fine-tuned
    cells also against the committed dense predictions): stage, roles, ratio, comparison, a, b, a − b in
    points, its paired 95 % interval and the verdict in words."""
    from ..majority import committed_dense_predictions
    dense = committed_dense_predictions("tweets3") if offline_headline(results) == "macro_f1" else None
    pairs = offline_paired(results, dense)
    words = {"above": "a above b", "below": "a below b", "≈": "not distinguishable"}
    rows = [{"stage": r.stage, "roles": r.roles, "ratio": f"×{r.ratio:g}", "comparison": r.comparison,
             "a": r.a, "b": r.b, "a − b (pts)": f"{r.difference:+.2f}", "95 % paired interval": f"[{r.lo:+.2f}, {r.hi:+.2f}]",
             "verdict": words[r.verdict]} for r in pairs.itertuples()]
    return _markdown(pd.DataFrame(rows), numeric=0)
