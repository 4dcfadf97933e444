"""The Pareto front on hand-made points whose front is known."""
import numpy as np
import pandas as pd
import pytest

from tcomp_utils.pareto import pareto_front, pareto_mask

# bytes (lower is better) and accuracy (higher is better): a, c, e are the front;
# b is dominated by a (more bytes, lower accuracy), d by c, f by e (tie on bytes, lower accuracy)
POINTS = pd.DataFrame({"name": list("abcdef"), "bytes": [1.0, 2.0, 3.0, 4.0, 5.0, 5.0],
                       "accuracy": [0.5, 0.4, 0.8, 0.7, 0.9, 0.85]})


def test_front_of_a_hand_made_set():
    assert POINTS.name[pareto_mask(POINTS, ["bytes"], ["accuracy"])].tolist() == ["a", "c", "e"]
    assert pareto_front(POINTS, ["bytes"], ["accuracy"]).name.tolist() == ["a", "c", "e"]


def test_three_axes_keep_points_that_win_on_the_third():
    points = POINTS.assign(macs=[9.0, 1.0, 9.0, 9.0, 9.0, 9.0])  # b is now the cheapest in MACs
    assert pareto_front(points, ["bytes", "macs"], ["accuracy"]).name.tolist() == ["a", "b", "c", "e"]


def test_ties_are_all_kept_and_missing_values_never_count():
    points = pd.concat([POINTS, pd.DataFrame({"name": ["a2", "nan"], "bytes": [1.0, 0.1],
                                              "accuracy": [0.5, np.nan]})], ignore_index=True)
    on = pareto_mask(points, ["bytes"], ["accuracy"])
    assert points.name[on].tolist() == ["a", "c", "e", "a2"]  # identical points both stay; the NaN row neither
    assert on.index.equals(points.index)


def test_direction_matters():
    # minimizing accuracy too (a nonsense question) leaves only the points best on bytes or worst on accuracy
    assert pareto_front(POINTS, ["bytes", "accuracy"]).name.tolist() == ["a", "b"]


@pytest.mark.parametrize("minimize, maximize, error, message", [
    ([], [], ValueError, "at least one column"),
    (["size"], ["accuracy"], KeyError, r"unknown column\(s\) \['size'\]"),
    (["bytes"], ["bytes"], ValueError, r"\['bytes'\] cannot be both"),
])
def test_bad_axes_are_clear_errors(minimize, maximize, error, message):
    with pytest.raises(error, match=message):
        pareto_mask(POINTS, minimize, maximize)
