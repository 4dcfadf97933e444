import copy

import pytest
import torch
from torch import nn

from tcomp_utils import adapters, budget, serialize
from tcomp_utils.methods.factorization import factorize
from tcomp_utils.methods.quantization import quantize
from conftest import (ARCHITECTURES, INFERRED, TINY, tiny_bert, tiny_falcon, tiny_gemma3, tiny_gpt2, tiny_gpt_neox,
                      tiny_llama, tiny_opt, tiny_phi3, tiny_qwen2, tiny_t5)


def test_bert_roles_map_to_expected_paths():
    model = tiny_bert()
    q = adapters.find_modules(model, "query")
    assert [m.path for m in q] == [f"bert.encoder.layer.{i}.attention.self.query" for i in range(2)]
    assert [m.layer for m in q] == [0, 1]
    assert adapters.find_modules(model, "ffn_out")[1].path == "bert.encoder.layer.1.output.dense"
    assert adapters.find_modules(model, "attn_out")[0].path == "bert.encoder.layer.0.attention.output.dense"
    assert adapters.find_modules(model, "embeddings")[0].path == "bert.embeddings.word_embeddings"
    assert adapters.find_modules(model, "value", layers=[1])[0].path.endswith("layer.1.attention.self.value")


def test_llama_gated_ffn_and_grouped_query_attention():
    model = tiny_llama()
    ffn_in = adapters.find_modules(model, "ffn_in")
    assert [m.path.rsplit(".", 1)[1] for m in ffn_in] == ["gate_proj", "up_proj"] * 2
    heads = adapters.head_structure(model)
    assert heads == adapters.HeadStructure(n_heads=6, head_dim=8, n_kv_heads=2)
    assert heads.kv_groups == 3
    assert adapters.find_modules(model, "key")[0].module.out_features == heads.n_kv_heads * heads.head_dim


def test_opt_and_t5_stacks():
    opt = tiny_opt()
    assert adapters.find_modules(opt, "ffn_in")[0].path == "model.decoder.layers.0.fc1"
    t5 = tiny_t5()
    q = adapters.find_modules(t5, "query")
    assert [m.stack for m in q] == ["encoder", "encoder", "decoder", "decoder"]
    cross = adapters.find_modules(t5, "cross_key")
    assert [m.path for m in cross] == [f"decoder.block.{i}.layer.1.EncDecAttention.k" for i in range(2)]
    assert adapters.find_modules(t5, "ffn_out")[3].path == "decoder.block.1.layer.2.DenseReluDense.wo"
    assert adapters.get_adapter(t5).family == "seq2seq"


def test_unknown_role_is_a_clear_error():
    with pytest.raises(adapters.UnknownRoleError, match=r"unknown module role 'queries'.*allowed roles: query, key"):
        adapters.find_modules(tiny_bert(), "queries")
    with pytest.raises(adapters.UnknownRoleError, match="cross_query"):  # encoders have no cross-attention
        adapters.find_modules(tiny_bert(), "cross_query")


def test_set_module_replaces_in_place():
    import torch
    model = tiny_bert()
    path = adapters.find_modules(model, "query")[0].path
    new = torch.nn.Linear(32, 32)
    adapters.set_module(model, path, new)
    assert model.get_submodule(path) is new


# ------------------------------------------------------------------ architectures by layout
EXPECTED_LEAVES = {  # role -> last path components of its modules in one layer, after prepare()
    "gemma3_text": {"query": ["q_proj"], "key": ["k_proj"], "value": ["v_proj"], "attn_out": ["o_proj"],
                    "ffn_in": ["gate_proj", "up_proj"], "ffn_out": ["down_proj"]},
    "qwen2": {"query": ["q_proj"], "key": ["k_proj"], "value": ["v_proj"], "attn_out": ["o_proj"],
              "ffn_in": ["gate_proj", "up_proj"], "ffn_out": ["down_proj"]},
    "mistral": {"query": ["q_proj"], "key": ["k_proj"], "value": ["v_proj"], "attn_out": ["o_proj"],
                "ffn_in": ["gate_proj", "up_proj"], "ffn_out": ["down_proj"]},
    "phi3": {"query": ["qkv_proj.query"], "key": ["qkv_proj.key"], "value": ["qkv_proj.value"], "attn_out": ["o_proj"],
             "ffn_in": ["gate_up_proj.gate", "gate_up_proj.up"], "ffn_out": ["down_proj"]},
    "gpt2": {"query": ["c_attn.query"], "key": ["c_attn.key"], "value": ["c_attn.value"], "attn_out": ["attn.c_proj"],
             "ffn_in": ["c_fc"], "ffn_out": ["mlp.c_proj"]},
    "gpt_neox": {"query": ["attention.query_key_value.query"], "key": ["attention.query_key_value.key"],
                 "value": ["attention.query_key_value.value"], "attn_out": ["attention.dense"],
                 "ffn_in": ["mlp.dense_h_to_4h"], "ffn_out": ["mlp.dense_4h_to_h"]},
    "falcon": {"query": ["self_attention.query_key_value.query"], "key": ["self_attention.query_key_value.key"],
               "value": ["self_attention.query_key_value.value"], "attn_out": ["self_attention.dense"],
               "ffn_in": ["mlp.dense_h_to_4h"], "ffn_out": ["mlp.dense_4h_to_h"]},
}


def _inputs(name, n=2, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, length), generator=g)
    return dict(input_ids=ids, decoder_input_ids=ids) if name == "t5" else dict(input_ids=ids)


@pytest.mark.parametrize("name", sorted(EXPECTED_LEAVES))
def test_roles_of_common_layouts_are_inferred(name):
    torch.manual_seed(0)
    model = ARCHITECTURES[name]()
    adapters.prepare(model)
    adapter = adapters.get_adapter(model)
    assert adapter.family == "decoder" and list(adapter.stacks) == ["decoder"]
    heads = adapters.head_structure(model)
    for role, leaves in EXPECTED_LEAVES[name].items():
        found = adapters.find_modules(model, role)
        assert [rm.layer for rm in found] == sorted([0, 1] * len(leaves))
        assert [rm.path for rm in found if rm.layer == 0] == [
            next(p for p, _ in model.named_modules() if p.endswith(f".0.{leaf}") or p.endswith(f".0.attn.{leaf}")
                 or p.endswith(f".0.mlp.{leaf}") or p.endswith(f".0.self_attn.{leaf}")) for leaf in leaves]
        assert all(isinstance(rm.module, nn.Linear) for rm in found)
    q, k = adapters.find_modules(model, "query")[0].module, adapters.find_modules(model, "key")[0].module
    assert q.out_features == heads.n_heads * heads.head_dim and k.out_features == heads.n_kv_heads * heads.head_dim
    assert adapters.find_modules(model, "embeddings")[0].module is model.get_input_embeddings()


@pytest.mark.parametrize("name", sorted(TINY))
def test_inference_agrees_with_the_explicit_table(name):
    model = TINY[name]()
    table, inferred = adapters.get_adapter(model), adapters.infer_adapter(model)
    assert not table.inferred and inferred.inferred and inferred.family == table.family
    assert inferred.embeddings == table.embeddings and set(inferred.per_sequence) == set(table.per_sequence)
    for stack, spec in table.stacks.items():
        present = {r: tuple(p for p in paths if adapters._get(model.get_submodule(
            adapters.base_prefix(model) + spec.path)[0], p) is not None) for r, paths in spec.roles.items()}
        assert inferred.stacks[stack].path == spec.path
        assert {r: set(p) for r, p in inferred.stacks[stack].roles.items()} == {r: set(p) for r, p in present.items()}


@pytest.mark.parametrize("name", sorted(INFERRED))
def test_prepare_splits_fused_projections_exactly(name):
    torch.manual_seed(0)
    model = INFERRED[name]()
    with pytest.raises(adapters.UnsupportedArchitectureError, match=r"call tcomp_utils.adapters.prepare\(model\)"):
        adapters.find_modules(model, "query") if adapters.get_adapter(model).needs_prepare() else _raise_prepare()
    batch = _inputs(name)
    with torch.no_grad():
        before = model(**batch).logits
        adapters.prepare(model)
        torch.testing.assert_close(model(**batch).logits, before, atol=1e-5, rtol=1e-5)
    assert adapters.prepare(model) is model and not adapters.get_adapter(model).needs_prepare()  # idempotent


def _raise_prepare():  # gemma3 has nothing fused: nothing to prepare
    raise adapters.UnsupportedArchitectureError("call tcomp_utils.adapters.prepare(model)")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_compresses_counts_saves_and_loads(name, tmp_path):
    torch.manual_seed(0)
    model = ARCHITECTURES[name]()
    batch = _inputs(name)
    dense = budget.footprint(model)
    svd = factorize(copy.deepcopy(model), "svd", "ffn", ratio=2)
    assert len(svd.modules) == {"llama": 6, "qwen2": 6, "mistral": 6, "gemma3_text": 6, "phi3": 6}.get(
        name, 4 if name != "t5" else 8)
    assert svd.after.params < dense.params and svd.after.macs < dense.macs
    quantized = copy.deepcopy(model)
    batches = [_inputs(name, seed=s) for s in range(2)]
    report = quantize(quantized, "gptq", bits=8, calibration=batches, progress=False)
    n_linear = len([r for role in adapters.get_adapter(quantized).roles() if role != "embeddings"
                    for r in adapters.find_modules(quantized, role)])
    assert len(report.modules) == n_linear and report.after.bytes < dense.bytes
    with torch.no_grad():
        ref, out = model(**batch).logits, quantized(**batch).logits
        assert ((out - ref).norm() / ref.norm()) < 0.05  # 8 bits: close to the float model
        serialize.save_compressed(quantized, tmp_path / "q")
        loaded = serialize.load_compressed(tmp_path / "q")
        assert torch.equal(loaded(**batch).logits, out)
        assert budget.footprint(loaded) == budget.footprint(quantized)


def test_unrecognised_layouts_are_refused_clearly():
    from transformers import BloomConfig, BloomForCausalLM

    bloom = BloomForCausalLM(BloomConfig(vocab_size=50, hidden_size=16, n_layer=1, n_head=2))
    with pytest.raises(adapters.UnsupportedArchitectureError,
                       match=r"model_type 'bloom'.*no list of transformer layers.*register_adapter"):
        adapters.find_modules(bloom, "query")
    cross = tiny_gpt2(add_cross_attention=True)  # cross-attention's c_attn holds key and value only
    with pytest.raises(adapters.UnsupportedArchitectureError, match=r"crossattention.c_attn has 96 outputs"):
        adapters.get_adapter(cross)
    with pytest.raises(adapters.UnsupportedArchitectureError, match="has no HF config"):
        adapters.infer_adapter(nn.Sequential(nn.Linear(2, 2)))


def test_adapter_from_a_config_alone():
    from transformers import GPT2Config

    adapter = adapters.get_adapter(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert adapter.inferred and adapter.stacks["decoder"].path == "h" and adapter.needs_prepare()


def test_conv1d_and_split_layers_are_counted_like_linears():
    model = tiny_gpt2()
    before = budget.footprint(model)  # Conv1D counted as in × out MACs
    adapters.prepare(model)
    assert budget.footprint(model) == before
    assert budget.footprint(tiny_phi3()).macs == budget.footprint(adapters.prepare(tiny_phi3())).macs


FALCON_LAYOUTS = {  # Falcon's three query_key_value layouts, and GPT-NeoX's
    "falcon-grouped": dict(),  # new_decoder_architecture: per key/value head, its 3 queries, key, value
    "falcon-per-head": dict(new_decoder_architecture=False, multi_query=False, num_kv_heads=None),
    "falcon-multi-query": dict(new_decoder_architecture=False, multi_query=True),
}


@pytest.mark.parametrize("name", [*FALCON_LAYOUTS, "gpt_neox"])
def test_fused_query_key_value_is_split_into_one_linear_per_role_exactly(name):
    torch.manual_seed(0)
    model = tiny_gpt_neox() if name == "gpt_neox" else tiny_falcon(**FALCON_LAYOUTS[name])
    batch = _inputs(name)
    with torch.no_grad():
        before = model(**batch).logits
        adapters.prepare(model)
        torch.testing.assert_close(model(**batch).logits, before, atol=1e-6, rtol=1e-6)
    heads = adapters.head_structure(model)
    for role, heads_of_role in (("query", heads.n_heads), ("key", heads.n_kv_heads), ("value", heads.n_kv_heads)):
        found = adapters.find_modules(model, role)
        assert [type(rm.module) for rm in found] == [nn.Linear] * 2
        assert found[0].module.out_features == heads_of_role * heads.head_dim
    assert all(type(rm.module) is nn.Linear for role in ("attn_out", "ffn_in", "ffn_out")  # FalconLinear made Linear
               for rm in adapters.find_modules(model, role))
    assert heads.n_kv_heads == {"falcon-grouped": 2, "falcon-multi-query": 1}.get(name, heads.n_heads)


def test_an_unknown_fused_layout_is_refused_naming_the_layer_found():
    from transformers import BloomConfig, BloomForCausalLM

    bloom = BloomForCausalLM(BloomConfig(vocab_size=50, hidden_size=16, n_layer=1, n_head=2))
    with pytest.raises(adapters.UnsupportedArchitectureError,
                       match=r"model_type 'bloom'.*it has transformer\.h\.0\.self_attention\.query_key_value, a Linear "
                             r"\(16 in, 48 out\).*query_key_value of gpt_neox, falcon"):
        adapters.get_adapter(bloom)


def test_post_sublayer_norms_are_named_only_where_a_layer_normalizes_its_sublayers_outputs():
    # Gemma: post_attention_layernorm and post_feedforward_layernorm normalize each sublayer's output
    # before the residual add; Llama-like layers' post_attention_layernorm is the FFN's input norm
    assert adapters.get_adapter(tiny_gemma3()).stacks["decoder"].post_norms == {
        "attn_out": "post_attention_layernorm", "ffn_out": "post_feedforward_layernorm"}
    for model in (tiny_qwen2(), tiny_llama(), tiny_bert(), tiny_gpt_neox()):
        assert all(not s.post_norms for s in adapters.get_adapter(model).stacks.values())
