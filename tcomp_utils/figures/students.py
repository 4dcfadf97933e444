"""Distilled low-rank students (seed 004): the cells, the figure and the README table."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..majority import majority_accuracy
from .errors import NothingToDraw
from .markdown import _bold_best, _markdown
from .no_skill import no_skill_line


STUDENT_OBJECTIVES = {"none": "untrained", "ce": "CE", "kd": "KD", "pkd": "PKD (best β)"}


def student_cells(results: pd.DataFrame) -> pd.DataFrame:
    """One row per student: test accuracy (%) untrained, after CE, KD and PKD at the ``beta`` with
    the best validation accuracy (ties: the smaller beta), that beta, the share of the untrained
    student's loss against the teacher that PKD recovers, and the footprint against the teacher
    (stored numbers, MACs per token, measured latency)."""
    ok = results[results.status == "ok"]
    teacher = ok[ok.student == "teacher"]
    if not len(teacher) and "teacher_test_accuracy" not in ok:
        raise NothingToDraw("no teacher cell and no untrained student cell (where the teacher is measured)")
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
    majority = majority_accuracy()
    lo = max(0.0, min(long["test accuracy (%)"].min(), majority) - 5)
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
                ylim=(min(pkd.min(), majority) - 3, pkd.max() + 4), xlim=(cells.latency.min() - 0.1, cells.latency.max() + 0.35))
    for ax in axes:
        ax.axhline(cells.attrs["teacher_accuracy"], color="0.3", ls="--", lw=1)
        no_skill_line(ax, majority)
    fig.suptitle("Which low-rank student keeps the teacher's accuracy once distilled, and at what speed?", y=1.02)
    return fig, cells.round(4)


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
