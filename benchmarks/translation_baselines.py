"""The translation baselines of issue 36 on the LibreOffice help (English→German): each recipe trained
with several training seeds (cached like every translation model, so the tables reuse seed 0), its
test BLEU in-domain (all help test pairs) and out of domain (the Ding sentences) with sacrebleu's
bootstrap interval over the test sentences, the mean ± sd across seeds, and the T5 against the
Transformer on the same test sentences (paired bootstrap).

    python benchmarks/translation_baselines.py transformer-help-en-de:0,1,2 t5-help-en-de:0   # train + score
    python benchmarks/translation_baselines.py --table                                       # the README table

Each model trains on one thread (``timing.TRAINING_THREADS``); run two invocations side by side on
the 2 cores. Rows go to ``benchmarks/results/translation_baselines.csv`` (one per recipe and seed,
replacing an earlier row of the same pair), the translations it scored to
``benchmarks/results/translation_baselines_hypotheses/`` (so the paired comparisons, and the claims tests
that check them, need no model); a stopped training resumes from its checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import sys
import time
from pathlib import Path

import pandas as pd
import sacrebleu

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tcomp_utils import files, metrics, tasks, translation  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "translation_baselines.csv"
# the translations each row scored (split -> list), kept so that paired comparisons need no model
KEPT = OUT.with_name(OUT.stem + "_hypotheses")
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


def kept(name: str, seed: int) -> Path:
    return KEPT / f"{name}-{seed}.json.gz"


def keep(name: str, seed: int, hyps: dict) -> Path:
    """Write the test translations (in-domain and Ding) of recipe ``name`` with ``seed`` to :func:`kept`."""
    KEPT.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(kept(name, seed), "wb", mtime=0) as fh:  # mtime 0: the same bytes for the same translations
        fh.write(json.dumps({k: hyps[k] for k in ("test", "ood_test")}, ensure_ascii=False).encode())
    return kept(name, seed)


def score(name: str, seed: int) -> dict:
    """One row: test BLEU/chrF in-domain and out of domain, each BLEU with its 95 % bootstrap half-width;
    the translations scored are kept (:func:`keep`)."""
    start = time.perf_counter()
    recipe, m, hyps = hypotheses(name, seed)
    keep(name, seed, hyps)
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
    """BLEU of model ``a`` (recipe, seed) minus that of ``b`` on the same ``split`` sentences, from the
    kept translations (no model is loaded)."""
    texts = []
    for name, seed in (a, b):
        if not kept(name, seed).is_file():
            raise FileNotFoundError(f"{kept(name, seed)} is missing: score the model first "
                                    f"(python benchmarks/translation_baselines.py {name}:{seed})")
        texts.append(json.loads(gzip.decompress(kept(name, seed).read_bytes()))[split])
    recipe = dataclasses.replace(translation.RECIPES[a[0]], seed=a[1])
    return metrics.paired_bleu_interval(texts[0], texts[1], references(recipe, split))


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
    parser.add_argument("--keep-only", action="store_true",
                        help="only write the kept translations of the runs (their rows stay as they are)")
    args = parser.parse_args(argv)
    runs = []
    for spec in args.runs:
        name, _, seeds = spec.partition(":")
        if name not in translation.RECIPES or not seeds:
            parser.error(f"{spec!r}: need RECIPE:SEED[,SEED...] with RECIPE one of {', '.join(translation.RECIPES)}")
        runs += [(name, int(s)) for s in seeds.split(",")]
    for name, seed in runs:
        if args.keep_only:
            print(keep(name, seed, hypotheses(name, seed)[2]))
            continue
        row = score(name, seed)
        before = pd.read_csv(args.out) if args.out.is_file() else pd.DataFrame(columns=list(row))
        others = before[~((before.recipe == name) & (before.seed == seed))]
        files.write_csv_atomic(pd.concat([others, pd.DataFrame([row])], ignore_index=True), args.out)
        print(pd.Series(row).to_string())
    if args.table:
        print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
