"""Baselines: the figure of parameters and MACs by module role, and the README tables of the
baselines' scores and of the models' footprints."""
from __future__ import annotations

import pandas as pd
import seaborn as sns

from .markdown import _markdown


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
