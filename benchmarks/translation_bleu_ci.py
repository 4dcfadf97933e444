"""How finely the QAT table's BLEU can tell models apart: the embedded translation model's greedy
test BLEU and chrF with sacrebleu's bootstrap confidence interval over the test sentences
(1,000 resamples), written to ``benchmarks/results/translation_bleu_ci.csv``.

    python benchmarks/translation_bleu_ci.py [--recipe transformer-de-en] [--resamples 1000]

This is the resolution due to the test sample only; a retrained model (another seed or machine)
moves too, e.g. the recipe gave test BLEU 3.78 on one machine and 3.92 on another.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import sacrebleu
import torch

from tcomp_utils import tasks, translation

OUT = Path(__file__).resolve().parent / "results" / "translation_bleu_ci.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="transformer-de-en")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, info = translation.get_translation_model(args.recipe)
    task = tasks.load_task("de-en")
    src, tgt = translation.pair_fields(task.spec)
    rows = []
    for split in ("validation", "test"):
        data = task[split]
        hyps = translation.translate(model, tok, data[src], max_length=info.recipe["max_length"])
        for name, metric in (("bleu", sacrebleu.metrics.BLEU()), ("chrf", sacrebleu.metrics.CHRF())):
            point = metric.corpus_score(hyps, [data[tgt]])
            boot = metric.corpus_score(hyps, [data[tgt]], n_bootstrap=args.resamples)
            rows.append({"recipe": args.recipe, "split": split, "metric": name, "sentences": len(hyps),
                         "score": round(point.score, 2), "bootstrap_mean": round(boot._mean, 2),
                         "ci95_halfwidth": round(boot._ci, 2), "resamples": args.resamples})
    frame = pd.DataFrame(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(OUT, index=False)
    print(frame.to_markdown(index=False))


if __name__ == "__main__":
    main()
