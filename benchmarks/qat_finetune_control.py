"""QAT fine-tuning against its no-quantizer control, on the same test sentences (seed 003's table, issue 36).

The QAT table fine-tunes the trained fp32 help Transformer for one epoch with a quantizer, and beside it for
the same epoch with none (the control). One more epoch lifts fp32 itself by 2.6 BLEU, so a fine-tuned row's
difference to fp32 mixes the extra training with the quantizer's cost; the quantizer's cost is the row's
difference to the control. The table's cells keep 4 translations each, too few to pair, so this script
trains the control and the rows again exactly as ``notebooks/11_qat_table.ipynb`` does (the same recipe
seed, epoch, learning rate and warm-up: step for step the table's cell, ``tests/test_qat_finetune_control.py``),
keeps all their translations, and gives each row's paired bootstrap interval to the control on the help test
sentences and on the Ding sentences (out of domain), from which the verdict is read.

    python benchmarks/qat_finetune_control.py control seed:2:attention     # train + score (~15 min a run, 1 thread)
    python benchmarks/qat_finetune_control.py --table                      # the RESULTS table

A row is ``QUANTIZER[:BITS]:TARGET`` as in ``qat_scratch_seeds.py`` (``seed:4:linear``, ``binary_scaled:attention``)
or ``control``. Runs go to ``benchmarks/results/qat_finetune_control.csv`` (one per row, replacing an earlier
one), translations to ``benchmarks/results/qat_finetune_control_hypotheses/``; a stopped run resumes from its
checkpoint under ``$TCOMP_CACHE/qat_finetune_control/``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import qat_scratch_seeds as scratch  # noqa: E402  (rows, atomic saving, the table's cells)
import translation_baselines as baselines  # noqa: E402  (the help test references)
from tcomp_utils import assets, metrics, tasks, translation  # noqa: E402
from tcomp_utils.methods import qat  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "qat_finetune_control.csv"
MODEL = scratch.MODEL
CONTROL = scratch.Row("none", None, "none")  # fine-tuned with no quantizer (the table's fp32_finetune)
EPOCHS, LR = 1, 5e-4  # the table's spec (finetune_epochs: 1) and the notebook's finetune_lr
SPLITS = {"test": "test_bleu", "ood_test": "ood_bleu"}


def parse(text: str) -> scratch.Row:
    """``control`` or a row as :meth:`qat_scratch_seeds.Row.parse` reads it; ValueError names what is allowed."""
    return CONTROL if text == "control" else scratch.Row.parse(text)


def finetune_and_score(row: scratch.Row, model_name: str = MODEL, threads: int = 1) -> tuple[dict, dict]:
    """Fine-tune the trained ``model_name`` for the table's epoch with ``row``'s quantizer (none for
    :data:`CONTROL`), as notebook 11's ``finetune`` / ``fp32_finetune`` cells do, and score it greedily: the
    CSV row (test and out-of-domain BLEU/chrF, steps, best step, minutes) and the translations (split ->
    list: ``test``, and ``ood_test`` where the task has an out-of-domain twin)."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    model, tok, info = translation.get_translation_model(model_name, progress=False)
    recipe = translation.TranslationRecipe(**info.recipe)
    task = tasks.load_task(recipe.task, seed=recipe.split_seed)
    if row != CONTROL:
        qat.prepare(model, qat.SignMagConfig(roles=qat.target_roles(row.target, model), quantizer=row.quantizer,
                                             bits=row.bits))
    ckpt = assets.cache_dir() / "qat_finetune_control" / f".ckpt-{model_name}-{row.name}-{info.key}"
    run = translation.train_model(model, tok, recipe, task, epochs=EPOCHS, lr=LR, warmup_steps=recipe.eval_every,
                                  checkpoint_dir=ckpt, progress=True, desc=f"finetune {row.name}")
    out, kept = scratch.score_run(model, tok, recipe, task, run, dict(
        model=model_name, quantizer=row.quantizer, bits=row.bits, target=row.target, seed=recipe.seed), start)
    shutil.rmtree(ckpt, ignore_errors=True)  # scored: a rerun starts afresh
    return out, kept


def _table_cell(row: scratch.Row, table: Path = scratch.TABLE) -> pd.Series:
    """The table's cell that ``row`` reruns (``finetune``, or ``fp32_finetune`` for the control)."""
    t = pd.read_csv(table)
    t = t[t.status == "ok"]
    if row == CONTROL:
        hit = t[t.protocol == "fp32_finetune"]
    else:
        hit = t[(t.protocol == "finetune") & (t.quantizer == row.quantizer) & (t.target == row.target)
                & ((t.bits == row.bits) if row.bits else t.bits.isna())]
    if len(hit) != 1:
        raise LookupError(f"{len(hit)} ok fine-tuning cells of {row.name} in {table}")
    return hit.iloc[0]


def compare(out: Path = OUT) -> pd.DataFrame:
    """Every fine-tuned row in ``out`` against the control: its BLEU, the table cell's BLEU it reproduces,
    and for the help test sentences and the Ding sentences the difference to the control with its paired
    bootstrap interval and verdict (``test_*`` and ``ood_*`` columns). Raises LookupError without the control."""
    runs = pd.read_csv(out)
    is_control = (runs.quantizer == CONTROL.quantizer) & (runs.target == CONTROL.target)
    if not is_control.any():
        raise LookupError(f"no control run in {out}: run `python {Path(__file__).name} control` first")
    recipe = translation.RECIPES[MODEL]
    control = json.loads(gzip.decompress(scratch.hypotheses_path(CONTROL, recipe.seed, out).read_bytes()))
    refs = {split: baselines.references(recipe, split) for split in SPLITS}
    rows = []
    for _, r in runs[~is_control].iterrows():
        row = scratch.Row(r.quantizer, None if pd.isna(r.bits) else int(r.bits), r.target)
        mine = json.loads(gzip.decompress(scratch.hypotheses_path(row, r.seed, out).read_bytes()))
        c = dict(row=row.name, test_bleu=r.test_bleu, cell_bleu=_table_cell(row).test_bleu)
        for split, col in SPLITS.items():
            p = metrics.paired_bleu_interval(mine[split], control[split], refs[split])
            c |= {col: r[col], f"{split}_diff": p.difference, f"{split}_lo": p.lo, f"{split}_hi": p.hi,
                  f"{split}_verdict": p.verdict}
        rows.append(c)
    return pd.DataFrame(rows)


def table(out: Path = OUT) -> str:
    """The RESULTS table: each fine-tuned row's BLEU, the table cell's, and its paired difference to the
    control on the help test and on the Ding sentences."""
    runs = pd.read_csv(out)
    ctl = runs[(runs.quantizer == CONTROL.quantizer) & (runs.target == CONTROL.target)].iloc[0]
    lines = [f"Control (one epoch, no quantizer): test BLEU {ctl.test_bleu:.2f} (the table's cell "
             f"{_table_cell(CONTROL).test_bleu:.2f}), Ding {ctl.ood_bleu:.2f}.", "",
             "| row | test BLEU (table's cell) | − control, help test (paired 95 %) | verdict "
             "| Ding BLEU | − control, Ding (paired 95 %) | verdict |", "|---|---|---|---|---|---|---|"]
    for _, c in compare(out).iterrows():
        lines.append(f"| {c.row} | {c.test_bleu:.2f} ({c.cell_bleu:.2f}) "
                     f"| {c.test_diff:+.2f} [{c.test_lo:+.2f}, {c.test_hi:+.2f}] | {c.test_verdict} "
                     f"| {c.ood_bleu:.2f} | {c.ood_test_diff:+.2f} [{c.ood_test_lo:+.2f}, {c.ood_test_hi:+.2f}] "
                     f"| {c.ood_test_verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="*", help="control, or QUANTIZER[:BITS]:TARGET, e.g. seed:2:attention")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--table", action="store_true", help="print the RESULTS table from --out")
    args = parser.parse_args(argv)
    try:
        rows = [parse(r) for r in args.rows]
    except ValueError as err:
        parser.error(f"{err}, or control")
    for row in rows:
        out, kept = finetune_and_score(row, threads=args.threads)
        scratch.save(out, kept, row, args.out)
        print(pd.Series(out).to_string())
    if args.table:
        print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
