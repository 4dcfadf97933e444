"""Post-training quantization: grids, packing, GPTQ vs RTN, byte counts, whole models, save/load."""
import copy
import math

import pytest
import torch
from torch import nn

from tcomp_utils import adapters, budget, serialize
from tcomp_utils.methods.gptq import HessianAccumulator, gptq
from tcomp_utils.methods.quant_grid import QuantGrid, fit_grid, pack, rtn, unpack
from tcomp_utils.methods.quantized import QuantEmbedding, QuantLinear, int8_dynamic
from tcomp_utils.methods.quantization import quantize
from conftest import TINY, tiny_bert, tiny_llama, tiny_t5


def correlated_inputs(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Tokens × dim inputs whose channels are strongly correlated (a few latent factors plus a
    little noise) and of very different scales, as activations are."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim // 8, dim, generator=g) * torch.logspace(-1, 1, dim)[None, :]
    return torch.randn(n, dim // 8, generator=g) @ mix + 0.05 * torch.randn(n, dim, generator=g)


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_unpack_round_trips_exactly(bits):
    g = torch.Generator().manual_seed(bits)
    for n in (1, 7, 8, 13, 1000):
        codes = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.int64).to(torch.uint8)
        packed = pack(codes, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8)
        assert torch.equal(unpack(packed, bits, n), codes)


def test_pack_rejects_codes_outside_the_bit_width():
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 7\] for 3 bits"):
        pack(torch.tensor([0, 8]), 3)


@pytest.mark.parametrize("kw, match", [
    (dict(bits=1), r"bits must be an integer in \[2, 8\], got 1"),
    (dict(bits=9), r"bits must be an integer in \[2, 8\], got 9"),
    (dict(bits=4.0), r"bits must be an integer in \[2, 8\], got 4.0"),
    (dict(bits=4, group_size=0), "group_size must be None .* got 0"),
    (dict(bits=4, group_size=-8), "group_size must be None .* got -8"),
])
def test_invalid_grids_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        QuantGrid(**kw)


def test_a_group_size_that_does_not_divide_leaves_a_short_last_group():
    assert QuantGrid(4, 128).n_groups(64) == 1 and QuantGrid(4, 16).n_groups(64) == 4
    assert QuantGrid(4, 128).n_groups(576) == 5  # smollm2's hidden width: 4 × 128 + 64
    torch.manual_seed(0)
    w = torch.randn(6, 40)
    qw = rtn(w, QuantGrid(8, 16))
    assert qw.scales.shape == (6, 3)
    # every group, the short last one included, is quantized as if alone: the same codes and the
    # same decoded values as RTN of its columns on their own
    for k, cols in enumerate((slice(0, 16), slice(16, 32), slice(32, 40))):
        alone = rtn(w[:, cols], QuantGrid(8))
        assert torch.equal(qw.codes[:, cols], alone.codes) and torch.equal(qw.scales[:, k:k + 1], alone.scales)
        torch.testing.assert_close(qw.dequantize()[:, cols], alone.dequantize())
    assert ((qw.dequantize() - w).norm() / w.norm()) < 0.01  # 8 bits: a fine grid everywhere
    layer = QuantLinear.from_quantized(qw)
    torch.testing.assert_close(layer.weight_matrix(), qw.dequantize())
    res = gptq(w, torch.eye(40, dtype=torch.float64), QuantGrid(8, 16))  # identity Hessian: GPTQ is RTN
    assert torch.equal(res.codes, qw.codes)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [None, 8])
def test_rtn_error_is_at_most_half_a_step(symmetric, group_size):
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    grid = QuantGrid(4, group_size, symmetric)
    qw = rtn(w, grid)
    assert qw.codes.max() <= 15 and qw.scales.shape == qw.zeros.shape == (16, grid.n_groups(32))
    w_hat = qw.dequantize()
    step = qw.scales.float().repeat_interleave(32 // grid.n_groups(32), dim=1)
    # rounding moves a weight by at most half a step; the float16 scale (relative error 2^-11, times
    # up to 2^(b-1) steps from the zero point) may push the range ends slightly further
    assert ((w - w_hat).abs() <= step * (0.5 + 2**-11 * 8) + 1e-6).all()
    if symmetric:
        assert (qw.zeros == 8).all()


def test_zero_is_exactly_representable():
    w = torch.tensor([[0.0, 0.3, 1.7, 2.0], [-1.0, 0.0, -0.5, -0.25]])
    assert (rtn(w, QuantGrid(3)).dequantize()[w == 0] == 0).all()
    scale, zero = fit_grid(w, QuantGrid(3))
    assert torch.equal(zero, torch.round(zero)) and (scale > 0).all()


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("group_size", [None, 16])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_is_below_rtn_on_correlated_inputs(bits, group_size, act_order):
    torch.manual_seed(0)
    W = torch.randn(48, 64)
    X = correlated_inputs(2048, 64)
    acc = HessianAccumulator(64)
    acc64 = HessianAccumulator(64, dtype=torch.float64)
    for chunk in X.split(500):  # the running mean equals 2XᵀX/n
        acc.add(chunk)
        acc64.add(chunk)
    exact = 2 * X.double().T @ X.double() / len(X)
    torch.testing.assert_close(acc64.H, exact)
    assert acc.H.dtype == torch.float32  # float32 by default: relative error at float32's rounding
    assert ((acc.H.double() - exact).norm() / exact.norm()) < 1e-6
    grid = QuantGrid(bits, group_size)
    res = gptq(W, acc.H, grid, block_size=16, act_order=act_order)
    W_gptq, W_rtn = res.dequantize(), rtn(W, grid).dequantize()
    err = lambda W_hat: ((W - W_hat) @ X.T).norm()  # noqa: E731
    assert err(W_gptq) < 0.8 * err(W_rtn), (err(W_gptq), err(W_rtn))
    assert res.codes.max() < 2**bits


def test_gptq_static_groups_and_act_order_keep_contiguous_groups():
    torch.manual_seed(0)
    W, X = torch.randn(8, 32), correlated_inputs(256, 32)
    H = 2 * X.double().T @ X.double() / len(X)
    dynamic = gptq(W, H, QuantGrid(4, 8), act_order=True)
    static = gptq(W, H, QuantGrid(4, 8), act_order=True, static_groups=True)
    assert dynamic.g_idx is not None and sorted(dynamic.g_idx.tolist()) == sorted([k for k in range(4) for _ in range(8)])
    assert static.g_idx is None


def test_gptq_rejects_bad_options():
    with pytest.raises(ValueError, match="damp must be > 0"):
        gptq(torch.randn(4, 8), torch.eye(8), QuantGrid(4), damp=0)
    with pytest.raises(ValueError, match="H must be 8 × 8"):
        gptq(torch.randn(4, 8), torch.eye(6), QuantGrid(4))


@pytest.mark.parametrize("bits, group_size, symmetric, bias", [(4, None, False, True), (3, 24, False, False),
                                                                (8, 32, True, True), (2, 16, True, False)])
def test_quant_linear_byte_count_is_exact(bits, group_size, symmetric, bias):
    torch.manual_seed(0)
    lin = nn.Linear(64, 24, bias=bias)
    grid = QuantGrid(bits, group_size, symmetric)
    q = QuantLinear.from_quantized(rtn(lin.weight, grid), lin.bias)
    groups = grid.n_groups(64)
    expected = (math.ceil(24 * 64 * bits / 8) + 24 * groups * 2 + (0 if symmetric else math.ceil(24 * groups * bits / 8))
                + (24 * 4 if bias else 0))
    fp = q.tcomp_footprint()
    assert fp.bytes == expected
    assert fp.bytes == sum(t.numel() * t.element_size() for t in q.state_dict().values())
    assert fp.macs == 64 * 24
    x = torch.randn(3, 64)
    torch.testing.assert_close(q(x), nn.functional.linear(x, q.weight_matrix(), lin.bias))
    torch.testing.assert_close(q.weight_matrix(), rtn(lin.weight, grid).dequantize())


@pytest.mark.parametrize("group_size", [None, 20])  # 20 divides none of the widths: short last groups
@pytest.mark.parametrize("family", sorted(TINY))
def test_gptq_quantizes_every_linear_of_each_family(family, group_size):
    torch.manual_seed(0)
    model = TINY[family]()
    batches = [{"input_ids": torch.randint(0, 100, (4, 10))} for _ in range(2)]
    if family == "t5":
        for b in batches:
            b["decoder_input_ids"] = torch.randint(0, 100, (4, 6))
    before = copy.deepcopy(model)
    n_linear = sum(isinstance(m, nn.Linear) for p, m in model.named_modules()
                   if not p.endswith(("lm_head", "classifier", "pooler.dense")))
    report = quantize(model, "gptq", bits=8, group_size=group_size, calibration=batches, progress=False)
    assert len(report.modules) == n_linear == sum(isinstance(m, QuantLinear) for m in model.modules())
    assert report.modules.output_error.notna().all() and (report.modules.output_error < 0.05).all()
    assert report.after.bytes < report.before.bytes
    with torch.no_grad():
        ref, out = before(**batches[0]), model(**batches[0])
    ref, out = (ref.logits, out.logits)
    assert ((out - ref).norm() / ref.norm()) < 0.05


def test_gptq_beats_rtn_on_a_whole_decoder_at_3_bits():
    torch.manual_seed(0)
    model = tiny_llama()
    batches = [{"input_ids": torch.randint(0, 100, (8, 16))} for _ in range(4)]
    test = torch.randint(0, 100, (8, 16))
    with torch.no_grad():
        ref = model(test).logits
    errs = {}
    for method in ("rtn", "gptq"):
        m = copy.deepcopy(model)
        report = quantize(m, method, bits=3, calibration=batches, progress=False)
        with torch.no_grad():
            errs[method] = ((m(test).logits - ref).norm() / ref.norm()).item()
        errs[method + "_layers"] = report.modules.output_error.mean()
    assert errs["gptq_layers"] < errs["rtn_layers"] and errs["gptq"] < errs["rtn"], errs


def test_rtn_needs_no_data_and_gptq_does():
    model = tiny_bert()
    report = quantize(model, "rtn", bits=4, roles="ffn", progress=False)
    assert sorted(report.modules.role) == ["ffn_in", "ffn_in", "ffn_out", "ffn_out"] and report.modules.output_error.isna().all()
    with pytest.raises(ValueError, match="method 'gptq' needs calibration batches"):
        quantize(tiny_bert(), "gptq", bits=4)


@pytest.mark.parametrize("kw, err, match", [
    (dict(method="awq"), ValueError, "unknown quantization method 'awq'; allowed: rtn, gptq"),
    (dict(bits=1), ValueError, r"bits must be an integer in \[2, 8\]"),
    (dict(group_size=0), ValueError, "group_size must be None"),
    (dict(roles=["gate"]), ValueError, "unknown module role 'gate'"),
    (dict(lm_head=True), ValueError, "has no linear output head"),
    (dict(roles=["embeddings", "ffn"], calibration=[torch.zeros(2, 3)]), ValueError,
     "calibration batch 0 is a Tensor, not a dict with 'input_ids'"),
    (dict(calibration=[{"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 3)}]),
     ValueError, r"attention_mask has shape \(2, 3\), but input_ids has \(2, 4\)"),
    (dict(calibration=[{"input_ids": torch.ones(2, 4)}]), ValueError, "input_ids must be a 2-D integer tensor"),
    (dict(calibration=[{"input_ids": torch.ones(4, dtype=torch.long)}]), ValueError, "must be a 2-D integer tensor"),
    (dict(calibration=[{"input_ids": torch.full((1, 3), 100)}]), ValueError, r"outside the model's vocabulary \[0, 100\)"),
    (dict(layers=[99]), ValueError, r"no layer 99; layer indices run from 0 \(encoder: 2 layers\)"),
    (dict(layers=[]), ValueError, "layers must be a non-empty list"),
    (dict(roles=[]), ValueError, r"roles=\[\] names no module"),
    (dict(method="gptq", damp=-1.0, calibration=[{"input_ids": torch.zeros(1, 3, dtype=torch.long)}]), ValueError,
     "damp must be > 0"),
])
def test_bad_arguments_raise_before_anything_changes(kw, err, match):
    model = tiny_bert()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(err, match=match):
        quantize(model, **{"method": "rtn", "bits": 4, **kw})
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_lm_head_is_quantized_last_and_untied():
    torch.manual_seed(0)
    model = tiny_llama()
    batches = [{"input_ids": torch.randint(0, 100, (4, 12))}]
    report = quantize(model, "gptq", bits=4, group_size=16, calibration=batches, lm_head=True, progress=False)
    assert report.modules.path.iloc[-1] == "lm_head" and isinstance(model.lm_head, QuantLinear)
    assert isinstance(model.model.embed_tokens, nn.Embedding)  # the table stays float32


@pytest.mark.parametrize("method, kw", [("rtn", dict(bits=3, group_size=16)),
                                        ("gptq", dict(bits=4, group_size=16, act_order=True)),
                                        ("gptq", dict(bits=4, symmetric=True))])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, method, kw):
    torch.manual_seed(0)
    model = tiny_llama()
    batches = [{"input_ids": torch.randint(0, 100, (4, 12))}]
    quantize(model, method, calibration=batches, progress=False, **kw)
    ids = torch.randint(0, 100, (2, 9))
    serialize.save_compressed(model, tmp_path / "q")
    loaded = serialize.load_compressed(tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert budget.footprint(loaded) == budget.footprint(model)


def test_budget_counts_quantized_bytes():
    torch.manual_seed(0)
    model = tiny_bert()
    dense = budget.footprint(model)
    report = quantize(model, "rtn", bits=4, group_size=16, progress=False)
    saved = int((report.modules.bytes_before - report.modules.bytes_after).sum())
    assert budget.footprint(model).bytes == dense.bytes - saved
    assert budget.footprint(model).macs == dense.macs


def test_int8_dynamic_path_stays_close_to_fp32():
    torch.manual_seed(0)
    model = tiny_bert()
    q = int8_dynamic(model)
    ids = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        ref, out = model(ids).logits, q(ids).logits
    assert not any(type(m) is nn.Linear for m in q.bert.encoder.modules())
    assert any(type(m) is nn.Linear for m in model.bert.encoder.modules())  # the original is untouched
    assert (out - ref).norm() / ref.norm() < 0.1


@pytest.mark.parametrize("bits, group_size, symmetric", [(3, None, False), (4, 16, False), (8, 20, True)])
def test_quant_embedding_looks_up_its_dequantized_rows(bits, group_size, symmetric):
    torch.manual_seed(0)
    table = nn.Embedding(50, 48)
    grid = QuantGrid(bits, group_size, symmetric)
    q = QuantEmbedding.from_quantized(rtn(table.weight, grid))
    torch.testing.assert_close(q.weight_matrix(), rtn(table.weight, grid).dequantize())
    ids = torch.tensor([[3, 7, 3, 49], [0, 0, 12, 7]])
    torch.testing.assert_close(q(ids), nn.functional.embedding(ids, q.weight_matrix()))
    groups = grid.n_groups(48)
    expected = 50 * (math.ceil(48 * bits / 8) + groups * 2 + (0 if symmetric else math.ceil(groups * bits / 8)))
    assert q.tcomp_footprint().bytes == expected == sum(t.numel() * t.element_size() for t in q.state_dict().values())


def test_embeddings_are_quantized_only_when_asked_and_first():
    torch.manual_seed(0)
    model = tiny_llama()
    batches = [{"input_ids": torch.randint(0, 100, (4, 12))}]
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        ref = model(ids).logits
    with pytest.warns(UserWarning, match="output head is tied to its token table"):
        report = quantize(model, "gptq", bits=8, calibration=batches, roles=["embeddings", "ffn"], progress=False)
    assert report.modules.role.iloc[0] == "embeddings" and isinstance(model.model.embed_tokens, QuantEmbedding)
    assert report.modules.role.iloc[1:].isin(["ffn_in", "ffn_out"]).all()
    assert isinstance(model.lm_head.weight, nn.Parameter)  # the tied head keeps its float32 weight
    with torch.no_grad():
        assert ((model(ids).logits - ref).norm() / ref.norm()) < 0.05


def test_a_head_tied_to_the_quantized_table_stays_tied_and_is_stored_once(tmp_path):
    torch.manual_seed(0)
    tied = tiny_llama()
    untied = copy.deepcopy(tied)  # the same numbers, the head's weight its own copy of the table
    untied.lm_head.weight = nn.Parameter(tied.lm_head.weight.detach().clone())
    untied.config.tie_word_embeddings = False
    dense = budget.footprint(tied)
    for model in (tied, untied):
        quantize(model, "rtn", bits=4, group_size=32, roles=["embeddings", "linear"], lm_head=True, progress=False)
    assert tied.lm_head is tied.model.embed_tokens and isinstance(tied.lm_head, QuantEmbedding) and tied.lm_head.head
    assert isinstance(untied.lm_head, QuantLinear)
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        assert torch.equal(tied(ids).logits, untied(ids).logits)
    # the table is counted once: the untied model's bytes less its head's; the head's MACs stay counted
    head = budget.compressed_footprint(untied.lm_head)
    assert budget.footprint(tied).bytes == budget.footprint(untied).bytes - head.bytes
    assert budget.footprint(tied).macs == budget.footprint(untied).macs == dense.macs
    serialize.save_compressed(tied, tmp_path / "tied")
    loaded = serialize.load_compressed(tmp_path / "tied")
    assert loaded.lm_head is loaded.model.embed_tokens and loaded.lm_head.head
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, tied(ids).logits)
    assert budget.footprint(loaded) == budget.footprint(tied)
    with pytest.raises(TypeError, match="looks up token ids .*head=True"):  # an untied table takes no hidden states
        untied.model.embed_tokens(torch.zeros(1, 48))


def test_t5_shared_embedding_is_quantized_under_every_name_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = tiny_t5()
    quantize(model, "rtn", bits=4, group_size=16, roles=["embeddings", "linear", "cross_query"], progress=False)
    assert model.encoder.embed_tokens is model.shared and model.decoder.embed_tokens is model.shared
    assert isinstance(model.shared, QuantEmbedding)
    ids = torch.randint(0, 100, (2, 7))
    serialize.save_compressed(model, tmp_path / "t5")
    loaded = serialize.load_compressed(tmp_path / "t5")
    assert loaded.encoder.embed_tokens is loaded.shared
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, decoder_input_ids=ids).logits,
                           model(input_ids=ids, decoder_input_ids=ids).logits)
    assert budget.footprint(loaded) == budget.footprint(model)


def test_nan_weights_are_refused_before_anything_changes():
    model = tiny_bert()
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"bert.encoder.layer.1.output.dense.weight holds NaN or inf values"):
        quantize(model, "rtn", bits=4, progress=False)
    assert not any(isinstance(m, QuantLinear) for m in model.modules())


def test_a_failure_midway_restores_the_model_and_names_the_layer():
    torch.manual_seed(0)
    model = tiny_llama()
    with torch.no_grad():  # NaN activations from block 1 on: its Hessians cannot be factorized
        model.model.layers[1].input_layernorm.weight.fill_(float("nan"))
    batches = [{"input_ids": torch.randint(0, 100, (2, 8))}]
    before = {p: m for p, m in model.named_modules()}
    with pytest.raises(ValueError, match=r"gptq of model.layers.1.self_attn.q_proj: its input Hessian is not positive "
                                         r"definite") as info:
        quantize(model, "gptq", bits=4, calibration=batches, progress=False)
    assert any("the model was restored" in note for note in getattr(info.value, "__notes__", []))
    assert all(model.get_submodule(p) is m for p, m in before.items())  # block 0's layers are back
    assert not any(isinstance(m, QuantLinear) for m in model.modules())


def test_gptq_hessians_see_real_tokens_only():
    """Padding must not enter the Hessians: GPTQ on padded batches gives the codes it gives on
    the same sequences one at a time."""
    torch.manual_seed(0)
    model = tiny_bert()
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(1, 100, (n,), generator=g) for n in (12, 3, 5, 2)]
    width = max(len(x) for x in seqs)
    padded = {"input_ids": torch.zeros(len(seqs), width, dtype=torch.long),
              "attention_mask": torch.zeros(len(seqs), width, dtype=torch.long)}
    for i, x in enumerate(seqs):
        padded["input_ids"][i, :len(x)], padded["attention_mask"][i, :len(x)] = x, 1
    alone = [{"input_ids": x[None], "attention_mask": torch.ones(1, len(x), dtype=torch.long)} for x in seqs]
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    quantize(a, "gptq", bits=3, calibration=[padded], progress=False)
    quantize(b, "gptq", bits=3, calibration=alone, progress=False)
    codes = lambda m: torch.cat([q.codes().flatten() for q in m.modules() if isinstance(q, QuantLinear)])  # noqa: E731
    assert (codes(a) != codes(b)).float().mean() < 0.002  # equal up to float rounding of the sums


def _obs_reference(W, H, grid, static):
    """GPTQ written out column by column (no lazy blocks, no permutation), with the group grids
    fitted either on the original weights (static) or on the updated ones when a group starts."""
    W = W.double().clone()
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(
        H.double() + 0.01 * H.double().diagonal().mean() * torch.eye(len(H), dtype=torch.float64))), upper=True)
    g = grid.group_size
    original = W.clone()
    codes, grids = torch.zeros_like(W), []
    for j in range(W.shape[1]):
        if j % g == 0:
            scale, zero = fit_grid((original if static else W)[:, j:j + g].float(), grid)
            grids.append((scale.double(), zero.double()))
        scale, zero = grids[-1]
        c = torch.clamp(torch.round(W[:, j] / scale) + zero, 0, grid.maxq)
        codes[:, j] = c
        err = (W[:, j] - scale * (c - zero)) / Hinv[j, j]
        W[:, j:] -= err[:, None] * Hinv[j, j:][None, :]
    return codes.to(torch.uint8), torch.stack([s for s, _ in grids], dim=1)


@pytest.mark.parametrize("block_size", [3, 4, 128])
def test_dynamic_groups_are_fitted_on_the_updated_weights_and_static_on_the_original(block_size):
    """The grouping rule, pinned: without ``static_groups`` a group's grid is fitted when its first
    column is reached, on its columns as updated by every column quantized before (so it does not
    depend on the lazy block size, 3 or 4 here against groups of 4); with ``static_groups``, on the
    original weights. On this matrix the two rules give different grids and different codes."""
    torch.manual_seed(0)
    W, X = torch.randn(8, 16), correlated_inputs(512, 16)
    H = 2 * X.T @ X / len(X)
    grid = QuantGrid(3, 4)
    for static in (False, True):
        ours = gptq(W, H, grid, block_size=block_size, static_groups=static)
        codes, scales = _obs_reference(W, H, grid, static)
        assert (ours.codes != codes).float().mean() < 0.02  # equal up to float32 vs float64 rounding
        torch.testing.assert_close(ours.scales.float(), scales.float(), rtol=2e-3, atol=1e-6)
    dynamic, static = gptq(W, H, grid, block_size=block_size), gptq(W, H, grid, block_size=block_size, static_groups=True)
    assert not torch.equal(dynamic.scales, static.scales)  # groups 1 and 2 moved before they were fitted
    torch.testing.assert_close(dynamic.scales[:, 0], static.scales[:, 0])  # group 0 had not moved yet
    assert (dynamic.codes != static.codes).any()


def test_inverse_hessian_factor_is_the_upper_cholesky_factor_of_the_damped_inverse():
    from tcomp_utils.methods.gptq import inverse_hessian_factor
    X = correlated_inputs(256, 32)
    H = 2 * X.T @ X / len(X)
    R = inverse_hessian_factor(H, 0.01)
    damped = H.double() + 0.01 * H.double().diagonal().mean() * torch.eye(32, dtype=torch.float64)
    assert torch.equal(R, torch.triu(R)) and (R.diagonal() > 0).all()
    torch.testing.assert_close((R.double().T @ R.double()) @ damped, torch.eye(32, dtype=torch.float64), atol=1e-4, rtol=0)


def test_layers_reading_the_same_inputs_share_one_gram_product_and_get_equal_hessians():
    from tcomp_utils.methods.quantization import _shared_gram_sink
    x, y = torch.randn(50, 8), torch.randn(50, 8)
    acc = {p: HessianAccumulator(8) for p in "abc"}
    sink = _shared_gram_sink(acc)
    sink("a", x), sink("b", x.reshape(50, 8)), sink("c", y)  # b: a view of the very same rows
    sink("a", y), sink("b", y), sink("c", x.clone())          # an equal copy is computed afresh
    for p in "ab":
        torch.testing.assert_close(acc[p].H, 2 * (x.T @ x + y.T @ y) / 100)
    torch.testing.assert_close(acc["c"].H, acc["a"].H)
    assert acc["a"].n == acc["b"].n == acc["c"].n == 100


def test_gptq_report_times_its_phases():
    torch.manual_seed(0)
    model = tiny_llama()
    batches = [{"input_ids": torch.randint(1, 100, (2, 16))} for _ in range(3)]
    report = quantize(model, "gptq", bits=4, calibration=batches, progress=False)
    assert set(report.phases) == {"capture", "hessians", "solves", "packing", "rerun"}
    assert all(v >= 0 for v in report.phases.values())
    assert sum(report.phases.values()) <= report.seconds + 1e-3


def test_true_sequential_quantizes_a_llama_block_in_four_groups_in_forward_order():
    from tcomp_utils import capture
    torch.manual_seed(0)
    model = tiny_llama()
    batches = [{"input_ids": torch.randint(1, 100, (2, 16))} for _ in range(3)]
    linears = [rm for role in ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
               for rm in adapters.find_modules(model, role, [0])]
    step = next(capture.sequential(model, batches, linears))
    groups = [sorted(p.path.rsplit(".", 1)[-1] for p in grp) for grp in step.input_groups(linears)]
    assert groups == [["k_proj", "q_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    ra = quantize(a, "gptq", bits=3, calibration=batches, true_sequential=True, progress=False)
    rb = quantize(b, "gptq", bits=3, calibration=batches, true_sequential=False, progress=False)
    # q/k/v of block 0 see the same inputs either way; o_proj sees the quantized attention's output
    first = lambda r, name: r.modules.set_index("path").output_error[f"model.layers.0.{name}"]  # noqa: E731
    assert first(ra, "self_attn.q_proj") == pytest.approx(first(rb, "self_attn.q_proj"), rel=1e-5)
    assert first(ra, "self_attn.o_proj") != pytest.approx(first(rb, "self_attn.o_proj"), rel=1e-5)


def test_the_dequantized_weight_cache_is_bounded_exact_and_follows_the_codes():
    from tcomp_utils.methods import quantized
    torch.manual_seed(0)
    layers = [QuantLinear.from_linear(nn.Linear(32, 16), QuantGrid(4)) for _ in range(3)]
    x = torch.randn(5, 32)
    expected = [x @ q.weight_matrix().T + q.bias for q in layers]
    one = 16 * 32 * 4  # bytes of one de-quantized float32 weight
    try:
        quantized.set_dequant_cache_limit(0)  # empty it (other tests' layers may be cached)
        quantized.set_dequant_cache_limit(2.5 * one / 2**20)  # room for two of the three
        for q, y in zip(layers, expected):
            torch.testing.assert_close(q(x), y)
        assert quantized.dequant_cache_bytes() == 2 * one
        assert layers[0].dequantized(x) is layers[0].dequantized(x)  # pinned: served from the cache
        assert layers[2].dequantized(x) is not layers[2].dequantized(x)  # beyond the limit: every call
        # new codes loaded in place are seen at once (the cache is keyed by the buffers' versions)
        other = QuantLinear.from_linear(nn.Linear(32, 16), QuantGrid(4))
        layers[0].load_state_dict(other.state_dict())
        torch.testing.assert_close(layers[0](x), x @ other.weight_matrix().T + other.bias)
        assert "_CACHE" not in str(layers[0].state_dict().keys())
        # filled under inference_mode, then used where autograd records (inputs that need grad)
        with torch.inference_mode():
            layers[1](x)
        xg = x.clone().requires_grad_()
        layers[1](xg).sum().backward()
        torch.testing.assert_close(xg.grad, layers[1].weight_matrix().sum(0).expand_as(x))
        quantized.set_dequant_cache_limit(0)
        assert quantized.dequant_cache_bytes() == 0
        torch.testing.assert_close(layers[1](x), expected[1])
        with pytest.raises(ValueError, match="must be >= 0 MiB, got -1"):
            quantized.set_dequant_cache_limit(-1)
    finally:
        quantized.set_dequant_cache_limit(1024)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_low_rank_layers_are_quantized_factor_by_factor_and_counted_and_saved_exactly(tmp_path, method):
    from tcomp_utils.methods.factorization import factorize
    from tcomp_utils.methods.quantized import QuantLowRankLinear

    torch.manual_seed(0)
    model = tiny_llama()
    factorize(model, "svd", roles="ffn", ratio=2, progress=False)
    lowrank = adapters.find_modules(model, "ffn_in")[0].module
    n_in, n_out, r = lowrank.in_features, lowrank.out_features, lowrank.rank
    ids = torch.randint(0, 100, (4, 16))
    before = model(input_ids=ids).logits
    calibration = [{"input_ids": ids}] if method == "gptq" else None
    report = quantize(model, method, bits=8, calibration=calibration, progress=False)
    q = adapters.find_modules(model, "ffn_in")[0].module
    assert isinstance(q, QuantLowRankLinear) and (q.in_features, q.rank, q.out_features) == (n_in, r, n_out)
    assert q.first.grid.bits == q.second.grid.bits == 8
    row = report.modules.set_index("path").loc[adapters.find_modules(model, "ffn_in")[0].path]
    # the report's bytes of the quantized low-rank layer are its two factors' packed tensors, as the counter sees them
    assert row.bytes_after == q.first.tcomp_footprint().bytes + q.second.tcomp_footprint().bytes < row.bytes_before
    assert row.rel_error < 0.02
    table = budget.module_table(model)
    assert table[table.path.str.startswith(row.name + ".")].macs_per_token.sum() == r * (n_in + n_out)
    after = model(input_ids=ids).logits
    assert (after - before).abs().max() < 0.05 * before.abs().max()
    serialize.save_compressed(model, tmp_path / "m")
    loaded = serialize.load_compressed(tmp_path / "m")
    assert torch.equal(loaded(input_ids=ids).logits, after)
    assert budget.footprint(loaded) == budget.footprint(model)


def test_a_low_rank_layer_with_a_shared_factor_is_refused_before_anything_changes():
    from tcomp_utils.methods.factorization import factorize

    model = tiny_llama()
    factorize(model, "svd", roles="ffn_in", ratio=2, mode="concatenated", progress=False)
    with pytest.raises(TypeError, match="shared across layers"):
        quantize(model, "rtn", bits=8, progress=False)


def test_gptq_calibration_longer_than_the_positions_is_refused_before_the_embeddings_change(monkeypatch):
    """1,000 tokens on a 512-position BERT failed inside transformers (expanded size 1000 vs 512),
    after the embedding table had been quantized; the length is now refused up front."""
    from tcomp_utils.methods import quantization

    torch.manual_seed(0)
    model = tiny_bert()  # 64 positions
    state = copy.deepcopy(model.state_dict())
    monkeypatch.setattr(quantization, "_quantize_embedding",
                        lambda *a: pytest.fail("the embedding table was quantized before the length check"))
    batches = [{"input_ids": torch.randint(0, 100, (2, 100))}]
    with pytest.raises(ValueError, match=r"input_ids has 100 tokens, but BertForSequenceClassification has positions "
                                         r"for at most 64 .*max_length=64"):
        quantize(model, "gptq", bits=4, calibration=batches, roles=["embeddings", "ffn"], progress=False)
    assert not any(isinstance(m, (QuantLinear, QuantEmbedding)) for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
