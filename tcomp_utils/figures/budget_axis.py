"""The budget axis: MACs per token and the attention core's share against sequence length (figure only)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


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
