"""One trainer for all training: fine-tuning a classifier, seq2seq training, quantization-aware
training, distillation, module-level fine-tuning. What changes between them is the loss:

    result = train(model, data, TrainConfig(steps=500, lr=5e-5), loss=model_loss)
    result = train(student, data, cfg, loss=lambda m, b: kd_loss(m(**b), teacher(**b)))
    result = train(block, pairs, cfg, loss=lambda m, b: F.mse_loss(m(b["x"]), b["y"]))

* ``data`` gives the batches of each epoch (:class:`Batches`: ``len`` = batches per epoch,
  ``epoch(e)`` = that epoch's batches, the same every time it is asked, so a resumed run sees the
  same order); :class:`DatasetBatches` shuffles a ``datasets.Dataset`` by seed and epoch and turns
  rows into a batch with a collate function, :class:`ListBatches` cycles a list of batches.
* ``loss(model, batch)`` returns the loss, or ``(loss, {name: value})`` to log its components.
* AdamW (torch's loop, or its fused kernel) with no weight decay on biases and norm weights of any
  architecture (every parameter of fewer than two dimensions, and every parameter of a module whose
  class is a norm: LayerNorm, T5LayerNorm, LlamaRMSNorm...), a warm-up schedule, gradient-norm clipping.
* A progress bar with the loss (and the best evaluation metric so far); a log row per step (step,
  epoch, loss, components, learning rate, gradient norm) and one per evaluation (with the training
  wall seconds so far, ``elapsed_s``, across resumed sittings), returned as a table for loss plots
  and learning curves.
* Early stopping on ``evaluate(model) -> {metric: value}`` every ``eval_every`` steps, keeping the
  best weights; checkpoints every ``checkpoint_every`` steps (model, optimizer, schedule, RNG,
  step, logs, best so far) written atomically, from which a stopped run resumes and ends with the
  same weights as an unbroken one.

Why not ``transformers.Trainer``: it is built around HF models, datasets and its own checkpoint
layout, while module-level fine-tuning trains bare modules, distillation runs a teacher inside the
loss, and compressed modules carry packed buffers; a small loop is easier to make exactly
resumable and to test on all of them.
"""
from __future__ import annotations

import copy
import fnmatch
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .progress import Bar

SCHEDULES = ("linear", "constant", "cosine", "inverse_sqrt")
PRECISIONS = ("fp32", "bf16")
LossFn = Callable[[nn.Module, Any], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]


class Batches(Protocol):
    """Batches of one epoch after another; ``epoch(e)`` must give the same batches every time."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int) -> Iterable[Any]: ...


class DatasetBatches:
    """Batches of ``batch_size`` rows of a ``datasets.Dataset``, reshuffled each epoch with
    ``seed + epoch``; ``collate(rows) -> batch`` turns a dict of columns into model inputs.

    ``lengths`` (one per row, e.g. token counts) groups rows of similar length into a batch, so
    padding to the longest costs little: each epoch's shuffled rows are cut into pools of
    ``pool`` batches, each pool sorted by length and cut into batches, and the batches shuffled
    again. Every row is still seen once per epoch."""

    def __init__(self, dataset, batch_size: int, collate: Callable[[dict], Any], seed: int = 0, shuffle: bool = True,
                 lengths: Sequence[int] | None = None, pool: int = 50):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if lengths is not None and len(lengths) != len(dataset):
            raise ValueError(f"{len(lengths)} lengths for {len(dataset)} rows")
        if pool < 1:
            raise ValueError(f"pool must be >= 1 batch, got {pool}")
        self.dataset, self.batch_size, self.collate, self.seed, self.shuffle = dataset, batch_size, collate, seed, shuffle
        self.lengths, self.pool = None if lengths is None else np.asarray(lengths), pool

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def order(self, epoch: int) -> list[list[int]]:
        """The row indices of each batch of ``epoch``."""
        n, b = len(self.dataset), self.batch_size
        # the permutation datasets.Dataset.shuffle(seed=seed + epoch) draws, so ungrouped batches are its slices
        gen = np.random.default_rng(self.seed + epoch)
        rows = gen.permutation(n) if self.shuffle else np.arange(n)
        if self.lengths is None:
            return [rows[i:i + b].tolist() for i in range(0, n, b)]
        batches = []
        for i in range(0, n, b * self.pool):
            chunk = rows[i:i + b * self.pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[j:j + b].tolist() for j in range(0, len(chunk), b)]
        return [batches[i] for i in gen.permutation(len(batches))] if self.shuffle else batches

    def epoch(self, epoch: int) -> Iterable[Any]:
        for idx in self.order(epoch):
            yield self.collate(self.dataset[idx])


class ListBatches:
    """A fixed list of batches, in a seeded random order each epoch (or as given)."""

    def __init__(self, batches: Sequence[Any], seed: int = 0, shuffle: bool = True):
        if not batches:
            raise ValueError("ListBatches needs at least one batch")
        self.batches, self.seed, self.shuffle = list(batches), seed, shuffle

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int) -> Iterable[Any]:
        if not self.shuffle:
            return iter(self.batches)
        order = torch.randperm(len(self.batches), generator=torch.Generator().manual_seed(self.seed + epoch))
        return (self.batches[i] for i in order.tolist())


@dataclass
class TrainConfig:
    """How to train. ``steps`` (optimizer steps) or ``epochs``; AdamW (``lr``, ``weight_decay``,
    ``betas``); ``schedule`` one of :data:`SCHEDULES` with ``warmup_steps`` (or ``warmup_ratio``
    of the steps); ``max_grad_norm`` (None: no clipping). Early stopping: ``evaluate`` every
    ``eval_every`` steps, stop after ``patience`` evaluations without improving ``metric``
    (``greater_is_better``), then restore the best weights (``restore_best``). ``checkpoint_dir``
    with ``checkpoint_every``: resumable checkpoints. ``precision="bf16"``: the loss is computed
    under ``torch.autocast`` with bfloat16 matmuls (the weights, gradients and optimizer stay float32;
    about 2× faster on CPUs with AVX-512 BF16 or AMX, slower on those without). ``fused=True``: torch's
    fused AdamW kernel, one vectorised pass per tensor instead of a dozen elementwise ones (on one CPU
    thread 7–9× faster an optimizer step over MiniLM's 17–23 M parameters: a training step 1.25× faster
    for the 3-layer student, 1.14× for the 6-layer model, 1.01× for the 5.6 M-parameter translation
    Transformer, whose step is its forward and backward pass; ``benchmarks/bench_training.py``); the same
    update rounded in another order (weights a few ulps apart after a step), so runs by one setting do
    not reproduce the other's bit for bit. ``lr_scales``: (pattern, factor) pairs; the parameters whose
    names match a pattern (``fnmatch``, e.g. ``"*.q.weight"``) train at ``lr`` × factor (the first
    matching pattern wins; each pattern must match some parameter)."""

    steps: int | None = None
    epochs: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "linear"
    warmup_ratio: float = 0.06
    warmup_steps: int | None = None
    max_grad_norm: float | None = 1.0
    eval_every: int | None = None
    metric: str | None = None
    greater_is_better: bool = True
    patience: int | None = None
    restore_best: bool = True
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every: int | None = None
    progress: bool = True
    desc: str = "train"
    precision: str = "fp32"
    fused: bool = False
    lr_scales: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be a positive integer or None, got {self.steps!r}")
        if self.steps is None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if (self.patience is not None or self.metric is not None) and not self.eval_every:
            raise ValueError("early stopping (patience/metric) needs eval_every (steps between evaluations)")
        if self.checkpoint_every is not None and self.checkpoint_dir is None:
            raise ValueError("checkpoint_every needs a checkpoint_dir")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; allowed: {', '.join(PRECISIONS)}")
        if not isinstance(self.fused, bool):
            raise ValueError(f"fused must be True or False (torch's fused AdamW kernel), got {self.fused!r}")
        for item in self.lr_scales:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and item[0]
                    and isinstance(item[1], (int, float)) and not isinstance(item[1], bool) and item[1] > 0):
                raise ValueError(f"lr_scales entries are (name pattern, factor > 0) pairs, got {item!r}")


@dataclass
class TrainResult:
    """``steps`` done, ``seconds`` of training in this call, the per-step ``log`` (and evaluation
    rows, ``kind == "eval"``), the best evaluation (``best_metric`` at ``best_step``),
    whether training ``stopped_early`` and whether it ``resumed`` from a checkpoint."""

    steps: int
    seconds: float
    log: pd.DataFrame
    best_metric: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    resumed: bool = False
    evaluations: list[dict] = field(default_factory=list)


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer of any architecture (torch's, or a class whose name ends in ``Norm``)."""
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._BatchNorm)) \
        or type(module).__name__.endswith("Norm")


def parameter_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                     lr_scales: Sequence[tuple[str, float]] = ()) -> list[dict]:
    """AdamW groups: decay on weight matrices, none on biases and norm weights (any parameter of
    fewer than two dimensions, and every parameter of a norm module). Shared tensors appear once.
    ``lr_scales`` ((name pattern, factor) pairs, see :class:`TrainConfig`) puts the parameters a pattern
    matches in groups of their own at ``lr`` × factor, after the two."""
    if lr_scales and lr is None:
        raise ValueError("lr_scales needs the base lr")
    no_decay_ids = {id(p) for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)}
    groups = {(True, 1.0): [], (False, 1.0): []}  # (decays, lr factor) -> parameters
    matched, seen = set(), set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        pattern, f = next(((pat, f) for pat, f in lr_scales if fnmatch.fnmatchcase(name, pat)), (None, 1.0))
        matched.add(pattern)
        groups.setdefault((not (p.ndim < 2 or id(p) in no_decay_ids), float(f)), []).append(p)
    unmatched = [pattern for pattern, _ in lr_scales if pattern not in matched]
    if unmatched:
        raise ValueError(f"lr_scales pattern(s) {unmatched} match no trainable parameter of {type(model).__name__}")
    return [{"params": ps, "weight_decay": weight_decay if decays else 0.0} | ({"lr": lr * f} if f != 1.0 else {})
            for (decays, f), ps in groups.items() if ps or f == 1.0]


def make_schedule(optim: torch.optim.Optimizer, config: TrainConfig, total: int):
    """The learning-rate schedule of ``config`` over ``total`` steps (transformers' implementations)."""
    import transformers

    warmup = config.warmup_steps if config.warmup_steps is not None else int(config.warmup_ratio * total)
    if config.schedule == "linear":
        return transformers.get_linear_schedule_with_warmup(optim, warmup, total)
    if config.schedule == "cosine":
        return transformers.get_cosine_schedule_with_warmup(optim, warmup, total)
    if config.schedule == "inverse_sqrt":
        return transformers.get_inverse_sqrt_schedule(optim, num_warmup_steps=max(warmup, 1))
    return transformers.get_constant_schedule_with_warmup(optim, warmup)


def model_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The loss a HF model computes itself (``model(**batch).loss``; the batch holds labels)."""
    return model(**batch).loss


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (in dicts, lists, tuples) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _save_checkpoint(folder: Path, state: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".state.pt.{os.getpid()}.tmp"
    torch.save(state, tmp)
    tmp.replace(folder / "state.pt")


def train(model: nn.Module, data: Batches | Sequence[Any], config: TrainConfig, loss: LossFn = model_loss,
          evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
          parameters: Iterable[nn.Parameter] | None = None) -> TrainResult:
    """Train ``model`` on ``data`` with ``loss`` (see the module docstring); returns a
    :class:`TrainResult` and leaves the model in eval mode. ``parameters``: train only these
    (default: every parameter that requires a gradient). With ``config.checkpoint_dir`` holding
    a checkpoint, training resumes from it."""
    if not isinstance(data, (DatasetBatches, ListBatches)) and not hasattr(data, "epoch"):
        data = ListBatches(list(data), shuffle=False)
    per_epoch = len(data)
    if per_epoch < 1:
        raise ValueError("the training data has no batches")
    total = config.steps if config.steps is not None else per_epoch * config.epochs
    if config.eval_every and evaluate is None:
        raise ValueError("eval_every is set but no evaluate(model) function was given")
    if parameters is not None:
        chosen = {id(p) for p in parameters}
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen)
    trained = [p for p in model.parameters() if p.requires_grad]  # in model order: the clipping norm's sum order
    groups = parameter_groups(model, config.weight_decay, config.lr, config.lr_scales)
    optim = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas,
                              fused=config.fused or None)  # None: torch's default (the per-tensor loop on CPU)
    sched = make_schedule(optim, config, total)
    device = next(model.parameters()).device
    step, log, evaluations, earlier = 0, [], [], 0.0
    best, best_step, best_state, bad_evals, stopped = None, None, None, 0, False
    ckpt = Path(config.checkpoint_dir) / "state.pt" if config.checkpoint_dir else None
    resumed = bool(ckpt and ckpt.is_file())
    if resumed:
        state = torch.load(ckpt, weights_only=False)
        if state["total"] != total:
            raise ValueError(f"checkpoint {ckpt} is for {state['total']} steps, this run has {total}")
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step, log, evaluations = state["step"], state["log"], state["evaluations"]
        best, best_step, best_state, bad_evals = state["best"], state["best_step"], state["best_state"], state["bad_evals"]
        stopped = state["stopped"]
        earlier = state.get("elapsed", 0.0)  # training seconds of the sittings before this one

    def checkpoint() -> None:
        _save_checkpoint(Path(config.checkpoint_dir), {
            "total": total, "model": model.state_dict(), "optim": optim.state_dict(), "sched": sched.state_dict(),
            "rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "step": step, "log": log, "evaluations": evaluations, "best": best,
            "best_step": best_step, "best_state": best_state, "bad_evals": bad_evals, "stopped": stopped,
            "elapsed": earlier + time.perf_counter() - start})

    start = time.perf_counter()
    bar = Bar(total=total, initial=step, desc=config.desc, disable=not config.progress)
    model.train()
    while step < total and not stopped:
        epoch, offset = divmod(step, per_epoch)
        for i, batch in enumerate(data.epoch(epoch)):
            if i < offset:  # a resumed run skips the batches this epoch already gave
                continue
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                out = loss(model, to_device(batch, device))
            value, parts = out if isinstance(out, tuple) else (out, {})
            value.backward()
            norm = (torch.nn.utils.clip_grad_norm_(trained, config.max_grad_norm) if config.max_grad_norm else None)
            lr = sched.get_last_lr()[0]
            optim.step()
            sched.step()
            optim.zero_grad()
            step += 1
            log.append({"kind": "train", "step": step, "epoch": epoch, "loss": value.item(), "lr": lr,
                        "grad_norm": float(norm) if norm is not None else None,
                        **{k: float(v) for k, v in parts.items()}})
            bar.update(1)
            bar.set_postfix(loss=f"{value.item():.3f}", **({config.metric: f"{best:.4g}"} if best is not None else {}))
            if config.eval_every and (step % config.eval_every == 0 or step == total):
                scores = evaluate(model)
                model.train()
                evaluations.append({"step": step, **scores})
                # wall seconds of training so far, evaluations included (a learning curve's time axis)
                log.append({"kind": "eval", "step": step, "epoch": epoch,
                            "elapsed_s": round(earlier + time.perf_counter() - start, 3), **scores})
                if config.metric is not None:
                    if config.metric not in scores:
                        raise KeyError(f"evaluate() returned {sorted(scores)}, not the early-stopping metric "
                                       f"{config.metric!r}")
                    value_m = scores[config.metric]
                    better = best is None or (value_m > best if config.greater_is_better else value_m < best)
                    if better:
                        best, best_step, bad_evals = value_m, step, 0
                        best_state = copy.deepcopy(model.state_dict()) if config.restore_best else None
                    else:
                        bad_evals += 1
                        stopped = config.patience is not None and bad_evals >= config.patience
            if config.checkpoint_every and (step % config.checkpoint_every == 0 or step == total or stopped):
                checkpoint()
            if step == total or stopped:
                break
    bar.close()
    if best_state is not None and config.restore_best:
        model.load_state_dict(best_state)
    model.eval()
    frame = pd.DataFrame(log)
    return TrainResult(step, round(time.perf_counter() - start, 1), frame, best, best_step, stopped, resumed, evaluations)
