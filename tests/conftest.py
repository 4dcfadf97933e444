"""Shared fixtures: tiny random-initialised models of each family (no download, seconds each)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test must never reach for a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM, OPTConfig,
                          OPTForCausalLM, T5Config, T5ForConditionalGeneration)


def tiny_bert(**kw):
    cfg = BertConfig(**{"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "intermediate_size": 64, "max_position_embeddings": 64, "num_labels": 2, **kw})
    return BertForSequenceClassification(cfg).eval()


def tiny_llama(**kw):
    cfg = LlamaConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64,
                      tie_word_embeddings=True, **kw)
    return LlamaForCausalLM(cfg).eval()


def tiny_opt(**kw):
    cfg = OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                    max_position_embeddings=64, word_embed_proj_dim=32, **kw)
    return OPTForCausalLM(cfg).eval()


def tiny_t5(cls=T5ForConditionalGeneration, **kw):
    """A 2 + 2-layer T5 (``cls``: transformers' own, or a subclass such as
    ``t5_embeddings.T5WithTransformerEmbeddings``)."""
    cfg = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                   decoder_start_token_id=0, **kw)
    return cls(cfg).eval()


def tiny_marian(**kw):
    """The vanilla Transformer of the embedded translation model (post-norm, sinusoidal positions,
    encoder and decoder sharing one embedding table, a separate output layer)."""
    from transformers import MarianConfig, MarianMTModel

    cfg = MarianConfig(vocab_size=100, decoder_vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2,
                       encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                       max_position_embeddings=64, pad_token_id=0, decoder_start_token_id=0,
                       share_encoder_decoder_embeddings=True, **{"tie_word_embeddings": False, **kw})
    return MarianMTModel(cfg).eval()


TINY = {"bert": tiny_bert, "llama": tiny_llama, "opt": tiny_opt, "t5": tiny_t5}


@pytest.fixture(params=sorted(TINY))
def tiny_model(request):
    torch.manual_seed(0)
    return request.param, TINY[request.param]()


@pytest.fixture(scope="session")
def minilm():
    """The embedded minilm-l6 encoder (needs the fetched assets: `make assets`)."""
    from tcomp_utils import models
    return models.load_model("minilm-l6", "base")[0]


def _tiny_decoder(config_cls, model_cls, **kw):
    base = dict(vocab_size=100, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                intermediate_size=96, max_position_embeddings=64)
    return model_cls(config_cls(**{**base, **kw})).eval()


def tiny_gemma3(**kw):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    return _tiny_decoder(Gemma3TextConfig, Gemma3ForCausalLM, head_dim=16, sliding_window=8, **kw)


def tiny_qwen2(**kw):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    return _tiny_decoder(Qwen2Config, Qwen2ForCausalLM, **kw)


def tiny_mistral(**kw):
    from transformers import MistralConfig, MistralForCausalLM
    return _tiny_decoder(MistralConfig, MistralForCausalLM, **kw)


def tiny_phi3(**kw):
    from transformers import Phi3Config, Phi3ForCausalLM
    return _tiny_decoder(Phi3Config, Phi3ForCausalLM, pad_token_id=0, **kw)


def tiny_gpt2(**kw):
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=48, n_layer=2, n_head=6, n_positions=64, **kw)).eval()


def tiny_gpt_neox(**kw):
    """GPT-NeoX: a fused query_key_value interleaved per head ([q_h, k_h, v_h]), parallel residual."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    return GPTNeoXForCausalLM(GPTNeoXConfig(**{"vocab_size": 100, "hidden_size": 48, "num_hidden_layers": 2,
                                               "num_attention_heads": 6, "intermediate_size": 96,
                                               "max_position_embeddings": 64, **kw})).eval()


def tiny_falcon(**kw):
    """Falcon's new decoder architecture (a fused query_key_value holding, per key/value head, its 3
    query heads then its key and value; FalconLinear layers). multi_query=True without
    new_decoder_architecture: one shared key/value head, stacked after the queries; both False:
    interleaved per head like GPT-NeoX."""
    from transformers import FalconConfig, FalconForCausalLM
    return FalconForCausalLM(FalconConfig(**{"vocab_size": 100, "hidden_size": 48, "num_hidden_layers": 2,
                                             "num_attention_heads": 6, "new_decoder_architecture": True,
                                             "num_kv_heads": 2, "bias": True, **kw})).eval()


# architectures whose adapter is inferred from the module tree (no entry in the explicit table)
INFERRED = {"gemma3_text": tiny_gemma3, "phi3": tiny_phi3, "gpt2": tiny_gpt2, "gpt_neox": tiny_gpt_neox,
            "falcon": tiny_falcon}
# every architecture the tests cover
ARCHITECTURES = {**TINY, "qwen2": tiny_qwen2, "mistral": tiny_mistral, **INFERRED}


def model_inputs(name: str, seed: int = 3) -> dict:
    """A forward pass's inputs for architecture ``name`` of :data:`ARCHITECTURES` (2 sequences of 9
    token ids; a seq2seq model's decoder reads the same ids)."""
    ids = torch.randint(1, 100, (2, 9), generator=torch.Generator().manual_seed(seed))
    return dict(input_ids=ids, decoder_input_ids=ids) if name == "t5" else dict(input_ids=ids)
