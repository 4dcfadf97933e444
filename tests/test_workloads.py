"""Workloads: the registry, its errors, the embedded entries' smoke sizes, and a workload defined
outside the package (a tiny random BERT on synthetic data) run through a notebook."""
from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tcomp_utils import metrics, workloads

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# the whole entry of a new workload: nothing in the package changes (written to a module so that a
# notebook's kernel, another process, can import it through $TCOMP_WORKLOADS)
TOY = textwrap.dedent(f"""
    import sys

    import torch

    sys.path.insert(0, {str(TESTS)!r})
    from conftest import tiny_bert
    from tcomp_utils import workloads


    @workloads.register("toy-bert")
    class ToyBert(workloads.Workload):
        '''A tiny random BERT on synthetic token ids: label = parity of the first token.'''

        kind = "classifier"
        metrics = ("toy_accuracy", "toy_examples")
        QUALITY = ("toy_accuracy", 100.0, "toy accuracy (%)")
        PROFILES = {{p: workloads.Profile("tiny-bert", calibration=n, test=t, timing_batch=4, timing_runs=2)
                     for p, n, t in (("smoke", 16, 32), ("default", 32, 64), ("paper", 64, 128))}}

        def load(self):
            return tiny_bert(), None

        def _data(self, n, seed):
            ids = torch.randint(1, 100, (n, 12), generator=torch.Generator().manual_seed(seed))
            return ids, ids[:, 0] % 2

        def calibration(self, n=None, seed=0, labels=False):
            ids, y = self._data(self._n(n), 1000 + seed)
            return [{{"input_ids": ids[i:i + 8], **({{"labels": y[i:i + 8]}} if labels else {{}})}}
                    for i in range(0, len(ids), 8)]

        @torch.no_grad()
        def scores(self, model, wanted):
            ids, y = self._data(self.profile.test, 0)
            preds = model(input_ids=ids).logits.argmax(-1)
            return {{"toy_accuracy": (preds == y).float().mean().item(), "toy_examples": len(y)}}

        def timing_inputs(self, batch=None):
            return {{"input_ids": self._data(batch or self.profile.timing_batch, 0)[0]}}
""")


@pytest.fixture
def registry():
    """The registry as it was, restored after the test (a test's entries do not leak into others)."""
    saved = dict(workloads._FACTORIES)
    yield workloads._FACTORIES
    workloads._FACTORIES.clear()
    workloads._FACTORIES.update(saved)


@pytest.fixture
def toy_module(tmp_path, monkeypatch, registry):
    """The toy entry as an importable plug-in module named by $TCOMP_WORKLOADS (and on PYTHONPATH)."""
    name = f"toy_workload_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(workloads.PLUGIN_ENV, name)
    monkeypatch.setattr(workloads, "_PLUGINS_LOADED", set())
    yield name
    sys.modules.pop(name, None)


def test_the_embedded_entries_are_registered_and_name_their_metrics_without_loading():
    assert {"minilm-l6-tweets", "smollm2-135m"} <= set(workloads.names())
    dec = workloads.get("smollm2-135m", "smoke")
    assert dec.kind == "causal-lm" and dec.name == "smollm2-135m" and dec._loaded is None
    assert dec.metrics == ("perplexity_novel", "eval_tokens_novel", "perplexity_jargon", "eval_tokens_jargon")
    assert (dec.profile.calibration, dec.profile.length, dec.profile.eval_tokens) == (4, 128, 512)
    assert workloads.get("smollm2-135m", "default").profile.calibration == 32
    enc = workloads.get("minilm-l6-tweets", "smoke")
    assert enc.kind == "classifier" and enc._loaded is None
    assert enc.metrics == ("test_accuracy", "test_accuracy_lo", "test_accuracy_hi", "test_f1", "test_mcc",
                           "test_macro_f1", "test_majority_share", "test_examples")
    assert (enc.profile.model, enc.profile.calibration, enc.profile.test) == ("minilm-l6-tweets-smoke", 64, 128)
    assert workloads.get("minilm-l6-tweets", "paper").metrics[3] == "test_macro_f1"  # SST-2: accuracy only
    assert enc.quality({"test_accuracy": 0.9}) == (90.0, "test accuracy (%)")
    assert dec.quality({"perplexity_novel": 25.0}) == (25.0, "perplexity (novel)")


def test_the_three_class_entry_heads_with_macro_f1_and_its_interval():
    wl = workloads.get("minilm-l6-tweets3", "smoke")
    assert wl.kind == "classifier" and wl._loaded is None
    assert wl.metrics == ("test_macro_f1", "test_macro_f1_lo", "test_macro_f1_hi", "test_accuracy", "test_accuracy_lo",
                          "test_accuracy_hi", "test_mcc", "test_majority_share", "test_examples")
    assert wl.profile.model == "minilm-l6-tweets3-smoke" and workloads.get("minilm-l6-tweets3").profile.model == \
        "minilm-l6-tweets3"
    assert wl.quality({"test_macro_f1": 0.61}) == (61.0, "test macro-F1 (%)")
    with pytest.raises(workloads.UnknownWorkloadError, match=r"'test_f1'.*allowed: test_macro_f1.*test_predictions"):
        wl.evaluate(torch.nn.Identity(), ["test_f1"])


@pytest.mark.slow
def test_the_three_class_smoke_model_is_scored_with_its_predictions_recorded():
    wl = workloads.get("minilm-l6-tweets3", "smoke")
    scores = wl.evaluate(wl.model, [*wl.metrics, "test_predictions"])
    preds = metrics.decode_predictions(scores["test_predictions"])
    labels = list(wl.test_set()[wl.task.spec.label_field])
    assert len(preds) == scores["test_examples"] == 128 and set(preds) <= {0, 1, 2}
    assert scores["test_macro_f1"] == pytest.approx(metrics.macro_f1(labels, preds))
    assert scores["test_macro_f1_lo"] < scores["test_macro_f1"] < scores["test_macro_f1_hi"]
    assert scores["test_accuracy_lo"] < scores["test_accuracy"] < scores["test_accuracy_hi"]
    # the smoke model has learnt something: above the majority class's macro-F1 (one class of three)
    assert scores["test_macro_f1"] > 0.35 and scores["test_majority_share"] < 0.8


def test_unknown_names_and_profiles_raise_naming_the_allowed_ones():
    with pytest.raises(workloads.UnknownWorkloadError, match=r"unknown workload 'gpt-9'.*minilm-l6-tweets.*smollm2-135m"):
        workloads.get("gpt-9", "smoke")
    with pytest.raises(workloads.UnknownWorkloadError, match=r"unknown profile 'huge'.*smoke, default, paper"):
        workloads.get("smollm2-135m", "huge")


def test_a_registered_entry_is_gettable_and_a_clash_is_refused(registry):
    @workloads.register("unit-toy")
    class UnitToy(workloads.Workload):
        metrics = ("score",)
        PROFILES = {"smoke": workloads.Profile("none", calibration=2)}

        def load(self):
            return torch.nn.Linear(2, 2), None

        def scores(self, model, wanted):
            return {"score": 1.0}

    assert "unit-toy" in workloads.names()
    wl = workloads.get("unit-toy", "smoke")
    assert isinstance(wl, UnitToy) and wl.name == "unit-toy" and isinstance(wl.model, torch.nn.Linear)
    assert wl.model is wl.model  # loaded once
    assert wl.evaluate(wl.model) == {"score": 1.0}
    with pytest.raises(workloads.UnknownWorkloadError, match=r"unknown metric\(s\) \['loss'\].*allowed: score"):
        wl.evaluate(wl.model, ["loss"])
    with pytest.raises(workloads.UnknownWorkloadError, match=r"unknown profile 'default' for workload UnitToy.*smoke"):
        workloads.get("unit-toy", "default")
    with pytest.raises(ValueError, match="already registered"):
        workloads.register("unit-toy", lambda profile: None)
    workloads.register("unit-toy", lambda profile: UnitToy(profile), replace=True)
    assert workloads.get("unit-toy", "smoke").name == "unit-toy"


def test_a_plugin_module_named_in_the_environment_registers_its_workload(toy_module):
    wl = workloads.get("toy-bert", "smoke")
    assert toy_module in sys.modules and wl.metrics == ("toy_accuracy", "toy_examples")
    batches = wl.calibration()
    assert [b["input_ids"].shape for b in batches] == [(8, 12), (8, 12)]
    assert torch.equal(batches[0]["input_ids"], wl.calibration()[0]["input_ids"])  # seeded
    assert not torch.equal(batches[0]["input_ids"], wl.calibration(seed=1)[0]["input_ids"])
    scores = wl.evaluate(wl.model)
    assert list(scores) == ["toy_accuracy", "toy_examples"] and scores["toy_examples"] == 32
    assert wl.evaluate(wl.model, ["toy_examples"]) == {"toy_examples": 32}


def test_a_notebook_runs_on_a_workload_defined_outside_the_package(toy_module, tmp_path):
    """Notebook 16 on the toy entry: its kernel imports the plug-in and records the toy's metric."""
    from tcomp_utils import runner

    found = runner.run_notebook(REPO / "notebooks/16_atlas_point.ipynb", tmp_path / "out",
                                {"model_name": "toy-bert", "pipeline": "rtn"}, profile="smoke", progress=False)
    assert 0 <= found["toy_accuracy"] <= 1 and found["toy_examples"] == 32
    assert found["quality"] == pytest.approx(100 * found["toy_accuracy"])
    assert found["quality_metric"] == "toy accuracy (%)" and found["model"] == "toy-bert"
    assert found["bytes"] < found["dense_bytes"]  # RTN quantized the tiny model's linear layers


@pytest.mark.slow
def test_the_decoder_smoke_calibration_has_the_documented_count_and_shape():
    wl = workloads.get("smollm2-135m", "smoke")
    batches = wl.calibration()
    assert [tuple(b["input_ids"].shape) for b in batches] == [(4, 128)] and batches[0]["input_ids"].dtype == torch.int64
    assert [tuple(b["input_ids"].shape) for b in wl.calibration(6)] == [(4, 128), (2, 128)]
    labelled = wl.calibration(labels=True)
    assert torch.equal(labelled[0]["labels"], batches[0]["input_ids"])
    assert torch.equal(labelled[0]["input_ids"], batches[0]["input_ids"])  # same seed, same segments
    one = wl.calibration(source="jargon")[0]["input_ids"]
    assert not torch.equal(one, batches[0]["input_ids"])
    assert torch.equal(wl.calibration(source="austen")[0]["input_ids"], wl.calibration(source="novel")[0]["input_ids"])
    with pytest.raises(ValueError, match="unknown calibration source 'web'"):
        wl.calibration(source="web")
    assert tuple(wl.timing_inputs()["input_ids"].shape) == (1, 128)
    assert set(wl.test_ids()) == {"novel", "jargon"}


@pytest.mark.slow
def test_the_task_model_smoke_calibration_has_the_documented_count_and_shape():
    wl = workloads.get("minilm-l6-tweets", "smoke")
    batches = wl.calibration()
    assert [b["input_ids"].shape[0] for b in batches] == [32, 32] and "labels" not in batches[0]
    assert all(b["input_ids"].shape[1] <= 64 and b["attention_mask"].shape == b["input_ids"].shape for b in batches)
    labelled = wl.calibration(labels=True)
    assert labelled[0]["labels"].shape == (32,) and torch.equal(labelled[0]["input_ids"], batches[0]["input_ids"])
    assert not torch.equal(wl.calibration(seed=1)[0]["input_ids"], batches[0]["input_ids"])
    assert len(wl.test_set()) == 128 and len(wl.test_set("all")) == wl.info.metrics["test_examples"]
    assert wl.timing_inputs()["input_ids"].shape[0] == 8


def test_perplexity_windows_start_with_bos_unless_the_profile_follows_raw_windows(monkeypatch):
    """A tokenizer that adds BOS gets it before every window (Gemma needs it); a profile with
    window_bos=False (the OPT paper profile: GPTQ scores raw windows of the concatenated text) does not."""
    import dataclasses
    import types

    from conftest import tiny_llama

    from tcomp_utils import metrics

    class AddsBos:
        bos_token_id = 1

        def __call__(self, text, add_special_tokens=True):
            return types.SimpleNamespace(input_ids=([1] if add_special_tokens else []) + [5])

    seen = []
    real = metrics.perplexity
    monkeypatch.setattr(metrics, "perplexity", lambda *a, **kw: seen.append(kw["bos_token_id"]) or real(*a, **kw))
    assert workloads.get("smollm2-135m", "paper").profile.window_bos is False
    for window_bos in (True, False):
        wl = workloads.get("smollm2-135m", "smoke")
        wl.profile = dataclasses.replace(wl.profile, window_bos=window_bos, length=16, eval_tokens=48)
        monkeypatch.setattr(wl, "_model_and_tokenizer", lambda: (tiny_llama(), AddsBos()))
        wl._test_ids = {"novel": torch.arange(2, 66) % 90 + 2}
        scores = wl.scores(wl.model, {"perplexity_novel"})
        assert scores["eval_tokens_novel"] > 0
    assert seen == [1, None]
