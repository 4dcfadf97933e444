"""Size the embedded translation model's recipe: train one recipe variant from scratch (no cache)
and print validation BLEU per evaluation, the training loss per epoch, test BLEU/chrF and a few
translations, with the wall time.

    python benchmarks/translation_pilot.py '{"epochs": 8}'
    python benchmarks/translation_pilot.py '{"epochs": 40, "eval_every": 885}' --threads 1
    python benchmarks/translation_pilot.py '{"architecture": "t5", "batch_size": 32, "lr": 0.002}' --threads 1

The JSON overrides fields of ``translation.TranslationRecipe()`` (early stopping is off unless
``patience`` is given).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForSeq2SeqLM, PreTrainedTokenizerFast

from tcomp_utils import tasks, translation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="?", default="{}", help="recipe fields as JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: as one sweep worker)")
    parser.add_argument("--examples", type=int, default=8, help="test translations to print")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = dataclasses.replace(translation.TranslationRecipe(), **{"patience": None, **json.loads(args.overrides)})
    start = time.perf_counter()
    seconds = []  # wall time at each validation, for BLEU against time
    evaluate = translation.evaluate

    def timed(model, tok, dataset, spec, n=None, *a, **k):
        out = evaluate(model, tok, dataset, spec, n, *a, **k)
        if n == recipe.val_examples:
            seconds.append(round(time.perf_counter() - start))
        return out

    translation.evaluate = timed
    with tempfile.TemporaryDirectory() as tmp:  # exactly what get_translation_model would cache
        out = translation.make(recipe, Path(tmp))
        log = pd.read_csv(Path(tmp) / "log.csv")
        model = AutoModelForSeq2SeqLM.from_pretrained(tmp)
        tok = PreTrainedTokenizerFast.from_pretrained(tmp)
    print(f"{recipe}\n{out['steps']} steps, {time.perf_counter() - start:.0f} s with evaluations "
          f"({args.threads} thread(s)), {out['parameters']:,} parameters")
    print(log[log.kind == "eval"][["step", "val_bleu", "val_chrf"]].assign(seconds=seconds).to_string(index=False))
    print("training loss per epoch:", log[log.kind == "train"].groupby("epoch").loss.mean().round(3).tolist())
    print(f"test BLEU {out['test_bleu']:.2f}, chrF {out['test_chrf']:.1f} ({out['test_bleu_signature']})")
    task = tasks.load_task(recipe.task, seed=recipe.split_seed)
    src, tgt = translation.pair_fields(task.spec)
    test = task["test"].select(range(args.examples))
    hyps = translation.translate(model, tok, test[src], max_length=recipe.max_length)
    for s, r, h in zip(test[src], test[tgt], hyps):
        print(f"  {s}\n    ref: {r}\n    hyp: {h}")

if __name__ == "__main__":
    main()
