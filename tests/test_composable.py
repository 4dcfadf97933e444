"""Composable pruning (seed 002): the scheme deduplicates exactly, composition puts each module
where its configuration says, pruned weights stay zero through fine-tuning, bad files are clear
errors naming the entry."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from tcomp_utils import budget
from tcomp_utils.methods import composable
from tcomp_utils.methods.composable import CompositionError, Unit
from tcomp_utils.methods.pruning import SparseLinear
from conftest import tiny_marian, tiny_t5

CONFIGS = [
    {"name": "A", "attention": 0.25, "linear": 0.5},
    {"name": "B", "attention": 0.5, "linear": 0.5},
    {"name": "C", "attention": 0.25, "linear": 0.25},
    {"name": "D", "attention": {"*": 0.25, "decoder.*": 0.5}, "linear": 0.5},
    {"name": "E", "attention": 0.0, "linear": {"*": 0.0, "encoder.*.ffn_*": 0.5}},
]


def _model():
    torch.manual_seed(0)
    return tiny_marian()


def _batches(n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 100, (4, 7), generator=gen)
        mask = torch.ones_like(ids)
        mask[0, 5:] = 0
        labels = torch.randint(3, 100, (4, 6), generator=gen)
        labels[1, 4:] = -100
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_sites_name_every_attention_block_and_linear_layer_of_the_transformer():
    found = composable.sites(_model())
    heads = [s for s, site in found.items() if site.kind == "heads"]
    assert heads == ["encoder.0.self_attn", "encoder.1.self_attn", "decoder.0.self_attn", "decoder.1.self_attn",
                     "decoder.0.cross_attn", "decoder.1.cross_attn"]
    l1 = [s for s, site in found.items() if site.kind == "l1"]
    assert len(l1) == 2 * 3 + 2 * 4 and "decoder.1.cross_attn_out" in l1 and "encoder.0.ffn_in" in l1
    assert found["decoder.0.cross_attn"].paths["cross_query"].endswith("decoder.layers.0.encoder_attn.q_proj")


def test_the_scheme_deduplicates_exactly():
    """Five configurations with known overlaps: 6 attention blocks at two rates, 14 linear layers
    at two rates, and configuration E sharing only its encoder FFNs with A, B and D."""
    configs = composable.resolve(CONFIGS, _model())
    assert [len(c.units) for c in configs] == [20, 20, 20, 20, 4]
    scheme = composable.build_scheme(configs)
    assert len(scheme) == 6 + 6 + 14 + 14 and scheme.unit.is_unique
    assert scheme.uses.sum() == 84
    users = dict(zip(scheme.unit, scheme.configurations))
    assert users["encoder.0.self_attn@heads0.25"] == ["A", "C", "D"]
    assert users["decoder.0.cross_attn@heads0.5"] == ["B", "D"]
    assert users["decoder.1.self_attn@heads0.25"] == ["A", "C"]
    assert users["encoder.1.ffn_out@l10.5"] == ["A", "B", "D", "E"]
    assert users["encoder.1.attn_out@l10.5"] == ["A", "B", "D"]
    assert users["decoder.0.ffn_in@l10.25"] == ["C"]
    assert configs[4].unit_at("decoder.0.ffn_in") is None  # rate 0: left dense, no unit


def test_configurations_and_scheme_round_trip_through_yaml_and_an_edited_scheme_is_refused(tmp_path):
    model = _model()
    path = composable.write_configurations(tmp_path / "conf.yaml", composable.generate([0.25, 0.5], [0.3, 0.5]))
    configs = composable.load_configurations(path, model)
    assert [c.name for c in configs] == ["a25-l30", "a25-l50", "a50-l30", "a50-l50"]
    scheme = composable.build_scheme(configs)
    spath = composable.write_scheme(tmp_path / "scheme.yaml", scheme)
    assert composable.load_scheme(spath, configs).equals(scheme)
    text = spath.read_text()
    spath.write_text(text.replace("- a25-l30\n", "", 1))
    with pytest.raises(CompositionError, match=r"unit 0 \(encoder.0.self_attn@heads0.25\) lists configurations"):
        composable.load_scheme(spath, configs)
    spath.write_text(text.replace("kind: heads", "kind: ln", 1))
    with pytest.raises(CompositionError, match="unit 0 has kind 'ln'; kinds: heads, l1"):
        composable.load_scheme(spath, configs)


@pytest.mark.parametrize("entry, message", [
    ({"name": "x", "attention": 0.25, "linear": 1.0}, r"configuration 0 \('x'\), linear '\*': rate 1.0 is not in \[0, 1\)"),
    ({"name": "x", "attention": {"decoder.7.*": 0.5}, "linear": 0.1},
     r"configuration 0 \('x'\): attention pattern 'decoder.7.\*' matches no heads site; the model has encoder.0.self_attn"),
    ({"name": "x", "attention": 0.25}, r"configuration 0 \('x'\): missing field linear"),
    ({"name": "x", "attention": 0.25, "linear": 0.1, "rate": 2}, r"configuration 0 \('x'\): unknown field rate"),
    ({"name": "x", "attention": -0.1, "linear": 0.1}, r"attention '\*': rate -0.1 is not in \[0, 1\)"),
])
def test_a_malformed_configuration_is_a_clear_error_naming_the_entry(entry, message):
    with pytest.raises(CompositionError, match=message):
        composable.resolve([entry], _model())


def test_a_rate_that_removes_every_head_is_refused_and_t5_heads_are_pruned():
    """T5's heads share one position bias across layers; each pruned attention takes its kept
    heads' columns of it (tests/test_t5_heads.py checks the outputs)."""
    with pytest.raises(CompositionError, match="encoder.0.self_attn: rate 0.9 removes all 4 heads"):
        model = _model()
        composable.prune_unit(model, Unit("encoder.0.self_attn", "heads", 0.9))
    t5 = tiny_t5()
    (config,) = composable.resolve([{"name": "t", "attention": {"encoder.0.*": 0.5}, "linear": 0.0}], t5)
    payloads = {u.key: composable.prune_unit(t5, u) for u in config.units}
    assert len(payloads["encoder.0.self_attn@heads0.5"]["kept"]) == 2
    composed = composable.compose(t5, config, payloads)
    attention = composed.get_submodule("encoder.block.0.layer.0.SelfAttention")
    assert attention.n_heads == 2 and attention.relative_attention_bias.weight.shape == (32, 4)
    ids = torch.randint(3, 100, (2, 6))
    assert _logits(composed, {"input_ids": ids, "decoder_input_ids": ids}).shape == (2, 6, 100)


def test_heads_with_the_smallest_qkv_l1_norm_go_and_removing_them_is_exact():
    """The physically pruned attention computes what the dense one does with those heads' columns
    of the output projection zeroed; the heads with the smallest Q/K/V L1 norm are the ones removed."""
    model = _model()
    site = composable.sites(model)["encoder.1.self_attn"]
    with torch.no_grad():
        model.get_submodule(site.paths["value"]).weight[8:16] *= 0.01  # head 1: the smallest rows
    kept = composable.kept_heads(model, site, 0.25)
    assert list(kept) == [0, 2, 3]
    (config,) = composable.resolve([{"name": "h", "attention": {"encoder.1.self_attn": 0.5}, "linear": 0.0}], model)
    payloads = {u.key: composable.prune_unit(model, u) for u in config.units}
    composed = composable.compose(model, config, payloads)
    kept = payloads["encoder.1.self_attn@heads0.5"]["kept"]
    masked = _model()
    masked.load_state_dict(model.state_dict())
    with torch.no_grad():
        out = masked.get_submodule(site.paths["attn_out"]).weight
        for h in set(range(4)) - set(kept.tolist()):
            out[:, h * 8:(h + 1) * 8] = 0
    batch = _batches(1)[0]
    torch.testing.assert_close(_logits(composed, batch), _logits(masked, batch), atol=1e-5, rtol=1e-5)
    attn = composed.get_submodule(site.paths["query"].rsplit(".", 1)[0])
    assert attn.num_heads == 2 and attn.q_proj.out_features == 16 and attn.out_proj.in_features == 16
    assert composed.get_submodule(site.paths["query"]) is not model.get_submodule(site.paths["query"])


def test_composition_puts_each_module_where_its_configuration_says():
    """Payloads marked by unit (a constant per unit) land at their sites; an attention output's
    L1 mask loses the columns of the heads its block removed; rate-0 sites keep the model's."""
    model = _model()
    configs = composable.resolve(CONFIGS, model)
    scheme = composable.build_scheme(configs)
    payloads = {}
    for i, unit in enumerate(Unit(r.site, r.kind, r.rate) for r in scheme.itertuples()):
        payload = composable.prune_unit(model, unit)
        with torch.no_grad():
            for name in ("query", "key", "value", "linear"):
                if name in payload:
                    w = payload[name].weight_orig if name == "linear" else payload[name].weight
                    w.fill_(float(i + 1))
        payloads[unit.key] = payload
    marks = {u: float(i + 1) for i, u in enumerate(scheme.unit)}
    found = composable.sites(model)
    for config in configs:
        composed = composable.compose(model, config, payloads)
        for site_id, site in found.items():
            unit = config.unit_at(site_id)
            if unit is None:  # dense: the model's own weights (an output projection: unless its heads went)
                block = {"attn_out": "self_attn", "cross_attn_out": "cross_attn"}.get(site_id.rsplit(".", 1)[1])
                sliced = block is not None and config.unit_at(f"{site.stack}.{site.layer}.{block}") is not None
                paths = list(site.paths.values())[:3] if site.kind == "heads" else [] if sliced else [site.paths["linear"]]
                for path in paths:
                    assert composed.get_submodule(path).weight.equal(model.get_submodule(path).weight), path
                continue
            if unit.kind == "l1":
                lin = composed.get_submodule(site.paths["linear"])
                assert prune.is_pruned(lin)
                kept = lin.weight_mask.bool()
                assert (lin.weight[kept] == marks[unit.key]).all() and (lin.weight[~kept] == 0).all()
                continue
            roles = tuple(site.paths)
            q = composed.get_submodule(site.paths[roles[0]])
            n_kept = len(payloads[unit.key]["kept"])
            assert (q.weight == marks[unit.key]).all() and q.out_features == n_kept * 8
            out = composed.get_submodule(site.paths[roles[3]])
            assert out.in_features == n_kept * 8
            out_unit = config.unit_at(f"{site.stack}.{site.layer}.{roles[3]}")
            if out_unit is not None:  # the L1-pruned projection, narrowed to the kept heads
                assert prune.is_pruned(out) and out.weight_mask.shape == (32, n_kept * 8)
                assert set(out.weight[out.weight != 0].unique().tolist()) == {marks[out_unit.key]}
    with pytest.raises(CompositionError, match="configuration 'A': no module for unit encoder.0.self_attn@heads0.25"):
        composable.compose(model, configs[0], {})


def test_pruned_weights_stay_zero_through_both_finetunings_and_are_stored_sparse(tmp_path):
    """Module-level fine-tuning lowers the unit's error against the original outputs; model-level
    fine-tuning of the composed model moves the kept weights only; to_sparse stores exactly the
    kept weights and computes the same logits."""
    from tcomp_utils import trainer

    model = _model()
    (config,) = composable.resolve([{"name": "c", "attention": 0.5, "linear": 0.5}], model)
    calls = composable.record(model, _batches(), [u.site for u in config.units])
    assert all(len(c) == 3 for c in calls.values())
    payloads, before_after = {}, {}
    for unit in config.units:
        payload = composable.prune_unit(model, unit)
        result = composable.finetune_unit(model, unit, payload, calls[unit.site], steps=30, lr=3e-3)
        losses = result.log.loss.to_numpy()
        before_after[unit.key] = (losses[:3].mean(), losses[-3:].mean())
        if unit.kind == "l1":
            lin = payload["linear"]
            assert (lin.weight[lin.weight_mask == 0] == 0).all()
            assert int((lin.weight_mask == 0).sum()) == round(0.5 * lin.weight.numel())
        payloads[unit.key] = payload
    assert sum(a < b for b, a in before_after.values()) >= 0.9 * len(before_after)
    composed = composable.compose(model, config, payloads)
    masks = {n: m.weight_mask.clone() for n, m in composed.named_modules() if hasattr(m, "weight_mask")}
    trainer.train(composed, _batches(), trainer.TrainConfig(steps=6, lr=1e-2, progress=False))
    for name, mask in masks.items():
        w = composed.get_submodule(name).weight
        assert (w[mask == 0] == 0).all() and (w[mask == 1] != 0).all()
    composed.eval()
    batch = _batches(1, seed=5)[0]
    dense_logits = _logits(composed, batch)
    assert composable.to_sparse(composed) == len(masks)
    for name, mask in masks.items():
        sparse = composed.get_submodule(name)
        assert isinstance(sparse, SparseLinear) and sparse.nnz == int(mask.sum())
    torch.testing.assert_close(_logits(composed, batch), dense_logits, atol=1e-5, rtol=1e-5)
    assert budget.footprint(composed).bytes < budget.footprint(model).bytes


def test_unit_files_are_written_whole_and_name_their_unit(tmp_path):
    model = _model()
    (config,) = composable.resolve([{"name": "c", "attention": 0.25, "linear": 0.3}], model)
    for unit in config.units:
        payload = composable.prune_unit(model, unit)
        path = composable.save_payload(tmp_path / f"{unit.key}.pt", unit, payload)
        data = torch.load(path, weights_only=False)
        assert data["unit"] == [unit.site, unit.kind, unit.rate]
        if unit.kind == "l1":
            torch.testing.assert_close(data["state"]["weight"], payload["linear"].weight.detach())
            torch.testing.assert_close(data["state"]["mask"], payload["linear"].weight_mask)
        else:
            assert data["state"]["kept"] == np.asarray(payload["kept"]).tolist()
            torch.testing.assert_close(data["state"]["query"]["weight"], payload["query"].weight)
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_time_to_the_baselines_bleu_and_the_totals_count_each_unit_once():
    """Configuration a: the composed model reaches the baseline's final validation BLEU (3.0) at its
    second evaluation; b: it starts above it (0 steps); c: it never gets there (all its seconds)."""
    import pandas as pd

    arms = pd.DataFrame([
        {"configuration": c, "arm": arm, "attention": "0.5", "linear": "0.3", "units": 4, "shared_units": 2,
         "param_fraction": 0.8, "bytes": 1e6, "val_bleu_before": before, "val_bleu_after": after,
         "test_bleu": after, "train_seconds": secs}
        for c, arm, before, after, secs in [("a", "baseline", 1.0, 3.0, 100.0), ("a", "composed", 2.0, 3.5, 90.0),
                                            ("b", "baseline", 1.0, 2.0, 80.0), ("b", "composed", 2.5, 2.6, 85.0),
                                            ("c", "baseline", 1.0, 4.0, 70.0), ("c", "composed", 1.5, 3.9, 75.0)]])
    log = pd.DataFrame([{"configuration": c, "arm": "composed", "kind": "eval", "step": step, "val_bleu": bleu,
                         "train_seconds": secs}
                        for c, step, bleu, secs in [("a", 50, 2.9, 20.0), ("a", 100, 3.0, 41.0), ("a", 150, 3.4, 60.0),
                                                    ("b", 50, 2.7, 20.0), ("c", 50, 3.0, 20.0), ("c", 100, 3.9, 40.0)]])
    summary = composable.summarize(arms, log)
    assert list(summary.steps_to_baseline.fillna(-1)) == [100, 0, -1]
    assert list(summary.seconds_to_baseline.fillna(-1)) == [41.0, 0.0, -1]
    assert list(summary.test_bleu_composed) == [3.5, 2.6, 3.9]
    units = pd.DataFrame({"seconds": [1.0, 2.0, 3.0]})
    totals = composable.time_totals(summary, units, record_s=4.0)
    assert totals["without_s"] == 250.0 and totals["composed_model_s"] == 41.0 + 0.0 + 75.0
    assert totals["with_s"] == 4.0 + 6.0 + 116.0 and totals["saved_s"] == 250.0 - 126.0 and totals["matched"] == 2


@pytest.mark.parametrize("content, message", [
    (b"configurations:\n  - {name: a, attention: [0.25\n", r"conf.yaml is not valid YAML \(line \d+, column \d+\): "),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", r"conf.yaml is not a text file \(byte \d+ is not UTF-8\): a configurations file "
                                       "is YAML text"),
    (b"configurations: !!python/object/apply:os.system ['echo hacked']\n",
     r"conf.yaml \(line 1, column 17\): could not determine a constructor for the tag "
     r".*python/object/apply:os.system'; "
     r"a configurations file holds only plain YAML values .*no Python tags such as !!python/object"),
])
def test_an_unreadable_configurations_or_scheme_file_is_an_error_naming_it(tmp_path, content, message):
    """Invalid YAML, a binary file and a Python tag each give a CompositionError naming the file,
    where and what is allowed (not the YAML library's or the decoder's raw error)."""
    path = tmp_path / "conf.yaml"
    path.write_bytes(content)
    with pytest.raises(CompositionError, match=message):
        composable.load_configurations(path, _model())
    with pytest.raises(CompositionError, match=message.replace("a configurations file", "a scheme file")):
        composable.load_scheme(path, [])


def test_heads_of_an_attention_that_reads_its_head_count_from_the_config_are_refused_untouched():
    """Phi-3 slices its fused qkv at config.num_attention_heads, which every layer shares: composable
    head pruning refuses it (naming the site and what to prune instead) before changing the model."""
    from conftest import tiny_phi3

    from tcomp_utils import adapters

    model = adapters.prepare(tiny_phi3(num_key_value_heads=6))  # no grouped queries: the head check decides
    state = {k: v.clone() for k, v in model.state_dict().items()}
    (config,) = composable.resolve([{"name": "p", "attention": 0.5, "linear": 0.0}], model)
    with pytest.raises(adapters.UnsupportedArchitectureError,
                       match=r"decoder.0.self_attn \(Phi3Attention\).*config.num_attention_heads.*linear layers \(l1\)"):
        composable.prune_unit(model, config.units[0])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


# what composable head pruning refuses, before any change: grouped-query attention, and an attention
# that slices by the config's head count (Phi-3)
GQA = "grouped-query attention is not supported by composable head pruning"
HEADS_REFUSED = {"falcon": GQA, "gemma3_text": GQA, "llama": GQA, "mistral": GQA, "qwen2": GQA,
                 "phi3": "config.num_attention_heads"}


@pytest.mark.parametrize("kind", ["heads", "l1"])
@pytest.mark.parametrize("name", sorted(__import__("conftest").ARCHITECTURES))
def test_every_architecture_runs_after_composable_pruning_or_is_refused_untouched(name, kind):
    """Heads (with a module-level fine-tuning step on recorded calls) or L1 linear layers, on every
    tiny architecture: the composed model runs with the dense output's shape, or the first unit is
    refused before the model changes. Split Q/K/V (GPT-2's c_attn, GPT-NeoX's query_key_value) are
    pruned in the attention block that holds their head count."""
    import conftest

    from tcomp_utils import adapters

    torch.manual_seed(0)
    model = adapters.prepare(conftest.ARCHITECTURES[name]())
    ids = torch.randint(3, 100, (2, 7))
    inputs = dict(input_ids=ids, decoder_input_ids=ids) if name == "t5" else dict(input_ids=ids)
    dense = _logits(model, inputs)
    entry = {"name": "c", "attention": 0.5 if kind == "heads" else 0.0, "linear": 0.5 if kind == "l1" else 0.0}
    (config,) = composable.resolve([entry], model)
    if kind == "heads" and name in HEADS_REFUSED:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(adapters.UnsupportedArchitectureError, match=HEADS_REFUSED[name]):
            composable.prune_unit(model, config.units[0])
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
        return
    payloads = {u.key: composable.prune_unit(model, u) for u in config.units}
    unit = config.units[0]
    calls = composable.record(model, [inputs], [unit.site])
    composable.finetune_unit(model, unit, payloads[unit.key], calls[unit.site], steps=1)
    out = _logits(composable.compose(model, config, payloads), inputs)
    assert out.shape == dense.shape and torch.isfinite(out).all()
