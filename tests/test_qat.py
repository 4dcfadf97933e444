"""Quantization-aware training (seed 003): the quantizers, the straight-through gradients, the
fake-quantized training and the packed storage."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from conftest import tiny_bert, tiny_marian, tiny_t5
from tcomp_utils import adapters, budget, serialize
from tcomp_utils.methods import qat
from tcomp_utils.methods.quant_grid import pack_rows, unpack_rows
from tcomp_utils.methods.quantized import SignMagEmbedding, SignMagLinear
from tcomp_utils.registry import ConfigError, compress


def _fake_quantized(model: nn.Module) -> list[str]:
    """Paths of the modules of ``model`` whose weight carries a fake quantizer."""
    return [p for p, m in model.named_modules() if parametrize.is_parametrized(m, "weight")]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_seed_levels_are_signed_magnitudes_of_the_max_abs_scale(bits):
    torch.manual_seed(0)
    w = torch.randn(64, 48)
    negative, magnitude, scale = qat.seed_codes(w, bits)
    top = 2**bits - 1
    assert scale.item() == pytest.approx(w.abs().max().item() / top, rel=1e-3)  # float16-rounded
    assert torch.equal(magnitude, magnitude.round()) and magnitude.min() >= 0 and magnitude.max() == top
    assert torch.equal(negative, w < 0)
    w_hat = qat.FakeQuant("seed", bits).eval()(w)
    levels = torch.unique(w_hat / scale).round()
    assert len(levels) <= 2 * top + 1 and levels.abs().max() == top  # 2^(b+1) - 1 levels at most
    # nearest: within half a step (the largest weight may sit just past the top level by float16 rounding)
    assert ((w_hat - w).abs() <= scale / 2 + 1e-3 * scale * top).all()


def test_one_bit_is_ternary():
    w = torch.tensor([[-1.0, -0.4, 0.1, 0.6, 1.0]])
    assert qat.FakeQuant("seed", 1).eval()(w).tolist() == [[-1.0, -0.0, 0.0, 1.0, 1.0]]


def test_stochastic_rounding_is_unbiased_and_picks_a_neighbouring_level():
    torch.manual_seed(0)
    w = torch.randn(32, 32)
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([torch.where(n, -m, m) * s for n, m, s in
                         (qat.seed_codes(w, 2, stochastic=True, generator=g) for _ in range(4000))])
    scale = qat.seed_scale(w, 2)
    assert ((draws - w).abs() < scale + 1e-6).all()                    # never beyond the next level
    assert len(torch.unique(draws[:, 0, 0])) <= 2                      # one of two neighbours
    err = (draws.mean(0) - w).abs()
    assert err.max() < 5 * scale * 0.5 / 4000**0.5 * 2 and err.mean() < 0.02 * scale   # E[ŵ] = w
    nearest = qat.seed_codes(w, 2)[1]
    assert (draws.std(0) > 0).any() and not torch.equal(draws[0], torch.where(w < 0, -nearest, nearest) * scale)


def test_training_mode_rounds_stochastically_and_evaluation_to_nearest():
    torch.manual_seed(0)
    w = torch.randn(16, 16)
    fq = qat.FakeQuant("seed", 3)
    assert not torch.equal(fq.train()(w), fq.train()(w))
    assert torch.equal(fq.eval()(w), fq.eval()(w))


def test_straight_through_gradient_of_the_seed_quantizer():
    torch.manual_seed(0)
    w = torch.randn(8, 8, requires_grad=True)
    c = torch.randn(8, 8)
    (qat.FakeQuant("seed", 4).train()(w) * c).sum().backward()
    assert torch.equal(w.grad, c)


@pytest.mark.parametrize("quantizer", ["binary", "binary_scaled"])
def test_binary_gradient_is_masked_where_the_weight_exceeds_one(quantizer):
    w = torch.tensor([[-2.0, -0.5, 0.0, 0.3, 1.5], [0.9, -1.0, 1.01, -0.2, 0.7]], requires_grad=True)
    out = qat.FakeQuant(quantizer, None)(w)
    scales = torch.ones(2, 1) if quantizer == "binary" else w.detach().abs().mean(1, keepdim=True).half().float()
    assert torch.equal(out, torch.where(w < 0, -1.0, 1.0) * scales)    # sign (0 counts as +), per-row scale
    c = torch.arange(10.0).reshape(2, 5)
    (out * c).sum().backward()
    assert torch.equal(w.grad, torch.where(w.detach().abs() > 1, 0.0, c))


def test_packing_one_bit_codes_round_trips():
    codes = (torch.rand(5, 13) < 0.5).to(torch.uint8)
    packed = pack_rows(codes, 1)
    assert packed.shape == (5, 2)
    assert torch.equal(unpack_rows(packed, 1, 13), codes)


def _ids():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 100, (3, 9), generator=g), torch.randint(0, 100, (3, 6), generator=g)


def _train_steps(model, ids, steps: int) -> None:
    """A few Adam steps on a seq2seq model (moving the float weights under a fake quantizer), then eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids[0], decoder_input_ids=ids[1], labels=ids[1]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _seq2seq_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids[0], decoder_input_ids=ids[1]).logits


@pytest.mark.parametrize("build,quantizer,bits,target", [
    (tiny_t5, "seed", 8, "attention"), (tiny_t5, "seed", 2, "linear"), (tiny_t5, "binary", None, "attention"),
    (tiny_t5, "binary_scaled", None, "linear"), (tiny_t5, "seed", 8, "attention+embeddings"),
    (tiny_marian, "seed", 4, "linear"), (tiny_marian, "seed", 8, "attention+embeddings")])
def test_qat_then_packed_model_computes_what_the_fake_quantized_one_evaluated(tmp_path, build, quantizer, bits, target):
    torch.manual_seed(0)
    model = build(tie_word_embeddings=False)
    config = qat.SignMagConfig(roles=qat.target_roles(target, model), quantizer=quantizer, bits=bits)
    targets = qat.prepare(model, config)
    assert len(_fake_quantized(model)) == len(targets)
    ids = _ids()
    _train_steps(model, ids, 3)  # the float weights move under the fake quantizer
    fake = _seq2seq_logits(model, ids)
    report = compress(model, config, progress=False)
    assert not _fake_quantized(model)
    packed = [m for m in model.modules() if isinstance(m, (SignMagLinear, SignMagEmbedding))]
    assert len(packed) == len(targets) == len(report.modules)
    assert torch.equal(_seq2seq_logits(model, ids), fake)
    serialize.save_compressed(model, tmp_path / "q")
    loaded = serialize.load_compressed(tmp_path / "q")
    assert torch.equal(_seq2seq_logits(loaded, ids), fake)
    assert budget.footprint(loaded) == budget.footprint(model)


def test_the_float_state_dict_packs_in_a_fresh_model_as_the_qat_model_does():
    """A QAT model's trained float weights under plain names: a fresh model of the same architecture
    loads them and packs to the same model (what notebook 11 does for each stochastic draw), and the
    QAT model itself is left fake-quantized."""
    torch.manual_seed(0)
    model = tiny_marian(tie_word_embeddings=False)
    config = qat.SignMagConfig(roles=qat.target_roles("linear", model), bits=2)
    qat.prepare(model, config)
    ids = _ids()
    _train_steps(model, ids, 2)
    weights = qat.float_state_dict(model)
    assert not any("parametrizations" in k for k in weights)
    fresh = tiny_marian(tie_word_embeddings=False).eval()
    fresh.load_state_dict(weights)  # strict: every name matches
    compress(fresh, config, progress=False)
    assert len(_fake_quantized(model)) > 0  # untouched
    compress(model, config, progress=False)
    assert torch.equal(_seq2seq_logits(fresh, ids), _seq2seq_logits(model, ids))


@pytest.mark.parametrize("quantizer,bits,stored", [("seed", 8, 9), ("seed", 4, 5), ("seed", 1, 2),
                                                   ("binary", None, 1), ("binary_scaled", None, 1)])
def test_stored_bytes_are_the_packed_bits(quantizer, bits, stored):
    torch.manual_seed(0)
    layer = nn.Linear(64, 24)
    neg, mag, scales = qat.SignMagConfig(quantizer=quantizer, bits=bits).fake_quant().codes(layer.weight, False)
    packed = SignMagLinear.from_codes(neg, mag, scales, stored - 1, layer.bias)
    n_scales = 24 if quantizer == "binary_scaled" else 1
    model = nn.Sequential(packed)
    assert budget.footprint(model).bytes == 64 * 24 * stored // 8 + 2 * n_scales + 4 * 24
    assert budget.footprint(model).params == 64 * 24 + n_scales + 24


def test_stochastic_rounding_at_packing_is_a_seeded_unbiased_draw_between_the_two_nearest_levels():
    """The seed's re-quantization at evaluation: each magnitude is its level's floor or ceiling, drawn
    with the fractional part as the probability (mean over draws -> the weight), seeded."""
    torch.manual_seed(0)
    base = tiny_bert()
    w = base.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    scale = qat.seed_scale(w, 2)
    level = (w.abs() / scale).clamp(max=3)

    def packed(seed: int) -> torch.Tensor:
        model = copy.deepcopy(base)
        compress(model, qat.SignMagConfig(roles="qkv", bits=2, rounding="stochastic", rounding_seed=seed),
                 progress=False)
        return model.bert.encoder.layer[0].attention.self.query.weight_matrix()

    draws = torch.stack([packed(s) for s in range(40)])
    magnitudes = draws.abs() / scale
    assert torch.equal(packed(3), draws[3]) and not torch.equal(draws[0], draws[1])  # seeded, and a draw
    assert ((magnitudes == level.floor()) | (magnitudes == level.ceil())).all()
    assert (draws.mean(0) - w).abs().mean() < 0.25 * (draws[0] - w).abs().mean()  # unbiased: the mean nears w
    nearest = qat.FakeQuant("seed", 2).eval()(w)
    assert not torch.equal(draws[0], nearest)
    with pytest.raises(ConfigError, match="rounding='stochastic' with quantizer='binary'"):
        qat.SignMagConfig(quantizer="binary", bits=None, rounding="stochastic")
    with pytest.raises(ConfigError, match="rounding"):
        qat.SignMagConfig(bits=2, rounding="up")


def test_packing_without_training_is_post_training_quantization_with_the_seed_grid():
    torch.manual_seed(0)
    model = tiny_bert()
    w = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    report = compress(model, qat.SignMagConfig(roles="qkv", bits=4), progress=False)
    q = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(q, SignMagLinear)
    w_hat = qat.FakeQuant("seed", 4).eval()(w)
    assert torch.equal(q.weight_matrix(), w_hat)
    assert report.modules.rel_error.iloc[0] == pytest.approx(((w - w_hat).norm() / w.norm()).item())
    assert (report.modules.bits == 5).all() and len(report.modules) == 6


def test_target_roles_follow_the_architecture():
    assert qat.target_roles("attention", tiny_t5()) == qat.TARGETS["attention"]
    assert qat.target_roles("attention", tiny_bert()) == ["query", "key", "value"]   # no cross-attention
    assert "embeddings" in qat.target_roles("attention+embeddings", tiny_bert())


@pytest.mark.parametrize("fields,match", [
    (dict(bits=0), r"bits must be an integer in \[1, 8\]"),
    (dict(bits=9), r"bits must be an integer in \[1, 8\]"),
    (dict(bits=2.0), r"bits must be an integer"),
    (dict(quantizer="binary", bits=4), "binary weights have 1 bit"),
    (dict(quantizer="ternary"), "quantizer='ternary' is not allowed"),
    (dict(roles="attn_in"), "attn_in"),
])
def test_bad_configs_are_clear_errors(fields, match):
    with pytest.raises((ConfigError, adapters.UnknownRoleError), match=match):
        qat.SignMagConfig(**fields)


def test_a_model_without_an_adapter_is_refused_before_any_change():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(adapters.UnsupportedArchitectureError):
        qat.prepare(model, qat.SignMagConfig(roles="qkv", bits=4))
    assert not _fake_quantized(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_preparing_twice_or_storing_with_another_quantizer_is_refused_before_any_change():
    model = tiny_t5(tie_word_embeddings=False)
    config = qat.SignMagConfig(roles=qat.target_roles("attention", model), bits=4)
    qat.prepare(model, config)
    with pytest.raises(ValueError, match="already has a fake quantizer"):
        qat.prepare(model, config)
    with pytest.raises(ValueError, match="trained with quantizer 'seed' bits 4"):
        compress(model, qat.SignMagConfig(roles=config.roles, bits=2), progress=False)
    assert len(_fake_quantized(model)) == 18  # 2 encoder layers × q,k,v + 2 decoder layers × (self + cross) q,k,v
    assert not any(isinstance(m, SignMagLinear) for m in model.modules())
