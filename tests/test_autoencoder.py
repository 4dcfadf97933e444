"""Autoencoder compression (seed 000) and sparse magnitude pruning: budgets, storage, round trips, errors."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import tiny_bert
from tcomp_utils import budget, serialize
from tcomp_utils.budget import BudgetError
from tcomp_utils.methods.autoencoder import AEEmbedding, AELinear, latent_size, stored_numbers
from tcomp_utils.methods.lowrank import LowRankEmbedding
from tcomp_utils.methods.pruning import SparseEmbedding, SparseLinear, kept_weights
from tcomp_utils.registry import ConfigError, compress, method_config

FAST = dict(epochs=3, batch_size=8)


def _batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 100, (4, 10), generator=g), "attention_mask": torch.ones(4, 10, dtype=torch.long)}
            for _ in range(n)]


@pytest.mark.parametrize("rows, n", [(384, 384), (1536, 384), (384, 1536), (2304, 384), (30522, 384), (64, 32)])
@pytest.mark.parametrize("ratio", [2, 3, 10, 25])
@pytest.mark.parametrize("widths, norm", [([2.0, 4.0], True), ([2.0, 4.0], False), ([], True), ([1.0, 3.0, 5.0], False)])
def test_solved_latent_size_is_the_largest_within_the_budget(rows, n, ratio, widths, norm):
    try:
        x = latent_size(rows, n, ratio, widths, norm)
    except BudgetError as err:  # only when even x = 1 is over the budget
        assert stored_numbers(rows, n, 1, widths, norm) > rows * n / ratio, err
        return
    assert 1 <= x < n
    assert stored_numbers(rows, n, x, widths, norm) <= rows * n / ratio
    assert stored_numbers(rows, n, x + 1, widths, norm) > rows * n / ratio


@pytest.mark.parametrize("mode, roles", [("separated", "ffn"), ("concatenated", "qkv"), ("separated", "embeddings")])
def test_the_counter_counts_exactly_the_stored_tensors_within_the_budget(mode, roles):
    torch.manual_seed(0)
    model = tiny_bert()
    report = compress(model, method_config("ae", roles=roles, mode=mode, ratio=3, select="weight_error", **FAST),
                      progress=False)
    modules = [m for m in model.modules() if isinstance(m, (AELinear, AEEmbedding))]
    decoders = {id(m.shared): m.shared for m in modules}
    stored = sum(t.numel() for m in modules for t in (m.latents, m.norms) if t is not None)
    stored += sum(t.numel() for d in decoders.values() for t in [*d.parameters(), *d.buffers()])
    stored_bytes = sum(t.numel() * t.element_size() for m in modules for t in (m.latents, m.norms) if t is not None)
    stored_bytes += sum(t.numel() * t.element_size() for d in decoders.values() for t in [*d.parameters(), *d.buffers()])
    biases = sum(m.bias.numel() for m in modules if getattr(m, "bias", None) is not None)
    assert report.modules.params_after.sum() == pytest.approx(stored + biases)
    table = budget.module_table(model, 8)
    assert table[table.kind.isin(["AELinear", "AEEmbedding", "AEDecoder"])].params.sum() == stored + biases
    assert table[table.kind.isin(["AELinear", "AEEmbedding", "AEDecoder"])].bytes.sum() == stored_bytes + 4 * biases
    weights = sum(m.out_features * m.in_features if isinstance(m, AELinear) else m.num_embeddings * m.embedding_dim
                  for m in modules)
    assert stored <= weights / 3  # the budget: latents + decoder (+ norms, scale) within 1/ratio of the weights
    if mode == "concatenated":  # one decoder per role, shared by the layers and counted once
        assert len(decoders) == 3 and all(sum(m.shared is d for m in modules) == 2 for d in decoders.values())


def test_decoder_and_latents_round_trip_through_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = tiny_bert()
    compress(model, method_config("ae", roles=["ffn_in", "embeddings"], mode="concatenated", ratio=2, **FAST),
             _batches(), progress=False)
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    serialize.save_compressed(model, tmp_path / "m")
    loaded = serialize.load_compressed(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, expected)
    layers = [loaded.bert.encoder.layer[i].intermediate.dense for i in range(2)]
    assert isinstance(layers[0], AELinear) and layers[0].shared is layers[1].shared  # still one decoder
    assert budget.footprint(loaded, 8) == budget.footprint(model, 8)


def test_enforce_norm_gives_rows_of_the_original_norms_and_the_cache_follows_the_tensors():
    torch.manual_seed(0)
    model = tiny_bert()
    original = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    compress(model, method_config("ae", roles="query", ratio=2, enforce_norm=True, select="last", **FAST), progress=False)
    layer = model.bert.encoder.layer[0].attention.self.query
    torch.testing.assert_close(layer.weight_matrix().norm(dim=1), original.norm(dim=1), rtol=1e-5, atol=1e-6)
    x = torch.randn(3, 32)
    with torch.no_grad():
        y = layer(x)
        torch.testing.assert_close(y, x @ layer.weight_matrix().T + layer.bias)
        layer.latents.mul_(0.5)  # a change of the stored codes rebuilds the cached weight
        torch.testing.assert_close(layer(x), x @ layer.weight_matrix().T + layer.bias)
        assert not torch.allclose(layer(x), y)
    free = tiny_bert()
    compress(free, method_config("ae", roles="query", ratio=2, enforce_norm=False, select="last", **FAST), progress=False)
    assert free.bert.encoder.layer[0].attention.self.query.norms is None


def test_training_goes_through_the_decoder_and_the_codes():
    torch.manual_seed(0)
    model = tiny_bert()
    compress(model, method_config("ae", roles="ffn_out", ratio=2, select="last", **FAST), progress=False)
    layer = model.bert.encoder.layer[1].output.dense
    model.train()
    out = model(input_ids=torch.randint(0, 100, (2, 5)), labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert layer.latents.grad is not None and layer.latents.grad.abs().sum() > 0
    assert all(p.grad is not None for p in layer.shared.net.parameters())


def test_selection_keeps_the_epoch_with_the_lowest_held_out_error():
    torch.manual_seed(0)
    model = tiny_bert()
    report = compress(model, method_config("ae", roles="ffn_in", ratio=2, epochs=6, batch_size=8), _batches(),
                      progress=False)
    assert (report.modules.epoch_kept >= 0).all() and (report.modules.epoch_kept < 6).all()
    assert report.phases.keys() >= {"capture", "training"}
    # held-out output error is a relative error measured on the calibration inputs
    assert (report.modules.held_out_error > 0).all() and (report.modules.held_out_error < 2).all()


def test_autoencoder_reaches_svd_error_on_a_low_rank_matrix_with_a_linear_decoder():
    """With no hidden layer, no norm re-scaling and the RMSE loss the decoder is linear in the
    codes (up to tanh); on an exactly rank-2 matrix (within tanh's range) it must get close."""
    torch.manual_seed(0)
    lin = nn.Linear(48, 96)
    with torch.no_grad():
        lin.weight.copy_(0.1 * torch.randn(96, 2) @ torch.randn(2, 48) / 3)
    model = nn.Sequential()
    model.add_module("layer", lin)
    from tcomp_utils.methods.autoencoder import RowGroup, decoder_widths_for, train_autoencoder
    cfg = method_config("ae", ratio=4, decoder_widths=[], encoder_widths=[], enforce_norm=False, cosine_weight=0.0,
                        rmse_weight=1.0, epochs=150, batch_size=32, lr=3e-3, lr_step=50, select="weight_error")
    group = RowGroup([type("RM", (), {"module": lin, "role": "layer"})()], lin.weight.detach().clone(), 4,
                   decoder_widths_for(4, []), [None])
    fit = train_autoencoder(group, cfg)
    assert fit["held_out_error"] < 0.1
    assert [h["held_out_error"] for h in fit["history"]][fit["epoch"]] == fit["held_out_error"]


def test_sparse_storage_counts_values_and_indices():
    torch.manual_seed(0)
    model = tiny_bert()
    report = compress(model, method_config("pruning", roles=["ffn_in", "embeddings"], ratio=4), progress=False)
    lin = model.bert.encoder.layer[0].intermediate.dense
    emb = model.bert.embeddings.word_embeddings
    assert isinstance(lin, SparseLinear) and isinstance(emb, SparseEmbedding)
    nnz = kept_weights(64, 32, 4)
    assert lin.nnz == nnz == (64 * 32 / 4 - 65) // 2  # 2·nnz + rows + 1 <= N / ratio
    fp = lin.tcomp_footprint()
    assert fp.params == 2 * nnz + 65 + 64  # values, column indices, row pointers, bias
    assert fp.bytes == 4 * nnz + 2 * nnz + 4 * 65 + 4 * 64  # int16 column indices, int32 row pointers
    assert lin.col_idx.dtype == torch.int16
    # the kept weights are the largest in magnitude, exactly as stored
    row = report.modules.set_index("path").loc["bert.encoder.layer.0.intermediate.dense"]
    assert row.nnz == nnz and row.params_after == fp.params
    x = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), x @ lin.weight_matrix().T + lin.bias)
        ids = torch.tensor([[0, 5, 5, 99], [3, 3, 1, 2]])
        torch.testing.assert_close(emb(ids), emb.weight_matrix()[ids])
    seed = kept_weights(64, 32, 4, count_indices=False)
    assert seed == 64 * 32 / 4  # the seed's convention: values only


def test_global_threshold_across_layers_and_magnitudes_kept():
    torch.manual_seed(0)
    model = tiny_bert()
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.self.value.weight.mul_(10)  # layer 1 holds the large weights
    w = torch.cat([model.bert.encoder.layer[i].attention.self.value.weight.detach().reshape(-1) for i in range(2)])
    compress(model, method_config("pruning", roles="value", ratio=4, mode="concatenated"), progress=False)
    kept = [model.bert.encoder.layer[i].attention.self.value for i in range(2)]
    total = kept_weights(32, 32, 4, n_matrices=2)
    assert sum(k.nnz for k in kept) == total
    assert kept[1].nnz > 3 * kept[0].nnz  # one threshold: the scaled layer keeps far more
    threshold = w.abs().sort(descending=True).values[total - 1]
    assert all((k.values.abs() >= threshold - 1e-7).all() for k in kept)


def test_svd_of_the_embedding_table(tmp_path):
    torch.manual_seed(0)
    model = tiny_bert()
    table = model.bert.embeddings.word_embeddings.weight.detach().clone()
    report = compress(model, method_config("svd", roles="embeddings", ratio=4), progress=False)
    emb = model.bert.embeddings.word_embeddings
    assert isinstance(emb, LowRankEmbedding) and emb.rank == 100 * 32 // (4 * 132)
    u, s, vh = torch.linalg.svd(table.double(), full_matrices=False)
    best = (u[:, :emb.rank] * s[:emb.rank]) @ vh[:emb.rank]
    torch.testing.assert_close(emb.weight_matrix().double(), best, atol=1e-5, rtol=1e-4)
    assert report.modules.params_after.iloc[0] == emb.rank * 132
    serialize.save_compressed(model, tmp_path / "m")
    ids = torch.randint(0, 100, (2, 6))
    with torch.no_grad():
        assert torch.equal(serialize.load_compressed(tmp_path / "m")(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("method, kwargs, error, message", [
    ("ae", dict(roles="query", ratio=1000, select="last"), BudgetError, "even a latent size of 1 needs"),
    ("ae", dict(roles="query", ratio=1.0, select="last"), BudgetError, "must be a number > 1"),
    ("ae", dict(roles="query", ratio=2, select="test"), ConfigError, "select='test' is not allowed"),
    ("ae", dict(roles="query", ratio=2, mode="stacked"), ConfigError, "mode='stacked' is not allowed"),
    ("ae", dict(roles="query", ratio=2, enforce_norms=True), ConfigError, "unknown option 'enforce_norms'.*'enforce_norm'"),
    ("ae", dict(roles="query", ratio=2, decoder_widths=[2, -1]), ConfigError, "decoder_widths must be a list"),
    ("ae", dict(roles="query", ratio=2, cosine_weight=0, rmse_weight=0), ConfigError, "both 0"),
    ("ae", dict(roles="query", ratio=2), ValueError, "needs calibration"),
    ("ae", dict(roles="querys", ratio=2, select="last"), ValueError, "unknown module role 'querys'"),
    ("pruning", dict(roles="query", ratio=1000), BudgetError, "row pointers alone"),
    ("pruning", dict(roles="ffn", ratio=2, mode="global"), ConfigError, "mode='global' is not allowed"),
    ("pruning", dict(roles="ffn", ratio=2, amount=0.5), ConfigError, "unknown option 'amount'"),
    ("tucker", dict(roles="embeddings", ratio=2), ConfigError, "'embeddings' is not one"),
])
def test_bad_input_is_a_clear_error_before_any_module_changes(method, kwargs, error, message):
    model = tiny_bert()
    state = copy.deepcopy(model.state_dict())
    modules = [type(m) for m in model.modules()]
    with pytest.raises(error, match=message):
        compress(model, method_config(method, **kwargs), progress=False)
    assert [type(m) for m in model.modules()] == modules
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_budget_that_only_the_later_modules_miss_fails_before_any_module_trains():
    model = tiny_bert()
    before = [type(m) for m in model.modules()]
    state = copy.deepcopy(model.state_dict())
    # at ×6 the ffn_in rows (64 of 32) fit a latent size of 1, the ffn_out rows (32 of 64) do not
    assert latent_size(64, 32, 6, [2.0, 4.0], True) == 1
    with pytest.raises(BudgetError, match="32 rows of 64"):
        compress(model, method_config("ae", roles="ffn", ratio=6, select="last", **FAST), progress=False)
    assert [type(m) for m in model.modules()] == before
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("fields", [dict(select="weight_error"), dict(select="last", enforce_norm=False)])
def test_seeds_trained_together_are_the_seeds_trained_alone(fields):
    """Running the seeds' networks as one ``vmap`` over their stacked parameters changes the
    operator calls, not the maths: each seed's initial weights, batch order, gradients, Adam state
    and kept epoch are its own, so N seeds together give the N trainings alone (to float rounding)."""
    from tcomp_utils.methods.autoencoder import RowGroup, decoder_widths_for, train_autoencoder, train_autoencoders
    torch.manual_seed(0)
    rows = torch.randn(40, 24) / 5
    group = RowGroup([type("RM", (), {"module": nn.Linear(24, 40), "role": "layer"})()], rows, 5,
                     decoder_widths_for(5, [2.0, 4.0]), [None])
    configs = [method_config("ae", ratio=3, seed=s, **fields, **FAST) for s in (0, 7, 3)]
    together = train_autoencoders(group, configs)
    for c, joint in zip(configs, together):
        alone = train_autoencoder(group, c)
        assert joint["epoch"] == alone["epoch"]
        torch.testing.assert_close(joint["latents"], alone["latents"], rtol=1e-5, atol=1e-6)
        for a, b in zip(joint["decoder"].state_dict().values(), alone["decoder"].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert [h["loss"] for h in joint["history"]] == pytest.approx([h["loss"] for h in alone["history"]], rel=1e-5)
        assert joint["held_out_error"] == pytest.approx(alone["held_out_error"], rel=1e-5, nan_ok=True)
    assert not torch.allclose(together[0]["latents"], together[1]["latents"])  # the seeds differ
    with pytest.raises(ValueError, match="but the seed"):
        train_autoencoders(group, [configs[0], method_config("ae", ratio=3, select="weight_error", epochs=4, batch_size=8)])


def test_compress_seeds_gives_what_compress_gives_per_seed_and_leaves_the_model():
    from tcomp_utils.methods.autoencoder import compress_seeds
    torch.manual_seed(0)
    model = tiny_bert()
    before = copy.deepcopy(model.state_dict())
    cfg = method_config("ae", roles=["ffn_in"], mode="concatenated", ratio=4, **FAST)
    runs = compress_seeds(model, cfg, 3, _batches())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.randint(0, 100, (2, 7))
    for s, (m, report) in enumerate(runs):
        alone = copy.deepcopy(model)
        ref = compress(alone, method_config("ae", roles=["ffn_in"], mode="concatenated", ratio=4, seed=s, **FAST),
                       _batches(), progress=False)
        assert report.config.seed == s and report.after.params == ref.after.params
        assert list(report.modules.epoch_kept) == list(ref.modules.epoch_kept)
        with torch.no_grad():
            torch.testing.assert_close(m.eval()(x).logits, alone.eval()(x).logits, rtol=1e-4, atol=1e-5)
    # the training ran once, for every seed, in the first call; the held-out inputs were captured once
    assert runs[0][1].phases["training"] > 0 and "capture" not in runs[1][1].phases
    with pytest.raises(ConfigError, match="seeds"):
        compress_seeds(model, cfg, 0)


def test_early_stopping_stops_each_seed_after_patience_scorings_without_a_new_best():
    """With ``patience`` p a seed stops once p held-out scorings in a row have not beaten the best by
    ``min_improvement``; it keeps its lowest-error epoch; seeds trained together stop where they
    stop alone; without patience every epoch runs (what the committed tables used)."""
    from tcomp_utils.methods.autoencoder import RowGroup, decoder_widths_for, train_autoencoder, train_autoencoders
    torch.manual_seed(0)
    rows = torch.randn(40, 24) / 5
    group = RowGroup([type("RM", (), {"module": nn.Linear(24, 40), "role": "layer"})()], rows, 5,
                     decoder_widths_for(5, [2.0, 4.0]), [None])
    fast = dict(select="weight_error", epochs=60, batch_size=8, lr=0.01, lr_step=5, lr_gamma=0.5)
    configs = [method_config("ae", ratio=3, seed=s, patience=3, min_improvement=0.01, **fast) for s in (0, 7, 3)]
    together = train_autoencoders(group, configs)
    for c, fit in zip(configs, together):
        errors = [h["held_out_error"] for h in fit["history"]]
        assert fit["epochs_run"] == len(errors) < 60  # stopped early
        best, last_gain = errors[0], 0  # the rule replayed on the recorded errors
        for e, err in enumerate(errors[1:], 1):
            if err < best * 0.99:
                last_gain = e
            best = min(best, err)
        assert len(errors) == last_gain + 3 + 1
        assert fit["held_out_error"] == min(errors) == errors[fit["epoch"]]
        alone = train_autoencoder(group, c)
        assert (alone["epochs_run"], alone["epoch"]) == (fit["epochs_run"], fit["epoch"])
        torch.testing.assert_close(alone["latents"], fit["latents"], rtol=1e-5, atol=1e-6)
    assert len({f["epochs_run"] for f in together}) > 1  # each seed stops at an epoch of its own
    assert train_autoencoder(group, method_config("ae", ratio=3, seed=0, **fast))["epochs_run"] == 60
    with pytest.raises(ConfigError, match="patience=3 needs a held-out selection"):
        method_config("ae", ratio=3, select="last", patience=3)
    with pytest.raises(ConfigError, match="patience must be an integer >= 0, got -1"):
        method_config("ae", ratio=3, patience=-1)
    with pytest.raises(ConfigError, match=r"min_improvement must be a fraction in \[0, 1\), got 1.5"):
        method_config("ae", ratio=3, patience=2, min_improvement=1.5)
