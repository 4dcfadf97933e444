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
def test_austen_holds_out_whole_novels():
    t = tasks.load_task("austen")
    assert t["test"]["book"] == ["prideprejudice"] and t["validation"]["book"] == ["persuasion"]
    assert len(t["calibration"]) == 4
    assert "It is a truth universally acknowledged" in t.text("test")[:2000]


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
    with pytest.raises(tasks.UnknownTaskError, match=r"unknown task 'sst-2'.*embedded tasks: tweets, austen, de-en"):
        tasks.load_task("sst-2")
