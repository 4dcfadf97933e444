"""Quantization-aware training vs post-training quantization (seed 003): the cells, the figure
and the README table."""
from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
import seaborn as sns

from .markdown import _bold_best, _markdown


QAT_TARGETS = {"attention": "attention linear", "linear": "all linear", "attention+embeddings": "attention + embeddings"}
QAT_PROTOCOLS = ["QAT from scratch", "QAT fine-tuning", "PTQ (seed's grid)", "PTQ RTN", "PTQ GPTQ"]
QAT_FLOAT = {"fp32": "fp32", "fp32_finetune": "fp32 fine-tuning"}  # the trained model; the same epochs, no quantizer


def _qat_cells(results: pd.DataFrame) -> pd.DataFrame:
    """The QAT table's cells with labels: ``row`` (the seed's row: fp32, binary, row-scaled binary or
    b-bit), ``target`` (its label), ``protocol`` (one of :data:`QAT_PROTOCOLS` or :data:`QAT_FLOAT`), ``stored_bits``
    (bits a quantized weight takes: b + 1 for the seed's b-bit grid, whose sign is stored apart),
    BLEU, chrF and MB of the whole model as stored; ``rounding`` ``"nearest"``, or ``"stochastic"`` for
    the seed's stochastic re-quantization at evaluation (a row of its own where a cell recorded draws:
    BLEU the mean over them). Where the cells recorded them: ``diff``, ``diff_lo``, ``diff_hi`` and
    ``verdict``, the BLEU difference to the fp32 model on the same test sentences with its paired
    95 % bootstrap interval (over the draws too), and ``ood_bleu`` (out of domain)."""
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
    ok["rounding"] = "nearest"
    columns = ["row", "target", "protocol", "rounding", "stored_bits", "test_bleu", "test_chrf", "MB"]
    paired = {"test_bleu_diff": "diff", "test_bleu_diff_lo": "diff_lo", "test_bleu_diff_hi": "diff_hi",
              "test_bleu_verdict": "verdict", "ood_test_bleu": "ood_bleu"}
    ok = ok.rename(columns={k: v for k, v in paired.items() if k in ok})
    columns += [v for k, v in paired.items() if v in ok]
    if "stochastic_test_bleu" not in ok:
        return ok[columns].reset_index(drop=True)
    drawn = ok[ok.stochastic_test_bleu.notna()].copy()
    drawn["rounding"], drawn["test_bleu"], drawn["test_chrf"] = "stochastic", drawn.stochastic_test_bleu, float("nan")
    for k, v in (("diff", "diff"), ("diff_lo", "diff_lo"), ("diff_hi", "diff_hi"), ("verdict", "verdict")):
        drawn[v] = drawn[f"stochastic_test_bleu_{k}"]
    if "ood_bleu" in drawn:
        drawn["ood_bleu"] = float("nan")
    return pd.concat([ok[columns], drawn[columns]], ignore_index=True)


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
        d = q[(q.target == target) & (q.rounding == "nearest")]
        binary = d.row.str.startswith("binary")
        kw = dict(x="stored_bits", y="test_bleu", hue="protocol", style="protocol", ax=ax, hue_order=QAT_PROTOCOLS,
                  style_order=QAT_PROTOCOLS)
        if (~binary).any():  # the b-bit grids as lines, binary weights as points at 1 bit
            sns.lineplot(data=d[~binary], markers=True, dashes=False, markersize=8, seed=0, **kw)
        sns.scatterplot(data=d[binary], s=60, legend=(~binary).sum() == 0, **kw)
        drawn = q[(q.target == target) & (q.rounding == "stochastic")]
        palette = dict(zip(QAT_PROTOCOLS, sns.color_palette(n_colors=len(QAT_PROTOCOLS))))
        for protocol, part in drawn.groupby("protocol"):  # the seed's stochastic re-quantization: dashed, same colour
            part = part.sort_values("stored_bits")
            ax.plot(part.stored_bits, part.test_bleu, ls="--", lw=1, marker="x", color=palette[protocol])
        for _, r in d[binary].iterrows():
            ax.annotate("scaled" if "scaled" in r.row else "sign", (r.stored_bits, r.test_bleu), fontsize=7,
                        xytext=(4, 0), textcoords="offset points", va="center")
        for (protocol, bleu), ls in zip(floats.items(), ("--", ":")):
            ax.axhline(bleu, color="0.3", ls=ls, lw=1, label=protocol)
        if len(drawn):
            ax.plot([], [], ls="--", marker="x", color="0.5", label="stochastic re-quantization (mean of draws)")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set(xticks=sorted(d.stored_bits.unique()), xlabel="stored bits per quantized weight",
               ylabel="test BLEU", title=target)
    axes[0][0].legend(*axes[0][0].get_legend_handles_labels(), fontsize=8)  # the protocols and the fp32 lines
    for ax in axes[0][1:]:
        if ax.get_legend():
            ax.get_legend().remove()
    fig.suptitle("Quantization-aware training vs post-training quantization", y=1.02)
    return fig, cells.sort_values(["target", "row", "protocol"]).round(3)


def _qat_cell_text(r) -> str:
    """A README cell: BLEU, and where recorded its difference to fp32 with the paired interval and the
    verdict read from it (≈: the interval covers 0)."""
    text = f"{r.test_bleu:.2f}"
    if "diff" in r and pd.notna(r["diff"]):
        text += f" ({r['diff']:+.2f} [{r.diff_lo:+.2f}, {r.diff_hi:+.2f}] {r.verdict})"
    return text


def _qat_readme(results: pd.DataFrame) -> str:
    """Seed 003's rows (target × row), columns the stored bits, the model's MB and test BLEU per
    protocol (the best of each row in bold; where recorded, each cell's difference to fp32 on the same
    test sentences with its paired 95 % interval and verdict); RTN and GPTQ rows below with their BLEU
    under PTQ; the seed's stochastic re-quantization at evaluation in a table of its own; the fp32
    model and its fine-tuned control in lines under the tables."""
    cells = _qat_cells(results)
    floats = cells[cells.row == "fp32"]
    out = []
    for rounding, part in cells[cells.row != "fp32"].groupby("rounding", sort=True):  # nearest, then stochastic
        q = part.copy()
        on_seed_grid = ~q.protocol.isin(QAT_PROTOCOLS[3:])
        q["method"] = q.protocol.str.removeprefix("PTQ ").where(~on_seed_grid, "QAT / PTQ")
        q["column"] = q.protocol.where(on_seed_grid, QAT_PROTOCOLS[2]).replace({QAT_PROTOCOLS[2]: "PTQ"})
        columns = [c for c in [*QAT_PROTOCOLS[:2], "PTQ"] if c in set(q.column)]
        # rows: targets in the seed's order, the seed's grid before RTN and GPTQ, binary before b-bit (most bits first)
        order = {"target": list(QAT_TARGETS.values()).index, "method": ["QAT / PTQ", "RTN", "GPTQ"].index,
                 "row": lambda r: (0, r) if r.startswith("binary") else (1, -int(r.split("-")[0]))}
        bleu = q.pivot_table(index=list(order), columns="column", values="test_bleu")[columns]
        bleu = bleu.sort_index(key=lambda level: level.map(order[level.name]))
        best = _bold_best(bleu.T, lower=False, fmt="{:.2f}").T.map(lambda v: v.startswith("**"))
        best[bleu.notna().sum(axis=1) < 2] = False  # a row with one protocol has no best
        text = q.set_index([*order, "column"]).apply(_qat_cell_text, axis=1)
        cells_ = pd.DataFrame({c: [("**{}**" if best.loc[i, c] else "{}").format(text[(*i, c)])
                                   if (*i, c) in text.index else "" for i in bleu.index] for c in columns})
        meta = q.groupby(list(order)).agg(bits=("stored_bits", "first"), MB=("MB", "median")).loc[bleu.index]
        frame = pd.concat([bleu.index.to_frame(index=False).rename(columns={"row": "weights"}),
                           pd.DataFrame({"stored bits": meta.bits.astype(str).tolist(),
                                         "MB": [f"{v:.2f}" for v in meta.MB]}),
                           cells_], axis=1)
        if rounding == "stochastic":
            out.append("Stochastic re-quantization at evaluation (the seed's; BLEU the mean over the draws, "
                       "the interval over test sentences and draws):")
        out.append(_markdown(frame, numeric=2 + len(columns)))
    text = "\n\n".join(out)
    for r in floats.itertuples():
        text += f"\n\n{r.protocol}: BLEU {r.test_bleu:.2f}, chrF {r.test_chrf:.1f}, {r.MB:.2f} MB."
    return text
