"""The ``tcomp`` command: compress a model of your own, count and time it, and score it, without code.

    tcomp methods                                     # the registered methods (tcomp methods gptq: its fields)
    tcomp compress MODEL "structured(mu=0.7) + gptq(bits=4)" --calibration FILE_OR_TASK --out DIR
    tcomp probe DIR                                   # parameters, bytes, MACs, latency, peak memory
    tcomp eval DIR --task NAME_OR_FILE                # perplexity, or the task's classification metrics

``MODEL`` is what :func:`tcomp_utils.models.load_model` loads: an embedded name (``smollm2-135m``),
a local Hugging Face folder, a ``.gguf`` file (or a folder holding one) or a hub id. The pipeline
is :func:`tcomp_utils.pipeline.parse`'s one line. ``DIR`` is written by
:func:`tcomp_utils.serialize.save_compressed` (whole or not at all) and read back by
:func:`~tcomp_utils.serialize.load_compressed`; it holds the weights and ``tcomp.json`` only, so
``tcomp eval`` takes the tokenizer from the model the save records it was compressed from
(``--tokenizer`` to give another).

Every argument is checked before anything heavy is loaded (the pipeline, the ``--out`` folder, the
calibration file or task and its tokens, the model's config; a GGUF model's tokenizer comes only
with its weights); a bad one is one line on stderr naming it and what is allowed, with exit status
2, and nothing is written. A method that finds only once the model is loaded that it cannot do
what was asked (a budget out of reach) says so the same way, and nothing is written. Also
``python -m tcomp_utils.cli``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .tasks import Task, TaskSpec

PROG = "tcomp"
# what --calibration and eval --task accept from tcomp_utils.tasks, by kind
LM_KINDS = ("language-modeling",)
CLASSIFIER_KINDS = ("classification", "regression")
# the model kinds of models.TASK_CLASSES recognised from a class name, by transformers' auto mappings
KIND_MAPPINGS = {"causal-lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
                 "seq2seq": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
                 "sequence-classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"}


class UsageError(ValueError):
    """A bad argument, found before any work: the message names it and what is allowed."""


# ------------------------------------------------------------------------------------- helpers
def model_kind(model_type: str, class_name: str) -> str:
    """The :data:`tcomp_utils.models.TASK_CLASSES` kind of transformers class ``class_name``
    (``base`` when it has no head those kinds name)."""
    from transformers.models.auto import modeling_auto

    for kind, mapping in KIND_MAPPINGS.items():
        names = getattr(modeling_auto, mapping).get(model_type, ())
        if class_name in (names if isinstance(names, (tuple, list)) else (names,)):
            return kind
    return "base"


def positions(config: dict) -> int | None:
    """The longest sequence the model's config allows (None: no fixed limit, e.g. T5)."""
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def _check_seq_len(seq_len: int, config: dict, what: str) -> None:
    limit = positions(config)
    if seq_len < 2 or (limit is not None and seq_len > limit):
        span = f"[2, {limit}]: {what} has {limit} positions" if limit is not None else ">= 2"
        raise UsageError(f"--seq-len {seq_len} is not allowed; allowed: {span}")


def _positive(option: str, value: int | None, none_ok: bool = False) -> None:
    if not (value is None and none_ok) and (value is None or value < 1):
        raise UsageError(f"{option} {value} is not allowed; allowed: an integer >= 1")


def _read_text(path: Path, option: str) -> str:
    """A calibration or evaluation text file: UTF-8 with some text in it."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UsageError(f"{option} file {str(path)!r} {what}; give a UTF-8 text file or a task name")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise UsageError(f"{option} file {str(path)!r} is not readable UTF-8 text ({type(err).__name__}); "
                         "give a plain UTF-8 text file or a task name") from None
    if not text.strip():
        raise UsageError(f"{option} file {str(path)!r} holds no text; give a UTF-8 text file with text in it")
    return text


def text_or_task(value: str, option: str, kinds: tuple[str, ...]) -> str | TaskSpec:
    """``value`` as a text file's contents (a path that exists, or looks like one) or the
    :class:`~tcomp_utils.tasks.TaskSpec` of a task of one of ``kinds``."""
    from . import tasks

    path = Path(value).expanduser()
    if path.exists() or os.sep in value or path.suffix:
        return _read_text(path, option)
    allowed = [name for name, spec in tasks.TASKS.items() if spec.kind in kinds]
    spec = tasks.TASKS.get(value)
    if spec is None:
        raise UsageError(f"{option} {value!r} is not a file and not a task; give a UTF-8 text file or one of the "
                         f"tasks: {', '.join(allowed)}")
    if spec.kind not in kinds:
        raise UsageError(f"{option} {value!r} is a {spec.kind} task, which {PROG} cannot use here; allowed: a UTF-8 "
                         f"text file or one of the tasks: {', '.join(allowed)}")
    return spec


def load_tokenizer(name: str):
    """The tokenizer of model ``name`` (as :func:`tcomp_utils.models.load_model` gives it: the EOS
    token as pad token when there is none), without loading the model."""
    import transformers

    from . import models

    where, gguf = models.resolve(name)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(where, **({"gguf_file": gguf} if gguf else {}))
    except (OSError, ValueError) as err:
        raise UsageError(f"no tokenizer could be loaded from {name!r} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}); give --tokenizer a model folder or hub id") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _summary(before, after) -> str:
    parts = [f"{label} {getattr(before, k):,.0f} -> {getattr(after, k):,.0f} "
             f"({getattr(after, k) / max(getattr(before, k), 1):.3f} of the original)"
             for k, label in (("params", "parameters"), ("bytes", "stored bytes"), ("macs", "MACs per token"))]
    return "; ".join(parts)


# ------------------------------------------------------------------------------------- commands
def cmd_methods(args: argparse.Namespace) -> int:
    import dataclasses

    from . import registry

    if args.name is None:
        from tabulate import tabulate

        print(tabulate(registry.methods()[["method", "family", "description"]], headers="keys", showindex=False,
                       tablefmt="plain"))
        print(f"\n{PROG} methods NAME shows the fields of one; a pipeline joins methods with '+', e.g. "
              "\"structured(mu=0.7) + gptq(bits=4)\"")
        return 0
    entry = registry.method_entry(args.name)  # an unknown name: the registry's error, listing the registered ones
    print(f"{entry.name} ({entry.family}): {entry.description}\nfields (name = default):")
    for f in dataclasses.fields(entry.config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        print(f"  {f.name} = {default!r}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from . import budget, models, pipeline, serialize

    # 1. everything that can be checked without loading the model
    try:
        steps = pipeline.parse(args.pipeline)
    except ValueError as err:  # PipelineError, an unknown method or field, a bad value or budget
        raise UsageError(f"pipeline {args.pipeline!r}: {err}") from None
    out = Path(args.out).expanduser().resolve()
    serialize.check_target(out, overwrite=True)  # refuses a folder that is not empty and not a save
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"--out {str(out)!r} holds a previous save; pass --overwrite to replace it, or choose a new "
                         "or empty folder")
    _positive("--samples", args.samples)
    needs = [s.name for s in steps if s.config.calibration_needed()]
    source = text_or_task(args.calibration, "--calibration", LM_KINDS + CLASSIFIER_KINDS) if args.calibration else None
    if needs and source is None:
        raise UsageError(f"the pipeline's step(s) {', '.join(needs)} need calibration data: give --calibration a UTF-8 "
                         "text file or a task name (tcomp compress --help)")
    kind, config = _model_kind_and_config(args.model, args.model_type)
    task = calibration = None
    if needs:  # the calibration data and the tokenizer before the model: a bad text or a missing asset fails fast
        _check_seq_len(args.seq_len, config, f"model {args.model!r}")
        if not isinstance(source, str):
            from . import tasks

            task = tasks.load_task(source.name, seed=args.seed)
        if config:  # a GGUF model's tokenizer is read with its weights, below
            calibration = _calibration(source, task, load_tokenizer(args.model), kind, args)
    elif source is not None:
        _note(args, f"note: no step of this pipeline uses calibration; --calibration {args.calibration} is not used")

    # 2. the work
    _note(args, f"loading {args.model} ({kind})")
    model, model_tokenizer = models.load_model(args.model, kind)
    if needs and calibration is None:
        calibration = _calibration(source, task, model_tokenizer, kind, args)
    _note(args, f"compressing: {' + '.join(s.describe() for s in steps) or 'dense (nothing)'}")
    before = budget.footprint(model)
    reports = pipeline.apply(model, steps, calibration, progress=args.progress)
    for report in reports:
        _note(args, f"  {report.method}: {len(report.modules)} module(s) replaced in {report.seconds:.1f} s")
    folder = serialize.save_compressed(model, out, overwrite=args.overwrite)
    print(f"saved {folder}: {_summary(before, budget.footprint(model))}")
    return 0


def _model_kind_and_config(name: str, chosen: str) -> tuple[str, dict]:
    """The model kind to load ``name`` as (``chosen``, or from its config's architecture) and its
    config as a dict (empty for a GGUF file, whose config is read only with its weights)."""
    from . import models

    path = Path(name).expanduser()
    if not path.exists() and (name.startswith((".", "/", "~")) or path.suffix == ".gguf"):
        raise UsageError(f"model {name!r} does not exist; give a model folder, a .gguf file, an embedded name "
                         f"({', '.join(models.EMBEDDED_MODELS)}) or a hub id")
    _, gguf = models.resolve(name)
    if gguf is not None:  # transformers reads GGUF files as causal LMs only
        if chosen not in ("auto", "causal-lm"):
            raise UsageError(f"--model-type {chosen} is not allowed for the GGUF model {name!r}; allowed: causal-lm")
        return "causal-lm", {}
    config = models.load_config(name)
    if chosen != "auto":
        return chosen, config.to_dict()
    architectures = getattr(config, "architectures", None) or []
    return (model_kind(config.model_type, architectures[0]) if architectures else "base"), config.to_dict()


def _calibration(source: str | TaskSpec, task: Task | None, tokenizer: Any, kind: str,
                 args: argparse.Namespace) -> list[dict]:
    """Calibration batches from a text file's contents or a loaded task (see ``compress --help``)."""
    from . import task_models

    if isinstance(source, str) or source.kind in LM_KINDS:
        text = source if isinstance(source, str) else task.text("calibration")
        try:
            batches = task_models.lm_segments(tokenizer, text, n=args.samples, length=args.seq_len, seed=args.seed)
        except ValueError as err:  # too few tokens
            raise UsageError(f"--calibration {args.calibration!r}: {err}; give a longer text or a smaller "
                             "--seq-len") from None
        _note(args, f"calibration: {args.samples} segments of {args.seq_len} tokens from {args.calibration}")
        # a causal LM's own loss for methods weighting by it (Fisher), as the atlas calibrates
        return [{**b, "labels": b["input_ids"]} for b in batches] if kind == "causal-lm" else batches
    batches = task_models.calibration_batches(tokenizer, task["train"], source, n=args.samples,
                                              max_length=args.seq_len, labels=kind == "sequence-classification")
    _note(args, f"calibration: the first {min(args.samples, len(task['train']))} training examples of {source.name}")
    return batches


def cmd_probe(args: argparse.Namespace) -> int:
    from . import probe

    folder = Path(args.dir)
    config = probe.saved_description(folder)["config"]
    seq_len = args.seq_len if args.seq_len is not None else min(128, positions(config) or 128)
    _check_seq_len(seq_len, config, f"the model saved in {folder}")
    for option, value in (("--batch", args.batch), ("--runs", args.runs), ("--threads", args.threads)):
        _positive(option, value)
    if args.warmup < 0:
        raise UsageError(f"--warmup {args.warmup} is not allowed; allowed: an integer >= 0")
    inputs = probe.random_inputs(folder, args.batch, seq_len, seed=0)
    _note(args, f"probing {folder} in a fresh process: {args.runs} forward passes of {args.batch} x {seq_len} tokens")
    try:
        result = probe.probe(folder, inputs, runs=args.runs, warmup=args.warmup, threads=args.threads, seq_len=seq_len)
    except RuntimeError as err:  # the child failed: its stderr is in the message
        print(f"{PROG} probe: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"dir": str(folder), "batch": args.batch, "seq_len": seq_len, **result}, indent=1))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from . import metrics, probe, serialize

    folder = Path(args.dir)
    description = probe.saved_description(folder)
    config, model_class = description["config"], str(description.get("model_class", ""))
    kind = model_kind(config.get("model_type", ""), model_class)
    source = text_or_task(args.task, "--task", LM_KINDS + CLASSIFIER_KINDS)
    lm = isinstance(source, str) or source.kind in LM_KINDS
    if lm and kind != "causal-lm":
        raise UsageError(f"--task {args.task!r} is scored by perplexity, which needs a causal LM; the model saved in "
                         f"{folder} is a {model_class} ({kind}): give it a classification task")
    if not lm:
        labels = len(config.get("id2label") or {}) or config.get("num_labels")
        if kind != "sequence-classification" or labels != source.num_labels:
            has = f"{kind}, {labels} output(s)" if kind == "sequence-classification" else kind
            raise UsageError(f"--task {args.task!r} needs a sequence classifier with {source.num_labels} output(s); the "
                             f"model saved in {folder} is a {model_class} ({has}): give it a text file or a "
                             "language-modelling task, or a matching model")
    _check_seq_len(args.seq_len, config, f"the model saved in {folder}")
    _positive("--max-tokens", args.max_tokens, none_ok=True)
    _positive("--examples", args.examples, none_ok=True)
    tokenizer_name = args.tokenizer or config.get("_name_or_path")
    if not tokenizer_name:
        raise UsageError(f"{folder / serialize.DESCRIPTION} records no model it was compressed from (_name_or_path), "
                         "so there is no tokenizer to take: pass --tokenizer MODEL")
    tokenizer = load_tokenizer(tokenizer_name)
    task = None
    if not isinstance(source, str):
        from . import tasks

        task = tasks.load_task(source.name, seed=args.seed)
        if args.split not in task.splits:
            raise UsageError(f"--split {args.split!r} is not a split of task {source.name!r}; allowed: "
                             f"{', '.join(task.splits)}")

    model = serialize.load_compressed(folder)
    out: dict[str, Any] = {"dir": str(folder), "task": args.task}
    if lm:
        from . import task_models

        text = source if isinstance(source, str) else task.text(args.split)
        ids = task_models.token_ids(tokenizer, text)
        r = metrics.perplexity(model, ids, seq_len=args.seq_len, max_tokens=args.max_tokens, progress=args.progress,
                               bos_token_id=metrics.bos_token_id(tokenizer))
        out |= {"split": None if isinstance(source, str) else args.split, "perplexity": r.perplexity, "nll": r.nll,
                "eval_tokens": r.tokens, "windows": r.windows, "seq_len": args.seq_len}
    else:
        data = task[args.split]
        data = data.select(range(min(args.examples, len(data)))) if args.examples else data
        scores = metrics.evaluate_classifier(model, tokenizer, data, source.metrics, source.text_fields,
                                             source.label_field, max_length=args.seq_len)
        out |= {"split": args.split, **scores, "examples": len(data)}
    print(json.dumps(out, indent=1))
    return 0


def _note(args: argparse.Namespace, text: str) -> None:
    if args.progress:
        print(text, file=sys.stderr)


# --------------------------------------------------------------------------------------- parser
def _subparser(subparsers, name: str, run: Callable[[argparse.Namespace], int], summary: str, epilog: str):
    sub = subparsers.add_parser(name, help=summary, description=summary, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.set_defaults(run=run)
    return sub


def _progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bars and notes on stderr (default: yes)")


def build_parser() -> argparse.ArgumentParser:
    from .models import TASK_CLASSES

    parser = argparse.ArgumentParser(
        prog=PROG, description="Compress a transformer with the tcomp methods, then count, time and score it.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  tcomp methods
  tcomp compress ./my-model "structured(mu=0.7) + gptq(bits=4)" --calibration notes.txt --out ./small
  tcomp probe ./small
  tcomp eval ./small --task notes-test.txt

Each command's --help has more. Bad arguments are reported before any work, with exit status 2.""")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub = _subparser(subparsers, "methods", cmd_methods, "List the registered compression methods.", """examples:
  tcomp methods          # every method: name, family, what it does
  tcomp methods gptq     # the fields of one, with their defaults (what a pipeline step may set)""")
    sub.add_argument("name", nargs="?", help="a method: show its fields")

    sub = _subparser(subparsers, "compress", cmd_compress,
                     "Compress MODEL by a pipeline of methods and save it to --out.", """examples:
  tcomp compress ./my-model "structured(mu=0.7) + gptq(bits=4)" --calibration notes.txt --out ./small
  tcomp compress smollm2-135m "gptq(bits=4)" --calibration austen --out ./smol-gptq4
  tcomp compress ./model.gguf "svd(ratio=2, roles='ffn') + rtn(bits=8)" --out ./svd-rtn

MODEL: a local Hugging Face folder (with its tokenizer), a .gguf file or a folder holding one, an
embedded name (smollm2-135m, minilm-l6) or a hub id.
PIPELINE: `dense`, or methods joined by '+', each name(field=value, ...) with literal values
(tcomp methods; tcomp methods NAME for the fields). The whole line is checked first, order included.
--calibration, for the methods that need it (gptq, structured with criterion 'id', asvd, ...):
  a UTF-8 text file: tokenized whole, --samples windows of --seq-len tokens at offsets drawn by
    --seed (GPTQ's protocol), so it needs more than --seq-len tokens;
  or a task: a language-modelling one (austen, jargon, wikitext2) gives windows of its
    calibration split the same way; a classification one (tweets, tweets3, glue-*) its first
    --samples training examples, truncated to --seq-len tokens.
  A causal LM's batches carry their labels (the ids), a classifier's the task's: Fisher-weighted
  methods need a loss.
--out: a new or empty folder, or a previous save with --overwrite; written whole or not at all.""")
    sub.add_argument("model", help="a model folder, .gguf file, embedded name or hub id")
    sub.add_argument("pipeline", help="e.g. \"structured(mu=0.7) + gptq(bits=4)\"")
    sub.add_argument("--out", required=True, help="the folder to save the compressed model to")
    sub.add_argument("--calibration", help="a UTF-8 text file or a task name (see below)")
    sub.add_argument("--samples", type=int, default=32, help="calibration windows or examples (default: 32)")
    sub.add_argument("--seq-len", type=int, default=128, help="tokens per calibration window (default: 128)")
    sub.add_argument("--seed", type=int, default=0, help="draws the calibration windows (default: 0)")
    sub.add_argument("--model-type", choices=("auto", *TASK_CLASSES), default="auto",
                     help="the head to load MODEL with (default: auto, from its config's architecture)")
    sub.add_argument("--overwrite", action="store_true", help="replace a previous save in --out")
    _progress_flag(sub)

    sub = _subparser(subparsers, "probe", cmd_probe,
                     "Count and measure a saved model in a fresh process.", """examples:
  tcomp probe ./small
  tcomp probe ./small --batch 4 --seq-len 256 --runs 20 --threads 1

Prints JSON: saved_params, saved_bytes, saved_macs (per token at --seq-len), file_bytes,
latency_ms (median forward pass, with p10/p90) on --batch rows of --seq-len random token ids of the
model's vocabulary, load_mb and peak_mb (resident memory loading and running added, MiB).""")
    sub.add_argument("dir", help="a folder written by tcomp compress")
    sub.add_argument("--batch", type=int, default=1, help="rows per forward pass (default: 1)")
    sub.add_argument("--seq-len", type=int, default=None,
                     help="tokens per row (default: 128, or the model's positions if fewer)")
    sub.add_argument("--runs", type=int, default=10, help="timed forward passes (default: 10)")
    sub.add_argument("--warmup", type=int, default=2, help="untimed passes first (default: 2)")
    sub.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    _progress_flag(sub)

    sub = _subparser(subparsers, "eval", cmd_eval, "Score a saved model on a task or a text file.", """examples:
  tcomp eval ./small --task notes-test.txt                 # perplexity of a causal LM on a text file
  tcomp eval ./smol-gptq4 --task austen --max-tokens 4096  # perplexity on Pride and Prejudice
  tcomp eval ./small-classifier --task tweets --examples 500

--task: a UTF-8 text file or a language-modelling task (austen, jargon, wikitext2): perplexity of
a causal LM in non-overlapping windows of --seq-len tokens (each starting with the BOS token when
the tokenizer adds one), over the first --max-tokens tokens; or a classification task (tweets,
tweets3, glue-*): its metrics on --split for a sequence classifier with as many labels.
The tokenizer is the one of the model the save was compressed from (recorded in its tcomp.json),
unless --tokenizer names another. Prints JSON.""")
    sub.add_argument("dir", help="a folder written by tcomp compress")
    sub.add_argument("--task", required=True, help="a UTF-8 text file or a task name")
    sub.add_argument("--split", default="test", help="the task's split (default: test)")
    sub.add_argument("--seq-len", type=int, default=128,
                     help="tokens per perplexity window, or the classifier's truncation (default: 128)")
    sub.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens (default: all)")
    sub.add_argument("--examples", type=int, default=None, help="score only the first N examples (default: all)")
    sub.add_argument("--seed", type=int, default=0, help="the task's split seed (default: 0)")
    sub.add_argument("--tokenizer", default=None, help="a model folder or hub id to take the tokenizer from")
    _progress_flag(sub)
    return parser


def _message(err: BaseException) -> str:
    """The error's own message (a KeyError's without its quotes) and its notes, on one line."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join([str(text), *getattr(err, "__notes__", [])]).replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    """Run ``tcomp`` with ``argv`` (default: the command line); returns the exit status."""
    from . import assets

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or argparse's usage error (2, message printed)
        return done.code if isinstance(done.code, int) else 0 if done.code is None else 2
    from . import files

    if not getattr(args, "progress", True):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # transformers' own bars (loading weights) too
    try:
        with files.terminate_cleanly():  # SIGTERM too removes a half-written save
            return args.run(args)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, assets.AssetError) as err:
        print(f"{PROG} {args.command}: error: {_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
