from collections import Counter

import numpy as np
import pytest

from tcomp_utils import tasks


@pytest.fixture(scope="module")
def tweets():
    return tasks.load_task("tweets")


@pytest.mark.slow
def test_tweet_splits_are_fixed_disjoint_and_binary(tweets):
    sizes = {k: len(v) for k, v in tweets.splits.items()}
    assert sizes == {"train": 19_812, "validation": 1_000, "test": 2_000}
    texts = {k: set(v["text"]) for k, v in tweets.splits.items()}
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["validation"])
    assert set(tweets["test"]["label"]) == {0, 1}
    again = tasks.load_task("tweets")
    assert again["test"]["text"][:50] == tweets["test"]["text"][:50]
    other = tasks.load_task("tweets", seed=1)
    assert other["test"]["text"][:50] != tweets["test"]["text"][:50]


@pytest.mark.slow
def test_the_three_class_tweets_have_their_counts_disjoint_splits_and_the_binary_task_is_unchanged(tweets):
    three = tasks.load_task("tweets3")
    assert three.spec.num_labels == 3 and three.spec.metrics[0] == "macro_f1"
    assert {k: len(v) for k, v in three.splits.items()} == {"train": 34_197, "validation": 1_000, "test": 2_000}
    counts = {k: Counter(v["label"]) for k, v in three.splits.items()}
    assert sum(counts.values(), Counter()) == {0: 15_955, 1: 14_431, 2: 6_811}  # negative, neutral, positive
    assert counts["test"] == {0: 826, 1: 812, 2: 362}  # majority 41.3 %
    assert three["test"].features["label"].names == ["negative", "neutral", "positive"]
    texts = {k: set(v["text"]) for k, v in three.splits.items()}
    assert sum(len(t) for t in texts.values()) == 37_197  # no text twice, within or across splits
    assert all(t == t.strip() for t in three["test"]["text"][:200])
    assert tasks.load_task("tweets3", seed=1)["test"]["text"][:50] != three["test"]["text"][:50]
    # the binary task keeps its tweets and its labels: the committed tables were computed on it
    assert {k: len(v) for k, v in tweets.splits.items()} == {"train": 19_812, "validation": 1_000, "test": 2_000}
    binary = dict(zip(tweets["test"]["text"], tweets["test"]["label"]))
    shared = [(binary[t], lab) for t, lab in zip(three["train"]["text"], three["train"]["label"]) if t in binary]
    assert shared and all(lab == 2 * b for b, lab in shared)  # negative 0 -> 0, positive 1 -> 2


@pytest.mark.slow
@pytest.mark.parametrize("task", ["tweets", "tweets3"])
def test_the_figures_majority_counts_are_those_of_the_test_splits(task):
    from tcomp_utils import metrics
    from tcomp_utils.majority import CLASSES, TEST_MAJORITY, chance_macro_f1, majority_macro_f1
    # a list, not the datasets column: sklearn reads a column element by element (0.5 s a score)
    labels = list(tasks.load_task(task)["test"]["label"])
    assert TEST_MAJORITY[task] == (max(Counter(labels).values()), len(labels))
    assert CLASSES[task] == len(set(labels))
    # the macro-F1 of always predicting the majority class, as sklearn scores it
    top = Counter(labels).most_common(1)[0][0]
    assert majority_macro_f1(task) == pytest.approx(100 * metrics.macro_f1(labels, [top] * len(labels)))
    # a guess in the class shares (the labels shuffled) scores 1/K macro-F1 on average, above the majority's
    rng = np.random.default_rng(0)
    guessed = np.mean([metrics.macro_f1(labels, rng.permutation(labels)) for _ in range(200)])
    assert 100 * guessed == pytest.approx(chance_macro_f1(task), abs=0.5)
    assert chance_macro_f1(task) > majority_macro_f1(task)


@pytest.mark.slow
def test_the_committed_test_labels_are_the_test_split():
    from tcomp_utils.majority import TEST_LABELS_SOURCE, committed_test_labels
    for task in TEST_LABELS_SOURCE:
        assert committed_test_labels(task).tolist() == tasks.load_task(task)["test"]["label"]


def test_the_committed_dense_predictions_score_the_task_model(tmp_path):
    import pandas as pd
    from tcomp_utils import metrics
    from tcomp_utils.majority import TEST_LABELS_SOURCE, committed_dense_predictions, committed_test_labels
    from tcomp_utils.files import REPO_ROOT
    table, model = TEST_LABELS_SOURCE["tweets3"]
    dense = pd.read_csv(REPO_ROOT / table)
    dense = dense[(dense.model_name == model) & (dense.method == "dense")].iloc[0]
    labels, preds = committed_test_labels("tweets3"), committed_dense_predictions("tweets3")
    assert preds.shape == labels.shape == (2000,)
    assert metrics.macro_f1(labels, preds) == pytest.approx(dense.test_macro_f1, abs=1e-6)
    with pytest.raises(KeyError, match="tweets9.*known: tweets3"):
        committed_dense_predictions("tweets9")
    with pytest.raises(FileNotFoundError, match="run its sweep"):
        committed_dense_predictions("tweets3", root=tmp_path)


@pytest.mark.slow
def test_austen_holds_out_whole_novels():
    t = tasks.load_task("austen")
    assert t["test"]["book"] == ["prideprejudice"] and t["validation"]["book"] == ["persuasion"]
    assert len(t["calibration"]) == 4
    assert "It is a truth universally acknowledged" in t.text("test")[:2000]


def test_jargon_splits_are_contiguous_disjoint_alphabetical_blocks():
    import gzip
    import json
    from tcomp_utils import assets
    with gzip.open(assets.asset_path("jargon"), "rt", encoding="utf-8") as fh:
        entries = json.load(fh)
    t = tasks.load_task("jargon")
    assert t.spec.kind == "language-modeling" and t.spec.metrics == ("perplexity",)
    names = {k: list(v["entry"]) for k, v in t.splits.items()}
    assert list(names) == ["calibration", "validation", "test"] and all(names.values())
    assert names["calibration"] + names["validation"] + names["test"] == list(entries)  # disjoint, in order, all
    n = len(entries)
    assert [len(v) for v in names.values()] == [n * 70 // 100, n * 80 // 100 - n * 70 // 100, n - n * 80 // 100]
    assert t["calibration"].column_names == ["entry", "text"]
    row = t["calibration"][names["calibration"].index("hacker")]
    assert row["text"].startswith("hacker\n") and "enjoys exploring the details of programmable systems" in row["text"]
    ware = t["calibration"][names["calibration"].index("-ware")]["text"]  # {annoyware}, {careware}, ...
    assert "see annoyware, careware, crippleware" in ware and "{" not in ware  # braces gone, words kept
    assert t["test"]["entry"][-1] == "zorkmid" and t.text("test").endswith(t["test"]["text"][-1])
    assert all(text.startswith(entry + "\n") for entry, text in zip(names["test"], t["test"]["text"]))

@pytest.mark.slow
def test_de_en_pairs():
    t = tasks.load_task("de-en")
    assert {k: len(v) for k, v in t.splits.items()} == {"train": 11_303, "validation": 500, "test": 1_000}
    row = t["test"][0]
    assert row["de"][-1] in ".!?" and row["en"][-1] in ".!?"


def test_hub_tasks_are_declared_with_metrics():
    for name, metric in [("glue-stsb", "spearman"), ("glue-mrpc", "f1"), ("wikitext2", "perplexity"),
                         ("multi30k", "bleu"), ("iwslt2017-en-de", "bleu"), ("glue-mnli", "accuracy")]:
        spec = tasks.get_task_spec(name)
        assert metric in spec.metrics and spec.hub is not None


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(tasks.UnknownTaskError, match=r"unknown task 'sst-2'.*embedded tasks: tweets, tweets3, austen, jargon, de-en"):
        tasks.load_task("sst-2")
