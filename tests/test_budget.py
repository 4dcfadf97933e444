import math
import warnings

import pytest
from torch import nn
from transformers import BertConfig, BertModel

from tcomp_utils import budget
from conftest import tiny_bert, tiny_llama, tiny_t5


def hand_layer_macs(s, hidden, heads, ffn):
    """MACs of one encoder layer over s tokens: per head 3sHd + 2s²d + sdH, per FFN neuron 2sH."""
    d = hidden // heads
    return heads * (3 * s * hidden * d + 2 * s * s * d + s * d * hidden) + ffn * 2 * s * hidden


@pytest.fixture(scope="module")
def bert_base():
    return BertModel(BertConfig())  # bert-base-uncased's configuration, random weights


def test_bert_base_parameter_count_is_exact(bert_base):
    fp = budget.footprint(bert_base)
    assert fp.params == 109_482_240
    assert fp.bytes == 4 * 109_482_240  # fp32


@pytest.mark.parametrize("s", [1, 128, 512])
def test_bert_base_macs_match_hand_formula(bert_base, s):
    table = budget.module_table(bert_base, s)
    layer_macs = table[table.layer.notna()].macs_per_token.sum()
    assert layer_macs * s == pytest.approx(12 * hand_layer_macs(s, 768, 12, 3072), rel=1e-12)
    # pooler: one 768x768 product per sequence
    assert table[table.path == "pooler.dense"].macs_per_token.item() * s == pytest.approx(768 * 768)
    assert table.macs_per_token.sum() * s == pytest.approx(12 * hand_layer_macs(s, 768, 12, 3072) + 768 * 768)


@pytest.mark.slow
def test_minilm_l6_counts(minilm):
    table = budget.module_table(minilm, 128)
    assert table.params.sum() == 22_713_216
    assert table[table.layer.notna()].macs_per_token.sum() * 128 == pytest.approx(6 * hand_layer_macs(128, 384, 12, 1536))


def test_tied_embeddings_counted_once_but_lm_head_macs_counted():
    model = tiny_llama()
    table = budget.module_table(model, 16)
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    assert table.params.sum() == sum(unique.values())
    head = table[table.path == "lm_head"].iloc[0]
    assert head.params == 0 and head.macs_per_token == 48 * 100


def test_grouped_query_attention_macs():
    model = tiny_llama()  # 6 query heads, 2 kv heads of dim 8, hidden 48, FFN 96 gated
    s = 16
    t = budget.module_table(model, s)
    layer0 = t[t.layer == 0]
    proj = 48 * 48 + 2 * (48 * 16) + 48 * 48  # q, k (2 heads x 8), v, o
    ffn = 3 * 48 * 96
    core = 2 * s * 6 * 8
    assert layer0.macs_per_token.sum() == proj + ffn + core


def test_seq2seq_counts_cross_attention_core():
    t = budget.module_table(tiny_t5(), 10)
    kinds = t[t.kind == "attention core"]
    assert sorted(kinds.role.value_counts().items()) == [("attention", 4), ("cross_attention", 2)]
    assert (kinds.macs_per_token == 2 * 10 * 4 * 8).all()


class HalfRankLinear(nn.Module):
    """A stand-in compressed module: rank-r factors, stored 4-bit with one fp16 scale per row."""

    def __init__(self, n_in, n_out, r):
        super().__init__()
        self.in_features, self.out_features = n_in, n_out
        self.a, self.b = nn.Linear(n_in, r, bias=False), nn.Linear(r, n_out, bias=False)

    def forward(self, x):
        return self.b(self.a(x))

    def tcomp_footprint(self):
        r = self.a.out_features
        n = r * (self.in_features + self.out_features)
        return budget.Footprint(n, math.ceil(n * 4 / 8) + 2 * (r + self.out_features), n)


def test_compressed_module_reports_its_own_footprint():
    model = tiny_bert()
    before = budget.module_table(model, 8)
    q_path = "bert.encoder.layer.0.attention.self.query"
    model.bert.encoder.layer[0].attention.self.query = HalfRankLinear(32, 32, 4)
    after = budget.module_table(model, 8)
    row = after[after.path == q_path].iloc[0]
    assert (row.kind, row.role, row.layer) == ("HalfRankLinear", "query", 0)
    assert row.params == 4 * 64 and row.bytes == math.ceil(256 * 4 / 8) + 2 * 36 and row.macs_per_token == 256
    assert not after.path.str.startswith(q_path + ".").any()  # its children are not counted again
    assert before.params.sum() - after.params.sum() == (32 * 32 + 32) - 256


def test_summarize_shares_add_up():
    s = budget.summarize(budget.module_table(tiny_bert(), 8), "role")
    assert s["params_%"].sum() == pytest.approx(100)
    assert set(s.role) >= {"query", "ffn_in", "embeddings", "other", "attention"}


def test_bad_sequence_length():
    with pytest.raises(ValueError, match="seq_len must be a positive"):
        budget.module_table(tiny_bert(), 0)


def test_vit_patch_embedding_is_counted_per_patch_token():
    """A ViT's patch embedding is a Conv2d with kernel = stride = patch: one output position per
    patch token, each 3·p·p·hidden MACs (it counted 0, a quarter of this tiny ViT's MACs)."""
    from transformers import ViTConfig, ViTModel

    p, hidden, ffn, layers, s = 8, 32, 64, 2, (32 // 8) ** 2 + 1  # 16 patches and the class token
    model = ViTModel(ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                               intermediate_size=ffn, image_size=32, patch_size=p, num_channels=3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ViT holds nothing the counter cannot count
        table = budget.module_table(model, s)
    conv = table[table.kind == "Conv2d"]
    assert list(conv.path) == ["embeddings.patch_embeddings.projection"]
    assert conv.macs_per_token.item() == 3 * p * p * hidden
    per_layer = 4 * hidden * hidden + 2 * hidden * ffn + 2 * s * hidden  # Q, K, V, O, FFN, attention core
    hand = 3 * p * p * hidden + layers * per_layer + hidden * hidden / s  # + the pooler, once per sequence
    assert table.macs_per_token.sum() == pytest.approx(hand, rel=1e-12)


def test_grouped_conv1d_is_counted_and_weights_the_counter_cannot_count_are_named():
    """A grouped Conv1d costs in/groups·k·out per position; a module holding weights of a kind the
    counter does not know (here nn.MultiheadAttention's in_proj_weight) and a strided convolution
    whose positions per token are unknown are named in a warning, not silently counted."""
    model = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1, groups=2), nn.MultiheadAttention(8, 2),
                          nn.Conv1d(8, 8, 4, stride=2))
    with pytest.warns(UserWarning) as record:
        table = budget.module_table(model, 10)
    assert table.set_index("path").macs_per_token["0"] == 4 // 2 * 3 * 8
    messages = " | ".join(str(w.message) for w in record)
    assert "'1' (MultiheadAttention): counted as 0 MACs" in messages
    assert "'2' (Conv1d, kernel (4,), stride (2,))" in messages


@pytest.mark.parametrize("make", ["bert", "llama", "opt", "t5", "qwen2", "mistral", "gemma3_text", "phi3", "gpt2"])
def test_every_covered_architecture_is_counted_without_a_warning(make):
    from conftest import ARCHITECTURES

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        budget.footprint(ARCHITECTURES[make]())


def test_a_parametrized_linear_counts_as_the_plain_one_without_a_warning():
    """QAT's fake quantization parametrizes the weight: the original moves into a
    ParametrizationList child; the layer still counts its MACs, the original its parameters."""
    from torch.nn.utils import parametrize

    class Halve(nn.Module):
        def forward(self, w):
            return w / 2

    plain, wrapped = nn.Sequential(nn.Linear(8, 4)), nn.Sequential(nn.Linear(8, 4))
    parametrize.register_parametrization(wrapped[0], "weight", Halve())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert budget.footprint(wrapped) == budget.footprint(plain)
