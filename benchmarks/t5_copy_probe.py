"""Why does the T5 learn so slowly from scratch? A probe without any language in it: copy a random
sequence of 8-20 tokens (200 symbols) with the two architectures of the help recipes at their size
(``translation.build_model``: d 128, 3 + 3 layers, 4 heads, FFN 512), no dropout, AdamW with the
recipes' warm-up then 1/sqrt(step) schedule, batches of 64 fresh sequences, one thread. Prints the mean
training loss per 50 steps as JSON lines and keeps them in ``benchmarks/results/t5_copy_probe.csv``
(replacing the rows of the same recipe, rate and warm-up); RESULTS.md reads the steps each needs.

    python benchmarks/t5_copy_probe.py t5-help-en-de --steps 1500
    python benchmarks/t5_copy_probe.py transformer-help-en-de --steps 600
    python benchmarks/t5_copy_probe.py t5-help-en-de --steps 1500 --lr 4e-3 --warmup 150      # the recipes' rate
    python benchmarks/t5_copy_probe.py transformer-help-en-de --steps 1000 --lr 4e-3 --warmup 150

Copying needs the decoder's i-th step to find the encoder's i-th token. The Transformer's sinusoidal
positions, added to both sides, make that a lookup of matching positions; the T5 has relative position
buckets in self-attention only (none in cross-attention), so it must first build an absolute position
into its encoder states before it can align, and the loss shows how many steps that takes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import pandas as pd
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tcomp_utils import translation  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "t5_copy_probe.csv"
PAD, EOS, FIRST = 0, 1, 3  # ids below FIRST are special; symbols are FIRST..vocab-1


@dataclasses.dataclass
class SymbolTokenizer:
    """What ``translation.build_model`` reads of a tokenizer: the special ids and the vocabulary size."""

    vocab: int
    pad_token_id: int = PAD
    eos_token_id: int = EOS

    def __len__(self) -> int:
        return self.vocab


def copy_batch(generator: torch.Generator, n: int, vocab: int, lo: int = 8, hi: int = 20) -> dict[str, torch.Tensor]:
    """``n`` random sequences of ``lo``..``hi`` symbols, each the target of itself: ``input_ids`` and
    ``attention_mask`` ``(n, hi + 1)`` (``</s>`` after the symbols, then padding) and ``labels`` (−100 on
    padding)."""
    lengths = torch.randint(lo, hi + 1, (n,), generator=generator)
    width = int(lengths.max()) + 1
    ids = torch.randint(FIRST, vocab, (n, width), generator=generator)
    pos = torch.arange(width)[None]
    ids = ids.masked_fill(pos >= lengths[:, None], PAD).masked_fill(pos == lengths[:, None], EOS)
    mask = (pos <= lengths[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=list(translation.RECIPES))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--vocab", type=int, default=200)
    args = parser.parse_args(argv)
    if args.steps < 50 or args.warmup < 1 or args.vocab <= FIRST:
        raise SystemExit(f"need --steps >= 50, --warmup >= 1 and --vocab > {FIRST}; got {args.steps}, {args.warmup}, {args.vocab}")
    torch.set_num_threads(1)
    recipe = dataclasses.replace(translation.RECIPES[args.recipe], dropout=0.0)
    model = translation.build_model(recipe, SymbolTokenizer(args.vocab)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(1)
    losses, rows = [], []
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:  # linear warm-up, then 1/sqrt(step), as the recipes
            group["lr"] = args.lr * min(step / args.warmup, math.sqrt(args.warmup / step))
        loss = model(**copy_batch(generator, 64, args.vocab)).loss
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0:
            rows.append({"recipe": args.recipe, "architecture": recipe.architecture, "lr": args.lr,
                         "warmup": args.warmup, "step": step, "loss": round(sum(losses[-50:]) / 50, 3)})
            print(json.dumps(rows[-1]), flush=True)
    new = pd.DataFrame(rows)
    if OUT.exists():  # keep the other runs' rows
        old = pd.read_csv(OUT)
        same = (old.recipe == args.recipe) & (old.lr == args.lr) & (old.warmup == args.warmup)
        new = pd.concat([old[~same], new], ignore_index=True)
    new.to_csv(OUT, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
