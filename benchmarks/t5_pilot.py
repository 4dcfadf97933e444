"""Why does the T5 learn so slowly on the help corpus? Train a recipe variant for a few hundred steps
(no cache, no evaluation on the way) and print its training loss per 50 steps, the seconds a step and
greedy validation BLEU on 300 pairs at the end, as one JSON line (``--record`` appends it to
``benchmarks/results/t5_pilots.jsonl``, where the pilots of 2026-12-06 are); the study is in
``benchmarks/results/translation_pilots.md``.

    python benchmarks/t5_pilot.py t5-help-en-de --steps 250                       # the recipe as it is
    python benchmarks/t5_pilot.py t5-help-en-de --steps 250 --set '{"dropout": 0.0}'
    python benchmarks/t5_pilot.py t5-help-en-de --steps 250 --query-scale          # scores / sqrt(d_kv)
    python benchmarks/t5_pilot.py t5-help-en-de --steps 250 --t5-init --set '{"t5_output_scale": true}'
    python benchmarks/t5_pilot.py t5-help-en-de --steps 250 --adafactor --set '{"lr": 0.01}'
    python benchmarks/t5_pilot.py t5-help-en-de --steps 344 --embed-scale --set '{"dropout": 0.0}' --record
    python benchmarks/t5_pilot.py t5-help-en-de --steps 344 --embed-scale --sinusoidal --set '{"dropout": 0.0}' --record
    python benchmarks/t5_pilot.py t5-help-en-de --steps 344 --untie --set '{"dropout": 0.0}' --record

``--set`` overrides fields of the named recipe (``translation.RECIPES``); the other flags change what a
recipe cannot: ``--query-scale`` scales the T5's attention scores by 1/sqrt(d_kv) as the Transformer
does (a multiplier on each query projection's output, the query weights drawn as the key's),
``--t5-init`` draws the tied table with std 1 (transformers' own T5 initialisation, instead of the
recipe's 1/sqrt(d_model)), ``--adafactor`` trains with torch's Adafactor (T5's own optimizer, relative
steps) instead of AdamW, ``--embed-scale`` multiplies the embeddings entering both stacks by √d_model
(as the Transformer does; the tied head reads the table unscaled), ``--sinusoidal`` adds the Transformer's
sinusoidal absolute positions to them (decoding then runs without the key/value cache, whose steps would
all read position 0), ``--untie`` gives the encoder's input, the decoder's input and the output layer a table
each (drawn as the shared one; the Transformer's Marian model has three), instead of T5's one tied table.
All three together became the recipe ``t5-help-en-de-transformer-embeddings`` (``tcomp_utils.t5_embeddings``,
which decodes with the cache).
One thread, as one sweep worker.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tcomp_utils import tasks, trainer, translation  # noqa: E402
from tcomp_utils.t5_embeddings import sinusoidal_positions  # noqa: E402


RECORD = Path(__file__).resolve().parent / "results" / "t5_pilots.jsonl"  # the pilots of 2026-12-06 on


class ScaledQuery(nn.Module):
    """A query projection whose output is multiplied by a constant (the attention's 1/sqrt(d_kv))."""

    def __init__(self, linear: nn.Linear, factor: float):
        super().__init__()
        self.linear, self.factor = linear, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.factor


class ScaledEmbedding(nn.Module):
    """``table`` looked up (T5's shared one, or a stack's own), times ``factor``, plus sinusoidal positions when
    ``positions``: ids (batch, length) -> (batch, length, d_model)."""

    def __init__(self, table: nn.Embedding, factor: float, positions: bool):
        super().__init__()
        self.table, self.factor, self.positions = table, factor, positions

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.table(ids) * self.factor
        if not self.positions:
            return x
        return x + sinusoidal_positions(0, ids.shape[-1], x.shape[-1]).to(x.dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=list(translation.RECIPES))
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--set", default="{}", help="recipe fields as JSON")
    parser.add_argument("--query-scale", action="store_true")
    parser.add_argument("--t5-init", action="store_true")
    parser.add_argument("--adafactor", action="store_true")
    parser.add_argument("--embed-scale", action="store_true")
    parser.add_argument("--sinusoidal", action="store_true")
    parser.add_argument("--untie", action="store_true")
    parser.add_argument("--record", action="store_true", help=f"append the JSON line to {RECORD.name}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    recipe = dataclasses.replace(translation.RECIPES[args.recipe], **json.loads(args.set))
    task = tasks.load_task(recipe.task, seed=recipe.split_seed)
    src, tgt = translation.pair_fields(task.spec)
    train = task["train"]
    tok = translation.train_tokenizer(list(train[src]) + list(train[tgt]), recipe.vocab_size, recipe.tokenizer)
    model = translation.build_model(recipe, tok)
    torch.manual_seed(recipe.seed)
    if args.t5_init:
        nn.init.normal_(model.shared.weight, std=1.0)
    if args.query_scale:
        from transformers.models.t5.modeling_t5 import T5Attention

        for m in [m for m in model.modules() if isinstance(m, T5Attention)]:
            nn.init.normal_(m.q.weight, std=recipe.d_model**-0.5)
            m.q = ScaledQuery(m.q, recipe.d_kv**-0.5)
    tables = {stack: model.shared for stack in (model.encoder, model.decoder)}
    if args.untie:
        tables = {stack: nn.Embedding.from_pretrained(model.shared.weight.detach().clone().normal_(std=recipe.d_model**-0.5),
                                                      freeze=False) for stack in tables}
        for stack, table in tables.items():
            stack.embed_tokens = table
        model.lm_head = nn.Linear(recipe.d_model, len(tok), bias=False)
        nn.init.normal_(model.lm_head.weight, std=recipe.d_model**-0.5)
    if args.embed_scale or args.sinusoidal:
        factor = recipe.d_model**0.5 if args.embed_scale else 1.0
        for stack, table in tables.items():
            stack.embed_tokens = ScaledEmbedding(table, factor, args.sinusoidal)
        model.generation_config.use_cache = not args.sinusoidal
    if args.adafactor:
        trainer.torch.optim.AdamW = lambda groups, lr, betas: torch.optim.Adafactor(groups, lr=lr)
    data = translation.seq2seq_batches(tok, train, task.spec, recipe.batch_size, recipe.max_length, seed=recipe.seed)
    config = trainer.TrainConfig(steps=args.steps, lr=recipe.lr, schedule="inverse_sqrt", warmup_steps=recipe.warmup_steps,
                                 max_grad_norm=1.0, progress=False, precision=recipe.precision,
                                 weight_decay=recipe.weight_decay)
    start = time.perf_counter()
    result = trainer.train(model, data, config, loss=translation.smoothed_loss(recipe.label_smoothing))
    seconds = time.perf_counter() - start
    scores, _ = translation.evaluate(model, tok, task["validation"], task.spec, 300, recipe.max_length)
    loss = result.log[result.log.kind == "train"].loss.reset_index(drop=True)
    line = json.dumps({"recipe": args.recipe, **json.loads(args.set), **{k: True for k in ("query_scale", "t5_init",
                      "adafactor", "embed_scale", "sinusoidal", "untie") if getattr(args, k)}, "steps": args.steps, "s_per_step": round(seconds / args.steps, 2),
                      "loss_per_50": [round(float(loss[i:i + 50].mean()), 3) for i in range(0, args.steps, 50)],
                      "val_bleu": round(scores["bleu"], 2)})
    print(line)
    if args.record:
        with RECORD.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
