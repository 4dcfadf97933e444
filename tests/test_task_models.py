import dataclasses

import pytest
import torch

from tcomp_utils import task_models


def test_recipe_key_changes_with_the_recipe():
    r = task_models.Recipe()
    assert r.key() == task_models.Recipe().key()
    assert dataclasses.replace(r, lr=2e-5).key() != r.key()
    assert dataclasses.replace(r, train_examples=100).key() != r.key()


@pytest.mark.slow
def test_cached_model_is_reused_and_changed_recipe_retrains(tmp_path, monkeypatch):
    import torch

    from tcomp_utils import timing

    monkeypatch.setattr(task_models, "task_model_dir", lambda: tmp_path / "task_models")
    tiny = task_models.Recipe(train_examples=32, eval_examples=32, batch_size=16)
    threads, real_train = [], task_models.train
    monkeypatch.setattr(task_models, "train", lambda *a, **k: threads.append(torch.get_num_threads()) or real_train(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's count: training runs on the pinned one (the same model everywhere)
    try:
        model, tok, info = task_models.get_task_model("tiny", tiny, progress=False)
        assert threads == [timing.TRAINING_THREADS] and torch.get_num_threads() == 2  # and the caller's is restored
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="at least 1, got 0"):
        with timing.torch_threads(0):
            pass
    assert info.metrics["steps"] == 2 and info.metrics["test_examples"] == 32
    assert (info.path / "model.safetensors").is_file() and info.recipe["train_examples"] == 32
    from tcomp_utils import metrics, tasks
    task = tasks.load_task("tweets", seed=tiny.split_seed)  # the recorded metric is the saved model's own
    again = metrics.evaluate_classifier(model, tok, task["test"].select(range(32)), task.spec.metrics,
                                        task.spec.text_fields, task.spec.label_field, max_length=tiny.max_length)
    assert again["accuracy"] == info.metrics["test_accuracy"] and again["f1"] == info.metrics["test_f1"]

    def no_training(*a, **k):
        raise AssertionError("a cached recipe must not retrain")

    monkeypatch.setattr(task_models, "train", no_training)
    _, _, again = task_models.get_task_model("tiny", tiny, progress=False)
    assert again.path == info.path and again.metrics == info.metrics
    with pytest.raises(AssertionError, match="must not retrain"):
        task_models.get_task_model("tiny", dataclasses.replace(tiny, lr=3e-5), progress=False)
    assert sorted(p.name for p in (tmp_path / "task_models").iterdir()) == [info.path.name]  # nothing half-written


def test_unknown_task_model_name():
    with pytest.raises(KeyError, match="unknown task model 'bert-sst2'"):
        task_models.get_task_model("bert-sst2")


def test_fine_tune_runs_the_given_number_of_steps_across_epochs_and_changes_weights():
    import datasets
    import torch
    from tcomp_utils import tasks
    from conftest import tiny_bert

    class CharTokenizer:  # enough of a tokenizer for a tiny model: one id per character
        def __call__(self, texts, pair=None, padding=True, truncation=True, max_length=16, return_tensors="pt"):
            ids = [[3 + ord(c) % 90 for c in t[:max_length]] or [1] for t in texts]
            n = max(map(len, ids))
            from transformers import BatchEncoding
            return BatchEncoding({"input_ids": torch.tensor([i + [0] * (n - len(i)) for i in ids]),
                                  "attention_mask": torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])})

    spec = tasks.get_task_spec("tweets")
    data = datasets.Dataset.from_dict({"text": ["good day", "bad day", "great", "awful"] * 3, "label": [1, 0, 1, 0] * 3})
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = task_models.fine_tune(model, CharTokenizer(), data, spec, steps=5, batch_size=4, progress=False)
    assert result["steps"] == 5 and result["train_examples"] == 12  # 3 batches per epoch: the 2nd epoch is entered
    assert not model.training
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    batches = task_models.calibration_batches(CharTokenizer(), data, spec, n=10, batch_size=4)
    assert [len(b["labels"]) for b in batches] == [4, 4, 2] and "input_ids" in batches[0]
    with pytest.raises(ValueError, match="at least one step"):
        task_models.fine_tune(model, CharTokenizer(), data, spec, steps=0, progress=False)


def test_lm_segments_are_seeded_windows_of_the_text():
    from tcomp_utils.task_models import lm_segments

    class Tok:  # one token per character
        def __call__(self, text, return_tensors=None):
            import types
            return types.SimpleNamespace(input_ids=torch.tensor([[ord(c) for c in text]]))

    text = "".join(chr(97 + i % 26) for i in range(500))
    batches = lm_segments(Tok(), text, n=6, length=20, batch_size=4, seed=1)
    assert [b["input_ids"].shape for b in batches] == [(4, 20), (2, 20)]
    ids = torch.tensor([ord(c) for c in text])
    for seg in torch.cat([b["input_ids"] for b in batches]):
        start = (seg[0] - 97).item()
        assert any(torch.equal(ids[s:s + 20], seg) for s in range(start, 480, 26))
    assert torch.equal(lm_segments(Tok(), text, n=6, length=20, seed=1)[0]["input_ids"], batches[0]["input_ids"])
    with pytest.raises(ValueError, match="too few for segments of 600"):
        lm_segments(Tok(), text, length=600)



class _CodeTok:  # one token per character, its code point minus 0x100
    def __call__(self, text, return_tensors=None):
        import types
        return types.SimpleNamespace(input_ids=torch.tensor([[ord(c) - 0x100 for c in text]]))


def _source_text(alphabet: str, n: int, seed: int) -> str:
    import random
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(n))


def test_lm_segments_of_a_plain_string_are_unchanged():
    """Notebooks calibrate on a plain string: its draw must stay what it was before sources."""
    from tcomp_utils.task_models import lm_segments
    text = "".join(chr(0x100 + i) for i in range(1000))  # token i at offset i: a segment names its start
    starts = [s[0].item() for b in lm_segments(_CodeTok(), text, n=6, length=20, batch_size=4, seed=1)
              for s in b["input_ids"]]
    assert starts == [805, 759, 284, 248, 283, 713]  # recorded with the code before this change
    g = torch.Generator().manual_seed(0)  # the old draw, re-implemented
    old = torch.randint(0, 1000 - 50, (5,), generator=g).tolist()
    assert [s[0].item() for b in lm_segments(_CodeTok(), text, n=5, length=50, seed=0) for s in b["input_ids"]] == old


def test_lm_segments_draw_equal_shares_from_several_sources():
    from tcomp_utils.task_models import lm_segments
    texts = {"latin": _source_text("abcdefghijklmnopqrstuvwxyz", 400, 1),  # disjoint token sets
             "greek": _source_text("αβγδεζηθικλμνξοπρστυφχψω", 300, 2),
             "cyrillic": _source_text("абвгдежзийклмнопрстуфхцчшщ", 500, 3)}
    batches = lm_segments(_CodeTok(), texts, n=8, length=16, batch_size=3, seed=4)
    assert [tuple(b["input_ids"].shape) for b in batches] == [(3, 16), (3, 16), (2, 16)]

    def source_of(seg):
        window = "".join(chr(0x100 + t) for t in seg.tolist())
        found = [name for name, t in texts.items() if window in t]
        assert len(found) == 1, f"segment {window!r} found in {found}"
        return found[0]

    order = [source_of(seg) for b in batches for seg in b["input_ids"]]
    assert sorted(order) == sorted(["latin"] * 3 + ["greek"] * 3 + ["cyrillic"] * 2)  # 8 = 3 + 3 + 2
    assert order != sorted(order, key=list(texts).index)  # the batches mix the sources
    again = lm_segments(_CodeTok(), texts, n=8, length=16, batch_size=3, seed=4)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(again, batches))
    other = lm_segments(_CodeTok(), texts, n=8, length=16, batch_size=3, seed=5)
    assert not torch.equal(other[0]["input_ids"], batches[0]["input_ids"])
    as_list = lm_segments(_CodeTok(), list(texts.values()), n=8, length=16, batch_size=3, seed=4)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(as_list, batches))
    one = lm_segments(_CodeTok(), {"latin": texts["latin"]}, n=5, length=16, seed=4)
    plain = lm_segments(_CodeTok(), texts["latin"], n=5, length=16, seed=4)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(one, plain))


def test_lm_segments_sources_errors():
    from tcomp_utils.task_models import lm_segments
    with pytest.raises(ValueError, match=r"no source to draw segments from: got an empty dict"):
        lm_segments(_CodeTok(), {}, n=4, length=16)
    with pytest.raises(ValueError, match=r"empty list"):
        lm_segments(_CodeTok(), [], n=4, length=16)
    long = _source_text("abc", 100, 0)
    with pytest.raises(ValueError, match=r"source 'short' has 10 tokens, too few for segments of 16"):
        lm_segments(_CodeTok(), {"long": long, "short": long[:10]}, n=4, length=16)
    with pytest.raises(ValueError, match=r"source 'text 1' has 16 tokens, too few for segments of 16"):
        lm_segments(_CodeTok(), [long, long[:16]], n=4, length=16)
    with pytest.raises(TypeError, match=r"source 'ids' is a list, not a text"):
        lm_segments(_CodeTok(), {"long": long, "ids": [1, 2, 3]}, n=4, length=16)

@pytest.mark.slow
@pytest.mark.parametrize("name, task, skill", [("minilm-l6-tweets-smoke", "tweets", "test_f1"),
                                               ("minilm-l6-tweets3-smoke", "tweets3", "test_macro_f1")])
def test_the_smoke_task_model_beats_the_majority_class(name, task, skill):
    """Smoke runs compare compressed models with this one: it must have learnt something to lose."""
    from collections import Counter

    from tcomp_utils import tasks
    _, _, info = task_models.get_task_model(name, progress=False)
    test = tasks.load_task(task, seed=info.recipe["split_seed"])["test"]
    labels = test.select(range(info.metrics["test_examples"]))["label"]
    majority = max(Counter(labels).values()) / len(labels)
    assert info.metrics["test_accuracy"] > majority + 0.08 and info.metrics[skill] > 0.6


@pytest.mark.slow
def test_predictions_come_back_in_input_order_from_batches_sorted_by_token_count():
    """Batches are cut from the texts sorted by tokens (not characters); the logits must still be
    each text's own, as if it were scored alone."""
    from tcomp_utils import metrics, tasks
    model, tok, info = task_models.get_task_model("minilm-l6-tweets-smoke", progress=False)
    texts = tasks.load_task("tweets", seed=info.recipe["split_seed"])["test"]["text"][:40]
    order = metrics.length_order(tok, texts, max_length=16)
    counts = [min(len(tok(t)["input_ids"]), 16) for t in texts]
    assert sorted(order) == list(range(40)) and [counts[i] for i in order] == sorted(counts)
    batched = metrics.predict_classifier(model, tok, texts, batch_size=8, max_length=16)
    alone = metrics.predict_classifier(model, tok, texts, batch_size=1, max_length=16)
    assert batched.shape == (40, model.config.num_labels)
    assert abs(batched - alone).max() < 1e-4



def test_token_ids_are_cached_on_disk_by_tokenizer_and_text(tmp_path, monkeypatch):
    import types

    monkeypatch.setenv("TCOMP_CACHE", str(tmp_path))

    class Tok:  # a fast tokenizer's surface: a one-string definition and a call that is counted
        def __init__(self, definition):
            self.backend_tokenizer, self.calls = types.SimpleNamespace(to_str=lambda: definition), 0

        def __call__(self, text, return_tensors=None):
            self.calls += 1
            return types.SimpleNamespace(input_ids=torch.tensor([[ord(c) for c in text]]))

    tok, text = Tok("v1"), "calibration text " * 10
    first = task_models.token_ids(tok, text)
    again = task_models.token_ids(tok, text)
    assert torch.equal(first, again) and again.dtype == torch.int64 and tok.calls == 1  # read back from disk
    assert torch.equal(first, torch.tensor([ord(c) for c in text]))
    other = Tok("v2")  # another vocabulary: tokenized afresh, its own file
    task_models.token_ids(other, text)
    task_models.token_ids(tok, text + "!")  # another text: tokenized afresh
    assert other.calls == 1 and tok.calls == 2
    assert sorted(p.suffix for p in (tmp_path / "token_ids").iterdir()) == [".npy"] * 3  # no temporary left
    slow = Tok("v1")
    del slow.backend_tokenizer  # no definition to key on: tokenized every time, nothing written
    task_models.token_ids(slow, text), task_models.token_ids(slow, text)
    assert slow.calls == 2 and len(list((tmp_path / "token_ids").iterdir())) == 3


def _tiny_training(recipe, out_dir, progress=True):
    """Stands in for fine-tuning: a tiny BERT classifier and a tokenizer saved as train() saves them."""
    from conftest import tiny_bert
    from tcomp_utils import translation

    tiny_bert().save_pretrained(out_dir, safe_serialization=True)
    translation.train_tokenizer(["a good day", "a bad day"], 40, "bpe").save_pretrained(out_dir)
    return {"steps": 1}


def test_a_damaged_cached_task_model_is_refused_with_how_to_retrain_it(tmp_path, monkeypatch, capsys):
    from tcomp_utils import files

    monkeypatch.setattr(task_models, "task_model_dir", lambda: tmp_path)
    monkeypatch.setattr(task_models, "train", _tiny_training)
    _, _, info = task_models.get_task_model("minilm-l6-tweets-smoke", progress=False)
    weights = info.path / "model.safetensors"

    def no_training(*a, **k):
        raise AssertionError("a cached model must not be retrained")

    monkeypatch.setattr(task_models, "train", no_training)
    (info.path / files.CHECKSUMS).unlink()  # a model trained before checksums were recorded
    task_models.get_task_model("minilm-l6-tweets-smoke", progress=False)
    assert "recorded them now" in capsys.readouterr().err and (info.path / files.CHECKSUMS).is_file()
    intact = weights.read_bytes()
    for damaged in (intact[:-1] + bytes([intact[-1] ^ 1]), intact[: len(intact) // 2]):  # a flipped bit, truncated
        weights.write_bytes(damaged)
        with pytest.raises(files.CacheCorruptedError, match=rf"{weights} does not match the SHA-256 recorded .*; "
                                                            r"retrain it with tcomp_utils\.task_models\.get_task_model"
                                                            r"\('minilm-l6-tweets-smoke', retrain=True\)"):
            task_models.get_task_model("minilm-l6-tweets-smoke", progress=False)
    assert weights.read_bytes() == damaged  # nothing changed on disk
    monkeypatch.setattr(task_models, "train", _tiny_training)
    task_models.get_task_model("minilm-l6-tweets-smoke", retrain=True, progress=False)  # the fix the error names


_TERMINATED_TRAINING = """
import sys, time
from pathlib import Path
from tcomp_utils import task_models

def train(recipe, out_dir, progress=True):
    (out_dir / "model.safetensors").write_bytes(b"half")
    print("building", flush=True)
    time.sleep(120)

task_models.task_model_dir = lambda: Path(sys.argv[1])
task_models.train = train
task_models.get_task_model("minilm-l6-tweets-smoke", progress=False)
"""


def test_sigterm_during_task_model_training_leaves_no_build_folder(tmp_path):
    from test_files import terminated_while_building

    assert terminated_while_building(_TERMINATED_TRAINING, str(tmp_path)) == 143
    assert list(tmp_path.iterdir()) == []
