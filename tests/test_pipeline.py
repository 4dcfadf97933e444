"""Pipelines of methods (the atlas's points) and the probe that counts and times a saved model."""
import pytest
import torch

from tcomp_utils import budget, pipeline, probe, serialize
from tcomp_utils.budget import BudgetError
from tcomp_utils.registry import ConfigError, UnknownMethodError
from conftest import tiny_bert, tiny_llama


def test_a_pipeline_reads_its_steps_in_order_with_literal_fields():
    steps = pipeline.parse("structured(criterion='id', mu=0.6) + gptq(bits=4, roles=['attention', 'embeddings']) + "
                           "pruning(roles='ffn')")
    assert [s.name for s in steps] == ["structured", "gptq", "pruning"]
    assert steps[0].config.mu == 0.6 and steps[1].config.roles == ["attention", "embeddings"]
    assert steps[2].fields == {"roles": "ffn"} and pipeline.parse("pruning")[0].fields == {}  # a bare name: defaults
    assert pipeline.family(steps) == "structured pruning → GPTQ → pruning"
    assert pipeline.parse("dense") == pipeline.parse("  ") == [] and pipeline.family([]) == "dense"
    assert steps[1].describe() == "gptq(bits=4, roles=['attention', 'embeddings'])"


@pytest.mark.parametrize("text, error, match", [
    ("svd(ratio=x)", pipeline.PipelineError, "ratio=x in 'svd\\(ratio=x\\)' is not a literal"),
    ("svd(2)", pipeline.PipelineError, "cannot read 'svd\\(2\\)' as a step"),
    ("svd(ratio=2) * rtn", pipeline.PipelineError, "cannot read"),
    ("svd(ratio=2) +", pipeline.PipelineError, "cannot parse"),
    ("sdv(ratio=2)", UnknownMethodError, "unknown method 'sdv' \\(did you mean 'svd'\\?\\)"),
    ("svd(rato=2)", ConfigError, "did you mean 'ratio'"),
    ("rtn(bits=8) + svd(ratio=0.5)", BudgetError, "got 0.5"),  # every step is checked before any is applied
])
def test_a_bad_pipeline_is_a_clear_error(text, error, match):
    with pytest.raises(error, match=match):
        pipeline.parse(text)


def _unchecked(text):
    """The steps of ``text`` each parsed alone (their order not checked), as a caller could build them."""
    return [pipeline.parse(part)[0] for part in text.split(" + ")]


def test_a_step_that_cannot_take_what_an_earlier_one_left_is_refused_before_anything_changes():
    """Tucker then RTN used to parse, and RTN refused Tucker's modules only after Tucker had changed
    the model: the order is now refused by parse (and by apply, for steps built otherwise), naming
    both steps, the layers and what RTN takes, with the model untouched."""
    with pytest.raises(pipeline.PipelineError, match=r"step 2, rtn\(bits=8\), cannot follow step 1, tucker\(ratio=2\): "
                       r"tucker leaves the linear layers as its compressed modules, and rtn takes only dense layers "
                       r"\(untouched, or pruned by structured or fisher_pruning\) or the low-rank layers of svd, asvd "
                       r"or fwsvd in mode 'separated'"):
        pipeline.parse("tucker(ratio=2) + rtn(bits=8)")
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pipeline.PipelineError, match="cannot follow step 1, tucker"):
        pipeline.apply(model, _unchecked("tucker(ratio=2) + rtn(bits=8)"))
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    with pytest.raises(pipeline.PipelineError, match=r"pruning leaves the ffn_in, ffn_out layers of layers \[1\]"):
        pipeline.parse("svd(ratio=2, roles='attention') + pruning(roles='ffn', layers=[0, 1]) + "
                       "rtn(roles='ffn', layers=[1])")
    with pytest.raises(pipeline.PipelineError, match="svd leaves the embedding table"):
        pipeline.parse("svd(ratio=2, roles=['embeddings', 'ffn'], layers=[0]) + gptq(roles='embeddings')")
    # disjoint roles or layers, dense layers (structured) and SVD's own factors (RTN, GPTQ) are fine
    for text in ("pruning(roles='ffn') + rtn(roles='attention')", "pruning(layers=[0]) + rtn(layers=[1])",
                 "structured(criterion='id', mu=0.9) + gptq(bits=4, roles=['linear', 'embeddings'])",
                 "svd(ratio=2) + rtn(bits=8, roles=['linear', 'embeddings'])"):
        pipeline.parse(text)


def test_every_method_of_the_package_says_what_it_leaves():
    from tcomp_utils.registry import _METHODS

    # the package's own methods (tests may register toy ones, which check_order leaves unchecked)
    ours = {name for name, e in _METHODS.items() if e.handler.__module__.startswith("tcomp_utils.")}
    assert ours == set(pipeline.LEAVES)


@pytest.mark.parametrize("earlier", ["structured(criterion='magnitude', mu=0.6)", "svd(ratio=2)",
                                     "svd(ratio=2, mode='concatenated')", "svd(ratio=2, roles='embeddings')",
                                     "tucker(ratio=2)", "pruning(ratio=2)", "rtn(bits=8)"])
@pytest.mark.parametrize("later", ["rtn(bits=8, roles=['linear', 'embeddings'])", "svd(ratio=2, roles='ffn')",
                                   "structured(criterion='magnitude', mu=0.6)"])
def test_the_order_check_agrees_with_the_methods_own_checks(earlier, later):
    """check_order refuses exactly the pairs whose later step's handler refuses the modules the
    earlier one left (a TypeError from the core's module check, after the earlier step had run)."""
    steps = _unchecked(f"{earlier} + {later}")
    try:
        pipeline.check_order(steps)
        refused = False
    except pipeline.PipelineError:
        refused = True
    torch.manual_seed(0)
    model = tiny_bert()
    pipeline.apply(model, steps[:1])
    try:
        pipeline.apply(model, steps[1:])
        handler_refused = False
    except TypeError as err:
        assert "already compressed or cannot be compressed this way" in str(err)
        handler_refused = True
    assert refused == handler_refused


def test_steps_apply_in_order_and_each_sees_the_model_the_last_left():
    model = tiny_bert()
    dense = budget.footprint(model)
    reports = pipeline.apply(model, pipeline.parse("svd(ratio=2, roles='ffn') + rtn(bits=8)"))
    assert [r.method for r in reports] == ["svd", "rtn"]
    assert reports[0].before.bytes == dense.bytes and reports[1].before.bytes == reports[0].after.bytes
    assert reports[1].after.bytes == budget.footprint(model).bytes < reports[0].after.bytes < dense.bytes


@pytest.mark.parametrize("make, text", [(tiny_bert, "structured(criterion='magnitude', mu=0.5) + rtn(bits=4)"),
                                        (tiny_llama, "svd(ratio=2) + rtn(bits=8, group_size=16)")])
def test_the_probe_counts_the_saved_model_as_the_compressed_one_and_measures_it(tmp_path, make, text):
    torch.manual_seed(0)
    model = make()
    pipeline.apply(model, pipeline.parse(text), calibration=None)
    counted = budget.footprint(model)
    serialize.save_compressed(model, tmp_path / "m")
    ids = torch.randint(0, 100, (2, 16))
    got = probe.probe(tmp_path / "m", {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, runs=3, warmup=1)
    assert (got["saved_params"], got["saved_bytes"], got["saved_macs"]) == (counted.params, counted.bytes, counted.macs)
    assert got["file_bytes"] == sum(p.stat().st_size for p in (tmp_path / "m").iterdir())
    assert got["latency_p10_ms"] <= got["latency_ms"] <= got["latency_p90_ms"] and got["threads"] == 1
    assert got["peak_mb"] >= got["load_mb"] - 1 and got["peak_mb"] > 0


def test_the_probe_refuses_a_folder_with_no_saved_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no saved model"):
        probe.probe(tmp_path, {"input_ids": torch.zeros(1, 4, dtype=torch.long)})


def test_every_point_of_the_atlas_spec_is_a_valid_pipeline():
    from tcomp_utils import sweep

    spec = sweep.SweepSpec.load("papermill_runs/atlas.yaml")
    for point in spec.points + spec.reduced:
        pipeline.parse(point["pipeline"])
    assert {p["model_name"] for p in spec.points} == {"minilm-l6-tweets3", "smollm2-135m"}
    assert sum(p["pipeline"] == "dense" for p in spec.points) == 2
