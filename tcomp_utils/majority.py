"""The no-skill level of the embedded classification tasks: the accuracy of always predicting the
majority class of the test split. Figures draw it as a line and the atlas keeps points at or below
it off its fronts. Stated here (split seed 0), because figures and the atlas read committed tables
alone (no asset); ``tests/test_tasks.py`` checks the counts against the data."""
from __future__ import annotations

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


def no_skill_quality(metric: str) -> float | None:
    """The no-skill level of a quality metric as the atlas records it (``"test accuracy (%)"``: the
    binary encoder task's majority accuracy; ``"test macro-F1 (%)"``: the three-class task's majority
    macro-F1); None for a metric without one (perplexity)."""
    return majority_accuracy() if "accuracy" in metric else majority_macro_f1("tweets3") if "macro-F1" in metric \
        else None
