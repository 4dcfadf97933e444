import dataclasses

import pytest

from tcomp_utils import task_models


def test_recipe_key_changes_with_the_recipe():
    r = task_models.Recipe()
    assert r.key() == task_models.Recipe().key()
    assert dataclasses.replace(r, lr=2e-5).key() != r.key()
    assert dataclasses.replace(r, train_examples=100).key() != r.key()


def test_cached_model_is_reused_and_changed_recipe_retrains(tmp_path, monkeypatch):
    monkeypatch.setattr(task_models, "task_model_dir", lambda: tmp_path / "task_models")
    tiny = task_models.Recipe(train_examples=32, eval_examples=32, batch_size=16)
    model, tok, info = task_models.get_task_model("tiny", tiny, progress=False)
    assert info.metrics["steps"] == 2 and info.metrics["test_examples"] == 32
    assert (info.path / "model.safetensors").is_file() and info.recipe["train_examples"] == 32
    assert 0.0 <= info.metrics["test_accuracy"] <= 1.0

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
