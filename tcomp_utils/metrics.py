"""Evaluation: classification and correlation metrics (from :mod:`tcomp_utils.scores`, re-exported
here with their bootstrap and paired intervals), model predictions, perplexity, BLEU and latency.

Library implementations where they exist (scikit-learn, scipy, sacrebleu); perplexity and the
latency helper are written here because their protocols (window layout, warm-up, thread count)
are what makes numbers comparable.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import sacrebleu
import torch
from torch import nn

from .scores import (METRICS, PairedInterval, accuracy, bootstrap_interval, decode_predictions,  # noqa: F401
                     encode_predictions, f1, macro_f1, majority_share, mcc, paired_interval, pearson, score,
                     spearman)  # re-exported: metrics.accuracy etc. as before

from . import timing
from .progress import Bar


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, one reference per sentence)."""
    return translation_scores(hypotheses, references)["bleu"]


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu defaults, one detokenized reference per sentence) and each
    metric's sacrebleu signature (what was computed: tokenisation, smoothing, version)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    hyps, refs = list(hypotheses), [list(references)]
    out = {}
    for name, metric in (("bleu", sacrebleu.metrics.BLEU()), ("chrf", sacrebleu.metrics.CHRF())):
        out[name] = float(metric.corpus_score(hyps, refs).score)
        out[f"{name}_signature"] = str(metric.get_signature())
    return out


def length_order(tokenizer, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                 max_length: int | None = None) -> list[int]:
    """Indices of ``texts`` (with ``text_pairs``) by their number of tokens after truncation to
    ``max_length``: batches cut from this order carry little padding. (Sorting by characters
    instead pads the 2,000 test tweets to 64 % more tokens: tokens per character vary with
    emojis, links and hashtags.)"""
    lengths = [len(ids) for ids in tokenizer(list(texts), list(text_pairs) if text_pairs is not None else None,
                                             truncation=max_length is not None, max_length=max_length)["input_ids"]]
    return sorted(range(len(lengths)), key=lengths.__getitem__)


@torch.no_grad()
def predict_classifier(model: nn.Module, tokenizer, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                       batch_size: int = 64, max_length: int = 64, progress: bool = False) -> np.ndarray:
    """Logits of a sequence classifier for ``texts`` (and ``text_pairs`` for sentence-pair
    tasks): array (n_texts, num_labels)."""
    model.eval()
    device = next(model.parameters()).device
    order = length_order(tokenizer, texts, text_pairs, max_length)  # the logits come back in input order
    out = []
    for i in Bar(range(0, len(order), batch_size), desc="predict", disable=not progress):
        idx = order[i : i + batch_size]
        pair = [text_pairs[j] for j in idx] if text_pairs is not None else None
        enc = tokenizer([texts[j] for j in idx], pair, padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt").to(device)
        out.append(model(**enc).logits.float().cpu())
    logits = torch.cat(out)
    return logits[torch.argsort(torch.tensor(order))].numpy()


def classifier_predictions(model: nn.Module, tokenizer, dataset, text_fields: Sequence[str] = ("text",),
                           batch_size: int = 64, max_length: int = 64) -> list:
    """Predicted labels (or values, for a one-output regressor) of ``model`` for ``dataset``."""
    pairs = dataset[text_fields[1]] if len(text_fields) > 1 else None
    logits = predict_classifier(model, tokenizer, dataset[text_fields[0]], pairs, batch_size, max_length)
    return logits[:, 0].tolist() if logits.shape[1] == 1 else logits.argmax(-1).tolist()


def evaluate_classifier(model: nn.Module, tokenizer, dataset, metric_names: Sequence[str] = ("accuracy", "f1", "mcc"),
                        text_fields: Sequence[str] = ("text",), label_field: str = "label",
                        batch_size: int = 64, max_length: int = 64) -> dict[str, float]:
    """Metrics of a sequence classifier (or regressor, one output) on ``dataset``: inputs from
    ``text_fields`` (one, or two for sentence pairs), targets from ``label_field``."""
    preds = classifier_predictions(model, tokenizer, dataset, text_fields, batch_size, max_length)
    return score(metric_names, list(dataset[label_field]), preds)


def _bleu_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-sentence BLEU sufficient statistics (sacrebleu's defaults): rows of
    ``[sys_len, ref_len, correct_1..4, total_1..4]``, summable over any subset of sentences."""
    # effective_order changes only a sentence's own score, not its counts; it silences sacrebleu's
    # per-sentence warning
    bleu_ = sacrebleu.metrics.BLEU(effective_order=True)
    rows = []
    for h, r in zip(hypotheses, references):
        s = bleu_.sentence_score(h, [r])
        rows.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    return np.asarray(rows, dtype=np.int64)


def _bleu_from_statistics(stats: np.ndarray) -> float:
    return sacrebleu.metrics.BLEU.compute_bleu(stats[2:6].tolist(), stats[6:10].tolist(), int(stats[0]), int(stats[1]),
                                               smooth_method="exp").score


def paired_bleu_interval(hypotheses_a: Sequence[str] | Sequence[Sequence[str]], hypotheses_b: Sequence[str],
                         references: Sequence[str], n_resamples: int = 1000, level: float = 0.95,
                         seed: int = 0) -> PairedInterval:
    """Corpus BLEU of system ``a`` minus that of ``b`` on the same ``references`` (sacrebleu's
    defaults: 13a, exp smoothing) and its paired bootstrap interval: each resample draws test
    sentences with replacement and scores both systems on the same draw, so the spread of the test
    sample that both share cancels (Koehn 2004). BLEU points.

    ``hypotheses_a`` may also hold several runs of ``a`` (runs × sentences: random draws such as
    stochastic rounding); ``a``'s score is then the mean BLEU over its runs, and each resample also
    draws the runs with replacement, so the interval holds their spread too."""
    runs = [hypotheses_a] if not len(hypotheses_a) or isinstance(hypotheses_a[0], str) else list(hypotheses_a)
    if not all(len(h) == len(references) for h in runs) or len(hypotheses_b) != len(references):
        raise ValueError(f"need one hypothesis of each system (each run of a) per reference, got "
                         f"{[len(h) for h in runs]} (a), {len(hypotheses_b)} (b) and {len(references)} references")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    a = np.stack([_bleu_statistics(h, references) for h in runs])  # runs × sentences × 10
    b = _bleu_statistics(hypotheses_b, references)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, len(references), len(references))
        picked = rng.integers(0, len(a), len(a)) if len(a) > 1 else [0]
        score_a = np.mean([_bleu_from_statistics(a[r][idx].sum(0)) for r in picked])
        diffs[i] = score_a - _bleu_from_statistics(b[idx].sum(0))
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    whole = np.mean([_bleu_from_statistics(r.sum(0)) for r in a]) - _bleu_from_statistics(b.sum(0))
    return PairedInterval(float(whole), float(lo), float(hi), level, n_resamples)


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity ``exp(mean NLL)`` over ``tokens`` scored tokens in ``windows`` windows."""

    perplexity: float
    nll: float
    tokens: int
    windows: int


def bos_token_id(tokenizer) -> int | None:
    """The BOS token id ``tokenizer`` puts before every text it encodes, or None when it adds none
    (no BOS token, or one it does not add: SmolLM2's ``<|im_start|>``). Read off what it does, as
    flags differ by tokenizer class: "a" encoded with its special tokens starts with the BOS id and
    without them does not."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    with_special = tokenizer("a").input_ids
    without = tokenizer("a", add_special_tokens=False).input_ids
    added = len(with_special) > len(without) and with_special[0] == bos and (not without or without[0] != bos)
    return int(bos) if added else None


@torch.no_grad()
def perplexity(model: nn.Module, input_ids: torch.Tensor, seq_len: int = 512, stride: int | None = None,
               max_tokens: int | None = None, progress: bool = True,
               bos_token_id: int | None = None) -> PerplexityResult:
    """Perplexity of a causal LM over a 1-D tensor of token ids.

    ``stride=None`` is the GPTQ protocol: non-overlapping windows of ``seq_len`` tokens (a final
    partial window is dropped), every token after the first of each window scored. With a
    ``stride`` < ``seq_len``, windows of ``seq_len`` start every ``stride`` tokens and only the
    last ``stride`` tokens of each are scored (the earlier ones are context), as in the HF guide.
    ``max_tokens`` truncates the text first.

    ``bos_token_id``: for a model trained with a BOS token before every text (Gemma; pass
    :func:`bos_token_id` of its tokenizer, as the text-perplexity workloads do), every window
    starts with it: the text's own leading BOS, if any, is dropped, each window is the BOS and
    ``seq_len - 1`` text tokens, and every text token of a window is scored (the first one
    predicted from the BOS alone), the BOS never. None (the default, and what a tokenizer that
    adds no BOS gives): the windows are the text as it is, as above.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 tokens, got {seq_len}")
    if bos_token_id is not None and (isinstance(bos_token_id, bool) or not isinstance(bos_token_id, (int, np.integer))
                                     or bos_token_id < 0):
        raise ValueError(f"bos_token_id must be a token id (an int >= 0) or None, got {bos_token_id!r}")
    lead = 0 if bos_token_id is None else 1  # positions the BOS takes in each window
    width = seq_len - lead  # text tokens per window
    if stride is not None and not 0 < stride <= width:
        raise ValueError(f"stride must lie in (0, {'seq_len - 1' if lead else 'seq_len'}={width}], got {stride}"
                         + (" (each window starts with the BOS token)" if lead else ""))
    ids = input_ids.flatten()
    if lead and len(ids) and ids[0] == bos_token_id:
        ids = ids[1:]
    ids = ids[: max_tokens or None]
    device = next(model.parameters()).device
    model.eval()
    total_nll, total_tokens, windows = 0.0, 0, 0
    fresh = 1 - lead  # first scored text position of a window with nothing scored before it
    if stride is None:
        spans = [(b, b + width, fresh) for b in range(0, len(ids) - width + 1, width)]
    else:
        spans, prev_end = [], 0
        for begin in range(0, len(ids) - fresh, stride):
            end = min(begin + width, len(ids))
            spans.append((begin, end, max(fresh, prev_end - begin)))  # first scored text position in window
            prev_end = end
            if end == len(ids):
                break
    if not spans:
        raise ValueError(f"text of {len(ids)} tokens is shorter than one window of {seq_len}"
                         + (f" (the BOS token and {width} text tokens)" if lead else ""))
    for begin, end, first in Bar(spans, desc="perplexity", disable=not progress):
        window = ids[begin:end]
        if lead:
            window = torch.cat([window.new_tensor([bos_token_id]), window])
        window = window.unsqueeze(0).to(device)
        logits = model(window).logits.float()
        logp = torch.log_softmax(logits[0, lead + first - 1 : -1], dim=-1)
        target = window[0, lead + first:]
        total_nll -= logp.gather(1, target.unsqueeze(1)).sum().item()
        total_tokens += target.numel()
        windows += 1
    mean = total_nll / total_tokens
    return PerplexityResult(math.exp(mean), mean, total_tokens, windows)


@dataclass(frozen=True)
class LatencyResult:
    """Wall-clock latency in milliseconds over ``runs`` timed runs on ``threads`` threads."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    threads: int


def latency(fn: Callable[[], object], runs: int = 20, warmup: int = 3, threads: int | None = None) -> LatencyResult:
    """Time ``fn()``: ``warmup`` untimed calls, then the median of ``runs`` timed calls.

    ``threads`` fixes ``torch.set_num_threads`` for the measurement (restored afterwards), so
    numbers taken on different days or machines state what they used.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    threads = threads or torch.get_num_threads()
    with timing.torch_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10) if runs > 1 else [times[0]] * 9
    return LatencyResult(statistics.median(times), q[0], q[-1], runs, threads)
