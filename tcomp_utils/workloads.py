"""Workloads: what a table runs on, defined once — a model, its tokenizer, calibration data and an
evaluation with named metrics, per profile (``smoke`` / ``default`` / ``paper``).

    wl = workloads.get("smollm2-135m", "smoke")
    model, tok = wl.model, wl.tokenizer        # loaded on first use, then kept (one copy per ``get``)
    batches = wl.calibration()                 # the profile's count (``wl.profile.calibration``)
    scores = wl.evaluate(model)                # {metric: number}, keys and order of ``wl.metrics``

``get`` builds a fresh workload each call (nothing is loaded until ``model``, ``tokenizer``,
``calibration`` or ``evaluate`` asks), so a notebook that compresses ``wl.model`` in place gets a
fresh model from the next ``get``. Loading draws from torch's global generator (a head that the
checkpoint lacks is initialised at random): seed before reading ``wl.model``.

Entries (``names()``):

* ``minilm-l6-tweets`` (kind ``classifier``): the tweet-sentiment task model (``minilm-l6``
  fine-tuned, :mod:`tcomp_utils.task_models`; the ``smoke`` profile uses the small
  ``minilm-l6-tweets-smoke``, ``paper`` BERT-base on GLUE SST-2, which needs a hub).
  ``calibration(n, seed=0, labels=False, batch_size=32)``: the first ``n`` training tweets (``seed``
  other than 0: ``n`` tweets of the training split shuffled by ``seed``) as
  ``ceil(n / batch_size)`` batches ``{"input_ids", "token_type_ids", "attention_mask": (rows,
  tokens)}`` int64, rows <= batch_size, tokens = the longest tweet of the batch (<= 64), plus
  ``"labels": (rows,)`` when ``labels`` (Kwon's Fisher needs the task loss). ``evaluate(model,
  metrics=None, examples=None)``: test accuracy (fraction in [0, 1]) with its 95 % percentile
  bootstrap interval (``_lo``, ``_hi``; 1,000 resamples, seed 0), the task's other metrics
  (``test_f1``, ``test_mcc`` in [-1, 1]), macro F1, the share of predictions equal to the training
  majority class, and the number of test tweets scored; on the profile's test tweets (``examples``:
  a count, or ``"all"``: every test tweet the task model was scored on, 256 in smoke, 2,000 else).
  ``timing_inputs(batch)``: the first ``batch`` test tweets as one batch without labels.
  ``evaluate(model, ["test_predictions"])`` also gives every scored tweet's predicted class as one
  digit each (:func:`metrics.encode_predictions`), from which paired differences are computed later.
* ``minilm-l6-tweets3`` (kind ``classifier``): the same tweets in three classes (issue 37), with
  macro-F1 as the headline and a bootstrap interval for macro-F1 and accuracy, then MCC
  (``minilm-l6-tweets3-smoke`` in ``smoke``; ``paper`` as above).
* ``smollm2-135m`` (kind ``causal-lm``): the embedded decoder (``paper``: OPT-125M on WikiText-2).
  Two texts, ``novel`` (*Pride and Prejudice*; ``paper``: WikiText-2) and ``jargon`` (the last
  fifth of the Jargon File). ``calibration(n, seed=0, source="mix", labels=False)``: ``n``
  segments of ``length`` tokens (128 smoke, 512 default, 2048 paper) at seeded offsets of the
  calibration split of ``source`` (``novel``/``austen``, ``jargon``, or ``mix``: half from each,
  :func:`task_models.lm_segments`) as ``ceil(n / 4)`` batches ``{"input_ids": (<= 4, length)}``
  int64 (plus ``"labels"``, the same tensor, when ``labels``). ``evaluate(model)``: perplexity
  (``exp`` of the mean next-token NLL in nats) of each text's test split in non-overlapping
  windows of ``length`` tokens, over its first ``eval_tokens`` tokens (512 smoke, 16,384 default,
  all in paper), and the number of tokens scored. ``timing_inputs(batch=1)``: the novel's first
  ``batch * length`` test tokens, ``{"input_ids": (batch, length)}``.

``wl.quality(scores)`` gives the workload's headline number and its label (accuracy in %, or the
novel's perplexity). Sizes live in ``wl.profile`` (:class:`Profile`); ``timing_batch`` and
``timing_runs`` are the inputs and repetitions for latency probes.

Adding a task or model is one entry: subclass :class:`Workload` (or one of the two kinds here) with
its ``PROFILES`` and decorate it with ``@workloads.register("name")`` (``register(name, factory)``
also takes any callable ``factory(profile) -> Workload``). Plug-ins: a module named in the
environment variable ``TCOMP_WORKLOADS`` (comma-separated module paths, importable from
``sys.path``/``PYTHONPATH``) is imported at the first ``get`` or ``names`` and registers its
entries there. That is how a notebook's kernel — a separate process started by papermill, which
inherits the environment — sees a workload defined outside the package (e.g. in a test).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

PROFILES = ("smoke", "default", "paper")
PLUGIN_ENV = "TCOMP_WORKLOADS"


class UnknownWorkloadError(ValueError):
    """A workload, profile or metric name that is not defined (the message lists the allowed ones)."""


@dataclass(frozen=True)
class Profile:
    """The sizes of one profile of a workload (fields a kind does not use stay at their default).

    ``model``: what is loaded (an embedded or hub model, or a task-model name); ``calibration``:
    the default calibration count (examples or segments); ``test``: test examples scored (None:
    all); ``length``: tokens per calibration segment and evaluation window; ``eval_tokens``: test
    tokens scored per text (None: all); ``prose``: the task of the novel-like text;
    ``task_metrics``: the task's own metric names; ``recipe``: the fields of a task-model
    :class:`~tcomp_utils.task_models.Recipe` other than the named one; ``window_bos``: a perplexity
    window starts with the BOS token when the tokenizer adds one (off: raw windows of the
    concatenated text, GPTQ's protocol); ``timing_batch``/``timing_runs``: latency-probe inputs and
    repetitions; ``extra``: anything a plug-in needs.
    """

    model: str
    calibration: int
    test: int | None = None
    length: int | None = None
    eval_tokens: int | None = None
    prose: str | None = None
    task_metrics: tuple[str, ...] = ()
    recipe: dict | None = None
    window_bos: bool = True
    timing_batch: int = 32
    timing_runs: int = 10
    extra: dict = dataclasses.field(default_factory=dict)


class Workload:
    """A model, its tokenizer, calibration data and an evaluation, at one profile's sizes."""

    kind: ClassVar[str] = ""
    PROFILES: ClassVar[dict[str, Profile]] = {}
    # the headline number: (metric, scale, label), quality = scale * scores[metric]
    QUALITY: ClassVar[tuple[str, float, str]] = ("", 1.0, "")

    def __init__(self, profile: str = "default"):
        if profile not in self.PROFILES:
            raise UnknownWorkloadError(f"unknown profile {profile!r} for workload {type(self).__name__}; "
                                       f"allowed: {', '.join(self.PROFILES)}")
        self.name = getattr(self, "name", type(self).__name__)
        self.profile_name = profile
        self.profile = self.PROFILES[profile]
        self._loaded: tuple[nn.Module, Any] | None = None

    def __repr__(self) -> str:
        return f"<workload {self.name} ({self.kind}), profile {self.profile_name}>"

    # --- what an entry defines -------------------------------------------------------------
    @property
    def metrics(self) -> tuple[str, ...]:
        """The names :meth:`evaluate` returns, in its order."""
        raise NotImplementedError

    # names :meth:`evaluate` also gives when asked for them by name (not by default)
    optional_metrics: ClassVar[tuple[str, ...]] = ()

    def load(self) -> tuple[nn.Module, Any]:
        """Load ``(model, tokenizer)`` (called once, by the first use of ``model`` or ``tokenizer``)."""
        raise NotImplementedError

    def calibration(self, n: int | None = None, seed: int = 0, **options) -> list[dict]:
        """Calibration batches for ``model(**batch)``; ``n=None``: ``profile.calibration``."""
        raise NotImplementedError

    def scores(self, model: nn.Module, wanted: set[str], **options) -> dict[str, float]:
        """At least the metrics in ``wanted`` (the others may be skipped when costly)."""
        raise NotImplementedError

    def timing_inputs(self, batch: int | None = None) -> dict[str, torch.Tensor]:
        """One fixed batch for latency measurements (``batch=None``: ``profile.timing_batch``)."""
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        return self._model_and_tokenizer()[0]

    @property
    def tokenizer(self) -> Any:
        return self._model_and_tokenizer()[1]

    def _model_and_tokenizer(self) -> tuple[nn.Module, Any]:
        if self._loaded is None:
            self._loaded = self.load()
        return self._loaded

    def evaluate(self, model: nn.Module, metrics: Sequence[str] | None = None, **options) -> dict[str, float]:
        """``{metric: value}`` for ``metrics`` (default: every one of :attr:`metrics`), in that order."""
        names = list(self.metrics if metrics is None else metrics)
        allowed = (*self.metrics, *self.optional_metrics)
        unknown = [m for m in names if m not in allowed]
        if unknown:
            raise UnknownWorkloadError(f"unknown metric(s) {unknown} of workload {self.name}; "
                                       f"allowed: {', '.join(allowed)}")
        found = self.scores(model, set(names), **options)
        return {m: found[m] for m in names}

    def quality(self, scores: dict[str, float]) -> tuple[float, str]:
        """The headline number of ``scores`` (from :meth:`evaluate`) and what it is."""
        metric, scale, label = self.QUALITY
        return scale * scores[metric], label

    def _n(self, n: int | None) -> int:
        n = self.profile.calibration if n is None else n
        if n < 1:
            raise ValueError(f"calibration needs at least one example, got n={n}")
        return n


# --- the registry ---------------------------------------------------------------------------
_FACTORIES: dict[str, Callable[[str], Workload]] = {}
_PLUGINS_LOADED: set[str] = set()


def register(name: str, factory: Callable[[str], Workload] | None = None, *, replace: bool = False):
    """Register ``factory`` (a :class:`Workload` subclass, or any ``factory(profile) -> Workload``)
    under ``name``; used bare as ``@register("name")`` it decorates the class and returns it.
    A name already taken by another factory raises unless ``replace`` (a module imported again
    re-registers its own entries silently)."""
    def add(f: Callable[[str], Workload]):
        old = _FACTORIES.get(name)
        same = old is not None and (getattr(old, "__module__", None), getattr(old, "__qualname__", None)) == \
            (getattr(f, "__module__", None), getattr(f, "__qualname__", None))
        if old is not None and old is not f and not (replace or same):
            raise ValueError(f"workload {name!r} is already registered ({old!r}); pass replace=True to replace it")
        _FACTORIES[name] = f
        return f
    if not name or not isinstance(name, str):
        raise ValueError(f"a workload name must be a non-empty string, got {name!r}")
    return add if factory is None else add(factory)


def _load_plugins() -> None:
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(","))):
        if module not in _PLUGINS_LOADED:
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise ImportError(f"{PLUGIN_ENV} names {module!r}, which does not import: {err}") from err
            _PLUGINS_LOADED.add(module)


def names() -> list[str]:
    """Every registered workload name (plug-ins of ``TCOMP_WORKLOADS`` included), sorted."""
    _load_plugins()
    return sorted(_FACTORIES)


def get(name: str, profile: str = "default") -> Workload:
    """A fresh workload ``name`` at ``profile`` (nothing loaded yet)."""
    _load_plugins()
    if name not in _FACTORIES:
        raise UnknownWorkloadError(f"unknown workload {name!r}; allowed: {', '.join(sorted(_FACTORIES))} "
                                   f"(register more with workloads.register or ${PLUGIN_ENV})")
    if profile not in PROFILES:
        raise UnknownWorkloadError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    workload = _FACTORIES[name](profile)
    workload.name = name
    return workload


# --- the two kinds and their entries --------------------------------------------------------
class TaskModelWorkload(Workload):
    """A sequence classifier fine-tuned on an embedded task (:mod:`tcomp_utils.task_models`)."""

    kind = "classifier"
    QUALITY = ("test_accuracy", 100.0, "test accuracy (%)")
    # metrics given with a 95 % bootstrap interval (``_lo``, ``_hi``); the first is the headline
    INTERVALS: ClassVar[tuple[str, ...]] = ("accuracy",)
    # the predicted class of every test example scored, as one digit each (metrics.encode_predictions),
    # so that two cells' paired difference can be computed from the committed tables alone
    optional_metrics = ("test_predictions",)

    @property
    def metrics(self) -> tuple[str, ...]:
        order = dict.fromkeys((*self.INTERVALS, *self.profile.task_metrics, "macro_f1"))
        names = [n for m in order for n in (f"test_{m}", *((f"test_{m}_lo", f"test_{m}_hi") if m in self.INTERVALS
                                                           else ()))]
        return (*names, "test_majority_share", "test_examples")

    def load(self) -> tuple[nn.Module, Any]:
        from . import task_models, tasks

        recipe = task_models.Recipe(**self.profile.recipe) if self.profile.recipe else None
        model, tok, self.info = task_models.get_task_model(self.profile.model, recipe, progress=False)
        self.task = tasks.load_task(self.info.recipe["task"], seed=self.info.recipe["split_seed"])
        self._tests: dict[int, Any] = {}
        return model, tok

    def calibration(self, n: int | None = None, seed: int = 0, labels: bool = False,
                    batch_size: int = 32) -> list[dict]:
        from . import task_models

        tok, train = self.tokenizer, self.task["train"]
        return task_models.calibration_batches(tok, train if seed == 0 else train.shuffle(seed=seed), self.task.spec,
                                               n=self._n(n), batch_size=batch_size, labels=labels)

    def test_set(self, examples: int | str | None = None):
        """The test examples scored: the profile's count (None), ``"all"`` the task model was scored on, or ``n``."""
        self.tokenizer  # loads the task
        if examples not in (None, "all") and not (isinstance(examples, int) and examples > 0):
            raise ValueError(f"examples must be None, 'all' or a positive count, got {examples!r}")
        n = self.profile.test if examples is None else None if examples == "all" else examples
        n = n or self.info.metrics["test_examples"]
        if n not in self._tests:
            self._tests[n] = self.task["test"].select(range(n))
        return self._tests[n]

    def scores(self, model: nn.Module, wanted: set[str], examples: int | str | None = None) -> dict[str, float]:
        from . import metrics

        spec, test = self.task.spec, self.test_set(examples)
        labels = list(test[spec.label_field])
        preds = metrics.classifier_predictions(model, self.tokenizer, test, spec.text_fields,
                                               max_length=self.info.recipe["max_length"])
        out: dict[str, Any] = {"test_examples": len(labels)}
        for m in wanted:
            if m[5:] in metrics.METRICS:
                out[m] = metrics.METRICS[m[5:]](labels, preds)
        for m in self.INTERVALS:
            if wanted & {f"test_{m}_lo", f"test_{m}_hi"}:
                out[f"test_{m}_lo"], out[f"test_{m}_hi"] = metrics.bootstrap_interval(labels, preds, m)
        if "test_predictions" in wanted:
            out["test_predictions"] = metrics.encode_predictions(preds)
        if "test_majority_share" in wanted:
            majority = self.task["train"].to_pandas()[spec.label_field].mode()[0]
            out["test_majority_share"] = metrics.majority_share(preds, majority)
        return out

    def timing_inputs(self, batch: int | None = None) -> dict[str, torch.Tensor]:
        from . import task_models

        n = batch or self.profile.timing_batch
        return task_models.calibration_batches(self.tokenizer, self.test_set(), self.task.spec, n=n, batch_size=n,
                                               labels=False)[0]


class TextPerplexityWorkload(Workload):
    """A causal language model scored by perplexity on held-out texts, calibrated on their other parts."""

    kind = "causal-lm"
    TEXTS: ClassVar[tuple[str, ...]] = ("novel", "jargon")  # "novel" is the profile's prose
    SOURCES: ClassVar[dict[str, tuple[str, ...]]] = {"novel": ("novel",), "austen": ("novel",),
                                                     "jargon": ("jargon",), "mix": ("novel", "jargon")}
    QUALITY = ("perplexity_novel", 1.0, "perplexity (novel)")

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(f"{k}_{t}" for t in self.TEXTS for k in ("perplexity", "eval_tokens"))

    def load(self) -> tuple[nn.Module, Any]:
        from . import models

        return models.load_model(self.profile.model, "causal-lm")

    def texts(self) -> dict[str, Any]:
        """``{text name: loaded task}`` (cached)."""
        if not hasattr(self, "_texts"):
            from . import tasks

            self._texts = {t: tasks.load_task(self.profile.prose if t == "novel" else t) for t in self.TEXTS}
        return self._texts

    def test_ids(self) -> dict[str, torch.Tensor]:
        """Each text's test split as token ids ``(tokens,)`` (cached)."""
        if not hasattr(self, "_test_ids"):
            from . import task_models

            self._test_ids = {name: task_models.token_ids(self.tokenizer, t.text("test"))
                              for name, t in self.texts().items()}
        return self._test_ids

    def calibration(self, n: int | None = None, seed: int = 0, source: str = "mix",
                    labels: bool = False) -> list[dict]:
        from . import task_models

        if source not in self.SOURCES:
            raise ValueError(f"unknown calibration source {source!r}; allowed: {', '.join(self.SOURCES)}")
        texts = self.texts()
        segments = task_models.lm_segments(self.tokenizer, {t: texts[t].text("calibration") for t in self.SOURCES[source]},
                                           n=self._n(n), length=self.profile.length, seed=seed)
        return [{**b, "labels": b["input_ids"]} for b in segments] if labels else segments

    def scores(self, model: nn.Module, wanted: set[str]) -> dict[str, float]:
        from . import metrics

        out: dict[str, float] = {}
        # every window starts with BOS when the tokenizer adds one (Gemma depends on it), unless the
        # profile follows a protocol of raw windows
        bos = metrics.bos_token_id(self.tokenizer) if self.profile.window_bos else None
        for name, ids in self.test_ids().items():
            r = metrics.perplexity(model, ids, seq_len=self.profile.length, max_tokens=self.profile.eval_tokens,
                                   progress=False, bos_token_id=bos)
            out |= {f"perplexity_{name}": r.perplexity, f"eval_tokens_{name}": r.tokens}
        return out

    def timing_inputs(self, batch: int | None = None) -> dict[str, torch.Tensor]:
        rows, length = batch or self.profile.timing_batch, self.profile.length
        return {"input_ids": self.test_ids()["novel"][: rows * length].view(rows, length)}


@register("minilm-l6-tweets")
class TweetsMiniLM(TaskModelWorkload):
    """Tweet sentiment: ``minilm-l6`` fine-tuned on the embedded tweets (test accuracy and friends)."""

    _TWEETS = ("accuracy", "f1", "mcc")
    PROFILES = {
        # seconds, for nbval/CI: the small task model (256 test tweets), 64 calibration and 128 test tweets
        "smoke": Profile("minilm-l6-tweets-smoke", calibration=64, test=128, task_metrics=_TWEETS,
                         timing_batch=8, timing_runs=3),
        # the reproduction: 256 training tweets, all 2,000 test tweets
        "default": Profile("minilm-l6-tweets", calibration=256, task_metrics=_TWEETS),
        # the seeds' setting: BERT-base fine-tuned on GLUE SST-2 (needs a hub)
        "paper": Profile("bert-base-uncased-glue-sst2", calibration=2048, task_metrics=("accuracy",),
                         recipe=dict(base="bert-base-uncased", task="glue-sst2", max_length=128)),
    }


@register("minilm-l6-tweets3")
class Tweets3MiniLM(TaskModelWorkload):
    """Tweet sentiment in three classes (negative / neutral / positive; the majority class is 41.3 % of
    the test tweets): ``minilm-l6`` fine-tuned on ``tweets3``, headline macro-F1 (issue 37)."""

    QUALITY = ("test_macro_f1", 100.0, "test macro-F1 (%)")
    INTERVALS = ("macro_f1", "accuracy")
    _TWEETS3 = ("macro_f1", "accuracy", "mcc")
    PROFILES = {
        # seconds, for nbval/CI: the small three-class model (256 test tweets), 64 calibration and 128 test tweets
        "smoke": Profile("minilm-l6-tweets3-smoke", calibration=64, test=128, task_metrics=_TWEETS3,
                         timing_batch=8, timing_runs=3),
        # the reproduction: 256 training tweets, all 2,000 test tweets
        "default": Profile("minilm-l6-tweets3", calibration=256, task_metrics=_TWEETS3),
        # the seeds' setting has no three-class task: BERT-base on GLUE SST-2 as for the binary tweets
        "paper": TweetsMiniLM.PROFILES["paper"],
    }


@register("smollm2-135m")
class SmolLM2(TextPerplexityWorkload):
    """The embedded decoder ``smollm2-135m`` (GGUF Q4_1, de-quantized): perplexity on a novel and the Jargon File."""

    PROFILES = {
        "smoke": Profile("smollm2-135m", calibration=4, length=128, eval_tokens=512, prose="austen",
                         timing_batch=1, timing_runs=3),
        "default": Profile("smollm2-135m", calibration=32, length=512, eval_tokens=16384, prose="austen",
                           timing_batch=1),
        # the seeds' setting: OPT-125M on WikiText-2 (needs a hub), scored as GPTQ does: raw 2,048-token
        # windows of the concatenated test text (OPT's tokenizer would put its BOS before each one)
        "paper": Profile("facebook/opt-125m", calibration=128, length=2048, eval_tokens=None, prose="wikitext2",
                         window_bos=False, timing_batch=1),
    }
