"""The no-skill level of the embedded classification tasks: for accuracy, always predicting the
majority class of the test split; for macro-F1, a guess in the classes' shares (1/K). Figures draw it
as a line and the atlas keeps points at or below it off its fronts. Stated here (split seed 0), because figures and the atlas read committed tables
alone (no asset); ``tests/test_tasks.py`` checks the counts against the data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .files import REPO_ROOT
from .scores import decode_predictions

# task -> (test examples in its majority class, test examples), split seed 0
TEST_MAJORITY = {"tweets": (1382, 2000), "tweets3": (826, 2000)}
CLASSES = {"tweets": 2, "tweets3": 3}
ENCODER_TASK = "tweets"  # the task every committed encoder table was computed on (the binary tweets)


def majority_accuracy(task: str = ENCODER_TASK) -> float:
    """Accuracy in percent of always predicting the majority class of ``task``'s test split. (A
    smoke table, scored on the first 128 or 256 test examples, gets the whole split's level.)"""
    if task not in TEST_MAJORITY:
        raise KeyError(f"no majority count for task {task!r}; known: {', '.join(TEST_MAJORITY)}")
    hits, total = TEST_MAJORITY[task]
    return 100 * hits / total


def majority_macro_f1(task: str = ENCODER_TASK) -> float:
    """Macro-F1 in percent of always predicting the majority class of ``task``'s test split: that
    class's F1, 2p / (1 + p) for its share p, averaged with a zero for every other class."""
    if task not in TEST_MAJORITY:
        raise KeyError(f"no majority count for task {task!r}; known: {', '.join(TEST_MAJORITY)}")
    hits, total = TEST_MAJORITY[task]
    share = hits / total
    return 100 * 2 * share / (1 + share) / CLASSES[task]


def chance_macro_f1(task: str = "tweets3") -> float:
    """The no-skill level of macro-F1 in percent: ``100 / K`` for ``task``'s K classes, what a label-blind
    guess in the test split's own class shares p scores in expectation (class k's F1 is then p_k). No
    label-blind rule does better in expectation: class k's expected F1 at a guess rate q_k,
    2 p_k q_k / (p_k + q_k), is concave in q and the mean over classes peaks at q = p. Always answering
    the majority class (:func:`majority_macro_f1`) scores less: macro-F1 rewards a guess spread over the
    classes, so a point must beat ``100 / K``, not the majority's, to show it learnt something."""
    if task not in CLASSES:
        raise KeyError(f"no class count for task {task!r}; known: {', '.join(CLASSES)}")
    return 100 / CLASSES[task]


def no_skill(headline: str, task: str) -> float:
    """The no-skill level in percent of a classifier's ``headline`` metric (``accuracy``: the majority
    class's; ``macro_f1``: :func:`chance_macro_f1`) on ``task``."""
    levels = {"accuracy": majority_accuracy, "macro_f1": chance_macro_f1}
    if headline not in levels:
        raise KeyError(f"no no-skill level for metric {headline!r}; known: {', '.join(levels)}")
    return levels[headline](task)


def no_skill_quality(metric: str) -> float | None:
    """The no-skill level of a quality metric as the atlas records it (``"test accuracy (%)"``: the
    binary encoder task's majority accuracy; ``"test macro-F1 (%)"``: the three-class task's chance
    macro-F1); None for a metric without one (perplexity)."""
    return no_skill("accuracy", ENCODER_TASK) if "accuracy" in metric else \
        no_skill("macro_f1", "tweets3") if "macro-F1" in metric else None


# task -> (a committed results table relative to the repository, the model whose dense row records the test
# split's labels in its ``test_labels`` column): the labels a table without its own pairs its cells against
# (``tests/test_tasks.py`` checks them against the data)
TEST_LABELS_SOURCE = {"tweets3": ("papermill_runs/structured_pruning_encoder/results.csv", "minilm-l6-tweets3")}


def _dense_row(task: str, column: str, root: Path) -> str:
    """``column`` of the committed dense row of ``task``'s task model (:data:`TEST_LABELS_SOURCE`)."""
    if task not in TEST_LABELS_SOURCE:
        raise KeyError(f"no committed dense row for task {task!r}; known: {', '.join(TEST_LABELS_SOURCE)}")
    table, model = TEST_LABELS_SOURCE[task]
    path = Path(root) / table
    if not path.is_file():
        raise FileNotFoundError(f"missing {table}, which records {task}'s test labels: run its sweep (make run)")
    df = pd.read_csv(path)
    rows = df[(df.model_name == model) & (df.method == "dense") & df[column].notna()] \
        if {"model_name", "method", column} <= set(df) else df.iloc[:0]
    if rows.empty:
        raise ValueError(f"{table} has no dense row of {model} with {column}")
    return rows[column].iloc[0]


def committed_test_labels(task: str, root: Path = REPO_ROOT) -> np.ndarray:
    """The test split's labels of ``task`` (split seed 0) as a committed table records them: ``(examples,)``
    int64, for paired intervals between cells of tables that keep only predictions (the atlas)."""
    return decode_predictions(_dense_row(task, "test_labels", root))


def committed_dense_predictions(task: str, root: Path = REPO_ROOT) -> np.ndarray:
    """The uncompressed task model's predicted class for each test example of ``task``, as the committed
    dense row records them: ``(examples,)`` int64, the reference a table without a dense cell of its own
    (the offline table) pairs its cells against."""
    return decode_predictions(_dense_row(task, "test_predictions", root))
