"""Distilled low-rank students (seed 004): the cells, the figure and the README table."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..majority import no_skill
from .errors import NothingToDraw
from .markdown import _bold_best, _markdown
from .no_skill import LABELS, no_skill_line


STUDENT_OBJECTIVES = {"none": "untrained", "ce": "CE", "kd": "KD", "pkd": "PKD (best β)"}
HEADLINE_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1"}


def student_headline(results: pd.DataFrame) -> str:
    """The table's headline metric: ``macro_f1`` where the cells scored validation macro-F1 (the
    three-class teacher), else ``accuracy`` (the binary one)."""
    return "macro_f1" if "val_macro_f1" in results and results.val_macro_f1.notna().any() else "accuracy"


def _variants(ok: pd.DataFrame) -> pd.Series:
    """Each cell's row label: the student, with its fit or weight options where they are not the default."""
    label = ok.student.astype(str)
    if "fit" in ok:
        label = label.where(ok.fit.fillna("svd") != "sgd", label + " (SGD fit)")
    if "reconstruct" in ok:
        label = label.where(~ok.reconstruct.fillna(False).astype(bool), label + " (reconstructed)")
    return label


def _ok_cells(results: pd.DataFrame) -> pd.DataFrame:
    ok = results[results.status == "ok"].copy()
    ok["variant"] = _variants(ok)
    ok["seed"] = ok.seed.fillna(0).astype(int) if "seed" in ok else 0
    return ok


def _best_pkd(pkd: pd.DataFrame, headline: str) -> pd.DataFrame:
    """The PKD cells (every seed) at the beta chosen on validation: the best mean validation score over
    the seeds that every beta ran (the whole grid at 3 seeds, or a grid searched at one seed and the chosen
    beta run at more; ties: the smaller beta)."""
    if not len(pkd):
        return pkd
    common = set.intersection(*(set(d.seed) for _, d in pkd.groupby("beta")))
    if not common:  # no seed at which the betas can be compared
        ran = {b: sorted(d.seed) for b, d in pkd.groupby("beta")}
        raise ValueError(f"the PKD betas ran at no common seed ({ran}); run the whole grid at one seed at least")
    means = pkd[pkd.seed.isin(common)].groupby("beta")[f"val_{headline}"].mean()
    return pkd[pkd.beta == means[means == means.max()].index.min()]


def student_cells(results: pd.DataFrame) -> pd.DataFrame:
    """One row per student (and fit or weight variant): the headline test metric (%, the mean over
    seeds) untrained, after CE, KD and PKD at the ``beta`` with the best mean validation score (ties:
    the smaller beta), that beta, the most seeds any trained objective ran, the share of the untrained
    student's loss against the teacher that PKD recovers, and the footprint against the teacher
    (stored numbers, MACs per token, measured latency). ``attrs``: the headline and the teacher's score."""
    ok = _ok_cells(results)
    h = student_headline(ok)
    teacher = ok[ok.student == "teacher"]
    if not len(teacher) and f"teacher_test_{h}" not in ok:
        raise NothingToDraw("no teacher cell and no untrained student cell (where the teacher is measured)")
    teacher_score = float(teacher[f"test_{h}"].iloc[0]) if len(teacher) else float(ok[f"teacher_test_{h}"].median())
    rows = []
    for name, g in ok[ok.student != "teacher"].groupby("variant", sort=False):
        by = {o: g[g.objective == o] for o in STUDENT_OBJECTIVES}
        pkd = _best_pkd(by["pkd"], h)
        score = {o: (100 * float(d[f"test_{h}"].mean()) if len(d) else float("nan"))
                 for o, d in {**by, "pkd": pkd}.items()}
        ref = (by["none"] if len(by["none"]) else g).iloc[0]  # latency is measured in the untrained cell
        trained = {o: d for o, d in {"ce": by["ce"], "kd": by["kd"], "pkd": pkd}.items() if len(d)}
        best = max(trained, key=lambda o: trained[o][f"val_{h}"].mean()) if trained else None
        rows.append({"student": name, **{STUDENT_OBJECTIVES[o]: v for o, v in score.items()},
                     "best β": float(pkd.beta.iloc[0]) if len(pkd) else float("nan"),
                     "seeds": max(len(by["ce"]), len(by["kd"]), len(pkd)),
                     "best trained": best or "",
                     "recovered": (score[best] - score["none"]) / (100 * teacher_score - score["none"]) if best
                     else float("nan"),
                     "params": 100 * ref.param_fraction, "MACs": 100 * ref.mac_fraction,
                     "latency": ref.latency_ms / ref.teacher_latency_ms})
    out = pd.DataFrame(rows)
    out.attrs["headline"], out.attrs["teacher_score"] = h, 100 * teacher_score
    out.attrs["teacher_accuracy"] = out.attrs["teacher_score"]  # the name the binary table's callers used
    return out


def student_verdicts(results: pd.DataFrame) -> pd.DataFrame:
    """Per student with recorded predictions: PKD at its best beta minus KD, KD minus CE, and the best trained
    objective (by mean validation score) minus the teacher, each on the headline metric (points) with
    its paired bootstrap 95 % interval over the same test examples and, where both arms ran several
    seeds, over seeds too (run i of each arm shares seed i). Columns: student, comparison, seeds,
    difference, lo, hi, verdict; empty where no cell kept its predictions."""
    from ..scores import decode_predictions, paired_interval
    ok = _ok_cells(results)
    if "test_predictions" not in ok or "test_labels" not in ok or not ok.test_labels.notna().any():
        return pd.DataFrame(columns=["student", "comparison", "seeds", "difference", "lo", "hi", "verdict"])
    h = student_headline(ok)
    labels = decode_predictions(ok.test_labels.dropna().iloc[0])
    teacher = ok[(ok.student == "teacher") & ok.test_predictions.notna()]

    def runs(d: pd.DataFrame) -> np.ndarray:
        return np.stack([decode_predictions(p) for p in d.sort_values("seed").test_predictions])
    rows = []
    for name, g in ok[(ok.student != "teacher") & ok.test_predictions.notna()].groupby("variant", sort=False):
        kd, pkd, ce = g[g.objective == "kd"], _best_pkd(g[g.objective == "pkd"], h), g[g.objective == "ce"]
        pairs = []
        if len(kd) and len(pkd):
            pairs.append(("PKD − KD", pkd, kd))
        if len(kd) and len(ce):
            pairs.append(("KD − CE", kd, ce))
        trained = [d for d in (ce, kd, pkd) if len(d)]
        if trained and len(teacher):
            best = max(trained, key=lambda d: d[f"val_{h}"].mean())
            pairs.append((f"best trained ({best.objective.iloc[0]}) − teacher", best, teacher))
        for comparison, a, b in pairs:
            same = len(a) == len(b) and sorted(a.seed) == sorted(b.seed)
            iv = paired_interval(labels, runs(a), runs(b), h, paired_runs=same)
            rows.append({"student": name, "comparison": comparison, "seeds": len(a), "difference": 100 * iv.difference,
                         "lo": 100 * iv.lo, "hi": 100 * iv.hi, "verdict": iv.verdict})
    return pd.DataFrame(rows)


def student_beta_grid(results: pd.DataFrame) -> pd.DataFrame:
    """For each student distilled with KD and with PKD at several betas (the three-class table: PKD's
    ``layers3``): a row for KD and one per beta, with the seeds, the mean validation and test
    headline metric (%), the test spread over seeds (sd) and, where the cells kept their predictions,
    PKD(β) − KD in points with its paired bootstrap 95 % interval over the same test examples and the
    seeds (run i of each shares seed i; KD taken at the seeds that beta ran) and the verdict.
    Columns: student, objective, beta, seeds, val, test, test_sd, difference, lo, hi, verdict."""
    from ..scores import decode_predictions, paired_interval
    ok = _ok_cells(results)
    cols = ["student", "objective", "beta", "seeds", "val", "test", "test_sd", "difference", "lo", "hi", "verdict"]
    h = student_headline(ok)
    labelled = "test_labels" in ok and ok.test_labels.notna().any() and "test_predictions" in ok
    labels = decode_predictions(ok.test_labels.dropna().iloc[0]) if labelled else None
    rows = []
    for name, g in ok[ok.student != "teacher"].groupby("variant", sort=False):
        kd, pkd = g[g.objective == "kd"].sort_values("seed"), g[g.objective == "pkd"]
        if pkd.beta.nunique() < 2 or not len(kd):
            continue
        runs = lambda d: np.stack([decode_predictions(p) for p in d.sort_values("seed").test_predictions])  # noqa: E731
        arms = [("kd", float("nan"), kd)] + [("pkd", b, d.sort_values("seed")) for b, d in pkd.groupby("beta")]
        for objective, beta, d in arms:
            row = {"student": name, "objective": objective, "beta": beta, "seeds": len(d),
                   "val": 100 * d[f"val_{h}"].mean(), "test": 100 * d[f"test_{h}"].mean(),
                   "test_sd": 100 * d[f"test_{h}"].std(ddof=1)}
            base = kd[kd.seed.isin(d.seed)]  # KD at the arm's own seeds: a beta searched at one seed meets KD's run
            if objective == "pkd" and labelled and len(base):
                same = sorted(d.seed) == sorted(base.seed)
                iv = paired_interval(labels, runs(d), runs(base), h, paired_runs=same)
                row.update(difference=100 * iv.difference, lo=100 * iv.lo, hi=100 * iv.hi, verdict=iv.verdict)
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def _student_betas_readme(results: pd.DataFrame) -> str:
    """KD against PKD at each beta of the seed's grid on the student that ran it over several seeds: the
    mean validation and test headline metric, the spread over seeds and PKD − KD with its paired interval."""
    grid = student_beta_grid(results)
    if grid.empty:
        raise NothingToDraw("no student distilled with KD and with PKD at several betas")
    h = HEADLINE_LABELS[student_headline(_ok_cells(results))]
    sign = lambda x: f"{x:+.2f}".replace("-", "−")  # noqa: E731
    frame = pd.DataFrame({
        "student": grid.student, "objective": [o.upper() for o in grid.objective],
        "β": ["" if pd.isna(b) else f"{b:g}" for b in grid.beta], "seeds": grid.seeds.astype(str),
        f"validation {h}": grid.val.map("{:.2f}".format),
        f"test {h} (mean ± sd)": [f"{m:.2f}" + ("" if pd.isna(sd) else f" ± {sd:.2f}") for m, sd in
                                   zip(grid.test, grid.test_sd)],
        "PKD − KD [95 %, paired]": ["" if pd.isna(d) else f"{sign(d)} [{sign(lo)}, {sign(hi)}] {v}"
                                    for d, lo, hi, v in zip(grid.difference, grid.lo, grid.hi, grid.verdict)]})
    return _markdown(frame, numeric=4)


def _no_skill(headline: str) -> float:
    return no_skill(headline, "tweets3" if headline == "macro_f1" else "tweets")


def _student_table(results: pd.DataFrame):
    """Seed 004's students: the headline test metric by training objective (bars: the mean over
    seeds), and where the best trained objective (on validation) leaves each student against its
    measured latency."""
    cells = student_cells(results)
    h = cells.attrs["headline"]
    metric = f"test {HEADLINE_LABELS[h]} (%)"
    long = cells.melt(id_vars="student", value_vars=list(STUDENT_OBJECTIVES.values()), var_name="objective",
                      value_name=metric)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1.7, 1]})
    sns.barplot(data=long, x="student", y=metric, hue="objective", ax=axes[0], seed=0)
    axes[0].tick_params(axis="x", rotation=30)
    majority = _no_skill(h)
    lo = max(0.0, min(long[metric].min(), majority) - 5)
    axes[0].set(ylim=(lo, 101), xlabel="", title=f"{HEADLINE_LABELS[h]} by training objective")
    # one row above the bars (the best reach the teacher's line)
    sns.move_legend(axes[0], "upper center", ncol=4, fontsize=8, title=None, frameon=True)
    # the best trained objective of each student (on validation): PKD where it won, else KD or CE
    best = pd.Series([r[STUDENT_OBJECTIVES[r["best trained"]]] if r["best trained"] else np.nan
                      for _, r in cells.iterrows()], index=cells.index)
    pkd = best.dropna()
    axes[1].scatter(cells.latency[pkd.index], pkd)
    # neighbours in latency sit at about the same score: labels alternate above and below, slanted
    for i, (k, r) in enumerate(cells.loc[pkd.index].sort_values("latency").iterrows()):
        up = i % 2 == 0
        axes[1].annotate(r.student, (r.latency, best[k]), fontsize=7, rotation=25 if up else -25,
                         xytext=(3, 3) if up else (3, -3), textcoords="offset points", va="bottom" if up else "top")
    axes[1].set(xlabel="latency / teacher (CPU, 1 thread)", ylabel=f"best trained {metric}", title="quality vs time",
                # nan-safe: a table of untrained cells only (make run's) has no trained score
                ylim=(np.nanmin([pkd.min(), majority]) - 3, np.nanmax([pkd.max(), cells.attrs["teacher_score"]]) + 4), xlim=(cells.latency.min() - 0.1, cells.latency.max() + 0.35))
    for ax in axes:
        ax.axhline(cells.attrs["teacher_score"], color="0.3", ls="--", lw=1)
        no_skill_line(ax, majority, label=LABELS[h])
    fig.suptitle(f"Which low-rank student keeps the teacher's {HEADLINE_LABELS[h]} once distilled, and at what speed?",
                 y=1.02)
    return fig, cells.round(4)


def _student_readme(results: pd.DataFrame) -> str:
    """Students by row: the headline test metric untrained / CE / KD / PKD (best β on validation; the
    mean over seeds; the best trained objective of each row in bold), the seeds where any row ran more
    than one, PKD − KD and the best trained objective − the teacher with their paired intervals and
    verdicts where the cells kept their predictions,
    the share of the loss the best trained objective (on validation) recovers, footprint against the teacher;
    the teacher in a line under it."""
    cells = student_cells(results)
    h = cells.attrs["headline"]
    acc = cells[list(STUDENT_OBJECTIVES.values())]
    shown = acc.copy()
    shown[acc.columns[1:]] = _bold_best(acc[acc.columns[1:]].T, lower=False, fmt="{:.2f}").T
    shown[acc.columns[0]] = acc[acc.columns[0]].map("{:.2f}".format)
    extra = {}
    if (cells.seeds > 1).any():
        extra["seeds"] = cells.seeds.map(lambda n: str(n) if n else "")
    verdicts = student_verdicts(results)
    if len(verdicts):
        d = verdicts[verdicts.comparison == "PKD − KD"].set_index("student")
        sign = lambda x: f"{x:+.2f}".replace("-", "−")  # noqa: E731
        extra["PKD − KD [95 %]"] = [f"{sign(d.difference[s])} [{sign(d.lo[s])}, {sign(d.hi[s])}] {d.verdict[s]}"
                                    if s in d.index else "" for s in cells.student]
        t = verdicts[verdicts.comparison.str.endswith("− teacher")].set_index("student")
        if len(t):
            extra["best − teacher [95 %]"] = [f"{sign(t.difference[s])} [{sign(t.lo[s])}, {sign(t.hi[s])}] "
                                              f"{t.verdict[s]}" if s in t.index else "" for s in cells.student]
    frame = pd.concat([cells[["student"]], shown, pd.DataFrame(extra, index=cells.index),
                       pd.DataFrame({"best β": cells["best β"].map(lambda b: "" if pd.isna(b) else f"{b:g}"),
                                     "training recovers": [f"{r:.0%} ({o})" if o else "" for r, o in
                                                           zip(cells.recovered, cells["best trained"])],
                                     "params": cells.params.map("{:.1f} %".format),
                                     "MACs": cells.MACs.map("{:.1f} %".format),
                                     "latency": cells.latency.map("{:.2f}×".format)})], axis=1)
    teacher = (f"Teacher (`minilm-l6` fine-tuned on tweets): {cells.attrs['teacher_score']:.2f} %." if h == "accuracy"
               else f"Teacher (`minilm-l6` fine-tuned on the three-class tweets): {cells.attrs['teacher_score']:.2f} % "
                    f"{HEADLINE_LABELS[h]}.")
    return _markdown(frame, numeric=frame.shape[1] - 1) + "\n\n" + teacher
