"""Composable pruning (seed 002): prune and fine-tune each shared module once, then compose.
This module is the protocol and the public entry (every public name of the method is importable
from here); the parts live in :mod:`~tcomp_utils.methods.composable_sites` (sites, units,
configurations and their patterns) and :mod:`~tcomp_utils.methods.composable_units` (pruning a
unit, module-level fine-tuning, composition, unit files).

Several pruning **configurations** of one model often prune some modules identically (the same
module at the same rate). Each distinct **unit** — a (site, kind, rate) — is pruned and
fine-tuned once *at module level*, its output trained to match the original module's output on
recorded calibration inputs; each configuration's model is then **composed** from its units and
fine-tuned briefly on the task. The baseline fine-tunes the same pruned configuration directly,
without module-level fine-tuning.

**Kinds**: ``heads`` on an attention block (head-wise L1 structured pruning, heads removed
physically) and ``l1`` on a linear layer (L1 unstructured pruning, the mask kept through both
fine-tunings, stored sparse at the end). Head removal is the shared public API of
:mod:`tcomp_utils.methods.heads`, L1 sparsity storage that of :mod:`tcomp_utils.methods.pruning`.

**Files a user edits** (YAML, validated before anything is pruned): the configurations
(:func:`generate`, :func:`write_configurations`, :func:`load_configurations`) and the scheme
(:func:`build_scheme`, :func:`write_scheme`, :func:`load_scheme`): every distinct unit with the
configurations that use it.

    configurations:
      - {name: a25-l30, attention: 0.25, linear: 0.3}
      - {name: deep, attention: {"*": 0.25, "decoder.*": 0.5}, linear: 0.3}   # fnmatch patterns, later wins

**The pipeline** (:func:`run_pipeline`): one recording of every site's calls, each unit pruned
and fine-tuned once, both arms of every configuration composed and fine-tuned on the task, and
the time accounting of the whole set (:func:`summarize`, :func:`time_totals`).
"""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn

from .. import trainer
from ..progress import Bar
from .composable_sites import (ATTENTION_BLOCKS, CONFIG_FIELDS, KINDS, LINEAR_ROLES, CompositionError, Configuration,
                               Site, Unit, check_rate, resolve, sites)
from .composable_units import (Call, compose, copy_pruned, finetune_unit, head_scores, kept_heads, l1_prune,
                               prune_unit, record, remove_heads, save_payload, to_sparse)

__all__ = ["ATTENTION_BLOCKS", "CONFIG_FIELDS", "KINDS", "LINEAR_ROLES", "Call", "CompositionError", "Configuration",
           "PipelineResult", "Site", "Unit", "build_scheme", "check_rate", "compose", "copy_pruned", "finetune_translation",
           "finetune_unit", "generate", "head_scores", "kept_heads", "l1_prune", "load_configurations", "load_scheme",
           "prune_unit", "record", "remove_heads", "resolve", "run_pipeline", "save_payload", "sites", "summarize",
           "time_totals", "timed", "to_sparse", "write_configurations", "write_scheme"]


# ---------------------------------------------------------------------------------- configurations
def generate(attention: Sequence[float], linear: Sequence[float]) -> list[dict]:
    """Every (attention rate, linear rate) pair as a uniform configuration named ``a25-l30``."""
    return [{"name": f"a{round(a * 100)}-l{round(l_ * 100)}", "attention": a, "linear": l_}
            for a, l_ in itertools.product(attention, linear)]


def _write_yaml(path: str | os.PathLike, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)
    return path


def write_configurations(path: str | os.PathLike, entries: Sequence[dict]) -> Path:
    return _write_yaml(path, {"configurations": list(entries)})


YAML_VALUES = "plain YAML values (mappings, lists, strings, numbers, true/false, null)"


def _read_yaml(path: str | os.PathLike, what: str) -> Any:
    """The data of a user-edited YAML file (``what`` names it in errors). A file that is not UTF-8
    text, not valid YAML, or holds a tag that safe loading refuses (``!!python/object``) is a
    :class:`CompositionError` naming the file, the place and what is allowed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CompositionError(f"{path} is not a text file (byte {err.start} is not UTF-8): a {what} file is YAML "
                               "text") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        if isinstance(err, yaml.constructor.ConstructorError):  # refused by safe loading: never constructed
            raise CompositionError(f"{path}{where}: {problem}; a {what} file holds only {YAML_VALUES}, no "
                                   "Python tags such as !!python/object") from None
        raise CompositionError(f"{path} is not valid YAML{where}: {problem}") from None


def load_configurations(path: str | os.PathLike, model: nn.Module) -> list[Configuration]:
    """Read and validate a configurations file (``configurations:`` list)."""
    data = _read_yaml(path, "configurations")
    if not isinstance(data, dict) or not isinstance(data.get("configurations"), list):
        raise CompositionError(f"{path}: expected a mapping with a 'configurations' list")
    return resolve(data["configurations"], model)


# ------------------------------------------------------------------------------------------ scheme
def build_scheme(configurations: Sequence[Configuration]) -> pd.DataFrame:
    """Every distinct unit once: ``unit`` (key), ``site``, ``kind``, ``rate``, ``configurations``
    (the names using it, in order) and ``uses``."""
    users: dict[Unit, list[str]] = {}
    for c in configurations:
        for u in c.units:
            users.setdefault(u, []).append(c.name)
    return pd.DataFrame([{"unit": u.key, "site": u.site, "kind": u.kind, "rate": u.rate, "configurations": names,
                          "uses": len(names)} for u, names in users.items()],
                        columns=["unit", "site", "kind", "rate", "configurations", "uses"])


def write_scheme(path: str | os.PathLike, scheme: pd.DataFrame) -> Path:
    return _write_yaml(path, {"units": [{"site": r.site, "kind": r.kind, "rate": r.rate,
                                         "configurations": list(r.configurations)} for r in scheme.itertuples()]})


def load_scheme(path: str | os.PathLike, configurations: Sequence[Configuration]) -> pd.DataFrame:
    """Read a scheme file and check it is the scheme of ``configurations``: the same units, each
    used by the same configurations (an edited scheme that disagrees is an error naming the entry)."""
    data = _read_yaml(path, "scheme")
    if not isinstance(data, dict) or not isinstance(data.get("units"), list):
        raise CompositionError(f"{path}: expected a mapping with a 'units' list")
    expected = {r.unit: r for r in build_scheme(configurations).itertuples()}
    seen = set()
    for i, entry in enumerate(data["units"]):
        if not isinstance(entry, dict) or not {"site", "kind", "rate", "configurations"} <= set(entry):
            raise CompositionError(f"{path}: unit {i} needs site, kind, rate and configurations, got {entry!r}")
        if entry["kind"] not in KINDS:
            raise CompositionError(f"{path}: unit {i} has kind {entry['kind']!r}; kinds: {', '.join(KINDS)}")
        unit = Unit(entry["site"], entry["kind"], check_rate(entry["rate"], f"{path}: unit {i}"))
        if unit.key not in expected:
            raise CompositionError(f"{path}: unit {i} ({unit.key}) is not used by any configuration")
        if list(entry["configurations"]) != list(expected[unit.key].configurations):
            raise CompositionError(f"{path}: unit {i} ({unit.key}) lists configurations {entry['configurations']}, "
                                   f"the configurations give {expected[unit.key].configurations}")
        seen.add(unit.key)
    if missing := [k for k in expected if k not in seen]:
        raise CompositionError(f"{path}: the scheme lacks unit {missing[0]} (and {len(missing) - 1} more) that the "
                               "configurations use; regenerate it with build_scheme")
    return build_scheme(configurations)


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), wall seconds)``."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# -------------------------------------------------------------------------------------- pipeline
@dataclass
class PipelineResult:
    """What :func:`run_pipeline` measured. ``arms``: one row per (configuration, arm), arm
    ``baseline`` (pruned, fine-tuned as a model) or ``composed`` (from module-level fine-tuned
    units, then fine-tuned as a model); ``units``: one row per distinct unit (its module-level
    time and MSE); ``unit_log`` / ``model_log``: the loss curves (model-level rows of kind
    ``eval`` carry ``val_bleu`` and ``train_seconds``, the training time up to that evaluation);
    ``summary``: one row per configuration (:func:`summarize`); ``totals``: the whole set's times."""

    arms: pd.DataFrame
    units: pd.DataFrame
    unit_log: pd.DataFrame
    model_log: pd.DataFrame
    summary: pd.DataFrame
    totals: dict


def finetune_translation(model: nn.Module, tokenizer, recipe, task, steps: int, lr: float, eval_every: int,
                         val_examples: int, progress: bool = False, desc: str = "model-level fine-tuning"
                         ) -> trainer.TrainResult:
    """Model-level fine-tuning on the translation task's training split by the recipe's batches and
    label-smoothed loss, ``steps`` at constant ``lr``; validation BLEU on ``val_examples`` pairs every
    ``eval_every`` steps, logged with ``train_seconds`` (training time so far, evaluations excluded)."""
    from .. import translation

    data = translation.seq2seq_batches(tokenizer, task["train"], task.spec, recipe.batch_size, recipe.max_length,
                                       seed=recipe.seed)
    start, in_eval = time.perf_counter(), [0.0]

    def evaluate(m: nn.Module) -> dict:
        t = time.perf_counter()
        trained = t - start - in_eval[0]
        scores, _ = translation.evaluate(m, tokenizer, task["validation"], task.spec, val_examples, recipe.max_length)
        in_eval[0] += time.perf_counter() - t
        return {"val_bleu": scores["bleu"], "val_chrf": scores["chrf"], "train_seconds": trained}

    config = trainer.TrainConfig(steps=steps, lr=lr, weight_decay=0.0, schedule="constant", warmup_steps=0,
                                 max_grad_norm=1.0, eval_every=eval_every, progress=progress, desc=desc,
                                 precision=recipe.precision)
    torch.manual_seed(recipe.seed)
    return trainer.train(model, data, config, loss=translation.smoothed_loss(recipe.label_smoothing),
                         evaluate=evaluate)


def summarize(arms: pd.DataFrame, model_log: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: both arms' validation BLEU before and after model-level
    fine-tuning, test BLEU and training seconds, and the steps and training seconds the composed
    model took to reach the baseline's final validation BLEU (0 when it started there; NaN when it
    did not get there within the steps)."""
    rows = []
    for name, group in arms.groupby("configuration", sort=False):
        base, comp = (group[group.arm == arm].iloc[0] for arm in ("baseline", "composed"))
        evals = model_log[(model_log.configuration == name) & (model_log.arm == "composed") & (model_log.kind == "eval")]
        hit = evals[evals.val_bleu >= base.val_bleu_after]
        steps, seconds = ((0, 0.0) if comp.val_bleu_before >= base.val_bleu_after else
                          (int(hit.step.iloc[0]), float(hit.train_seconds.iloc[0])) if len(hit) else (np.nan, np.nan))
        rows.append({"configuration": name, "attention": comp.attention, "linear": comp.linear, "units": comp.units,
                     "shared_units": comp.shared_units, "param_fraction": comp.param_fraction, "MB": comp.bytes / 1e6,
                     **{f"{k}_{arm}": r[k] for arm, r in (("baseline", base), ("composed", comp))
                        for k in ("val_bleu_before", "val_bleu_after", "test_bleu", "train_seconds")},
                     "steps_to_baseline": steps, "seconds_to_baseline": seconds})
    return pd.DataFrame(rows)


def run_pipeline(model: nn.Module, tokenizer, recipe, task, configurations: Sequence[Configuration], *,
                 calibration: int = 256, unit_steps: int = 100, unit_lr: float = 1e-3, model_steps: int = 200,
                 model_lr: float = 5e-4, eval_every: int = 50, val_examples: int = 200, test_examples: int | None = None,
                 unit_dir: str | os.PathLike | None = None, progress: bool = True) -> PipelineResult:
    """Seed 002's pipeline on a translation model: the scheme of ``configurations``; one recording of
    every site's calls on ``calibration`` training pairs; each distinct unit pruned and fine-tuned
    once at module level (``unit_steps`` at ``unit_lr``; saved to ``unit_dir`` when given); per
    configuration, the baseline (pruned units composed, no module-level fine-tuning) and the composed
    model (fine-tuned units) each fine-tuned for ``model_steps`` at ``model_lr``, then stored sparse
    and scored on the test split (greedy BLEU/chrF).

    ``totals``: ``without_s`` (the baselines' model-level training seconds), ``with_s`` (recording +
    every unit once + each composed model's seconds until it reached its baseline's final validation
    BLEU, all its seconds when it did not), ``saved_s`` and how many configurations ``matched``."""
    from .. import budget, translation

    scheme = build_scheme(configurations)
    src_split = task["train"].select(range(min(calibration, len(task["train"]))))
    batches = list(translation.seq2seq_batches(tokenizer, src_split, task.spec, 32, recipe.max_length,
                                               shuffle=False).epoch(0))
    calls, record_s = timed(record, model, batches, scheme.site.unique())
    pruned, tuned, unit_rows, unit_logs = {}, {}, [], []
    for r in Bar(list(scheme.itertuples()), desc="module-level fine-tuning", disable=not progress):
        unit = Unit(r.site, r.kind, r.rate)
        pruned[unit.key] = prune_unit(model, unit)
        tuned[unit.key] = prune_unit(model, unit)
        result = finetune_unit(model, unit, tuned[unit.key], calls[unit.site], unit_steps, unit_lr)
        loss = result.log[result.log.kind == "train"].loss.to_numpy()
        unit_rows.append({"unit": unit.key, "site": unit.site, "kind": unit.kind, "rate": unit.rate, "uses": r.uses,
                          "seconds": result.seconds, "mse_first": float(loss[:5].mean()),
                          "mse_last": float(loss[-5:].mean())})
        unit_logs.append(pd.DataFrame({"unit": unit.key, "step": np.arange(1, len(loss) + 1), "loss": loss}))
        if unit_dir is not None:
            save_payload(Path(unit_dir) / f"{unit.key}.pt", unit, tuned[unit.key])
    del calls
    test = task["test"] if test_examples is None else task["test"].select(range(test_examples))
    dense_params = budget.footprint(model).params
    arms, logs = [], []
    for config in Bar(configurations, desc="configurations", disable=not progress):
        shared = sum(len(scheme.configurations[scheme.unit == u.key].iloc[0]) > 1 for u in config.units)
        for arm, payloads in (("baseline", pruned), ("composed", tuned)):
            m = compose(model, config, payloads)
            before, _ = translation.evaluate(m, tokenizer, task["validation"], task.spec, val_examples, recipe.max_length)
            result = finetune_translation(m, tokenizer, recipe, task, model_steps, model_lr, eval_every, val_examples,
                                          desc=f"{config.name} {arm}")
            scores, _ = translation.evaluate(m, tokenizer, test, task.spec, None, recipe.max_length)
            to_sparse(m)
            fp = budget.footprint(m)
            evals = result.log[result.log.kind == "eval"]
            arms.append({"configuration": config.name, "arm": arm, "attention": str(config.attention),
                         "linear": str(config.linear), "units": len(config.units), "shared_units": shared,
                         "val_bleu_before": before["bleu"], "val_bleu_after": float(evals.val_bleu.iloc[-1]),
                         "test_bleu": scores["bleu"], "test_chrf": scores["chrf"],
                         "train_seconds": float(evals.train_seconds.iloc[-1]), "steps": result.steps,
                         "params": fp.params, "param_fraction": fp.params / dense_params, "bytes": fp.bytes})
            logs.append(result.log.assign(configuration=config.name, arm=arm))
    arms_df, model_log = pd.DataFrame(arms), pd.concat(logs, ignore_index=True)
    units = pd.DataFrame(unit_rows)
    summary = summarize(arms_df, model_log)
    totals = {"n_configurations": len(configurations), "n_units": len(scheme), "unit_uses": int(scheme.uses.sum()),
              **time_totals(summary, units, record_s)}
    return PipelineResult(arms_df, units, pd.concat(unit_logs, ignore_index=True), model_log, summary, totals)


def time_totals(summary: pd.DataFrame, units: pd.DataFrame, record_s: float) -> dict:
    """The whole set's training seconds. Without composition: every baseline's model-level
    fine-tuning. With: the recording, every unit once, and each composed model's seconds until it
    reached its baseline's final validation BLEU (all its seconds where it did not: ``matched``
    counts those that did)."""
    reach = summary.seconds_to_baseline.fillna(summary.train_seconds_composed)
    without = float(summary.train_seconds_baseline.sum())
    with_s = record_s + float(units.seconds.sum()) + float(reach.sum())
    return {"record_s": record_s, "unit_s": float(units.seconds.sum()), "composed_model_s": float(reach.sum()),
            "without_s": without, "with_s": with_s, "saved_s": without - with_s,
            "matched": int(summary.seconds_to_baseline.notna().sum())}
