"""Quantization benchmarks (CPU): GPTQ time per layer and for the whole of ``smollm2-135m``, and the
int8 CPU path against fp32 on the tweet task model.

    python benchmarks/bench_quantize.py [--threads 2] [--calibration 32] [--runs 20] [--out benchmarks/results]

Prints three tables and writes them as CSV under ``--out``:

* ``gptq_time``: whole-model 4-bit RTN and GPTQ (act-order, the default; per channel and g = 128;
  and per channel in the original column order) of ``smollm2-135m`` on ``--calibration`` × 512-token
  segments of the calibration prose: seconds in all and per phase (capture of the first block's
  inputs, Hessians (block passes with the Gram products), solves, packing (codes and output errors),
  rerun of each quantized block); bytes after; perplexity on the first 4,096 test tokens;
* ``gptq_layer_time``: seconds per layer type (mean over the 30 blocks) for the per-channel run;
* ``int8_latency``: the task model on 32 tweets padded to 128 tokens, fp32 vs torch's dynamic int8
  Linear path (median of ``--runs``), with test accuracy of both on the 2,000 test tweets.

Latency and memory of the quantized decoder itself: ``bench_inference.py``.
"""
from __future__ import annotations

import copy

import pandas as pd

from tcomp_utils import metrics, models, task_models, tasks
from tcomp_utils.metrics import latency
from tcomp_utils.methods.quantization import quantize
from tcomp_utils.methods.quantized import int8_dynamic

from bench_common import setup, show


def main() -> None:
    args, out = setup(__doc__, "quantization benchmarks", calibration=32)

    model, tok = models.load_model("smollm2-135m", "causal-lm")
    prose = tasks.load_task("austen")
    batches = task_models.lm_segments(tok, prose.text("calibration"), n=args.calibration)
    test_ids = tok(prose.text("test"), return_tensors="pt").input_ids[0]
    ppl = lambda m: metrics.perplexity(m, test_ids, seq_len=512, max_tokens=4096, progress=False).perplexity  # noqa: E731
    phases = ("capture", "hessians", "solves", "packing", "rerun")
    rows = [dict(method="fp32", grid="", act_order=None, seconds=0.0, bytes=None, perplexity=ppl(model))]
    layer_table = None
    for method, group_size, act_order in (("rtn", None, None), ("gptq", None, True), ("gptq", 128, True),
                                          ("gptq", None, False)):
        m = copy.deepcopy(model)
        options = {} if act_order is None else {"act_order": act_order}
        report = quantize(m, method, bits=4, group_size=group_size, calibration=batches if method == "gptq" else None,
                          **options)
        rows.append(dict(method=method, grid=report.config.grid().describe(), act_order=act_order,
                         seconds=round(report.seconds, 1), **{p: round(report.phases.get(p, 0.0), 1) for p in phases},
                         bytes=report.after.bytes, perplexity=ppl(m)))
        rows[0]["bytes"] = report.before.bytes
        if method == "gptq" and group_size is None and act_order:
            t = report.modules
            t["type"] = t.path.str.rsplit(".", n=1).str[-1]
            layer_table = t.groupby("type", sort=False).agg(in_features=("in", "first"),
                                                            out_features=("out", "first"),
                                                            layers=("seconds", "size"),
                                                            mean_seconds=("seconds", "mean"),
                                                            mean_output_error=("output_error", "mean")).reset_index()
    table = pd.DataFrame(rows)
    table["perplexity"] = table.perplexity.round(3)
    show("gptq_time", table, out, f"smollm2-135m, 4-bit, {args.calibration} x 512-token calibration segments: "
         "whole-model time (s) and its phases; stored bytes; perplexity (first 4,096 test tokens)")
    show("gptq_layer_time", layer_table.round(4), out,
         "GPTQ 4-bit per channel, act-order: seconds per layer (solve, packing and output error), by layer type")

    clf, ctok, info = task_models.get_task_model("minilm-l6-tweets")
    task = tasks.load_task(info.recipe["task"], seed=info.recipe["split_seed"])
    spec, test = task.spec, task["test"]
    batch = ctok(test["text"][:32], padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    rows = []
    for name, net in (("fp32", clf), ("int8 dynamic", int8_dynamic(clf))):
        ms = latency(lambda: net(**batch), runs=args.runs, threads=args.threads).median_ms
        acc = metrics.evaluate_classifier(net, ctok, test, ("accuracy",), spec.text_fields, spec.label_field,
                                          max_length=info.recipe["max_length"])["accuracy"]
        rows.append(dict(model=name, median_ms=round(ms, 2), test_accuracy=acc))
    table = pd.DataFrame(rows)
    table["speedup"] = (table.median_ms[0] / table.median_ms).round(3)
    show("int8_latency", table, out, "Task model (minilm-l6 tweets), 32 tweets x 128 tokens: fp32 vs int8 dynamic Linear")



if __name__ == "__main__":
    main()
