"""The translation baselines of issue 36 on the LibreOffice help (English→German): each recipe trained
with several training seeds (cached like every translation model, so the tables reuse seed 0), its
test BLEU in-domain (all help test pairs) and out of domain (the Ding sentences) with sacrebleu's
bootstrap interval over the test sentences, the mean ± sd across seeds, and the T5 against the
Transformer on the same test sentences (paired bootstrap).

    python benchmarks/translation_baselines.py transformer-help-en-de:0,1,2 t5-help-en-de:0   # train + score
    python benchmarks/translation_baselines.py --table                                       # the README table

Each model trains on one thread (``timing.TRAINING_THREADS``); run two invocations side by side on
the 2 cores. Rows go to ``benchmarks/results/translation_baselines.csv`` (one per recipe and seed,
replacing an earlier row of the same pair); a stopped training resumes from its checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import pandas as pd
import sacrebleu

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tcomp_utils import files, metrics, tasks, translation  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "translation_baselines.csv"
RESAMPLES = 1000


def references(recipe: translation.TranslationRecipe, split: str) -> list[str]:
    """The reference translations a recipe's ``split`` (``"test"``, ``"validation"``, or ``"ood_test"``:
    the Ding test sentences) was scored on, in order."""
    name = translation.OUT_OF_DOMAIN[recipe.task] if split == "ood_test" else recipe.task
    task = tasks.load_task(name, seed=0 if split == "ood_test" else recipe.split_seed)
    data = task["test" if split == "ood_test" else split]
    if split != "ood_test" and recipe.eval_examples is not None:
        data = data.select(range(min(recipe.eval_examples, len(data))))
    return list(data[translation.pair_fields(task.spec)[1]])


def hypotheses(name: str, seed: int) -> tuple[translation.TranslationRecipe, dict, dict]:
    """Train (or load) recipe ``name`` with training seed ``seed``: its recipe, metrics and kept
    translations (split -> list)."""
    recipe = dataclasses.replace(translation.RECIPES[name], seed=seed)
    _, _, info = translation.get_translation_model(name, recipe)
    return recipe, info.metrics, json.loads((info.path / "hypotheses.json").read_text())


def score(name: str, seed: int) -> dict:
    """One row: test BLEU/chrF in-domain and out of domain, each BLEU with its 95 % bootstrap half-width."""
    start = time.perf_counter()
    recipe, m, hyps = hypotheses(name, seed)
    row = dict(recipe=name, architecture=recipe.architecture, seed=seed, parameters=m["parameters"], steps=m["steps"],
               best_step=m["best_step"], train_minutes=round(m["train_time_s"] / 60, 1),
               wall_minutes=round((time.perf_counter() - start) / 60, 1))
    for split, prefix in (("test", "test"), ("ood_test", "ood")):
        refs = references(recipe, split)
        boot = sacrebleu.metrics.BLEU().corpus_score(hyps[split], [refs], n_bootstrap=RESAMPLES)
        row |= {f"{prefix}_bleu": m[f"{split}_bleu"], f"{prefix}_chrf": m[f"{split}_chrf"],
                f"{prefix}_bleu_ci95": boot._ci, f"{prefix}_examples": len(refs)}
    row |= dict(validation_bleu=m["validation_bleu"], bleu_signature=m["test_bleu_signature"])
    return row


def paired(a: tuple[str, int], b: tuple[str, int], split: str = "test") -> metrics.PairedInterval:
    """BLEU of model ``a`` (recipe, seed) minus that of ``b`` on the same ``split`` sentences."""
    (recipe, _, ha), (_, _, hb) = hypotheses(*a), hypotheses(*b)
    return metrics.paired_bleu_interval(ha[split], hb[split], references(recipe, split))


def table(csv: Path = OUT) -> str:
    """The README's table: per recipe, the seeds' test BLEU (in-domain and Ding) as mean ± sd, each
    seed's score with its bootstrap half-width, and the training minutes."""
    rows = pd.read_csv(csv)
    out = ["| recipe | parameters | seeds | test BLEU, help (2,010 pairs): mean ± sd | per seed (± 95 % bootstrap) "
           "| chrF | test BLEU, Ding (out of domain): mean ± sd | training minutes a seed |",
           "|---|---|---|---|---|---|---|---|"]
    for name, part in rows.groupby("recipe", sort=False):
        sd = lambda col: f"{part[col].std(ddof=1):.1f}" if len(part) > 1 else "–"  # noqa: E731
        seeds = ", ".join(f"{r.test_bleu:.1f} ± {r.test_bleu_ci95:.1f}" for r in part.itertuples())
        out.append(f"| {name} | {part.parameters.iloc[0] / 1e6:.1f} M | {len(part)} | **{part.test_bleu.mean():.1f}** ± "
                   f"{sd('test_bleu')} | {seeds} | {part.test_chrf.mean():.1f} | {part.ood_bleu.mean():.1f} ± "
                   f"{sd('ood_bleu')} | {part.train_minutes.mean():.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="RECIPE:SEED[,SEED...] of " + ", ".join(translation.RECIPES))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--table", action="store_true", help="print the README table from --out")
    args = parser.parse_args(argv)
    runs = []
    for spec in args.runs:
        name, _, seeds = spec.partition(":")
        if name not in translation.RECIPES or not seeds:
            parser.error(f"{spec!r}: need RECIPE:SEED[,SEED...] with RECIPE one of {', '.join(translation.RECIPES)}")
        runs += [(name, int(s)) for s in seeds.split(",")]
    for name, seed in runs:
        row = score(name, seed)
        before = pd.read_csv(args.out) if args.out.is_file() else pd.DataFrame(columns=list(row))
        keep = before[~((before.recipe == name) & (before.seed == seed))]
        files.write_csv_atomic(pd.concat([keep, pd.DataFrame([row])], ignore_index=True), args.out)
        print(pd.Series(row).to_string())
    if args.table:
        print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
