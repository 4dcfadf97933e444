import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from tcomp_utils import adapters
from conftest import tiny_bert, tiny_llama, tiny_opt, tiny_t5


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


def test_unknown_architecture_says_how_to_add_an_adapter():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(adapters.UnsupportedArchitectureError, match=r"model_type 'gpt2'.*register_adapter"):
        adapters.find_modules(gpt2, "query")


def test_set_module_replaces_in_place():
    import torch
    model = tiny_bert()
    path = adapters.find_modules(model, "query")[0].path
    new = torch.nn.Linear(32, 32)
    adapters.set_module(model, path, new)
    assert model.get_submodule(path) is new
