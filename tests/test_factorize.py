"""Factorized layers: exactness where the budget allows it, budgets and counts, errors, save/load."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from tcomp_utils import budget, serialize
from tcomp_utils.budget import BudgetError
from tcomp_utils.methods.factorization import factorize
from tcomp_utils.methods.lowrank import LowRankLinear, rank_for_ratio, stacked_svd, truncated_svd
from tcomp_utils.methods.tensor_factors import (FalconLinear, KroneckerLinear, falcon_linears, kronecker_shape,
                                                nearest_kronecker, tucker_linears)
from conftest import tiny_bert, tiny_llama


def linear_from(weight, bias=True):
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


def low_rank(out, n_in, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, r, generator=g, dtype=torch.float64) @ torch.randn(r, n_in, generator=g, dtype=torch.float64)


def test_truncated_svd_at_full_rank_is_exact():
    w = torch.randn(6, 9, dtype=torch.float64)
    left, right = truncated_svd(w, 6)
    torch.testing.assert_close(left @ right, w)


def test_svd_of_a_rank_k_matrix_is_exact_and_computes_in_factored_form():
    lin = linear_from(low_rank(20, 30, 4).float())
    lr = LowRankLinear.from_linear(lin, 4)
    x = torch.randn(5, 30)
    torch.testing.assert_close(lr(x), lin(x), atol=1e-4, rtol=1e-4)
    assert lr.tcomp_footprint() == budget.Footprint(4 * 50 + 20, 4 * (4 * 50 + 20), 4 * 50)


def test_rank_formula_and_impossible_budgets():
    assert rank_for_ratio(384, 1536, 3) == 384 * 1536 // (3 * (384 + 1536))  # 102
    assert rank_for_ratio(384, 384, 10, n_stacked=6) == int(6 * 384 * 384 / (10 * (384 + 6 * 384)))
    with pytest.raises(BudgetError, match="must be a number > 1"):
        rank_for_ratio(10, 10, 1.0)
    with pytest.raises(BudgetError, match="below 1"):
        rank_for_ratio(4, 4, 100)
    with pytest.raises(BudgetError, match="at or above full rank 8"):
        LowRankLinear.from_linear(nn.Linear(8, 16), 8)


def test_stacked_svd_shares_one_right_factor_and_counts_it_once():
    lins = [linear_from(low_rank(12, 16, 3, seed=s).float() if s == 0 else torch.randn(12, 16)) for s in range(3)]
    shared, mods = stacked_svd(lins, 5)
    assert all(m.shared is shared for m in mods)
    holder = nn.ModuleList(mods)
    table = budget.module_table(holder, 8)
    assert table.params.sum() == 5 * 16 + 3 * (12 * 5 + 12)
    assert (table.kind == "SharedFactor").sum() == 1
    x = torch.randn(4, 16)
    for lin, mod in zip(lins, mods):
        torch.testing.assert_close(mod(x), x @ mod.weight_matrix().T + lin.bias)


def test_kronecker_recovers_an_exact_kronecker_product():
    a, b = torch.randn(4, 6, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    w = torch.kron(a, b)  # 32 x 30
    fa, fb = nearest_kronecker(w, 4, 6, 1)
    torch.testing.assert_close(torch.kron(fa[0], fb[0]), w)
    lin = linear_from(w.float())
    mod = KroneckerLinear.from_linear(lin, rank=1, shape=(4, 6))
    x = torch.randn(3, 30)
    torch.testing.assert_close(mod(x), lin(x), atol=1e-4, rtol=1e-4)
    assert mod.tcomp_footprint().params == 24 + 40 + 32


def test_kronecker_refinement_lowers_the_output_error():
    torch.manual_seed(0)
    lin = nn.Linear(16, 16)
    x = torch.randn(256, 16) @ torch.randn(16, 16)  # correlated inputs
    plain = KroneckerLinear.from_linear(lin, rank=2, shape=(4, 4))
    refined = KroneckerLinear.from_linear(lin, rank=2, shape=(4, 4), calibration=x, refine_steps=200, lr=1e-2)
    err = lambda m: (m(x) - lin(x)).pow(2).mean().item()  # noqa: E731
    assert err(refined) < err(plain)
    m1, n1 = kronecker_shape(384, 1536)  # the per-term count m1·n1 + m2·n2 is smallest at m1·n1 = √(384·1536)
    assert 384 % m1 == 0 and 1536 % n1 == 0 and m1 * n1 == 768
    m2, n2 = 384 // m1, 1536 // n1
    assert min(m1, n1, m2, n2) >= 8  # both factors keep 2-D structure (no 2 × 768 ⊗ 192 × 2 split)


def test_tucker_of_an_exact_low_multilinear_rank_stack_is_exact_and_counted():
    g = torch.Generator().manual_seed(1)
    core = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    fa, fb, fc = (torch.randn(n, r, generator=g, dtype=torch.float64) for n, r in ((3, 2), (10, 3), (12, 4)))
    stack = torch.einsum("abc,ia,jb,kc->ijk", core, fa, fb, fc)  # [3, 10, 12], ranks (2, 3, 4)
    grid = np.array([linear_from(stack[i].float()) for i in range(3)], dtype=object)
    shared, mods = tucker_linears(grid, (2, 3, 4))
    x = torch.randn(5, 12)
    for lin, mod in zip(grid, mods):
        torch.testing.assert_close(mod(x), lin(x), atol=1e-3, rtol=1e-3)
    table = budget.module_table(nn.ModuleList(list(mods)), 8)
    assert table.params.sum() == 2 * 3 * 4 + 10 * 3 + 12 * 4 + 3 * 2 + 3 * 10  # core, B, C, rows of A, biases
    assert (table.kind == "TuckerCore").sum() == 1


def test_falcon_exact_on_block_rank_one_weights():
    p, d = torch.randn(8, 3), torch.randn(3, 1, 4)
    w = torch.einsum("og,gts->ogs", p, d).reshape(8, 12)
    lin = linear_from(w)
    mod = FalconLinear.from_linear(lin, groups=3, depth=1)
    x = torch.randn(2, 12)
    torch.testing.assert_close(mod(x), lin(x), atol=1e-5, rtol=1e-5)
    assert mod.tcomp_footprint().params == 12 + 24 + 8
    with pytest.raises(BudgetError, match="groups=5 must be a positive divisor of the input size 12"):
        FalconLinear.from_linear(lin, groups=5, depth=1)


def test_stacked_falcon_shares_one_pointwise_factor_counts_it_once_and_is_exact_on_such_weights():
    # W_i[:, c] = P_c D_i,c: three 12 x 16 matrices in 4 input blocks of 4, depth 2, one shared P
    g = torch.Generator().manual_seed(3)
    p = torch.randn(12, 4, 2, generator=g, dtype=torch.float64)
    ws = [torch.einsum("ogt,gts->ogs", p, torch.randn(4, 2, 4, generator=g, dtype=torch.float64)).reshape(12, 16)
          for _ in range(3)]
    lins = [linear_from(w.float()) for w in ws]
    shared, mods = falcon_linears(lins, groups=4, depth=2)
    assert all(m.shared is shared and m.pointwise is None for m in mods) and shared.weight.shape == (12, 8)
    x = torch.randn(5, 16)
    for lin, mod in zip(lins, mods):
        torch.testing.assert_close(mod(x), lin(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(mod(x), x @ mod.weight_matrix().T + lin.bias)
    table = budget.module_table(nn.ModuleList(mods), 8)
    assert table.params.sum() == 12 * 8 + 3 * (4 * 2 * 4 + 12)  # P once; each: its depthwise and bias
    assert (table.kind == "SharedFactor").sum() == 1
    assert all(m.tcomp_footprint().macs == 2 * (16 + 12 * 4) for m in mods)  # t·(in + out·g) per token each

    def error(mods, lins):
        return sum((m.weight_matrix() - lin.weight).norm() ** 2 for m, lin in zip(mods, lins)).sqrt().item()
    torch.manual_seed(0)
    rand = [nn.Linear(16, 12) for _ in range(3)]
    errors = [error(falcon_linears(rand, 4, t)[1], rand) for t in (1, 2, 3, 4)]
    assert errors[0] > errors[1] > errors[2] > errors[3] > 0  # more depth, lower error
    deep = falcon_linears(rand, 4, 4)[1]  # factored 4·(16 + 48) MACs > 12·16: computes with its cached matrix
    assert all(m.runs_dense and m.tcomp_footprint().macs == 12 * 16 for m in deep) and not mods[0].runs_dense
    torch.testing.assert_close(deep[1](x), x @ deep[1].weight_matrix().T + rand[1].bias)
    alone = [falcon_linears([lin], 4, 2)[1][0] for lin in rand]
    assert error(alone, rand) < errors[1]  # sharing P costs accuracy at one depth (and saves 2 P's)
    assert all(m.shared is None for m in alone)
    assert FalconLinear.plan(12, 16, 4, ratio=2, n_stacked=3) == math.floor(3 * 12 * 16 / (2 * (3 * 16 + 12 * 4)))


def test_falcon_sgd_fit_is_seeded_beats_its_start_and_reaches_the_svd_optimum():
    torch.manual_seed(0)
    lins = [nn.Linear(32, 24) for _ in range(3)]

    def error(mods, lins):
        return sum((m.weight_matrix() - lin.weight).norm() ** 2 for m, lin in zip(mods, lins)).sqrt().item()
    sgd = dict(fit="sgd", fit_steps=1000, fit_lr=3e-2)
    for stack in (lins[:1], lins):  # one matrix (separated) and a stack sharing its pointwise factor
        svd_err = error(falcon_linears(stack, 4, 3)[1], stack)
        first, second = falcon_linears(stack, 4, 3, **sgd, fit_seed=1)[1], falcon_linears(stack, 4, 3, **sgd, fit_seed=1)[1]
        assert all(torch.equal(a.weight_matrix(), b.weight_matrix()) for a, b in zip(first, second))
        other = falcon_linears(stack, 4, 3, **sgd, fit_seed=2)[1]
        assert not torch.equal(other[0].weight_matrix(), first[0].weight_matrix())
        start = error(falcon_linears(stack, 4, 3, fit="sgd", fit_steps=0, fit_seed=1)[1], stack)
        fitted = error(first, stack)
        assert svd_err - 1e-5 <= fitted <= 1.01 * svd_err < start  # SVD is the optimum; SGD gets within 1 %
    mod = FalconLinear.from_linear(lins[0], 4, depth=3, fit="sgd", fit_steps=10)
    assert mod.depthwise.dtype == torch.float32 and mod.depth == 3


def test_bad_falcon_budgets_modes_and_fits_are_refused_before_any_change():
    model = tiny_bert()  # Q/K/V 32 x 32: blocks of 8 (4 groups)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    qkv = ["query", "key", "value"]
    cases = [
        (dict(roles=["query", "key"], mode="qkv", ratio=2), ValueError,
         r"FALCON mode 'qkv' stacks Q/K/V: give roles \['query', 'key', 'value'\] \(or 'qkv'\), got \['key', 'query'\]"),
        (dict(roles=qkv, mode="qkv", rank=30), BudgetError,
         r"FALCON depth 30 \(from depth=30\) must lie in \[1, 13\] for 3 stacked 32 × 32 matrices in 4 blocks of 8"),
        (dict(roles=qkv, mode="qkv-concatenated", ratio=1000), BudgetError,
         r"FALCON depth 0 \(from ratio 1000\) must lie in \[1, 19\] for 6 stacked 32 × 32 matrices"),
        # a depth that stores more numbers than the matrix (7·(32 + 32·4) > 32·32), accepted before
        (dict(roles=["query"], rank=7), BudgetError, r"FALCON depth 7 \(from depth=7\) must lie in \[1, 6\] for a 32 × 32"),
        (dict(roles=qkv, mode="qkv", rank=0), BudgetError, "rank must be an integer >= 1, got 0"),
        (dict(roles=qkv, mode="qkv", ratio=2, fit="adam"), ValueError, "fit='adam' is not allowed; allowed: svd, sgd"),
        (dict(roles=qkv, mode="qkv", ratio=2, fit_steps=100), ValueError,
         "fit_steps=100: options of the SGD fit, given with fit='svd'"),
        (dict(roles=qkv, mode="qkv", ratio=2, fit="sgd", fit_steps=-1), ValueError,
         "fit_steps must be an integer >= 0 or None, got -1"),
        (dict(roles=qkv, mode="qkv", ratio=2, fit="sgd", fit_lr=0.0), ValueError, "fit_lr must be a finite number > 0"),
        (dict(roles=qkv, mode="qkv-concat", ratio=2), ValueError, "mode='qkv-concat' is not allowed.*'qkv-concatenated'"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            factorize(model, "falcon", **kwargs)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), kwargs
        assert not any(isinstance(m, FalconLinear) for m in model.modules()), kwargs
    llama = tiny_llama()  # grouped-query attention: K and V are 16 x 48, Q 48 x 48
    with pytest.raises(BudgetError, match=r"FALCON stacks need matrices of one shape; .*q_proj \[48, 48\], "
                                          r".*k_proj \[16, 48\]"):
        factorize(llama, "falcon", "qkv", mode="qkv", ratio=2)
    assert not any(isinstance(m, FalconLinear) for m in llama.modules())


@pytest.mark.parametrize("method, mode, roles, budget_kw", [
    ("svd", "separated", ["ffn_in", "ffn_out"], {"ratio": 2}),
    ("svd", "concatenated", ["query", "value"], {"ratio": 2}),
    ("tucker", "qkv", ["query", "key", "value"], {"rank": (2, 16, 16)}),
    ("tucker", "concatenated", ["attn_out"], {"ratio": 2}),
    ("tucker", "qkv-concatenated", ["query", "key", "value"], {"rank": (2, 2, 12, 12)}),
    ("kronecker", "separated", ["ffn_in"], {"ratio": 4}),
    ("falcon", "separated", ["ffn_out"], {"ratio": 3}),
    ("falcon", "qkv", ["query", "key", "value"], {"ratio": 2}),
    ("falcon", "concatenated", ["ffn_in"], {"ratio": 2}),
    ("falcon", "qkv-concatenated", ["query", "key", "value"], {"rank": 4}),
])
def test_whole_model_factorization_counts_and_round_trip(tmp_path, method, mode, roles, budget_kw):
    torch.manual_seed(0)
    model = tiny_bert()
    report = factorize(model, method, roles, mode=mode, **budget_kw)
    table = budget.module_table(model, 8)
    # the report's per-module counts add up to the counter's counts for those modules
    compressed = table[table.role.isin(roles)]
    assert compressed.params.sum() == pytest.approx(report.modules.params_after.sum())
    assert report.after.params < report.before.params
    assert (report.modules.rel_error > 0).all() and (report.modules.rel_error < 1.5).all()
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    serialize.save_compressed(model, tmp_path / "m")
    loaded = serialize.load_compressed(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, expected)
    assert budget.footprint(loaded, 8) == budget.footprint(model, 8)


def test_data_aware_svd_beats_plain_svd_on_the_output_error():
    torch.manual_seed(0)
    model = tiny_bert()
    # calibration inputs whose channels differ strongly in scale
    batches = [{"input_ids": torch.randint(0, 100, (8, 12))} for _ in range(4)]
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight.mul_(torch.logspace(-1, 1, 32))
    ref = copy.deepcopy(model)
    plain, aware = copy.deepcopy(model), copy.deepcopy(model)
    factorize(plain, "svd", ["ffn_in"], rank=4)
    factorize(aware, "asvd", ["ffn_in"], rank=4, calibration=batches)
    with torch.no_grad():
        hidden = lambda m: torch.cat([m.bert(**b).last_hidden_state for b in batches])  # noqa: E731
        target = hidden(ref)
        assert (hidden(aware) - target).norm() < (hidden(plain) - target).norm()


def test_fisher_weighted_svd_weights_rows_by_the_gradients_of_the_task_loss():
    torch.manual_seed(0)
    model = tiny_bert()
    batches = [{"input_ids": torch.randint(0, 100, (4, 6)), "labels": torch.tensor([0, 1, 0, 1])} for _ in range(2)]
    path = "bert.encoder.layer.0.output.dense"
    grad2 = torch.zeros(32, dtype=torch.float64)  # Fisher of each output row: Σ over batches of its squared gradient
    for b in batches:
        model.zero_grad()
        model(**b).loss.backward()
        grad2 += model.get_submodule(path).weight.grad.double().pow(2).sum(1)
    model.zero_grad()
    lin = copy.deepcopy(model.get_submodule(path))
    report = factorize(model, "fwsvd", ["ffn_out"], rank=4, layers=[0], calibration=batches)
    left, right = truncated_svd(lin.weight, 4, out_scale=grad2.sqrt().float())
    fitted = model.get_submodule(path)
    torch.testing.assert_close(fitted.weight_matrix(), left @ right, atol=1e-5, rtol=1e-4)
    plain = LowRankLinear.from_linear(lin, 4).weight_matrix()
    assert (fitted.weight_matrix() - plain).norm() > 0.05 * plain.norm()  # the weighting changes the fit
    assert report.modules.rel_error[0] > ((lin.weight - plain).norm() / lin.weight.norm()).item()  # not Eckart-Young
    with pytest.raises(ValueError, match="needs calibration batches with 'labels'"):
        factorize(tiny_bert(), "fwsvd", ["ffn_out"], ratio=2, calibration=[{"input_ids": torch.randint(0, 100, (2, 3))}])


def test_bad_budgets_and_arguments_leave_the_model_untouched():
    model = tiny_bert()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cases = [
        (dict(method="svd", roles=["query"], ratio=1.0), BudgetError, "must be a number > 1"),
        (dict(method="svd", roles=["query"], rank=32), BudgetError, "at or above full rank 32"),
        (dict(method="svd", roles=["query"], ratio=1000), BudgetError, "below 1"),
        (dict(method="svd", roles=["query"], ratio=2, rank=3), BudgetError, "exactly one budget"),
        (dict(method="svd", roles=["queries"], ratio=2), ValueError, "unknown module role 'queries'"),
        (dict(method="pca", roles=["query"], ratio=2), ValueError, "unknown method 'pca'"),
        (dict(method="svd", roles=["query"], ratio=2, mode="seperated"), ValueError, "did you mean 'separated'"),
        (dict(method="svd", roles=["query"], ratioo=2), ValueError, "unknown option 'ratioo'.*did you mean 'ratio'"),
        (dict(method="asvd", roles=["query"], ratio=2, mode="concatenated"), ValueError, "mode='concatenated' is not allowed"),
        (dict(method="asvd", roles=["query"], ratio=2), ValueError, "needs calibration"),
        (dict(method="tucker", roles=["query", "key"], rank=(2, 4, 4), mode="qkv"), ValueError, "stacks Q/K/V"),
        (dict(method="tucker", roles=["query"], rank=(3, 40, 4), mode="concatenated"), BudgetError, "must lie in"),
        (dict(method="kronecker", roles=["ffn_in"], ratio=10_000), BudgetError, "Kronecker rank 0"),
        (dict(method="svd", roles=["query"], ratio=2, layers=[99]), ValueError, "no layer 99"),
        (dict(method="svd", roles=["query"], ratio=2, layers=[-1]), ValueError, "layers must be a non-empty list"),
        (dict(method="svd", roles=["query"], ratio=2, layers=[]), ValueError, "layers must be a non-empty list"),
        (dict(method="svd", roles=[], ratio=2), ValueError, "roles=\\[\\] names no module"),
        (dict(method="asvd", roles=["query"], ratio=2, alpah=0.3), ValueError, "unknown option 'alpah'.*'alpha'"),
        (dict(method="falcon", roles=["query"], ratio=2, groups=0), ValueError, "groups must be an integer >= 1"),
        (dict(method="svd", roles=["query"], rank=2.5), BudgetError, "rank must be an integer >= 1, got 2.5"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            factorize(model, **kwargs)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), kwargs


def test_llama_gated_ffn_factorized_and_reloaded(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama()
    report = factorize(model, "svd", ["ffn_in", "query"], ratio=2)
    assert sorted(report.modules.role.unique()) == ["ffn_in", "query"] and len(report.modules) == 6
    ids = torch.randint(0, 100, (1, 9))
    serialize.save_compressed(model, tmp_path / "llama")
    with torch.no_grad():
        assert torch.equal(serialize.load_compressed(tmp_path / "llama")(ids).logits, model(ids).logits)


@pytest.mark.parametrize("out, n_in, shape", [(24, 20, (4, 5)), (24, 20, (2, 10)), (12, 36, (6, 3))])
def test_kronecker_forward_matches_its_matrix_in_either_contraction_order(out, n_in, shape):
    torch.manual_seed(0)
    lin = nn.Linear(n_in, out)
    mod = KroneckerLinear.from_linear(lin, rank=2, shape=shape)
    x = torch.randn(2, 3, n_in)
    torch.testing.assert_close(mod(x), x @ mod.weight_matrix().T + lin.bias, atol=1e-5, rtol=1e-5)
    r, (m1, n1), (m2, n2) = 2, shape, (out // shape[0], n_in // shape[1])
    assert mod.factored_macs == r * min(m1 * n2 * (n1 + m2), m2 * n1 * (n2 + m1)) < n_in * out
    assert mod.tcomp_footprint().macs == mod.factored_macs and not mod.runs_dense


def test_a_kronecker_sum_dearer_than_its_matrix_runs_as_the_cached_matrix():
    torch.manual_seed(0)
    lin = nn.Linear(20, 24)
    mod = KroneckerLinear.from_linear(lin, rank=6, shape=(4, 5))  # 6 terms: factored 6·176 MACs > 480 dense
    assert mod.runs_dense and mod.factored_macs > 480 and mod.tcomp_footprint().macs == 480
    assert mod.tcomp_footprint().params == 6 * (4 * 5 + 6 * 4) + 24  # the factors stay what is stored
    x = torch.randn(2, 3, 20)
    with torch.no_grad():
        first = mod(x)
        cached = mod._cache[1]
        torch.testing.assert_close(first, x @ mod.weight_matrix().T + lin.bias, atol=1e-5, rtol=1e-5)
        mod(x)
        assert mod._cache[1] is cached  # built once
        mod.a.mul_(2)
        torch.testing.assert_close(mod(x), x @ mod.weight_matrix().T + lin.bias, atol=1e-5, rtol=1e-5)
    mod(x).sum().backward()  # with gradients the matrix is rebuilt per call: the factors train
    assert mod.a.grad.abs().sum() > 0 and mod.b.grad.abs().sum() > 0


def test_role_groups_expand_to_roles():
    from tcomp_utils.adapters import expand_roles
    assert expand_roles("qkv") == ["query", "key", "value"]
    assert expand_roles(["ffn", "attn_out"]) == ["ffn_in", "ffn_out", "attn_out"]
    assert expand_roles("query") == ["query"]
    report = factorize(tiny_bert(), "svd", "ffn", ratio=2)
    assert sorted(report.modules.role.unique()) == ["ffn_in", "ffn_out"] and len(report.modules) == 4


def test_factorized_t5_runs_its_forward():
    # HF T5 reads ``wo.weight.dtype`` in every FFN forward: compressed layers must answer it
    torch.manual_seed(0)
    from conftest import tiny_t5
    model = tiny_t5()
    ids = torch.randint(0, 100, (2, 5))
    factorize(model, "svd", "ffn", ratio=2)
    with torch.no_grad():
        assert model(input_ids=ids, decoder_input_ids=ids).logits.shape == (2, 5, 100)


def test_fwsvd_on_a_headless_encoder_is_refused_before_anything_changes():
    """A plain BertModel takes labels in **kwargs and returns no loss: FWSVD failed with
    "... has no attribute 'loss'"; it is refused up front, naming what to pass instead."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=64))
    state = copy.deepcopy(model.state_dict())
    batches = [{"input_ids": torch.randint(0, 100, (2, 6)), "labels": torch.tensor([0, 1])}]
    with pytest.raises(ValueError, match=r"Fisher-weighted SVD needs the task loss, but BertModel has no task head.*"
                                         r"AutoModelForSequenceClassification"):
        factorize(model, "fwsvd", ["ffn_out"], ratio=2, calibration=batches, progress=False)
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())  # no backward ran


def test_fwsvd_labels_outside_the_classes_are_refused_by_value():
    batches = [{"input_ids": torch.randint(0, 100, (2, 6)), "labels": torch.tensor([1, 7])}]
    with pytest.raises(ValueError, match=r"label 7 is out of range: .*2 labels \(config.num_labels\), 0\.\.1"):
        factorize(tiny_bert(), "fwsvd", ["ffn_out"], ratio=2, calibration=batches, progress=False)
