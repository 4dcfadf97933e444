"""Knowledge distillation with Patient Knowledge Distillation (seed 004; Sun et al., 2019), for any
student/teacher pair of sequence classifiers that share a tokenizer.

    L = α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − α)·CE(z_s, y) + β·L_PT

``L_PT`` is the **patient** term: the mean squared error between the student's and the teacher's
first-token ([CLS]) hidden states at matched intermediate layers, each state divided by its L2
norm when ``normalize`` (the mean over the stacked (batch, layers, hidden) tensor, as the PKD
authors compute it). Layers are matched by ``strategy``: a student of k layers and a teacher of n,
student layer i = 1 … k−1 with teacher layer ``round(i·n/k)`` (PKD-skip: 2, 4, … of 12 for 6) or
``n − k + i`` (PKD-last: the teacher's last layers before its output); the output layer is matched
by the KD term itself. β = 0 is plain KD; α = 0 and β = 0 is fine-tuning with CE only.

The teacher runs in eval mode with no gradient, on the fly or cached (:class:`Teacher`, ``cache``:
each example's logits and [CLS] states computed once, found again by its token ids whatever batch
it comes in; ``store``: the cache kept in a file between runs, filled by :meth:`Teacher.prefill` in
fixed batches, so that every run reads the same teacher outputs whatever batches it trains on).
:func:`distill` trains with the project's trainer (progress bar, seed, early stopping on a validation
metric, per-step log with the ``kd``, ``ce`` and ``pt`` components).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import trainer

STRATEGIES = ("skip", "last")


class DistillationError(ValueError):
    """A student/teacher pair or a setting distillation cannot use."""


@dataclass(frozen=True)
class DistillConfig:
    """The loss: ``alpha`` (soft targets' weight; 1 − α on the labels), ``temperature``, ``beta``
    (the patient term; 0: plain KD), ``normalize`` the [CLS] states, layer ``strategy``."""

    alpha: float = 0.5
    temperature: float = 10.0
    beta: float = 100.0
    normalize: bool = True
    strategy: str = "skip"

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise DistillationError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if not self.temperature > 0:
            raise DistillationError(f"temperature must be > 0, got {self.temperature!r}")
        if not self.beta >= 0:
            raise DistillationError(f"beta must be >= 0, got {self.beta!r}")
        if self.strategy not in STRATEGIES:
            raise DistillationError(f"strategy={self.strategy!r}; allowed: {', '.join(STRATEGIES)}")


def layer_map(student_layers: int, teacher_layers: int, strategy: str = "skip") -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs for the patient term, as indices of ``hidden_states``
    (0 is the embeddings): student layers 1 … k−1."""
    k, n = student_layers, teacher_layers
    if not 1 <= k <= n:
        raise DistillationError(f"a student of {k} layers cannot be matched to a teacher of {n}: it needs 1 to {n}")
    if strategy not in STRATEGIES:
        raise DistillationError(f"strategy={strategy!r}; allowed: {', '.join(STRATEGIES)}")
    return [(i, round(i * n / k) if strategy == "skip" else n - k + i) for i in range(1, k)]


def pkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             student_cls: torch.Tensor | None, teacher_cls: torch.Tensor | None,
             config: DistillConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The PKD loss of one batch: logits (batch, classes), labels (batch,), [CLS] states of the
    matched layers (batch, pairs, hidden) or None. Returns the loss and its parts ``kd`` (the
    T²-scaled KL divergence, batch mean), ``ce`` and ``pt``."""
    t = config.temperature
    # in float64: at equality its gradient vanishes to double precision (float32 rounding would leave ~1e-9,
    # which Adam's normalised steps turn into full-size updates)
    kd = (F.kl_div(F.log_softmax(student_logits.double() / t, dim=-1),
                   F.log_softmax(teacher_logits.double() / t, dim=-1), reduction="batchmean", log_target=True)
          * t * t).float()
    ce = F.cross_entropy(student_logits.float(), labels)
    pt = student_logits.new_zeros((), dtype=torch.float32)
    if config.beta > 0 and student_cls is not None and student_cls.shape[1] > 0:
        s, te = student_cls.float(), teacher_cls.float()
        if config.normalize:
            s, te = F.normalize(s, p=2, dim=-1), F.normalize(te, p=2, dim=-1)
        pt = F.mse_loss(s, te)
    total = config.alpha * kd + (1 - config.alpha) * ce + config.beta * pt
    return total, {"kd": kd.item(), "ce": ce.item(), "pt": pt.item()}


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def _depth(model: nn.Module) -> int:
    return int(getattr(model.config, "num_hidden_layers", 0) or getattr(model.config, "n_layers", 0))


def fingerprint(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a model's parameter and buffer names and values: which
    teacher a stored cache belongs to."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode() + b"\0" + str(t.dtype).encode() + b"\0")
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class Teacher:
    """The teacher's logits and first-token states of all layers, (batch, classes) and (batch,
    layers + 1, hidden), with no gradient; ``cache``: each example computed once (keyed by its
    token ids without padding). ``store``: a file for the cache (implies ``cache``), read here when
    it exists and written by :meth:`save`; name it after the teacher's :func:`fingerprint` and the
    precision it ran at, since the file holds outputs, not the model."""

    def __init__(self, model: nn.Module, cache: bool = False, store: str | os.PathLike | None = None):
        self.model, self.cache = model.eval(), {} if cache or store is not None else None
        self.store = Path(store) if store is not None else None
        self.computed = 0  # examples the teacher has run on
        self.loaded = 0  # examples read from the store
        if self.store is not None and self.store.is_file():
            saved = torch.load(self.store, weights_only=True)
            self.cache.update((tuple(k), (lo, cls)) for k, lo, cls in zip(saved["keys"], saved["logits"], saved["cls"]))
            self.loaded = len(self.cache)

    @torch.no_grad()
    def _run(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(**_inputs(batch), output_hidden_states=True)
        self.computed += batch["input_ids"].shape[0]
        return out.logits.float(), torch.stack([h[:, 0] for h in out.hidden_states], dim=1).float()

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is None:
            return self._run(batch)
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
        keys = [tuple(ids[m].tolist()) for ids, m in zip(batch["input_ids"], mask)]
        if any(k not in self.cache for k in keys):
            logits, cls = self._run(batch)
            for i, k in enumerate(keys):
                self.cache.setdefault(k, (logits[i], cls[i]))
        rows = [self.cache[k] for k in keys]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def prefill(self, batches: Iterable[dict], precision: str = "fp32") -> int:
        """Run the teacher on every batch holding an example not yet cached (at ``precision``, as
        :class:`tcomp_utils.trainer.TrainConfig` trains: ``bf16`` under autocast); returns the
        examples it ran on. Fixed batches make the cached outputs the same for every later run."""
        if self.cache is None:
            raise DistillationError("prefill needs a cache: Teacher(model, cache=True) or a store")
        if precision not in trainer.PRECISIONS:
            raise ValueError(f"precision={precision!r}; allowed: {', '.join(trainer.PRECISIONS)}")
        before = self.computed
        device = next(self.model.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            for batch in batches:
                self(trainer.to_device(batch, device))
        return self.computed - before

    def save(self) -> Path:
        """Write the cache to ``store`` atomically (another process reading it meanwhile sees the
        old file or the new one, never half of one)."""
        if self.store is None:
            raise DistillationError("this Teacher has no store to save its cache to")
        keys = list(self.cache)
        if not keys:
            raise DistillationError(f"nothing is cached yet: prefill() before saving to {self.store}")
        self.store.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.store.with_name(f".{self.store.name}.{os.getpid()}.tmp")
        torch.save({"keys": [list(k) for k in keys], "logits": torch.stack([self.cache[k][0] for k in keys]),
                    "cls": torch.stack([self.cache[k][1] for k in keys])}, tmp)
        tmp.replace(self.store)
        return self.store


def check_pair(student: nn.Module, teacher: nn.Module, student_tokenizer=None, teacher_tokenizer=None,
               config: DistillConfig | None = None) -> None:
    """A clear error unless the pair can be distilled: the same tokenizer (vocabularies compared
    when given, else the configs' vocabulary sizes), the same number of labels, the student no
    deeper than the teacher, and the same hidden size when the patient term is on."""
    if student_tokenizer is not None and teacher_tokenizer is not None:
        if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
            raise DistillationError("the student's and the teacher's tokenizers differ (their vocabularies are not the "
                                    "same): distillation compares their outputs token for token")
    sv, tv = getattr(student.config, "vocab_size", None), getattr(teacher.config, "vocab_size", None)
    if sv != tv:
        raise DistillationError(f"the student's vocabulary has {sv} tokens, the teacher's {tv}: they need one tokenizer")
    if student.config.num_labels != teacher.config.num_labels:
        raise DistillationError(f"the student has {student.config.num_labels} labels, the teacher "
                                f"{teacher.config.num_labels}")
    layer_map(_depth(student), _depth(teacher), (config or DistillConfig()).strategy)
    if (config or DistillConfig()).beta > 0 and student.config.hidden_size != teacher.config.hidden_size:
        raise DistillationError(f"the patient term compares hidden states: the student's are {student.config.hidden_size} "
                                f"wide, the teacher's {teacher.config.hidden_size} (use beta=0)")


def distillation_loss(teacher: Teacher, config: DistillConfig,
                      pairs: list[tuple[int, int]]) -> Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]:
    """``loss(student, batch)`` for :func:`tcomp_utils.trainer.train` (the batch holds ``labels``)."""
    s_idx = [s for s, _ in pairs]
    t_idx = [t for _, t in pairs]

    def loss(student: nn.Module, batch: dict):
        out = student(**_inputs(batch), output_hidden_states=config.beta > 0)
        t_logits, t_cls = teacher(batch)
        s_cls = (torch.stack([out.hidden_states[i][:, 0] for i in s_idx], dim=1) if config.beta > 0 and pairs
                 else None)
        return pkd_loss(out.logits, t_logits.to(out.logits.device), batch["labels"], s_cls,
                        t_cls[:, t_idx].to(out.logits.device) if s_cls is not None else None, config)
    return loss


def distill(student: nn.Module, teacher: nn.Module | Teacher, data, config: DistillConfig,
            train_config: trainer.TrainConfig, evaluate: Callable[[nn.Module], dict] | None = None,
            student_tokenizer=None, teacher_tokenizer=None) -> trainer.TrainResult:
    """Train ``student`` on ``data`` (batches with ``labels``) against ``teacher`` with the PKD
    loss; early stopping and checkpoints as ``train_config`` says (e.g. ``metric="accuracy"``
    with ``evaluate``). The pair is checked first (:func:`check_pair`)."""
    teacher = teacher if isinstance(teacher, Teacher) else Teacher(teacher)
    check_pair(student, teacher.model, student_tokenizer, teacher_tokenizer, config)
    pairs = layer_map(_depth(student), _depth(teacher.model), config.strategy)
    return trainer.train(student, data, train_config, loss=distillation_loss(teacher, config, pairs), evaluate=evaluate)
