"""Factorization benchmarks on ``minilm-l6`` (CPU): compression time per method, and latency of
the factorized model against the dense one at matched parameter ratios, with MACs counted next
to the time measured.

    python benchmarks/bench_factorize.py [--threads 2] [--tokens 4096] [--runs 20] [--out benchmarks/results]

Prints three tables and writes them as CSV under ``--out``:

* ``compression_time``: seconds to factorize the Q/K/V or FFN weights of all 6 layers at ratio 3;
* ``ffn_latency``: one layer's FFN (``ffn_in`` then GELU then ``ffn_out``) on ``--tokens`` tokens,
  dense vs each method at ratios 2, 3 and 10 of stored numbers;
* ``model_latency``: the whole encoder on a batch of 32 tweets padded to 128 tokens, dense vs
  every FFN factorized (SVD) at the same ratios.

Latency is the median of ``--runs`` timed calls after warm-up, with ``--threads`` torch threads
(:func:`tcomp_utils.metrics.latency`); numbers depend on the machine, the table says which.
"""
from __future__ import annotations

import copy

import pandas as pd
import torch
from torch import nn

from tcomp_utils import adapters, budget, models, task_models, tasks
from tcomp_utils.methods.factorization import factorize
from tcomp_utils.metrics import latency

from bench_common import setup, show

RATIOS = (2, 3, 10)
FFN_METHODS = [("svd", "separated"), ("svd", "concatenated"), ("tucker", "concatenated"),
               ("kronecker", "separated"), ("falcon", "separated")]
TIME_METHODS = [("svd", "separated", "qkv"), ("svd", "concatenated", "qkv"), ("asvd", "separated", "qkv"),
                ("fwsvd", "separated", "qkv"), ("tucker", "qkv", "qkv"), ("tucker", "concatenated", "qkv"),
                ("tucker", "qkv-concatenated", "qkv"), ("kronecker", "separated", "qkv"),
                ("falcon", "separated", "qkv"), ("svd", "separated", "ffn"), ("svd", "concatenated", "ffn"),
                ("asvd", "separated", "ffn"), ("fwsvd", "separated", "ffn"), ("tucker", "concatenated", "ffn"),
                ("kronecker", "separated", "ffn"), ("falcon", "separated", "ffn")]


class FFN(nn.Module):
    """``ffn_out(gelu(ffn_in(x)))`` of one encoder layer: x (tokens, hidden) -> (tokens, hidden)."""

    def __init__(self, ffn_in: nn.Module, ffn_out: nn.Module):
        super().__init__()
        self.ffn_in, self.ffn_out = ffn_in, ffn_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_out(nn.functional.gelu(self.ffn_in(x)))


def layer_ffn(model: nn.Module, layer: int = 0) -> FFN:
    return FFN(*(adapters.find_modules(model, role, [layer])[0].module for role in ("ffn_in", "ffn_out")))


def ffn_counts(ffn: FFN) -> tuple[int, float]:
    """Stored numbers (shared factors counted once) and MACs per token of one FFN."""
    fp = budget.footprint(ffn)
    return fp.params, fp.macs


def main() -> None:
    args, out = setup(__doc__, "minilm-l6 factorization benchmarks", tokens=4096)

    model, tok = models.load_model("minilm-l6", "sequence-classification", num_labels=2)
    task = tasks.load_task("tweets")
    calibration = task_models.calibration_batches(tok, task["train"], task.spec, n=128)

    rows = []
    for method, mode, roles in TIME_METHODS:
        report = factorize(copy.deepcopy(model), method, roles, ratio=3, mode=mode,
                                     calibration=calibration if method in ("asvd", "fwsvd") else None)
        rows.append(dict(method=method, mode=mode, roles=roles, ratio=3, modules=len(report.modules),
                         seconds=report.seconds, mean_rel_error=round(report.modules.rel_error.mean(), 4)))
    show("compression_time", pd.DataFrame(rows), out, "Compression time, ratio 3 of stored numbers, all 6 layers")

    x = torch.randn(args.tokens, model.config.hidden_size)
    dense = layer_ffn(model)
    d_params, d_macs = ffn_counts(dense)
    d_ms = latency(lambda: dense(x), runs=args.runs, threads=args.threads).median_ms
    rows = [dict(method="dense", mode="", ratio=1, params=d_params, macs_per_token=d_macs, macs_ratio=1.0,
                 median_ms=round(d_ms, 3), speedup=1.0)]
    for ratio in RATIOS:
        for method, mode in FFN_METHODS:
            net = copy.deepcopy(model)
            factorize(net, method, "ffn", ratio=ratio, mode=mode)
            ffn = layer_ffn(net)
            params, macs = ffn_counts(ffn)
            ms = latency(lambda: ffn(x), runs=args.runs, threads=args.threads).median_ms
            rows.append(dict(method=method, mode=mode, ratio=ratio, params=params, macs_per_token=macs,
                             macs_ratio=round(d_macs / macs, 3), median_ms=round(ms, 3), speedup=round(d_ms / ms, 3)))
    show("ffn_latency", pd.DataFrame(rows), out,
         f"One FFN (layer 0) on {args.tokens} tokens: params (shared factors whole), MACs/token, median latency")

    texts = task["test"]["text"][:32]
    batch = tok(texts, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    rows = []
    for ratio in (None, *RATIOS):
        net = copy.deepcopy(model)
        if ratio:
            factorize(net, "svd", "ffn", ratio=ratio)
        fp = budget.footprint(net, seq_len=128)
        ms = latency(lambda: net(**batch), runs=args.runs, threads=args.threads).median_ms
        rows.append(dict(ffn="dense" if ratio is None else f"svd ratio {ratio}", params=fp.params,
                         macs_per_token=fp.macs, median_ms=round(ms, 2)))
    table = pd.DataFrame(rows)
    table["macs_ratio"] = (table.macs_per_token[0] / table.macs_per_token).round(3)
    table["speedup"] = (table.median_ms[0] / table.median_ms).round(3)
    show("model_latency", table, out, "Whole encoder, 32 tweets × 128 tokens: dense vs every FFN factorized by SVD")



if __name__ == "__main__":
    main()
