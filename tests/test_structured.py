"""Structured pruning at a MAC budget (STAT's interpolative decomposition, magnitude, random)."""
import copy

import conftest
import numpy as np
import pytest
import torch
from conftest import tiny_bert, tiny_llama, tiny_opt, tiny_t5
from torch import nn

from tcomp_utils import adapters, budget, capture, serialize
from tcomp_utils.budget import BudgetError
from tcomp_utils.methods import heads as head_surgery
from tcomp_utils.methods import structured
from tcomp_utils.registry import ConfigError, compress, method_config


def batches(n: int = 6, seed: int = 0, vocab: int = 100, length: int = 12) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (4, length), generator=g)
        mask = torch.ones_like(ids)
        mask[0, length // 2:] = 0  # a padded sequence: its padding is not calibration data
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def logits(model, data) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**b).logits for b in data])


def with_duplicated_neurons(model: nn.Module, rank: int) -> nn.Module:
    """Each FFN's neurons j >= rank copy neuron j mod rank (same row, same bias): activations of rank `rank`."""
    with torch.no_grad():
        for rm in adapters.find_modules(model, "ffn_in"):
            w, b = rm.module.weight, rm.module.bias
            for j in range(rank, w.shape[0]):
                w[j], b[j] = w[j % rank], b[j % rank]
    return model


def test_id_pruning_of_a_rank_k_ffn_to_k_neurons_keeps_the_outputs():
    torch.manual_seed(0)
    model = with_duplicated_neurons(tiny_bert(), rank=16)  # 64 neurons per layer, rank 16
    dense_macs = budget.footprint(model).macs
    neuron = 2 * 32  # MACs per token of one neuron (H in, H out)
    mu = (dense_macs - 2 * (64 - 16) * neuron) / dense_macs  # exactly 48 neurons fewer in each of 2 layers
    data, held_out = batches(6, seed=0), batches(3, seed=1)
    before = logits(model, held_out)
    report = compress(model, method_config("structured", mu=mu, units="neurons"), data, progress=False)
    assert [m.in_features for m in (rm.module for rm in adapters.find_modules(model, "ffn_out"))] == [16, 16]
    assert ((logits(model, held_out) - before).norm() / before.norm()).item() < 1e-5
    assert (report.modules.rel_error < 1e-6).all()
    # the same budget without folding (neurons dropped by magnitude) does change the outputs
    torch.manual_seed(0)
    plain = with_duplicated_neurons(tiny_bert(), rank=16)
    compress(plain, method_config("structured", mu=mu, units="neurons", criterion="magnitude"), None, progress=False)
    assert ((logits(plain, held_out) - before).norm() / before.norm()).item() > 1e-2


@pytest.mark.parametrize("criterion", structured.CRITERIA)
@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama-gqa"])
@pytest.mark.parametrize("mu", [0.9, 0.7, 0.5])
def test_counted_macs_land_within_one_percent_under_mu(criterion, make, mu):
    torch.manual_seed(0)
    model = make()
    dense = budget.footprint(model).macs
    report = compress(model, method_config("structured", mu=mu, criterion=criterion), batches(), progress=False)
    after = budget.footprint(model).macs
    assert after <= mu * dense + 1e-6 and after >= (mu - 0.01) * dense
    assert report.after.macs == after and report.after.params < report.before.params
    with torch.no_grad():
        out = model(**batches(1, seed=3)[0]).logits
    assert torch.isfinite(out).all()


def test_heads_are_removed_physically_and_the_counter_sees_them():
    torch.manual_seed(0)
    model = tiny_bert()
    compress(model, method_config("structured", mu=0.6, units="heads"), batches(), progress=False)
    for layer in model.bert.encoder.layer:
        att = layer.attention.self
        n = att.query.out_features // 8
        assert att.num_attention_heads == n and att.key.out_features == att.value.out_features == n * 8
        assert layer.attention.output.dense.in_features == n * 8
    table = budget.module_table(model)
    cores = table[table.kind == "attention core"].macs_per_token
    assert list(cores) == [2 * 128 * layer.attention.self.query.out_features for layer in model.bert.encoder.layer]
    assert min(layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer) >= 1


def test_grouped_query_attention_prunes_whole_groups():
    torch.manual_seed(0)
    model = tiny_llama()  # 6 query heads over 2 key/value heads of 8: 2 groups of 3 per layer
    compress(model, method_config("structured", mu=0.8, units="heads"), batches(), progress=False)
    kv = [layer.self_attn.k_proj.out_features // 8 for layer in model.model.layers]
    q = [layer.self_attn.q_proj.out_features // 8 for layer in model.model.layers]
    assert [3 * k for k in kv] == q and min(kv) >= 1 and sum(kv) < 4
    assert all(layer.self_attn.num_key_value_groups == 3 for layer in model.model.layers)


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama-gqa"])
def test_a_pruned_model_saves_and_loads_back_with_identical_outputs(make, tmp_path):
    torch.manual_seed(0)
    model = make()
    compress(model, method_config("structured", mu=0.5), batches(), progress=False)
    serialize.save_compressed(model, tmp_path / "pruned")
    loaded = serialize.load_compressed(tmp_path / "pruned")
    data = batches(2, seed=5)
    assert torch.equal(logits(loaded, data), logits(model, data))


def test_id_keeps_the_outputs_closer_than_magnitude_and_random_on_held_out_inputs():
    torch.manual_seed(0)
    base = tiny_bert()
    data, held_out = batches(8, seed=0), batches(4, seed=1)
    ref = logits(base, held_out)
    err = {}
    for criterion in structured.CRITERIA:
        m = copy.deepcopy(base)
        compress(m, method_config("structured", mu=0.7, criterion=criterion), data, progress=False)
        err[criterion] = ((logits(m, held_out) - ref).norm() / ref.norm()).item()
    assert err["id"] < err["magnitude"] and err["id"] < err["random"], err


def test_the_id_error_curve_is_the_interpolation_residual_on_the_calibration_rows():
    rng = np.random.default_rng(0)
    z, w = rng.standard_normal((200, 12)), rng.standard_normal((5, 12))
    order = structured.id_neurons(z, w)
    for k in (3, 7):
        kept, rest = order.order[:k], order.order[k:]
        scaled = z * np.linalg.norm(w, axis=0)
        t, *_ = np.linalg.lstsq(scaled[:, kept], scaled[:, rest], rcond=None)
        residual = np.linalg.norm(scaled[:, rest] - scaled[:, kept] @ t) / np.linalg.norm(scaled)
        assert abs(order.error[k] - residual) < 1e-9
        # folded weight = least-squares output of the dense layer from the kept neurons
        best, *_ = np.linalg.lstsq(z[:, kept], z @ w.T, rcond=None)
        np.testing.assert_allclose(order.fold(k), best.T, atol=1e-9)
    assert order.error[0] == pytest.approx(1.0) and order.error[-1] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.diff(order.error) <= 1e-12)


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama, tiny_opt], ids=["bert", "llama", "opt"])
def test_stream_weighting_divides_each_token_by_the_stream_entering_its_layer(make):
    torch.manual_seed(0)
    model = make().eval()
    data = batches(3)
    layers = structured._layers(model, method_config("structured"))
    plain = structured.capture_rows(model, layers, data)
    weighted = structured.capture_rows(model, layers, data, per_stream=True)
    for e in layers:
        xs = []
        for b in data:  # OPT feeds its FFN (batch·seq) × features: its padding rows are dropped by hand here
            x, real = capture.capture_inputs(model, [e.ffn_out], [b])[e.ffn_out.path], b["attention_mask"].bool()
            xs.append(x[real.flatten()] if x.shape[0] == real.numel() else x)
        x = torch.cat(xs).double()
        with torch.no_grad():  # hidden_states[l]: the stream entering layer l, at real tokens only
            h = torch.cat([capture.real_rows(model(**b, output_hidden_states=True).hidden_states[e.layer],
                                             b["attention_mask"]) for b in data]).double()
        xw = x / h.norm(dim=-1, keepdim=True)
        m, mw = plain[e.ffn_out.path], weighted[e.ffn_out.path]
        np.testing.assert_allclose(m.T @ m, (x.T @ x).numpy(), rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(mw.T @ mw, (xw.T @ xw).numpy(), rtol=1e-8, atol=1e-12)
    # post-LN (BERT): every token's stream is a LayerNorm output of one norm (γ = 1 here), so the
    # weighting is a constant; pre-norm (Llama): the stream differs from token to token and the
    # weighting changes the decomposition
    g = m.T @ m
    proportional = np.allclose(mw.T @ mw * (m ** 2).sum() / (mw ** 2).sum(), g, rtol=1e-5, atol=1e-7 * abs(g).max())
    assert proportional == (make is tiny_bert)


def test_a_root_of_the_gram_gives_the_rows_own_decomposition():
    # tokens are many, features few: the decomposition of M (MᵀM = XᵀX) is that of X
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((5000, 10)), rng.standard_normal((4, 10))
    x[:, 9] = x[:, :3] @ np.array([1.0, -2.0, 0.5])  # an exact relation survives
    gram = structured.Gram()
    for chunk in torch.from_numpy(x).split(700):
        gram.add(chunk)
    m = gram.root()
    assert m.shape == (10, 10)
    np.testing.assert_allclose(m.T @ m, x.T @ x, rtol=1e-10, atol=1e-8)
    rows, root = structured.id_neurons(x, w), structured.id_neurons(m, w)
    assert list(rows.order) == list(root.order)
    np.testing.assert_allclose(rows.error, root.error, atol=1e-7)  # a root carries √(rounding) noise
    np.testing.assert_allclose(rows.fold(5), root.fold(5), atol=1e-8)
    assert root.error[9] < 1e-7  # nine neurons rebuild the tenth


@pytest.mark.parametrize("options, error, message", [
    (dict(mu=0), ConfigError, "mu must be"),
    (dict(mu=1.5), ConfigError, "(0, 1]"),
    (dict(mu="half"), ConfigError, "mu must be"),
    (dict(criterion="fisherman"), ConfigError, "allowed: id, magnitude, random"),
    (dict(units="layers"), ConfigError, "allowed: both, heads, neurons"),
    (dict(error="squared"), ConfigError, "allowed: stream, absolute, relative"),
    (dict(roles="ffn"), ConfigError, "whole heads and neurons"),
    (dict(macs_over="layers"), ConfigError, "allowed: model, blocks"),
])
def test_bad_options_are_clear_errors(options, error, message):
    with pytest.raises(error, match=message if not message.startswith("(") else r"\(0, 1\]"):
        method_config("structured", **options)


@pytest.mark.parametrize("mu, units, message", [
    (0.05, "both", "smallest reachable mu is"),
    (0.3, "heads", "smallest reachable mu is 0.4"),  # one head must stay in each layer
])
def test_an_unreachable_budget_is_an_error_before_any_module_changes(mu, units, message):
    torch.manual_seed(0)
    model = tiny_bert()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BudgetError, match=message):
        compress(model, method_config("structured", mu=mu, units=units), batches(), progress=False)
    after = model.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)


def test_an_unsupported_architecture_is_an_error_before_any_module_changes():
    torch.manual_seed(0)
    model = tiny_t5()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(adapters.UnsupportedArchitectureError, match="seq2seq"):
        compress(model, method_config("structured", mu=0.8, criterion="magnitude"), None, progress=False)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes


def test_id_needs_calibration_but_magnitude_and_random_do_not():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="needs calibration"):
        compress(tiny_bert(), method_config("structured", mu=0.8), None, progress=False)
    for criterion in ("magnitude", "random"):
        compress(tiny_bert(), method_config("structured", mu=0.8, criterion=criterion), None, progress=False)


def test_allocation_uses_one_threshold_then_fills_the_slack():
    a = (np.array([1.0, 0.5, 0.2, 0.0]), 10.0)   # 3 units of 10 MACs
    b = (np.array([1.0, 0.9, 0.1, 0.0]), 1.0)    # 3 units of 1 MAC
    keep = structured.allocate([a, b], target_saving=10.0)
    # tau = 0.2 keeps 2 of a (saving 10) and 2 of b (saving 1): 1 MAC of slack takes b's unit back
    assert keep == [2, 3]
    assert structured.allocate([a, b], target_saving=0) == [3, 3]
    assert structured.allocate([a, b], target_saving=22.0) == [1, 1]


# ---- Kwon et al.'s Fisher-mask pruning ------------------------------------------------------------
from tcomp_utils.methods import fisher_pruning  # noqa: E402


def labelled(make, n: int = 6, seed: int = 0) -> list[dict]:
    """Calibration batches with the model's own loss: class labels for the classifier, next tokens for the LM."""
    out = batches(n, seed)
    g = torch.Generator().manual_seed(seed + 100)
    for b in out:
        b["labels"] = (torch.randint(0, 2, (b["input_ids"].shape[0],), generator=g) if make is tiny_bert
                       else b["input_ids"].masked_fill(b["attention_mask"] == 0, -100))
    return out


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama-gqa"])
@pytest.mark.parametrize("mu", [0.9, 0.6])
def test_fisher_pruning_lands_within_one_percent_and_reloads(make, mu, tmp_path):
    torch.manual_seed(0)
    model = make()
    dense = budget.footprint(model).macs
    compress(model, method_config("fisher_pruning", mu=mu), labelled(make), progress=False)
    after = budget.footprint(model).macs
    assert (mu - 0.01) * dense <= after <= mu * dense + 1e-6
    serialize.save_compressed(model, tmp_path / "kwon")
    data = batches(2, seed=5)
    assert torch.equal(logits(serialize.load_compressed(tmp_path / "kwon"), data), logits(model, data))


def test_the_mask_fisher_sums_each_examples_own_squared_gradient():
    torch.manual_seed(0)
    model = tiny_bert()
    layers, structure, *_ = structured.prunable_layers(model, method_config("fisher_pruning", mu=0.5))
    batch = labelled(tiny_bert, 1)[0]
    together = fisher_pruning.mask_fisher(model, layers, structure, [batch])
    alone = fisher_pruning.mask_fisher(model, layers, structure,
                                       [{k: v[i:i + 1] for k, v in batch.items()} for i in range(4)])
    for (a_h, a_n), (b_h, b_n) in zip(together, alone):
        np.testing.assert_allclose(a_h, b_h, rtol=1e-4, atol=1e-12)
        np.testing.assert_allclose(a_n, b_n, rtol=1e-4, atol=1e-12)
        assert np.all(np.linalg.eigvalsh(a_n) > -1e-9 * np.abs(a_n).max())  # a Fisher is positive semi-definite


def test_rearrangement_keeps_the_count_and_never_raises_the_second_order_loss():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 12))
    f = a @ a.T  # correlated units: the diagonal alone misjudges pairs
    removed = np.argsort(np.diag(f))[:10]
    z = lambda r: np.isin(np.arange(30), r).astype(float)  # noqa: E731
    better = fisher_pruning.rearrange(f, removed)
    assert len(better) == 10 and len(set(better)) == 10
    assert z(better) @ f @ z(better) <= z(removed) @ f @ z(removed) + 1e-9
    # a local optimum: no single swap lowers it further
    assert set(fisher_pruning.rearrange(f, better)) == set(better)


def test_least_squares_tuning_fits_the_layer_output_better_than_plain_dropping():
    rng = np.random.default_rng(0)
    z, w = rng.standard_normal((300, 8)), rng.standard_normal((5, 8))
    z[:, 6] = z[:, 0] + 0.1 * rng.standard_normal(300)  # unit 6 is nearly a copy of unit 0
    kept = np.array([0, 1, 2, 3, 4, 5, 7])
    folded, err = fisher_pruning.tune(z, w, kept, 1, 200)
    plain = np.linalg.norm(z[:, kept] @ w[:, kept].T - z @ w.T) / np.linalg.norm(z @ w.T)
    tuned = np.linalg.norm(z[:, kept] @ folded.T - z @ w.T) / np.linalg.norm(z @ w.T)
    assert tuned < 0.5 * plain and abs(err - tuned) < 1e-6
    same, err = fisher_pruning.tune(z, w, np.arange(8), 1, 200)  # nothing dropped: masks stay 1
    np.testing.assert_allclose(same, w, atol=1e-8)
    assert err < 1e-6
    heads, _ = fisher_pruning.tune(z, w, np.array([0, 2, 3]), 2, 200)  # blocks of 2 columns: 3 of 4 heads
    assert heads.shape == (5, 6)


def test_search_removes_the_least_important_and_spares_each_layers_best():
    import itertools
    imp = [(np.array([5.0, 1.0, 0.5]), np.array([3.0, 0.1, 0.2, 0.3])),
           (np.array([0.2, 4.0, 0.3]), np.array([0.05, 2.0, 1.0, 0.4]))]
    macs = [(10.0, 1.0), (10.0, 1.0)]
    removed = fisher_pruning.search(imp, macs, target_saving=12.0, tolerance=0.5)
    saved = sum(len(h) * 10 + len(n) for h, n in removed)
    cost = sum(i[0][r[0]].sum() + i[1][r[1]].sum() for i, r in zip(imp, removed))
    # brute force over every removal that spares each layer's most important head and neuron
    units = [(layer, kind, u) for layer, pair in enumerate(imp) for kind in (0, 1)
             for u in range(len(pair[kind])) if u != np.argmax(pair[kind])]
    best = min(sum(imp[l_][k][u] for l_, k, u in c) for r in range(len(units) + 1)
               for c in itertools.combinations(units, r) if 12 <= sum(10 if k == 0 else 1 for _, k, _ in c) <= 12.5)
    assert 12 <= saved <= 12.5 and cost == pytest.approx(best)
    assert all(np.argmax(i[0]) not in r[0] and np.argmax(i[1]) not in r[1] for i, r in zip(imp, removed))


def test_fisher_pruning_needs_labels_before_any_module_changes():
    torch.manual_seed(0)
    model = tiny_bert()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="labels"):
        compress(model, method_config("fisher_pruning", mu=0.7), batches(), progress=False)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes


@pytest.mark.parametrize("family", ["opt", "qwen2", "mistral", "gemma3"])
def test_other_decoder_families_prune_save_and_load(family, tmp_path):
    import conftest
    make = {"opt": conftest.tiny_opt, "qwen2": conftest.tiny_qwen2, "mistral": conftest.tiny_mistral,
            "gemma3": conftest.tiny_gemma3}[family]
    torch.manual_seed(0)
    model = make()
    dense = budget.footprint(model).macs
    compress(model, method_config("structured", mu=0.7), batches(), progress=False)
    assert (0.69 * dense) <= budget.footprint(model).macs <= 0.7 * dense + 1e-6
    serialize.save_compressed(model, tmp_path / family)
    data = batches(2, seed=5)
    assert torch.equal(logits(serialize.load_compressed(tmp_path / family), data), logits(model, data))


def test_id_pruning_of_a_duplicated_head_keeps_the_outputs():
    torch.manual_seed(0)
    model = tiny_bert()  # 4 heads of 8 per layer
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            att = layer.attention.self
            for proj in (att.query, att.key, att.value):  # head 3 computes what head 1 computes
                proj.weight[24:32], proj.bias[24:32] = proj.weight[8:16], proj.bias[8:16]
    dense = budget.footprint(model).macs
    head = 4 * 32 * 8 + 2 * 128 * 8
    held_out = batches(3, seed=1)
    before = logits(model, held_out)
    compress(model, method_config("structured", mu=(dense - 2 * head) / dense, units="heads"), batches(), progress=False)
    assert [layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer] == [3, 3]
    assert ((logits(model, held_out) - before).norm() / before.norm()).item() < 1e-5


@pytest.mark.parametrize("options, message", [
    (dict(mu=1.2), r"\(0, 1\]"), (dict(units="rows"), "allowed: both, heads, neurons"),
    (dict(rearrange="yes"), "rearrange must be True or False"), (dict(lsmr_iterations=0), "lsmr_iterations"),
    (dict(roles="qkv"), "whole heads and neurons"),
])
def test_bad_fisher_pruning_options_are_clear_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        method_config("fisher_pruning", **options)


# ---- every architecture still runs after pruning, or is refused before any change: structured
# pruning's cases of tests/test_every_method_every_architecture.py (heads, neurons, both)

HEAD_MODELS = {**{n: f for n, f in conftest.ARCHITECTURES.items() if n not in ("t5", "phi3")},
               "falcon-per-head": lambda: conftest.tiny_falcon(new_decoder_architecture=False, multi_query=False,
                                                              num_kv_heads=None)}


@pytest.mark.parametrize("name", sorted(HEAD_MODELS))
def test_removing_a_head_unit_computes_what_zeroing_its_output_columns_computes(name):
    # a check of the head surgery and of the split fused projections (each part must hold its own
    # heads' rows): dropping head unit 1 of every layer == the dense model without that unit's output
    torch.manual_seed(0)
    model = adapters.prepare(HEAD_MODELS[name]())
    layers = structured._layers(model, method_config("structured"))
    structure = [head_surgery.head_units(model, e) for e in layers]
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for e, h in zip(layers, structure):
            reference.get_submodule(e.attn_out.path).weight[:, h.q_cols(1)] = 0
    plans = [head_surgery.LayerPlan(heads=np.array([u for u in range(h.units) if u != 1])) for h in structure]
    head_surgery.apply_plans(model, layers, structure, plans)
    inputs = conftest.model_inputs(name.split("-")[0])
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, atol=1e-5, rtol=1e-5)
    assert all(adapters.find_modules(model, "query")[i].module.out_features == (h.units - 1) * h.per_unit * h.head_dim
               for i, h in enumerate(structure))


# ---- Gemma's sandwich norms: errors measured where the output enters the stream --------------------
def _gemma(scale: float = 1.0) -> nn.Module:
    """A tiny Gemma-3 whose layer-0 attention and FFN outputs are `scale` times larger: the norms
    after them undo the scale (weights large enough that the norms' eps does not matter)."""
    torch.manual_seed(0)
    model = conftest.tiny_gemma3(initializer_range=0.2)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight *= scale
        model.model.layers[0].mlp.down_proj.weight *= scale
    return model


def _real_batches(n: int = 6, seed: int = 0) -> list[dict]:
    """`batches`, with no token 0 (the tiny Gemma's padding id: a zero embedding, a zero stream)."""
    return [{**b, "input_ids": b["input_ids"].clamp_min(1)} for b in batches(n, seed)]


@pytest.mark.parametrize("error", ["stream", "absolute"])
def test_id_on_gemma_ignores_the_scale_its_post_norms_remove_and_keeps_every_layer(error):
    held_out = _real_batches(2, seed=5)
    kept = {}
    for scale in (1 / 30, 1.0, 30.0):
        model = _gemma(scale)
        if scale != 1.0:  # the same function: the post-sublayer norms undo the scale
            out, ref = logits(model, held_out), logits(_gemma(), held_out)
            assert ((out - ref).norm() / ref.norm()).item() < 1e-3
        report = compress(model, method_config("structured", mu=0.7, error=error), _real_batches(), progress=False)
        kept[scale] = {(r.layer, r.unit): r.units_kept for r in report.modules.itertuples()}
        neurons = [rm.module.in_features for rm in adapters.find_modules(model, "ffn_out")]
        assert min(neurons) >= 96 // 3, (scale, neurons)  # the budget is spread: no layer collapses
    assert kept[1 / 30] == kept[1.0] == kept[30.0]


def test_post_norm_weighting_multiplies_each_row_by_the_norms_gain():
    model = _gemma(3.0)
    data = _real_batches(2)
    layers = structured._layers(model, method_config("structured"))
    rows = structured.capture_rows(model, layers, data, post_norm=True)
    for e in layers:
        block = model.model.layers[e.layer]
        for rm, norm in ((e.attn_out, block.post_attention_layernorm), (e.ffn_out, block.post_feedforward_layernorm)):
            norm_rm = adapters.RoleModule("norm", "post_norm", e.stack, e.layer, norm)
            x = torch.cat([capture.capture_inputs(model, [rm], [b])[rm.path] for b in data]).double()
            y = torch.cat([capture.capture_inputs(model, [norm_rm], [b])["norm"] for b in data])
            with torch.no_grad():
                gain = (norm(y).double().norm(dim=-1) / y.double().norm(dim=-1))[:, None]
            m = rows[rm.path]
            np.testing.assert_allclose(m.T @ m, ((x * gain).T @ (x * gain)).numpy(), rtol=1e-7, atol=1e-9)


# units kept per replaced module and the held-out logits' sum and absolute sum, recorded before the
# post-norm weighting existed: architectures without post-sublayer norms must prune exactly as before
BEFORE_POST_NORMS = {
    "bert": ([3, 3, 3, 3, 60, 60, 2, 2, 2, 2, 58, 58], 0.1154538169503212, 0.12683315202593803),
    "llama": ([25, 25, 25, 22, 22, 22], 37.449125053296484, 1122.559020068692),
    "opt": ([3, 3, 3, 3, 54, 54, 2, 2, 2, 2, 49, 49], 19.783711602191715, 843.5051979837801),
    "qwen2": ([24, 24, 24, 23, 23, 23], 43.38253557286407, 1075.1675036246397),
}


@pytest.mark.parametrize("name", sorted(BEFORE_POST_NORMS))
def test_architectures_without_post_norms_prune_as_before(name):
    torch.manual_seed(0)
    model = conftest.ARCHITECTURES[name]()
    report = compress(model, method_config("structured", mu=0.7), batches(), progress=False)
    out = logits(model, batches(2, seed=5)).double()
    units, total, absolute = BEFORE_POST_NORMS[name]
    assert list(report.modules.units_kept) == units
    assert out.sum().item() == pytest.approx(total, rel=1e-4, abs=1e-5)
    assert out.abs().sum().item() == pytest.approx(absolute, rel=1e-5)


# ---- non-finite weights ---------------------------------------------------------------------------
@pytest.mark.parametrize("criterion", structured.CRITERIA)
def test_a_non_finite_weight_is_refused_naming_its_module_before_any_change(criterion):
    torch.manual_seed(0)
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight holds NaN or inf"):
        compress(model, method_config("structured", mu=0.8, criterion=criterion), batches(), progress=False)
    after = model.state_dict()  # (NaN != NaN: compared with the NaN replaced)
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k].nan_to_num(), after[k].nan_to_num()) for k in state)


def test_non_finite_calibration_inputs_are_refused_naming_the_modules_before_any_change():
    torch.manual_seed(0)
    model = tiny_llama()
    with torch.no_grad():  # not a pruned module: its NaN reaches the next layers' inputs
        model.model.layers[1].input_layernorm.weight[3] = float("inf")
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"calibration inputs of model\.layers\.1\.self_attn\.o_proj.*NaN or inf"):
        compress(model, method_config("structured", mu=0.8), batches(), progress=False)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes


def test_allocation_does_not_overshoot_by_a_head_when_neurons_can_close_the_gap():
    head = (np.array([1.0, 0.05, 0.0]), 10.0)             # 2 units of 10 MACs; dropping one costs little
    neurons = (np.array([(20 - k) / 20 for k in range(21)]), 1.0)  # 20 units of 1 MAC
    # tau = 0.05 drops a head (10 MACs for a target of 5) and no neuron can be added back to close
    # the 5 MACs of overshoot; keeping both heads and dropping 5 neurons lands on the budget
    assert structured.allocate([head, neurons], target_saving=5.0) == [2, 15]


@pytest.mark.parametrize("name", ["gpt2", "gpt_neox", "falcon", "phi3"])
def test_families_with_fused_projections_prune_save_and_load(name, tmp_path):
    torch.manual_seed(0)
    model = conftest.ARCHITECTURES[name]()
    units = "neurons" if name == "phi3" else "both"  # Phi-3's heads are refused (test_every_method_every_architecture)
    dense = budget.footprint(model).macs
    compress(model, method_config("structured", mu=0.7, units=units), batches(), progress=False)
    assert 0.69 * dense <= budget.footprint(model).macs <= 0.7 * dense + 1e-6
    serialize.save_compressed(model, tmp_path / name)
    data = batches(2, seed=5)
    assert torch.equal(logits(serialize.load_compressed(tmp_path / name), data), logits(model, data))


@pytest.mark.parametrize("name", ["structured", "fisher_pruning"])
@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama-gqa"])
def test_mu_over_the_blocks_counts_the_layers_only_and_removes_fewer_macs(name, make):
    """macs_over="blocks" (the seeds' convention): mu of the blocks' MACs (linear layers and attention cores
    of every layer), the embeddings and the head outside the count; the same mu then keeps more of the model."""
    torch.manual_seed(0)
    model = make()
    table = budget.module_table(model)
    blocks = budget.block_macs(model)
    outside = table.loc[table["layer"].isna(), "macs_per_token"].sum()
    assert outside > 0 and blocks + outside == pytest.approx(budget.footprint(model).macs)
    data = labelled(make)
    whole = copy.deepcopy(model)
    compress(whole, method_config(name, mu=0.6), data, progress=False)
    compress(model, method_config(name, mu=0.6, macs_over="blocks"), data, progress=False)
    after = budget.block_macs(model)
    assert (0.6 - 0.01) * blocks <= after <= 0.6 * blocks + 1e-6
    # the decoder's LM head is a large share of its MACs: a visibly larger model; BERT's pooler and classifier
    # (per sequence) are a sliver, within one unit's MACs
    assert budget.footprint(model).macs >= budget.footprint(whole).macs
    if make is tiny_llama:
        assert budget.footprint(model).macs > budget.footprint(whole).macs
