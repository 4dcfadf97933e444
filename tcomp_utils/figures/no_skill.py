"""The no-skill line of every accuracy or F1 axis: what a classifier that always predicts the
majority class of the test split scores, so a reader sees at once which points learnt nothing.

Figures draw from committed tables alone (no asset, no model), so the majority counts of the
embedded tasks' test splits (split seed 0) are stated here; ``tests/test_tasks.py`` checks them
against the data."""
from __future__ import annotations

NO_SKILL_GID = "no-skill"  # the gid of the line, by which a test finds it
LABEL = "majority class (no skill)"
# task -> (test examples in its majority class, test examples), split seed 0
TEST_MAJORITY = {"tweets": (1382, 2000), "tweets3": (826, 2000)}
ENCODER_TASK = "tweets"  # the task every committed encoder table was computed on (the binary tweets)


def majority_accuracy(task: str = ENCODER_TASK) -> float:
    """Accuracy in percent of always predicting the majority class of ``task``'s test split. (A
    smoke table, scored on the first 128 or 256 test examples, gets the whole split's line.)"""
    if task not in TEST_MAJORITY:
        raise KeyError(f"no majority count for task {task!r}; known: {', '.join(TEST_MAJORITY)}")
    hits, total = TEST_MAJORITY[task]
    return 100 * hits / total


def no_skill_line(ax, value: float, axis: str = "y", label: str = LABEL):
    """Draw the no-skill level ``value`` across ``ax`` (a horizontal line for a y axis, vertical for x)."""
    draw = ax.axhline if axis == "y" else ax.axvline
    line = draw(value, color="0.45", ls=":", lw=1.3, label=label, zorder=1)
    line.set_gid(NO_SKILL_GID)
    return line
