"""Head removal on T5 itself: each pruned attention adds its kept heads' columns of the stack's
shared position bias and passes the full-head bias on, so a T5 with heads removed in any layer
(the bias-owning first layers, self- and cross-attention) computes exactly what the unpruned T5
computes with those heads masked, with and without the generation cache."""
import copy

import numpy as np
import pytest
import torch
from transformers import T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention

from tcomp_utils import adapters
from tcomp_utils.t5_embeddings import T5WithTransformerEmbeddings
from tcomp_utils.methods import composable, t5_heads
from tcomp_utils.methods.composable import CompositionError, Unit
from conftest import tiny_llama, tiny_t5

D_KV, HEADS = 8, 4
# different heads in every attention block, the bias-computing first layers included
KEPT = {"encoder.0.self_attn": [1, 3], "encoder.1.self_attn": [0, 2, 3], "decoder.0.self_attn": [2],
        "decoder.1.self_attn": [0, 1], "decoder.0.cross_attn": [0, 3], "decoder.1.cross_attn": [1, 2, 3]}


# T5 itself, and T5 blocks with the Transformer's embeddings (translation recipe t5_embeddings="transformer")
T5_CLASSES = pytest.mark.parametrize("cls", [T5ForConditionalGeneration, T5WithTransformerEmbeddings],
                                     ids=["t5", "t5-transformer-embeddings"])


def _model(attn="sdpa", cls=T5ForConditionalGeneration):
    torch.manual_seed(0)
    # a larger init than the default so greedy decoding does not repeat one token
    return tiny_t5(cls, initializer_factor=5.0, attn_implementation=attn).double()


def _batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # padding: the encoder mask and cross-attention mask paths
    mask[2, 6:] = 0
    dec = torch.randint(3, 100, (3, 5), generator=gen)
    dec_mask = torch.ones_like(dec)
    dec_mask[1, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec, "decoder_attention_mask": dec_mask}


def _pruned(model, kept=KEPT):
    out = copy.deepcopy(model)
    found = composable.sites(out)
    for site_id, heads in kept.items():
        composable.remove_heads(out, found[site_id], np.asarray(heads), D_KV)
    return out


def _masked(model, kept=KEPT, in_place=False):
    """The unpruned model with each removed head's input columns of its output projection zeroed."""
    out = model if in_place else copy.deepcopy(model)
    found = composable.sites(out)
    with torch.no_grad():
        for site_id, heads in kept.items():
            lin = out.get_submodule(list(found[site_id].paths.values())[3])
            o = getattr(lin, "weight_orig", lin.weight)  # an L1-masked layer recomputes .weight from it
            for h in sorted(set(range(HEADS)) - set(heads)):
                o[:, h * D_KV:(h + 1) * D_KV] = 0
    return out


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _attention(model, site_id):
    return model.get_submodule(composable.sites(model)[site_id].attention_path)


@T5_CLASSES
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_pruned_t5_computes_what_the_masked_t5_does(attn, cls):
    model = _model(attn, cls)
    pruned = _pruned(model)
    for site_id, heads in KEPT.items():
        a = _attention(pruned, site_id)
        assert isinstance(a, t5_heads.HeadPrunedT5Attention) and a.kept_heads.tolist() == heads
        assert a.n_heads == len(heads) and a.inner_dim == len(heads) * D_KV and a.q.out_features == len(heads) * D_KV
        assert a.o.in_features == len(heads) * D_KV and a.full_heads == HEADS
    batch = _batch()
    torch.testing.assert_close(_logits(pruned, batch), _logits(_masked(model), batch), atol=1e-10, rtol=1e-10)
    assert not torch.allclose(_logits(pruned, batch), _logits(model, batch))  # the heads did matter


@T5_CLASSES
def test_greedy_generation_with_the_cache_matches_the_masked_t5(cls):
    model = _model(cls=cls)
    pruned, masked = _pruned(model), _masked(model)
    batch = {k: v for k, v in _batch(1).items() if not k.startswith("decoder")}
    kw = dict(max_new_tokens=8, do_sample=False, num_beams=1, use_cache=True, return_dict_in_generate=True,
              output_scores=True)
    with torch.no_grad():
        got, want = pruned.generate(**batch, **kw), masked.generate(**batch, **kw)
    assert got.sequences.equal(want.sequences)
    assert len(set(want.sequences[:, 1:].flatten().tolist())) > 2  # not one repeated token
    for a, b in zip(got.scores, want.scores):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    # the cached decoding agrees with a full forward (no cache) of the pruned model on the sequences
    logits = _logits(pruned, {**batch, "decoder_input_ids": got.sequences[:, :-1]})
    live = got.sequences[:, 1:] != 0  # steps before a row finished (generate pads after the end token)
    torch.testing.assert_close(logits.float()[live], torch.stack(got.scores, 1)[live], atol=1e-5, rtol=1e-5)


def test_the_bias_owning_layer_keeps_its_table_whole_and_passes_every_head_on():
    model = _model()
    kept = {"encoder.0.self_attn": [1, 3], "decoder.0.self_attn": [0, 2], "decoder.0.cross_attn": [3]}
    pruned = _pruned(model, kept)
    for site_id in ("encoder.0.self_attn", "decoder.0.self_attn"):
        table = _attention(pruned, site_id).relative_attention_bias
        assert table.weight.shape == (32, HEADS)
        assert table.weight.equal(_attention(model, site_id).relative_attention_bias.weight)
    # called alone: the kept heads' output, and the bias the unpruned layer hands on
    torch.manual_seed(1)
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    with torch.no_grad():
        out, bias, weights = _attention(pruned, "encoder.0.self_attn")(x)
        _, full, _ = _attention(model, "encoder.0.self_attn")(x)
    assert out.shape == (2, 6, 32) and (weights is None or weights.shape[1] == 2)
    assert bias.shape == (1, HEADS, 6, 6) and bias.equal(full)
    # a later layer that prunes nothing gives the original layer's output with the bias handed on
    with torch.no_grad():
        after = _attention(pruned, "encoder.1.self_attn")(x, position_bias=bias)[0]
        want = _attention(model, "encoder.1.self_attn")(x, position_bias=full)[0]
    assert type(_attention(pruned, "encoder.1.self_attn")) is T5Attention and after.equal(want)
    # in the model: the unpruned later layers receive the very bias the unpruned model computes
    seen = {}

    def recorder(name):
        def hook(module, args, kwargs, output):
            seen[name] = kwargs["position_bias"]
        return hook

    batch = _batch()
    for tag, m in (("pruned", pruned), ("dense", model)):
        hooks = [_attention(m, s).register_forward_hook(recorder((tag, s)), with_kwargs=True)
                 for s in ("encoder.1.self_attn", "decoder.1.self_attn", "decoder.1.cross_attn")]
        _logits(m, batch)
        for h in hooks:
            h.remove()
    for s in ("encoder.1.self_attn", "decoder.1.self_attn", "decoder.1.cross_attn"):
        assert seen["pruned", s].shape[1] == HEADS and seen["pruned", s].equal(seen["dense", s]), s


def test_pruning_twice_composes_the_kept_heads_in_the_original_numbering():
    model = _model()
    once = _pruned(model, {"encoder.0.self_attn": [0, 3], "decoder.1.cross_attn": [1]})
    twice = _pruned(_pruned(model, {"encoder.0.self_attn": [0, 2, 3], "decoder.1.cross_attn": [1, 2]}),
                    {"encoder.0.self_attn": [0, 2], "decoder.1.cross_attn": [0]})
    assert _attention(twice, "encoder.0.self_attn").kept_heads.tolist() == [0, 3]
    assert _attention(twice, "decoder.1.cross_attn").kept_heads.tolist() == [1]
    batch = _batch()
    torch.testing.assert_close(_logits(twice, batch), _logits(once, batch), atol=1e-10, rtol=1e-10)
    assert "kept_heads" not in "".join(twice.state_dict())  # structure, not weights: the HF keys stay


def test_composable_head_pruning_works_on_t5_and_drops_exactly_the_removed_heads_weights():
    model = _model()
    (config,) = composable.resolve([{"name": "h", "attention": {"*": 0.25, "decoder.*": 0.5}, "linear": 0.3}], model)
    payloads = {u.key: composable.prune_unit(model, u) for u in config.units}
    composed = composable.compose(model, config, payloads)
    heads_units = [u for u in config.units if u.kind == "heads"]
    assert len(heads_units) == 6
    removed = sum(HEADS - len(payloads[u.key]["kept"]) for u in heads_units)
    assert removed == 2 * 1 + 4 * 2

    def count(m):
        return sum(p.numel() for p in m.parameters())
    assert count(model) - count(composed) == removed * 4 * D_KV * 32  # each head's rows of q, k, v and columns of o
    # the composed model is the masked one (with the same L1 masks on its linear layers)
    kept = {u.site: payloads[u.key]["kept"].tolist() for u in heads_units}
    l1_only = composable.compose(model, composable.resolve(
        [{"name": "l", "attention": 0.0, "linear": 0.3}], model)[0], payloads)
    torch.testing.assert_close(_logits(composed, _batch()), _logits(_masked(l1_only, kept, in_place=True), _batch()),
                               atol=1e-10, rtol=1e-10)
    # module-level fine-tuning runs on T5 heads too: the first layer (computing the bias) and a later one
    batches = [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "labels": b["decoder_input_ids"]}
               for b in map(_batch, range(2))]
    calls = composable.record(model, batches, ["encoder.0.self_attn", "decoder.1.cross_attn"])
    for unit in heads_units:
        if unit.site in calls:
            payload = composable.prune_unit(model, unit)
            result = composable.finetune_unit(model, unit, payload, calls[unit.site], steps=3, lr=1e-3)
            assert np.isfinite(result.log.loss.to_numpy()).all()


def test_removing_every_head_and_grouped_query_attention_are_still_refused():
    t5 = _model()
    with pytest.raises(CompositionError, match="encoder.0.self_attn: rate 0.9 removes all 4 heads"):
        composable.prune_unit(t5, Unit("encoder.0.self_attn", "heads", 0.9))
    with pytest.raises(ValueError, match="at least one"):
        t5_heads.keep_heads(_attention(t5, "decoder.0.cross_attn"), [])
    with pytest.raises(adapters.UnsupportedArchitectureError, match="grouped-query attention is not supported"):
        composable.prune_unit(tiny_llama(), Unit("decoder.0.self_attn", "heads", 0.5))

    class OtherBias(T5Attention):  # a shared-bias attention the swap does not know
        pass
    _attention(t5, "encoder.1.self_attn").__class__ = OtherBias
    with pytest.raises(adapters.UnsupportedArchitectureError, match="OtherBias.*shares one relative position bias"):
        composable.prune_unit(t5, Unit("encoder.1.self_attn", "heads", 0.5))
