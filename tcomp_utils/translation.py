"""The embedded translation model: a small encoder–decoder trained from scratch on the committed
German–English pairs by a recipe, cached by the recipe's hash (no translation weights can be had
offline; seed 003 trains its own Transformer from scratch too).

* **Tokenizer** (``tokenizer``): a unigram subword model (SentencePiece's algorithm) or byte-pair
  encoding, both from the ``tokenizers`` library, trained on both sides of the training split (one
  shared vocabulary of ``vocab_size``), wrapped as a transformers fast tokenizer: ``<pad>`` = 0,
  ``</s>`` = 1 (appended to every sequence), ``<unk>`` = 2, as T5's. The unigram trainer gives
  another vocabulary on every run (even on one thread), so a unigram model cannot be remade bit for
  bit; the BPE trainer gives the same vocabulary every time (tested), so the help-corpus models use it
  (``tokenizer="bpe"``).
* **Model** (``architecture``): ``"transformer"``, the seed's vanilla Transformer (post-norm,
  sinusoidal positions, embeddings scaled by √d_model and shared by encoder and decoder), built as
  transformers' ``MarianMTModel`` from a ``MarianConfig``; or ``"t5"``, a ``T5ForConditionalGeneration``
  of the same size (pre-norm, relative position buckets). Both go through the adapters, so every
  role-based method (QAT, PTQ, pruning) applies to either. The Transformer's output layer is not
  tied to the embeddings (the seed's has a separate generator, which its quantization leaves in
  float); transformers 5 ties T5's always. On these 11,303 training pairs the T5 form learns far
  more slowly (one thread, batch 32: validation BLEU 0.87 after 1,282 s against 2.65 after 414 s;
  ``benchmarks/results/translation_pilots.md``), so the embedded recipe is the Transformer.
* **Training** (:func:`train_model`, also used for QAT from scratch and QAT fine-tuning): the
  project's one trainer, AdamW with an inverse square-root schedule after a linear warm-up, label
  smoothing 0.1 (the seed's), gradient clipping, early stopping on validation BLEU (greedy, the
  first ``val_examples`` validation pairs) keeping the best weights, resumable checkpoints.
* **Decoding**: greedy for the tables, beam search available (``num_beams``); BLEU and chrF with
  sacrebleu on detokenized text (:func:`tcomp_utils.metrics.translation_scores`).

Cached under ``$TCOMP_CACHE/translation_models/<name>-<key>/``: weights (safetensors), tokenizer,
``recipe.json``, ``metrics.json`` (validation and test scores; for the help corpus also
``ood_test_*``, on the Ding sentences in the same direction, out of domain), ``hypotheses.json``
(the greedy translations those metrics scored, per split) and ``log.csv`` (the training log: loss
and validation BLEU per step, for loss curves). An interrupted training resumes from ``.ckpt-<name>-<key>/``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from . import assets, files, metrics, tasks, timing, trainer
from .progress import Bar

TRAINING_CODE_VERSION = 1  # bump when training or the tokenizer changes what it produces
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
ARCHITECTURES = ("transformer", "t5")
T5_EMBEDDINGS = ("t5", "transformer")
TOKENIZERS = ("unigram", "bpe")
# the embedded translation tasks and the asset that holds their pairs (part of a recipe's cache key)
TASK_ASSETS = {"de-en": "de-en", "en-de": "de-en", "help-en-de": "libreoffice-help", "help-de-en": "libreoffice-help"}
# a task's out-of-domain test set: the Ding dictionary sentences in the same direction, for the help corpus
OUT_OF_DOMAIN = {"help-en-de": "en-de", "help-de-en": "de-en"}


@dataclass(frozen=True)
class TranslationRecipe:
    """How the translation model is made. Sizes: ``vocab_size`` (shared subwords), ``d_model``,
    ``d_ff``, ``num_layers`` (encoder) / ``num_decoder_layers``, ``num_heads`` × ``d_kv`` (the
    Transformer needs ``num_heads × d_kv = d_model``); ``architecture`` one of :data:`ARCHITECTURES`,
    ``tokenizer`` one of :data:`TOKENIZERS`; ``t5_output_scale``: a T5 scales its decoder output by
    1/√d_model before the tied head (T5 v1.0, as transformers builds it), or not (v1.1);
    ``t5_embeddings``: a T5's embeddings are its own (``"t5"``: one table for both inputs and the
    output, positions only in the attention bias) or the Transformer's (``"transformer"``: three
    tables, × √d_model, sinusoidal positions added; :mod:`tcomp_utils.t5_embeddings`);
    ``t5_query_lr_scale``: a T5's query projections train at ``lr`` × this. T5 leaves its attention scores
    unscaled and draws its query weights 1/√d_kv smaller instead, so under Adam (steps of about ``lr`` per
    weight whatever the weight's size) they move √d_kv times faster, relative to their size, than a
    Transformer's, whose scores are scaled by 1/√d_kv; ``d_kv ** -0.5`` gives them the Transformer's pace.
    Training: ``epochs`` over ``train_examples`` (None: the whole split) in batches of
    ``batch_size`` pairs of at most ``max_length`` tokens; peak ``lr`` after ``warmup_steps``,
    then ∝ 1/√step; BLEU on the first ``val_examples`` validation pairs every ``eval_every``
    steps, stop after ``patience`` evaluations without a better one; ``precision="bf16"`` runs the
    matmuls in bfloat16 under autocast (weights and optimizer float32). The recorded metrics are
    on the first ``eval_examples`` pairs of the validation and test splits (None: all)."""

    task: str = "de-en"
    architecture: str = "transformer"
    split_seed: int = 0
    train_examples: int | None = None
    vocab_size: int = 4000
    d_model: int = 128
    d_ff: int = 512
    num_layers: int = 3
    num_decoder_layers: int = 3
    num_heads: int = 4
    d_kv: int = 32
    dropout: float = 0.1
    batch_size: int = 64
    epochs: int = 7
    lr: float = 4e-3
    warmup_steps: int = 400
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    max_length: int = 48
    eval_every: int = 177  # one epoch of the 11,303 training pairs in batches of 64
    val_examples: int = 500
    eval_examples: int | None = None
    patience: int | None = 4
    precision: str = "bf16"
    seed: int = 0
    tokenizer: str = "unigram"
    t5_output_scale: bool = True
    t5_embeddings: str = "t5"
    t5_query_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.precision not in trainer.PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; allowed: {', '.join(trainer.PRECISIONS)}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer={self.tokenizer!r}; allowed: {', '.join(TOKENIZERS)}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r}; allowed: {', '.join(ARCHITECTURES)}")
        if self.t5_embeddings not in T5_EMBEDDINGS:
            raise ValueError(f"t5_embeddings={self.t5_embeddings!r}; allowed: {', '.join(T5_EMBEDDINGS)}")
        if self.t5_embeddings != "t5" and self.architecture != "t5":
            raise ValueError(f"t5_embeddings={self.t5_embeddings!r} is for architecture='t5', "
                             f"not {self.architecture!r}")
        if not (isinstance(self.t5_query_lr_scale, (int, float)) and not isinstance(self.t5_query_lr_scale, bool)
                and self.t5_query_lr_scale > 0):
            raise ValueError(f"t5_query_lr_scale must be a number > 0, got {self.t5_query_lr_scale!r}")
        if self.t5_query_lr_scale != 1.0 and self.architecture != "t5":
            raise ValueError(f"t5_query_lr_scale={self.t5_query_lr_scale!r} is for architecture='t5', "
                             f"not {self.architecture!r}")
        if self.architecture == "transformer" and self.num_heads * self.d_kv != self.d_model:
            raise ValueError(f"the Transformer needs num_heads × d_kv = d_model; got {self.num_heads} × {self.d_kv} "
                             f"!= {self.d_model}")

    def key(self) -> str:
        """Cache key: the recipe, the pairs' SHA-256 (an embedded task's asset; a hub task's name) and
        the training code version."""
        asset = TASK_ASSETS.get(self.task)
        fields = dataclasses.asdict(self)
        for name, before in (("tokenizer", "unigram"), ("t5_output_scale", True), ("t5_embeddings", "t5"),
                             ("t5_query_lr_scale", 1.0)):
            if fields[name] == before:  # recipes made before the field existed keep their keys (and cached models)
                del fields[name]
        blob = json.dumps([fields, assets.get_asset(asset).sha256 if asset else self.task,
                           TRAINING_CODE_VERSION], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


HELP_EN_DE = TranslationRecipe(
    task="help-en-de", tokenizer="bpe", vocab_size=8000, d_model=128, d_ff=512, num_heads=4, d_kv=32, batch_size=96,
    epochs=3, lr=4e-3, warmup_steps=150, max_length=64, eval_every=172, val_examples=300, patience=None)
RECIPES = {
    "transformer-de-en": TranslationRecipe(),
    # the same size as a T5 (pre-norm, relative positions): learns far more slowly on these pairs
    "t5-de-en": TranslationRecipe(architecture="t5"),
    # the seed's setting (needs a hub and a GPU): a 6-layer d512 Transformer on IWSLT 2017 en→de
    "transformer-iwslt-en-de": TranslationRecipe(
        task="iwslt2017-en-de", vocab_size=16000, d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6,
        num_heads=8, d_kv=64, batch_size=128, epochs=20, lr=1e-3, warmup_steps=4000, max_length=100,
        eval_every=2000, val_examples=1000),
    # English→German on the LibreOffice help (issue 36), sized on the learning curve
    # (benchmarks/translation_learning_curve.py) to train within 45 minutes on one thread: d128 at peak
    # rate 4e-3, 3 epochs of 96 pairs (1,032 steps, validation BLEU 17.6 on the curve; the d256 recipe
    # that reaches test BLEU 25 needs about 7-8 epochs, 2.5-3 hours)
    "transformer-help-en-de": HELP_EN_DE,
    # seed 002's architecture by the same recipe (relative positions, pre-norm, tied head), as T5 v1.1 (no
    # 1/√d_model before the head: with it, its training loss after 200 steps was 7.3 against 6.6 without)
    "t5-help-en-de": dataclasses.replace(HELP_EN_DE, architecture="t5", t5_output_scale=False),
    # the same T5 blocks with the Transformer's embeddings (three tables, × √d_model, sinusoidal positions) and no
    # dropout: the T5 pilots' variant that translates (benchmarks/results/translation_pilots.md); test BLEU 12.9
    # after these 1,032 steps (t5-help-en-de: 0.9; the Transformer: 17.4 ± 0.9 over 4 seeds)
    "t5-help-en-de-transformer-embeddings": dataclasses.replace(
        HELP_EN_DE, architecture="t5", t5_output_scale=False, t5_embeddings="transformer", dropout=0.0),
    # and its query projections at the rate a Transformer's scaled scores give them (t5_query_lr_scale 1/√d_kv):
    # after 344 steps training loss 4.77 and validation BLEU 5.96 against 5.08 and 2.99 without (the Transformer: 4.67
    # and 6.31; benchmarks/results/translation_pilots.md); test BLEU 19.6 ± 0.1 after the 1,032 steps (2 seeds)
    "t5-help-en-de-query-rate": dataclasses.replace(
        HELP_EN_DE, architecture="t5", t5_output_scale=False, t5_embeddings="transformer", dropout=0.0,
        t5_query_lr_scale=32 ** -0.5),
    # seconds, for tests: a tiny model on 2,000 pairs (it learns little; tests check the machinery)
    "transformer-de-en-smoke": TranslationRecipe(
        train_examples=2000, vocab_size=600, d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
        d_kv=16, epochs=2, batch_size=32, warmup_steps=20, eval_every=50, val_examples=32, eval_examples=200,
        patience=None, max_length=32),
}


@dataclass
class TranslationModelInfo:
    name: str
    key: str
    path: Path
    recipe: dict
    metrics: dict


# --------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: Sequence[str], vocab_size: int, kind: str = "unigram"):
    """A subword tokenizer (``kind``: ``"unigram"`` or ``"bpe"``) trained on ``texts``
    (NFKC-normalised, words marked by ``▁``), with T5's special tokens (``<pad>`` 0, ``</s>`` 1
    appended to every sequence, ``<unk>`` 2), as a ``transformers.PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be > {len(SPECIAL_TOKENS)} (the special tokens), got {vocab_size}")
    if kind not in TOKENIZERS:
        raise ValueError(f"tokenizer kind {kind!r}; allowed: {', '.join(TOKENIZERS)}")
    options = dict(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer_ = trainers.BpeTrainer(**options)
    else:
        tok = Tokenizer(models.Unigram())
        trainer_ = trainers.UnigramTrainer(**options, unk_token="<unk>")
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(list(texts), trainer_)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


# --------------------------------------------------------------------------------------- model
def build_model(recipe: TranslationRecipe, tokenizer) -> nn.Module:
    """A freshly initialised encoder–decoder of the recipe's architecture and size (seeded)."""
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, T5Config, T5ForConditionalGeneration

    from .t5_embeddings import T5WithTransformerEmbeddings

    special = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                   decoder_start_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        if recipe.architecture == "t5":
            t5 = T5WithTransformerEmbeddings if recipe.t5_embeddings == "transformer" else T5ForConditionalGeneration
            model = t5(T5Config(
                vocab_size=len(tokenizer), d_model=recipe.d_model, d_ff=recipe.d_ff, d_kv=recipe.d_kv,
                num_layers=recipe.num_layers, num_decoder_layers=recipe.num_decoder_layers, num_heads=recipe.num_heads,
                dropout_rate=recipe.dropout, feed_forward_proj="relu", **special,
                # transformers reads tie_word_embeddings=False as "T5 v1.1: no 1/√d_model scaling of the
                # decoder output" (the head stays tied): logits of std ~1 at initialisation, not ~1/√d_model
                **({} if recipe.t5_output_scale else {"tie_word_embeddings": False})))
            # transformers 5 always ties T5's head to its embedding table (and scales the decoder's
            # output by 1/√d_model); drawn with std 1/√d_model it learns faster here than T5's std 1
            nn.init.normal_(model.lm_head.weight, std=recipe.d_model**-0.5)
            if recipe.t5_embeddings == "transformer":  # its input tables too: scaled by √d_model, of std 1
                nn.init.normal_(model.shared.weight, std=recipe.d_model**-0.5)
                nn.init.normal_(model.decoder.embed_tokens.weight, std=recipe.d_model**-0.5)
        else:
            model = MarianMTModel(MarianConfig(
                vocab_size=len(tokenizer), decoder_vocab_size=len(tokenizer), d_model=recipe.d_model,
                encoder_layers=recipe.num_layers, decoder_layers=recipe.num_decoder_layers,
                encoder_attention_heads=recipe.num_heads, decoder_attention_heads=recipe.num_heads,
                encoder_ffn_dim=recipe.d_ff, decoder_ffn_dim=recipe.d_ff, activation_function="relu",
                dropout=recipe.dropout, max_position_embeddings=max(256, 2 * recipe.max_length), scale_embedding=True,
                share_encoder_decoder_embeddings=True, tie_word_embeddings=False,
                forced_eos_token_id=tokenizer.eos_token_id, **special))
    model.generation_config = GenerationConfig(**special)
    return model


def pair_fields(spec: tasks.TaskSpec) -> tuple[str, str]:
    """(source column, target column) of a translation task."""
    if spec.kind != "translation":
        raise ValueError(f"task {spec.name!r} is {spec.kind}, not translation")
    return spec.text_fields[0], spec.label_field


def seq2seq_batches(tokenizer, dataset, spec: tasks.TaskSpec, batch_size: int, max_length: int, seed: int = 0,
                    shuffle: bool = True) -> trainer.DatasetBatches:
    """Training batches ``{input_ids, attention_mask, labels}`` of a translation split, reshuffled
    each epoch (seed + epoch); label padding is −100 (ignored by the loss)."""
    src, tgt = pair_fields(spec)

    def collate(rows: dict) -> dict:
        enc = dict(tokenizer(rows[src], padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
        labels = tokenizer(rows[tgt], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")["input_ids"]
        return enc | {"labels": labels.masked_fill(labels == tokenizer.pad_token_id, -100)}

    return trainer.DatasetBatches(dataset, batch_size, collate, seed=seed, shuffle=shuffle)


def smoothed_loss(label_smoothing: float):
    """``loss(model, batch)``: token cross-entropy with label smoothing over the non-padding labels."""
    def loss(model: nn.Module, batch: dict) -> torch.Tensor:
        logits = model(**batch).logits
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["labels"].reshape(-1),
                                           ignore_index=-100, label_smoothing=label_smoothing)
    return loss


# --------------------------------------------------------------------------------------- decoding
@torch.no_grad()
def translate(model: nn.Module, tokenizer, sources: Sequence[str], batch_size: int = 64, max_length: int = 48,
              num_beams: int = 1, progress: bool = False) -> list[str]:
    """Detokenized translations of ``sources`` (greedy, or beam search with ``num_beams`` > 1),
    at most ``max_length`` tokens each, in input order."""
    model.eval()
    device = next(model.parameters()).device
    order = metrics.length_order(tokenizer, sources, max_length=max_length)  # little padding per batch
    out: dict[int, str] = {}
    for i in Bar(range(0, len(order), batch_size), desc="translate", disable=not progress):
        idx = order[i:i + batch_size]
        enc = tokenizer([sources[j] for j in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
        ids = model.generate(**enc, max_new_tokens=max_length, num_beams=num_beams, do_sample=False)
        for j, text in zip(idx, tokenizer.batch_decode(ids, skip_special_tokens=True)):
            out[j] = text.strip()
    return [out[i] for i in range(len(sources))]


def evaluate(model: nn.Module, tokenizer, dataset, spec: tasks.TaskSpec, n: int | None = None,
             max_length: int = 48, num_beams: int = 1, batch_size: int = 64) -> tuple[dict, list[str]]:
    """BLEU and chrF (with sacrebleu's signatures) of ``model`` on the first ``n`` pairs of
    ``dataset`` (all when None), and the hypotheses."""
    src, tgt = pair_fields(spec)
    ds = dataset if n is None or n >= len(dataset) else dataset.select(range(n))
    hyps = translate(model, tokenizer, ds[src], batch_size, max_length, num_beams)
    return metrics.translation_scores(hyps, ds[tgt]) | {"examples": len(ds)}, hyps


# --------------------------------------------------------------------------------------- training
def train_model(model: nn.Module, tokenizer, recipe: TranslationRecipe, task: tasks.Task, *, epochs: int | None = None,
                lr: float | None = None, warmup_steps: int | None = None, checkpoint_dir: str | Path | None = None,
                progress: bool = True, desc: str = "train translation") -> trainer.TrainResult:
    """Train ``model`` (fresh, fake-quantized, or trained already: QAT fine-tuning) on the task's
    training split by the recipe (``epochs``, ``lr``, ``warmup_steps`` override it), early-stopped
    on validation BLEU with the best weights restored; resumes from ``checkpoint_dir``."""
    train_set = task["train"]
    if recipe.train_examples is not None and recipe.train_examples < len(train_set):
        train_set = train_set.select(range(recipe.train_examples))
    data = seq2seq_batches(tokenizer, train_set, task.spec, recipe.batch_size, recipe.max_length, seed=recipe.seed)

    def val_bleu(m: nn.Module) -> dict:
        scores, _ = evaluate(m, tokenizer, task["validation"], task.spec, recipe.val_examples, recipe.max_length)
        return {"val_bleu": scores["bleu"], "val_chrf": scores["chrf"]}

    config = trainer.TrainConfig(
        epochs=epochs or recipe.epochs, lr=lr or recipe.lr, weight_decay=recipe.weight_decay, schedule="inverse_sqrt",
        warmup_steps=warmup_steps if warmup_steps is not None else recipe.warmup_steps, max_grad_norm=1.0,
        eval_every=recipe.eval_every, metric="val_bleu", greater_is_better=True, patience=recipe.patience,
        checkpoint_dir=checkpoint_dir, checkpoint_every=recipe.eval_every if checkpoint_dir else None,
        progress=progress, desc=desc, precision=recipe.precision,
        lr_scales=(("*.q.weight", recipe.t5_query_lr_scale),) if recipe.t5_query_lr_scale != 1.0 else ())
    torch.manual_seed(recipe.seed)
    return trainer.train(model, data, config, loss=smoothed_loss(recipe.label_smoothing), evaluate=val_bleu)


def translation_model_dir() -> Path:
    """Where trained translation models are cached: ``$TCOMP_CACHE/translation_models``."""
    return assets.cache_dir() / "translation_models"


def make(recipe: TranslationRecipe, out_dir: Path, checkpoint_dir: Path | None = None, progress: bool = True) -> dict:
    """Train the tokenizer and the model of ``recipe``; save both, the training log and the metrics
    (validation and test BLEU/chrF, greedy) to ``out_dir``; return the metrics."""
    task = tasks.load_task(recipe.task, seed=recipe.split_seed)
    src, tgt = pair_fields(task.spec)
    train_set = task["train"]
    if recipe.train_examples is not None and recipe.train_examples < len(train_set):
        train_set = train_set.select(range(recipe.train_examples))
    tokenizer = train_tokenizer(list(train_set[src]) + list(train_set[tgt]), recipe.vocab_size, recipe.tokenizer)
    model = build_model(recipe, tokenizer)
    result = train_model(model, tokenizer, recipe, task, checkpoint_dir=checkpoint_dir, progress=progress,
                         desc=f"train {recipe.architecture} {recipe.task}")
    out = {"train_time_s": result.seconds, "steps": result.steps, "best_step": result.best_step,
           "parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer)}
    hypotheses = {}
    for split in ("validation", "test"):
        scores, hypotheses[split] = evaluate(model, tokenizer, task[split], task.spec, recipe.eval_examples,
                                             recipe.max_length)
        out |= {f"{split}_{k}": v for k, v in scores.items()}
    if recipe.task in OUT_OF_DOMAIN:  # every test number has its out-of-domain twin (all of that test split)
        other = tasks.load_task(OUT_OF_DOMAIN[recipe.task])
        scores, hypotheses["ood_test"] = evaluate(model, tokenizer, other["test"], other.spec, None, recipe.max_length)
        out |= {f"ood_test_{k}": v for k, v in scores.items()} | {"ood_task": OUT_OF_DOMAIN[recipe.task]}
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    result.log.to_csv(out_dir / "log.csv", index=False)
    # the recorded scores' translations, in split order: paired comparisons need them sentence by sentence
    (out_dir / "hypotheses.json").write_text(json.dumps(hypotheses, ensure_ascii=False, indent=0))
    return out


def load_folder(folder: str | Path) -> tuple[nn.Module, object]:
    """``(model, tokenizer)`` saved by :func:`make` in ``folder``."""
    from transformers import AutoModelForSeq2SeqLM, PreTrainedTokenizerFast

    from .t5_embeddings import T5WithTransformerEmbeddings

    # a T5 with the Transformer's embeddings is not a class transformers' Auto classes know
    saved_as = json.loads((Path(folder) / "config.json").read_text()).get("architectures") or []
    load = (T5WithTransformerEmbeddings if T5WithTransformerEmbeddings.__name__ in saved_as
            else AutoModelForSeq2SeqLM).from_pretrained
    return load(folder), PreTrainedTokenizerFast.from_pretrained(folder)


def get_translation_model(name: str = "transformer-de-en", recipe: TranslationRecipe | None = None,
                          retrain: bool = False, progress: bool = True) -> tuple[nn.Module, object, TranslationModelInfo]:
    """Load the cached translation model of ``recipe`` (default: the named recipe), training it
    first when it is not cached (or ``retrain``). Returns ``(model, tokenizer, info)``. Training
    writes into a temporary folder renamed into place only when complete (removed when training
    fails or is stopped, SIGTERM included; the checkpoint it resumes from is kept). A cached model's
    files are checked against the SHA-256s recorded when it was trained."""
    if recipe is None:
        if name not in RECIPES:
            raise KeyError(f"unknown translation model {name!r}; known: {', '.join(RECIPES)} (or pass a recipe)")
        recipe = RECIPES[name]
    key = recipe.key()
    root = translation_model_dir()
    folder = root / f"{name}-{key}"
    ckpt = root / f".ckpt-{name}-{key}"  # a stopped training resumes from here
    trained = []

    def build(tmp: Path) -> None:
        with timing.torch_threads(timing.TRAINING_THREADS):  # the same model on every machine
            result = make(recipe, tmp, checkpoint_dir=ckpt, progress=progress)
        (tmp / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=1))
        (tmp / "metrics.json").write_text(json.dumps(result, indent=1))
        trained.append(tmp)

    files.build_folder(folder, build, rebuild=retrain, rebuild_hint=(
        f"retrain it with tcomp_utils.translation.get_translation_model({name!r}"
        f"{'' if RECIPES.get(name) == recipe else ', recipe'}, retrain=True)"))
    if trained:  # the checkpoint this training resumed from is done with
        shutil.rmtree(ckpt, ignore_errors=True)
    model, tokenizer = load_folder(folder)
    info = TranslationModelInfo(name, key, folder, json.loads((folder / "recipe.json").read_text()),
                                json.loads((folder / "metrics.json").read_text()))
    return model, tokenizer, info
