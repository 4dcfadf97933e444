"""Structured pruning (CPU): time to prune by interpolative decomposition (STAT) and by Kwon et
al.'s Fisher masks, on the tweet task model (``minilm-l6``, 256 calibration tweets) and optionally on
``smollm2-135m`` (32 segments of 512 tokens), each phase timed; and the latency of the pruned
task model against the dense one, next to the MAC ratio the budget counter gives.

    python benchmarks/bench_structured.py [--threads 2] [--runs 20] [--decoder 0] [--out benchmarks/results]

Prints and writes ``structured_prune_time.csv`` (model, method, mu, seconds, seconds per phase,
MACs kept) and ``structured_latency.csv`` (mu, MAC ratio, median ms over 32 sequences of 128 tokens,
speed-up, speed-up / MAC reduction). ``--decoder 1`` adds smollm2-135m at mu = 0.7 (7 minutes more;
the decoder table records the time of every decoder cell anyway). Times depend on the
machine; the header says which.
"""
from __future__ import annotations

import copy

import pandas as pd
import torch

from tcomp_utils import budget, models, task_models, tasks
from tcomp_utils.metrics import latency
from tcomp_utils.registry import compress, method_config

from bench_common import setup, show

METHODS = (("id", "structured"), ("fisher", "fisher_pruning"))
MUS = (0.9, 0.7, 0.5)


def prune_times(model, calibration, name: str, mus=MUS) -> tuple[list[dict], dict]:
    rows, pruned = [], {}
    for mu in mus:
        for label, method in METHODS:
            m = copy.deepcopy(model)
            report = compress(m, method_config(method, mu=mu), calibration, progress=False)
            rows.append(dict(model=name, method=label, mu=mu,
                             macs_ratio=round(report.after.macs / report.before.macs, 4), seconds=round(report.seconds, 2),
                             **{f"seconds_{k}": round(v, 2) for k, v in report.phases.items()}))
            print(rows[-1], flush=True)
            if label == "id":
                pruned[mu] = m
    return rows, pruned


def main() -> None:
    args, out = setup(__doc__, "Structured pruning: time to prune and latency", decoder=0)
    model, tok, info = task_models.get_task_model("minilm-l6-tweets", None, progress=False)
    task = tasks.load_task(info.recipe["task"], seed=info.recipe["split_seed"])
    calibration = task_models.calibration_batches(tok, task["train"], task.spec, n=256)
    rows, pruned = prune_times(model, calibration, "minilm-l6-tweets", (0.9, 0.8, 0.7, 0.6, 0.5, 0.4))
    if args.decoder:
        lm, lm_tok = models.load_model("smollm2-135m", "causal-lm")
        texts = {name: tasks.load_task(name).text("calibration") for name in ("austen", "jargon")}
        segments = [{**b, "labels": b["input_ids"]} for b in task_models.lm_segments(lm_tok, texts, n=32, length=512)]
        rows += prune_times(lm, segments, "smollm2-135m", (0.7,))[0]
    show("structured_prune_time", pd.DataFrame(rows), out,
         f"Time to prune ({args.threads} threads), phases included")

    ids = torch.randint(1000, 20000, (32, 128), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    dense_macs = budget.footprint(model).macs
    base = latency(lambda: model(**batch), runs=args.runs, threads=args.threads)
    lat = [dict(mu=1.0, macs_ratio=1.0, median_ms=round(base.median_ms, 2), speedup=1.0, efficiency=1.0)]
    for mu, m in sorted(pruned.items(), reverse=True):
        t = latency(lambda: m(**batch), runs=args.runs, threads=args.threads)
        ratio = budget.footprint(m).macs / dense_macs
        speedup = base.median_ms / t.median_ms
        lat.append(dict(mu=mu, macs_ratio=round(ratio, 4), median_ms=round(t.median_ms, 2), speedup=round(speedup, 3),
                        efficiency=round(speedup * ratio, 3)))
    show("structured_latency", pd.DataFrame(lat), out,
         f"ID-pruned task model: latency of 32 × 128 tokens ({args.threads} threads) against the MAC ratio")


if __name__ == "__main__":
    main()
