"""Scores of predictions against labels, with no model in sight: classification and correlation
metrics (scikit-learn, scipy), their bootstrap intervals over the test examples, the paired interval
of a difference between two systems on the same examples, and the compact encoding of class
predictions that results tables keep. Free of torch, so figures and claims tests can use it;
:mod:`tcomp_utils.metrics` re-exports its public names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def accuracy(labels: Sequence[int], preds: Sequence[int]) -> float:
    """Fraction of predictions equal to the labels."""
    return float(skm.accuracy_score(labels, preds))


def f1(labels: Sequence[int], preds: Sequence[int]) -> float:
    """F1 of the positive class (label 1)."""
    return float(skm.f1_score(labels, preds))


def mcc(labels: Sequence[int], preds: Sequence[int]) -> float:
    """Matthews correlation coefficient."""
    return float(skm.matthews_corrcoef(labels, preds))


def macro_f1(labels: Sequence[int], preds: Sequence[int]) -> float:
    """F1 averaged over the classes (a collapse onto one class scores low whatever the class balance)."""
    return float(skm.f1_score(labels, preds, average="macro"))


def pearson(targets: Sequence[float], preds: Sequence[float]) -> float:
    return float(stats.pearsonr(targets, preds).statistic)


def spearman(targets: Sequence[float], preds: Sequence[float]) -> float:
    return float(stats.spearmanr(targets, preds).statistic)


METRICS: dict[str, Callable] = {"accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "mcc": mcc, "pearson": pearson,
                                "spearman": spearman}


def _from_confusion(metric: str, cm: np.ndarray) -> float:
    """``metric`` from a confusion matrix ``cm`` (true × predicted counts): what the sklearn function
    of the same name gives on the labels and predictions it counts, at a small fraction of its cost
    (the bootstrap scores thousands of resamples)."""
    total, right = cm.sum(), np.trace(cm)
    true, pred = cm.sum(1), cm.sum(0)
    if metric == "accuracy":
        return float(right / total)
    if metric == "mcc":
        den = np.sqrt(float(total ** 2 - pred @ pred) * float(total ** 2 - true @ true))
        return float((right * total - pred @ true) / den) if den else 0.0
    denominator = true + pred  # F1 = 2 tp / (2 tp + fp + fn); 0 where a class has neither
    f1s = np.divide(2 * np.diag(cm), denominator, out=np.zeros(len(cm)), where=denominator > 0)
    if metric == "f1":
        return float(f1s[1])
    return float(f1s[denominator > 0].mean())  # macro: the classes among the labels or the predictions


_CONFUSION_METRICS = ("accuracy", "f1", "macro_f1", "mcc")


def _resample_scorer(metric: str, labels: np.ndarray, runs: np.ndarray) -> Callable[[int, np.ndarray], float]:
    """``score(run, idx)``: ``metric`` of run ``run`` of ``runs`` on the examples ``idx`` -- by
    confusion counts for integer classes, by the metric's own function otherwise."""
    if metric in _CONFUSION_METRICS and np.issubdtype(labels.dtype, np.integer) and \
            np.issubdtype(runs.dtype, np.integer) and labels.min(initial=0) >= 0 and runs.min(initial=0) >= 0:
        k = int(max(labels.max(initial=0), runs.max(initial=0), 1)) + 1  # at least 2: F1 of class 1
        codes = labels[None, :] * k + runs  # runs × examples: the cell of the confusion matrix
        return lambda r, idx: _from_confusion(metric, np.bincount(codes[r, idx], minlength=k * k).reshape(k, k))
    fn = METRICS[metric]
    return lambda r, idx: fn(labels[idx], runs[r][idx])


def score(names: Sequence[str], labels, preds) -> dict[str, float]:
    """Every metric in ``names`` on the same labels and predictions."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; allowed: {', '.join(METRICS)}")
    return {n: METRICS[n](labels, preds) for n in names}


def bootstrap_interval(labels: Sequence[int], preds, metric: str = "accuracy", n_resamples: int = 1000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` over the test examples. ``preds`` is one
    prediction per example, or several runs of them (runs × examples: e.g. seeds), in which case
    the statistic is the metric averaged over the runs, resampling the same examples for every run."""
    y = np.asarray(labels)
    p = np.atleast_2d(np.asarray(preds))
    if p.shape[1] != len(y):
        raise ValueError(f"{p.shape[1]} predictions per run for {len(y)} labels")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    score_ = _resample_scorer(metric, y, p)
    rng = np.random.default_rng(seed)
    stats_ = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, len(y), len(y))
        stats_[i] = np.mean([score_(r, idx) for r in range(len(p))])
    lo, hi = np.quantile(stats_, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class PairedInterval:
    """A difference ``a − b`` of one metric on the same test examples, with its paired percentile
    bootstrap interval (the same resampled examples for both systems) and the verdict read from it."""

    difference: float
    lo: float
    hi: float
    level: float
    resamples: int

    @property
    def verdict(self) -> str:
        """``"≈"`` when the interval covers 0 (not distinguishable), else ``"above"`` or ``"below"``."""
        return "above" if self.lo > 0 else "below" if self.hi < 0 else "≈"


def paired_interval(labels: Sequence, preds_a, preds_b, metric: str = "accuracy", n_resamples: int = 1000,
                    level: float = 0.95, seed: int = 0, paired_runs: bool = False) -> PairedInterval:
    """``metric`` of system ``a`` minus that of ``b`` on the same test ``labels``, with its paired
    percentile bootstrap interval: each resample draws test examples with replacement and scores both
    systems on that draw, so the test sample's own spread, which both share, cancels.

    ``preds_a``/``preds_b``: one prediction per example, or runs × examples (seeds, calibration
    draws); the statistic is then the mean over a system's runs, and each resample also draws each
    system's runs with replacement, so the interval holds the spread across runs too (the same run
    indices for both with ``paired_runs``: run i of ``a`` and of ``b`` share a seed or a draw)."""
    y = np.asarray(labels)
    a, b = np.atleast_2d(np.asarray(preds_a)), np.atleast_2d(np.asarray(preds_b))
    if a.shape[1] != len(y) or b.shape[1] != len(y):
        raise ValueError(f"need one prediction per label in every run: {a.shape[1]} (a) and {b.shape[1]} (b) "
                         f"for {len(y)} labels")
    if paired_runs and len(a) != len(b):
        raise ValueError(f"paired_runs needs as many runs of a as of b, got {len(a)} and {len(b)}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    scorers = {"a": _resample_scorer(metric, y, a), "b": _resample_scorer(metric, y, b)}
    rng = np.random.default_rng(seed)

    def mean_score(p: str, runs: np.ndarray, idx: np.ndarray) -> float:
        return float(np.mean([scorers[p](r, idx) for r in runs]))

    diffs = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, len(y), len(y))
        runs_a = rng.integers(0, len(a), len(a))
        runs_b = runs_a if paired_runs else rng.integers(0, len(b), len(b))
        diffs[i] = mean_score("a", runs_a, idx) - mean_score("b", runs_b, idx)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    everything = np.arange(len(y))
    return PairedInterval(mean_score("a", np.arange(len(a)), everything) - mean_score("b", np.arange(len(b)), everything),
                          float(lo), float(hi), level, n_resamples)


def seed_interval(differences: Sequence[float], level: float = 0.95) -> PairedInterval:
    """The mean of paired differences ``a − b`` measured once per training seed (``(seeds,)``, e.g. seconds
    saved or BLEU gained by one arm over the other with the same seed), with Student's t interval
    over the seeds: a few runs cannot be resampled, so the interval assumes their spread is normal
    (``resamples`` is 0). Needs two seeds or more; a verdict from three seeds is a wide interval."""
    d = np.asarray(differences, dtype=float)
    if d.ndim != 1 or len(d) < 2 or not np.isfinite(d).all():
        raise ValueError(f"need two or more finite differences, one per seed, got {d.tolist()}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    half = stats.t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return PairedInterval(float(d.mean()), float(d.mean() - half), float(d.mean() + half), level, 0)


def encode_predictions(preds: Sequence[int]) -> str:
    """Class predictions ``(examples,)`` (integers 0..9) as ``"c"`` and one digit each: a compact
    column of a results table from which paired differences between cells are computed later (the
    letter keeps a CSV reader from taking the digits for one large number)."""
    values = [int(p) for p in preds]
    bad = [p for p in values if not 0 <= p <= 9]
    if bad:
        raise ValueError(f"can encode classes 0..9 only, got {sorted(set(bad))[:5]}")
    return "c" + "".join(map(str, values))


def decode_predictions(text: str) -> np.ndarray:
    """The inverse of :func:`encode_predictions`: ``(examples,)`` int64."""
    if not isinstance(text, str) or not text.startswith("c") or not text[1:].isdigit():
        raise ValueError(f"not an encoded prediction string ('c' then digits): {str(text)[:40]!r}")
    return np.frombuffer(text[1:].encode("ascii"), dtype=np.uint8).astype(np.int64) - ord("0")


def majority_share(preds: Sequence[int], majority: int) -> float:
    """Share of predictions equal to the ``majority`` class (1.0: the classifier has collapsed onto it)."""
    p = np.asarray(preds)
    return float((p == majority).mean())
