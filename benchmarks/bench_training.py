"""One training step (CPU) split into its parts, with torch's default AdamW (a loop of elementwise
kernels over every tensor) and its fused kernel (``TrainConfig(fused=True)``): PKD's 3-layer MiniLM
student (the student table's ``layers3``), the 6-layer MiniLM (the size of every factorized student
and of the task model) on batches of 32 tweets of 40 tokens, and the English→German Transformer's
recipe (``transformer-help-en-de``: batches of 96 pairs of 24 tokens); bf16 autocast as the tables
train, weight decay grouped as :func:`tcomp_utils.trainer.parameter_groups` does.

    python benchmarks/bench_training.py --threads 1 [--runs 20] [--out benchmarks/results]

Prints and writes ``training_step.csv``: model, parameters, optimizer, the median milliseconds of the
forward and backward pass, the gradient clipping, the optimizer step and zeroing the gradients, the
whole step, and the step's speed-up over the default optimizer. The sweeps run every point on one
thread (``--threads 1``, as ``make bench`` runs it). Times depend on the machine; the header says which.
"""
from __future__ import annotations

import statistics
import time

import pandas as pd
import torch

from tcomp_utils import models, trainer, translation
from tcomp_utils.methods import students

from bench_common import setup, show


class _Vocab:
    """What :func:`translation.build_model` reads of a tokenizer: its size and special ids."""
    pad_token_id, eos_token_id = 0, 1

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def cases() -> dict[str, tuple[torch.nn.Module, dict]]:
    """Name -> (model, one batch with labels)."""
    g = torch.Generator().manual_seed(0)
    teacher = models.load_model("minilm-l6", "sequence-classification", num_labels=3)[0]
    tweets = {"input_ids": torch.randint(1000, 20000, (32, 40), generator=g),
              "attention_mask": torch.ones(32, 40, dtype=torch.long), "labels": torch.randint(0, 3, (32,), generator=g)}
    recipe = translation.RECIPES["transformer-help-en-de"]
    pairs = {"input_ids": torch.randint(2, recipe.vocab_size, (recipe.batch_size, 24), generator=g),
             "attention_mask": torch.ones(recipe.batch_size, 24, dtype=torch.long),
             "labels": torch.randint(2, recipe.vocab_size, (recipe.batch_size, 24), generator=g)}
    return {"minilm-l6 layers3 student": (students.layer_student(teacher, 3), tweets),
            "minilm-l6 (6 layers)": (teacher, tweets),
            "transformer-help-en-de": (translation.build_model(recipe, _Vocab(recipe.vocab_size)), pairs)}


def time_steps(model: torch.nn.Module, batch: dict, fused: bool, runs: int) -> dict[str, float]:
    """Median milliseconds of each part of ``runs`` training steps (after 3 untimed ones)."""
    model.train()
    optim = torch.optim.AdamW(trainer.parameter_groups(model, 0.01), lr=1e-5, fused=fused or None)
    params = [p for p in model.parameters() if p.requires_grad]
    parts: dict[str, list[float]] = {"forward_backward": [], "clip": [], "optimizer": [], "zero_grad": []}
    for i in range(runs + 3):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        t2 = time.perf_counter()
        optim.step()
        t3 = time.perf_counter()
        optim.zero_grad()
        t4 = time.perf_counter()
        if i >= 3:
            for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[name].append(1e3 * dt)
    out = {f"{k}_ms": round(statistics.median(v), 1) for k, v in parts.items()}
    # the median of whole steps, not the sum of the parts' medians
    totals = [sum(vals) for vals in zip(*parts.values())]
    return out | {"step_ms": round(statistics.median(totals), 1)}


def main() -> None:
    args, out = setup(__doc__, "Training step: default vs fused AdamW")
    rows = []
    for name, (model, batch) in cases().items():
        n = sum(p.numel() for p in model.parameters())
        for fused in (False, True):
            rows.append(dict(model=name, params=n, optimizer="AdamW fused" if fused else "AdamW (default loop)",
                             **time_steps(model, batch, fused, args.runs)))
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table["speedup"] = (table.groupby("model").step_ms.transform("first") / table.step_ms).round(2)
    show("training_step", table, out, f"One training step ({args.threads} threads), median of {args.runs}")


if __name__ == "__main__":
    main()
