"""Learning curves of English→German translation on the LibreOffice help corpus (task ``help-en-de``):
train recipe variants from scratch (no cache) and record validation BLEU against training minutes,
then test BLEU in-domain (the help test pages) and out-of-domain (the Ding dictionary sentences,
task ``en-de``), so that a reader sees where a 2-core CPU gets to and how fast.

    python benchmarks/translation_learning_curve.py d256-lr2e-3 d128-lr2e-3      # variants, one after another
    python benchmarks/translation_learning_curve.py --plot                        # the figure and README table

Each variant's rows are appended to ``benchmarks/results/translation_learning_curve.csv`` (one row
per validation, then one ``final`` row with the test scores); run two invocations side by side on
2 cores, one thread each (``--threads 1``, the default, as one sweep worker). Training checkpoints at
every validation under ``$TCOMP_CACHE/learning_curve/`` (removed once the rows are written), so a long
variant stopped in one sitting resumes in the next by the same command; the long variants use the BPE
tokenizer, whose vocabulary is the same on every run (a resumed unigram run would get another one).
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tcomp_utils import assets, files, translation  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "translation_learning_curve.csv"
# the base of every variant: a Marian-style Transformer (post-norm, shared 8k unigram vocabulary),
# 96 pairs (~2,000 tokens) a batch, bf16 matmuls, one epoch (344 steps; the committed run took 3.9 s a
# d256 step and 2.8 s a d128 step on one thread, evaluations included), validation BLEU (300 pairs) four
# times, no early stop; test BLEU on the first 1,000 test pairs
BASE = translation.TranslationRecipe(
    task="help-en-de", vocab_size=8000, d_model=256, d_ff=1024, num_layers=3, num_decoder_layers=3, num_heads=4,
    d_kv=64, batch_size=96, epochs=1, lr=2e-3, warmup_steps=150, max_length=64, eval_every=86, val_examples=300,
    eval_examples=1000, patience=None, precision="bf16")
SMALL = dict(d_model=128, d_ff=512, d_kv=32)
VARIANTS = {
    "d256-lr2e-3": {},
    "d256-lr1e-3": dict(lr=1e-3),
    "d128-lr2e-3": SMALL,
    "d128-lr4e-3": dict(SMALL, lr=4e-3),
    "d256-6layers-lr1e-3": dict(num_layers=6, num_decoder_layers=6, lr=1e-3),
    # where does each size plateau? 8 epochs (about 3 h at d256, 2 h at d128 on one thread), validation
    # twice an epoch
    "d256-lr2e-3-8ep": dict(epochs=8, eval_every=172, tokenizer="bpe"),
    "d128-lr4e-3-8ep": dict(SMALL, lr=4e-3, epochs=8, eval_every=172, tokenizer="bpe"),
    # seed 002's T5 by the Transformer's recipe (t5-help-en-de) for three times its 3 epochs: the copy
    # probe (benchmarks/t5_copy_probe.py) found a T5 needs about three times the steps to align (about
    # 2.5 h on one thread)
    "t5-d128-lr4e-3-9ep": dict(SMALL, architecture="t5", t5_output_scale=False, lr=4e-3, epochs=9, eval_every=172,
                               tokenizer="bpe"),
}


def run(name: str, threads: int, overrides: dict | None = None, keep: Path = OUT.with_name(OUT.stem + "_hypotheses")
        ) -> tuple[pd.DataFrame, Path]:
    """Train variant ``name`` once (``overrides``: recipe fields set on top, e.g. for a quick check),
    resuming from its checkpoint; its learning-curve rows and its final row, and the checkpoint's folder.
    The translations the final row scored go to ``keep/<name>.json.gz`` (split -> translations)."""
    recipe = dataclasses.replace(BASE, **{**VARIANTS[name], **(overrides or {})})
    torch.set_num_threads(threads)
    ckpt = assets.cache_dir() / "learning_curve" / f".ckpt-{name}-{recipe.key()}"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = translation.make(recipe, Path(tmp), checkpoint_dir=ckpt, progress=True)
        log = pd.read_csv(Path(tmp) / "log.csv")
        # the translations the final row scored, kept for paired comparisons between variants
        keep.mkdir(parents=True, exist_ok=True)
        with gzip.GzipFile(keep / f"{name}.json.gz", "wb", mtime=0) as fh:
            fh.write((Path(tmp) / "hypotheses.json").read_bytes())
    # the Ding sentences (out of domain) are scored by make() for every help-corpus model
    ood = {k: out[f"ood_test_{k}"] for k in ("bleu", "chrf", "examples")}
    fields = dict(variant=name, d_model=recipe.d_model, layers=recipe.num_layers, lr=recipe.lr,
                  batch_size=recipe.batch_size, parameters=out["parameters"], threads=threads)
    curve = log[log.kind == "eval"][["step", "epoch", "elapsed_s", "val_bleu", "val_chrf"]].assign(kind="validation", **fields)
    final = dict(kind="final", step=out["steps"], elapsed_s=out["train_time_s"], **fields,
                 total_s=round(time.perf_counter() - start, 1),
                 test_bleu=out["test_bleu"], test_chrf=out["test_chrf"], test_examples=out["test_examples"],
                 validation_bleu=out["validation_bleu"], ood_bleu=ood["bleu"], ood_chrf=ood["chrf"],
                 ood_examples=ood["examples"], bleu_signature=out["test_bleu_signature"])
    return pd.concat([curve, pd.DataFrame([final])], ignore_index=True), ckpt


def plot(csv: Path) -> Path:
    """BLEU against training minutes, one line per variant (validation), test BLEU marked at the end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = pd.read_csv(csv)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, part in rows.groupby("variant", sort=False):
        curve = part[part.kind == "validation"]
        line, = ax.plot(curve.elapsed_s / 60, curve.val_bleu, marker="o", ms=3,
                        label=f"{name} ({int(part.parameters.iloc[0]) / 1e6:.1f} M)")
        for _, f in part[part.kind == "final"].iterrows():
            ax.plot(f.elapsed_s / 60, f.test_bleu, "*", ms=10, color=line.get_color())
            ax.plot(f.elapsed_s / 60, f.ood_bleu, "x", ms=7, color=line.get_color())
    ax.axhline(25, color="0.5", ls="--", lw=1, label="goal: test BLEU 25")
    ax.set(xlabel="training minutes (1 thread, evaluations included)", ylabel="BLEU (en→de)",
           title="validation BLEU (lines); test in-domain (*) and Ding out-of-domain (x)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = csv.with_suffix(".png")
    fig.savefig(out, dpi=120)
    return out


def markdown(csv: Path) -> str:
    """The README's table: one row per variant (size, learning rate, steps and training minutes,
    validation BLEU at each scoring (multi-epoch runs: at the end of each epoch), test BLEU in-domain
    and on the Ding sentences)."""
    rows = pd.read_csv(csv)
    out = ["| variant | parameters | peak lr | steps | training minutes | validation BLEU (300 pairs) by step "
           "| test BLEU, help (first 1,000) | test BLEU, Ding (out of domain, 1,000) |",
           "|---|---|---|---|---|---|---|---|"]
    for name, part in rows.groupby("variant", sort=False):
        curve, final = part[part.kind == "validation"], part[part.kind == "final"].iloc[-1]
        if curve.epoch.max() > 0:  # several epochs: the scoring that ends each one
            curve = curve[curve.epoch != curve.epoch.shift(-1)]
        steps = ", ".join(f"{v:.1f} ({int(s)})" for s, v in zip(curve.step, curve.val_bleu))
        out.append(f"| {name} | {final.parameters / 1e6:.1f} M | {final.lr:g} | {int(final.step)} | "
                   f"{final.elapsed_s / 60:.0f} | {steps} | **{final.test_bleu:.1f}** | {final.ood_bleu:.1f} |")
    return "\n".join(out)


def paired(a: str, b: str, split: str = "test", keep: Path = OUT.with_name(OUT.stem + "_hypotheses")):
    """Test BLEU of variant ``a`` minus that of ``b`` on the same sentences, with its paired bootstrap
    interval (:func:`tcomp_utils.metrics.paired_bleu_interval`), from the kept translations; ``split``
    ``"test"`` (the first 1,000 help test pairs) or ``"ood_test"`` (the Ding test sentences)."""
    from tcomp_utils import metrics, tasks

    hyps = [json.loads(gzip.decompress((keep / f"{v}.json.gz").read_bytes()))[split] for v in (a, b)]
    task = tasks.load_task(BASE.task if split == "test" else translation.OUT_OF_DOMAIN[BASE.task])
    refs = task["test"].select(range(len(hyps[0])))[translation.pair_fields(task.spec)[1]]
    return metrics.paired_bleu_interval(hyps[0], hyps[1], refs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--plot", action="store_true", help="draw the figure from --out")
    parser.add_argument("--set", type=json.loads, default={}, help="recipe fields as JSON, on top of every variant")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    for name in args.variants:
        rows, checkpoint = run(name, args.threads, args.set, args.out.with_name(args.out.stem + "_hypotheses"))
        before = pd.read_csv(args.out) if args.out.is_file() else None  # re-read: another run may have appended
        files.write_csv_atomic(pd.concat([before, rows], ignore_index=True) if before is not None else rows, args.out)
        shutil.rmtree(checkpoint, ignore_errors=True)  # its rows are written: a rerun starts afresh
        print(rows.tail(1).T.to_string())
    if args.plot:
        print(plot(args.out))
        print(markdown(args.out))
        for split in ("test", "ood_test"):
            print(split, "d256-lr2e-3-8ep minus d128-lr4e-3-8ep:", paired("d256-lr2e-3-8ep", "d128-lr4e-3-8ep", split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
