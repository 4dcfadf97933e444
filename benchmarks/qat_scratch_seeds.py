"""More training seeds for the QAT table's from-scratch rows (seed 003's protocol, issue 36).

A from-scratch row is a training run, so one run against fp32 seed 0 mixes the quantizer's effect with
training noise: the three fp32 training seeds of the help Transformer span 16.4 to 18.2 test BLEU. This
script trains a row again with training seed ``s`` exactly as ``notebooks/11_qat_table.ipynb`` does with
seed 0 (the recipe with ``seed=s``: the same initialisation and batch order as fp32 seed ``s`` of
``benchmarks/translation_baselines.py``, the quantizer on from the first step), scores it on all help test
pairs and on the Ding sentences, and keeps its translations. Row ``s`` is then paired with fp32 seed
``s``: a paired bootstrap interval on the test sentences per seed (where that fp32 seed's translations
are kept), and Student's t interval of the per-seed differences across seeds (seed 0 from the table's
cell), from which the verdict is read.

    python benchmarks/qat_scratch_seeds.py seed:2:attention --seeds 1,2     # train + score (42 min a run, 1 thread)
    python benchmarks/qat_scratch_seeds.py --table                          # the RESULTS table

A row is ``QUANTIZER[:BITS]:TARGET`` as in the table's spec (``seed:2:attention``, ``binary:linear``).
Rows go to ``benchmarks/results/qat_scratch_seeds.csv`` (one per row and seed, replacing an earlier one),
translations to ``benchmarks/results/qat_scratch_seeds_hypotheses/``; a stopped run resumes from its
checkpoint under ``$TCOMP_CACHE/qat_scratch_seeds/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import translation_baselines as baselines  # noqa: E402  (fp32's seeds: their scores and kept translations)
from tcomp_utils import assets, files, metrics, scores, tasks, translation  # noqa: E402
from tcomp_utils.methods import qat  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results" / "qat_scratch_seeds.csv"
MODEL = "transformer-help-en-de"  # the table's model (its default profile)
TABLE = ROOT / "papermill_runs" / "qat_table" / "results.csv"


@dataclasses.dataclass(frozen=True)
class Row:
    """One from-scratch row of the table: the seed's quantizer (``bits`` magnitude bits) or binary weights
    on a seed target."""

    quantizer: str
    bits: int | None
    target: str

    @classmethod
    def parse(cls, text: str) -> "Row":
        """``QUANTIZER[:BITS]:TARGET``; raises ValueError naming what is allowed."""
        parts = text.split(":")
        quantizers, targets = ("seed", "binary", "binary_scaled"), tuple(qat.TARGETS)
        bad = ValueError(f"row {text!r}: need QUANTIZER[:BITS]:TARGET with QUANTIZER one of {', '.join(quantizers)} "
                         f"(seed takes BITS 1..8) and TARGET one of {', '.join(targets)}")
        if len(parts) not in (2, 3) or parts[0] not in quantizers or parts[-1] not in targets:
            raise bad
        if parts[0] == "seed":
            if len(parts) != 3 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= 8:
                raise bad
            return cls("seed", int(parts[1]), parts[-1])
        if len(parts) != 2:
            raise bad
        return cls(parts[0], None, parts[-1])

    @property
    def name(self) -> str:
        return f"{self.quantizer}{self.bits or ''}-{self.target}"


def hypotheses_path(row: Row, seed: int, out: Path = OUT) -> Path:
    return out.with_name(out.stem + "_hypotheses") / f"{row.name}-{seed}.json.gz"


def train_and_score(row: Row, seed: int, model_name: str = MODEL, threads: int = 1) -> tuple[dict, dict]:
    """Train ``row`` from scratch with training seed ``seed`` (the notebook's scratch protocol) and score it:
    the CSV row (test and out-of-domain BLEU/chrF, steps, best step, training minutes) and the
    translations (split -> list: ``test``, and ``ood_test`` where the task has an out-of-domain twin)."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    _, tok, info = translation.get_translation_model(model_name, progress=False)
    recipe = dataclasses.replace(translation.TranslationRecipe(**info.recipe), seed=seed)
    task = tasks.load_task(recipe.task, seed=recipe.split_seed)
    model = translation.build_model(recipe, tok)
    qat.prepare(model, qat.SignMagConfig(roles=qat.target_roles(row.target, model), quantizer=row.quantizer,
                                         bits=row.bits))
    ckpt = assets.cache_dir() / "qat_scratch_seeds" / f".ckpt-{model_name}-{row.name}-{seed}-{recipe.key()}"
    run = translation.train_model(model, tok, recipe, task, checkpoint_dir=ckpt, progress=True,
                                  desc=f"scratch {row.name} seed {seed}")
    out, kept = score_run(model, tok, recipe, task, run, dict(model=model_name, quantizer=row.quantizer,
                                                               bits=row.bits, target=row.target, seed=seed), start)
    shutil.rmtree(ckpt, ignore_errors=True)  # scored: a rerun starts afresh
    return out, kept


def score_run(model, tok, recipe: translation.TranslationRecipe, task: tasks.Task, run, fields: dict,
              start: float) -> tuple[dict, dict]:
    """Score a trained ``model`` greedily on all test pairs, and on the out-of-domain twin where the task has
    one: the CSV row (``fields``, then steps, best step, training minutes, the last 20 steps' training loss,
    test and out-of-domain BLEU/chrF, wall minutes since ``start``) and the translations (split -> list)."""
    test, hyps = translation.evaluate(model, tok, task["test"], task.spec, max_length=recipe.max_length)
    out = fields | dict(steps=run.steps, best_step=run.best_step, train_minutes=round(run.seconds / 60, 1),
                        # the training loss of the last 20 steps: the notebook's run must give the same
                        last_loss=float(run.log[run.log.kind == "train"].loss.tail(20).mean()),
                        test_bleu=test["bleu"], test_chrf=test["chrf"], test_examples=test["examples"])
    kept = {"test": hyps}
    if recipe.task in translation.OUT_OF_DOMAIN:
        ood_task = tasks.load_task(translation.OUT_OF_DOMAIN[recipe.task])
        ood, kept["ood_test"] = translation.evaluate(model, tok, ood_task["test"], ood_task.spec,
                                                     max_length=recipe.max_length)
        out |= dict(ood_bleu=ood["bleu"], ood_chrf=ood["chrf"], ood_examples=ood["examples"])
    out["wall_minutes"] = round((time.perf_counter() - start) / 60, 1)
    return out, kept


def save(row_out: dict, kept: dict, row: Row, out: Path = OUT) -> None:
    """Write the translations, then the CSV row (replacing an earlier one of the same row and seed)."""
    path = hypotheses_path(row, row_out["seed"], out)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")  # written whole, then renamed: never a half-written file
    with gzip.GzipFile(part, "wb", mtime=0) as fh:  # mtime 0: the same bytes for the same translations
        fh.write(json.dumps(kept, ensure_ascii=False).encode())
    os.replace(part, path)
    before = pd.read_csv(out) if out.is_file() else None
    if before is not None:
        same = ((before.quantizer == row.quantizer) & (before.bits.fillna(-1) == (row.bits or -1))
                & (before.target == row.target) & (before.seed == row_out["seed"]))
        before = before[~same]
    new = pd.DataFrame([row_out])
    files.write_csv_atomic(pd.concat([before, new], ignore_index=True) if before is not None else new, out)


def _table_cell(row: Row, table: Path = TABLE) -> pd.Series:
    """The table's from-scratch cell of ``row`` (training seed 0)."""
    t = pd.read_csv(table)
    hit = t[(t.protocol == "scratch") & (t.quantizer == row.quantizer) & (t.target == row.target)
            & ((t.bits == row.bits) if row.bits else True) & (t.status == "ok")]
    if len(hit) != 1:
        raise LookupError(f"{len(hit)} ok from-scratch cells of {row.name} in {table}")
    return hit.iloc[0]


def compare(row: Row, out: Path = OUT, split: str = "test") -> pd.DataFrame:
    """Each training seed of ``row`` against fp32 with the same seed: BLEU of both, their difference and,
    where both seeds' translations are kept, its paired bootstrap interval on the ``split`` sentences
    (``test`` or ``ood_test``). Seed 0 is the table's cell unless rerun here (its translations are not kept:
    its interval is the one the cell recorded)."""
    col = "test_bleu" if split == "test" else "ood_bleu"
    fp32 = pd.read_csv(baselines.OUT).query("recipe == @MODEL").set_index("seed")[col]
    runs = pd.read_csv(out)
    runs = runs[(runs.model == MODEL) & (runs.quantizer == row.quantizer) & (runs.target == row.target)
                & ((runs.bits == row.bits) if row.bits else True)].set_index("seed")[col]
    cell = None
    if 0 not in runs.index:  # seed 0 is the table's own cell, trained by the same code
        cell = _table_cell(row)
        runs.loc[0] = cell["test_bleu" if split == "test" else "ood_test_bleu"]
    rows = []
    for seed, bleu in runs.sort_index().items():
        r = dict(seed=seed, bleu=bleu, fp32_bleu=fp32.get(seed), diff=bleu - fp32.get(seed, float("nan")))
        mine, theirs = hypotheses_path(row, seed, out), baselines.kept(MODEL, seed)
        if mine.is_file() and theirs.is_file():
            a, b = (json.loads(gzip.decompress(p.read_bytes()))[split] for p in (mine, theirs))
            refs = baselines.references(dataclasses.replace(translation.RECIPES[MODEL], seed=seed), split)
            p = metrics.paired_bleu_interval(a, b, refs)
            r |= dict(diff_lo=p.lo, diff_hi=p.hi, verdict=p.verdict)
        elif seed == 0 and cell is not None:  # the cell's own paired interval to fp32 seed 0
            prefix = "test_bleu" if split == "test" else "ood_test_bleu"
            r |= dict(diff_lo=cell[f"{prefix}_diff_lo"], diff_hi=cell[f"{prefix}_diff_hi"], verdict=cell[f"{prefix}_verdict"])
        rows.append(r)
    return pd.DataFrame(rows)


def across_seeds(row: Row, out: Path = OUT, split: str = "test") -> scores.PairedInterval:
    """Mean over training seeds of (row − fp32 with the same seed), with Student's t interval over the seeds
    (:func:`tcomp_utils.scores.seed_interval`); needs two seeds or more with an fp32 twin."""
    per_seed = compare(row, out, split).dropna(subset=["diff"])
    return scores.seed_interval(per_seed["diff"].to_numpy())


def table(out: Path = OUT) -> str:
    """The RESULTS table: per row, each seed's BLEU and its difference to fp32 with the same seed (paired
    interval on the test sentences where kept), and the mean difference over seeds with its t interval."""
    runs = pd.read_csv(out)
    lines = ["| row | training seeds | test BLEU by seed | − fp32 of the same seed (paired 95 %) "
             "| mean − fp32 over seeds (t 95 %) | verdict |", "|---|---|---|---|---|---|"]
    for (q, b, t), _ in runs.groupby(["quantizer", "bits", "target"], dropna=False, sort=False):
        row = Row(q, None if pd.isna(b) else int(b), t)
        c = compare(row, out)
        each = ", ".join(f"{r['diff']:+.2f}" + (f" [{r['diff_lo']:+.2f}, {r['diff_hi']:+.2f}]" if pd.notna(r.get("diff_lo")) else "")
                         for _, r in c.iterrows())
        s = across_seeds(row, out) if c["diff"].notna().sum() >= 2 else None
        lines.append(f"| {row.name} | {', '.join(map(str, c.seed))} | {', '.join(f'{v:.2f}' for v in c.bleu)} | {each} "
                     f"| {f'{s.difference:+.2f} [{s.lo:+.2f}, {s.hi:+.2f}]' if s else '–'} | {s.verdict if s else '–'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="*", help="QUANTIZER[:BITS]:TARGET, e.g. seed:2:attention")
    parser.add_argument("--seeds", default="1,2", help="training seeds, comma-separated (seed 0 is the table's cell)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--table", action="store_true", help="print the RESULTS table from --out")
    args = parser.parse_args(argv)
    try:
        rows = [Row.parse(r) for r in args.rows]
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError as err:
        parser.error(str(err))
    for row in rows:
        for seed in seeds:
            out, kept = train_and_score(row, seed, threads=args.threads)
            save(out, kept, row, args.out)
            print(pd.Series(out).to_string())
    if args.table:
        print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
