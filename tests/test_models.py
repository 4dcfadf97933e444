import pytest
import torch

from tcomp_utils import models
from conftest import tiny_t5


@pytest.mark.slow
def test_embedded_encoder_loads_as_classifier():
    model, tok = models.load_model("minilm-l6", "sequence-classification", num_labels=2)
    enc = tok(["a good day", "a bad day"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**enc).logits.shape == (2, 2)
    assert not model.training


@pytest.mark.slow
def test_local_folder_goes_through_the_same_path(tmp_path):
    model = tiny_t5()
    model.save_pretrained(tmp_path)
    _, tok = models.load_model("minilm-l6", "base")
    tok.save_pretrained(tmp_path)  # any tokenizer will do for the loading path
    loaded, _ = models.load_model(str(tmp_path), "seq2seq")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        a = model(input_ids=ids, decoder_input_ids=ids).logits
        b = loaded(input_ids=ids, decoder_input_ids=ids).logits
    assert torch.equal(a, b)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(models.UnknownModelError, match=r"unknown model 'no-such-model-xyz': not an embedded name"):
        models.load_model("no-such-model-xyz")


def test_unknown_task_type():
    with pytest.raises(ValueError, match="unknown task type 'token-classification'"):
        models.load_model("minilm-l6", "token-classification")


def test_smollm_caveat_is_declared():
    assert "Q4_1" in models.model_note("smollm2-135m")


def _gguf_file():
    from tcomp_utils import assets
    em = models.EMBEDDED_MODELS["smollm2-135m"]
    return assets.asset_path(em.asset) / em.subdir / em.gguf_file


@pytest.mark.slow
def test_a_folder_or_file_with_a_gguf_resolves_to_it(tmp_path):
    gguf = _gguf_file()
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "model.gguf").symlink_to(gguf)
    assert models.resolve(str(tmp_path / "one")) == (str(tmp_path / "one"), "model.gguf")
    assert models.resolve(str(tmp_path / "one" / "model.gguf")) == (str(tmp_path / "one"), "model.gguf")
    (tmp_path / "one" / "other.gguf").symlink_to(gguf)
    with pytest.raises(models.UnknownModelError, match=r"holds 2 GGUF files \(model.gguf, other.gguf\)"):
        models.resolve(str(tmp_path / "one"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(models.UnknownModelError, match="not a .gguf file"):
        models.resolve(str(tmp_path / "notes.txt"))


@pytest.mark.slow
def test_a_gguf_by_path_loads_like_the_embedded_name(tmp_path):
    (tmp_path / "SmolLM2.gguf").symlink_to(_gguf_file())
    model, tok = models.load_model(str(tmp_path), "causal-lm")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    ids = tok("It is a truth universally acknowledged", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()
    embedded, embedded_tok = models.load_model("smollm2-135m", "causal-lm")  # its converted copy (`make test` makes it first)
    assert torch.equal(embedded_tok("It is a truth universally acknowledged", return_tensors="pt").input_ids, ids)
    with torch.no_grad():
        assert torch.equal(embedded(ids).logits, logits)


def test_a_gguf_load_parses_once_and_leaves_gguf_as_it_was():
    gguf = pytest.importorskip("gguf")
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with models._gguf_parsed_once():
        assert gguf.GGUFReader is not reader
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)


def _tiny_gguf(path):
    """A two-layer Llama with random weights (Q8_0 blocks, as a quantized GGUF holds them) and a
    byte-level BPE vocabulary, written as a GGUF file in milliseconds."""
    gguf = pytest.importorskip("gguf")
    import numpy as np
    from gguf.quants import quantize
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    hidden, layers, heads, kv_heads, ffn = 64, 2, 4, 2, 128
    tokens = ["<unk>", "<s>", "</s>", *bytes_to_unicode().values(), "he"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(["h e"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    rng = np.random.default_rng(0)

    def tensor(name, *shape, quantized=True):
        a = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if quantized:
            w.add_tensor(name, quantize(a, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, a)

    tensor("token_embd.weight", len(tokens), hidden)
    tensor("output_norm.weight", hidden, quantized=False)
    kv = kv_heads * hidden // heads
    for i in range(layers):
        for name, shape in [("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)), ("attn_v", (kv, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)),
                            ("ffn_down", (hidden, ffn))]:
            tensor(f"blk.{i}.{name}.weight", *shape)
        tensor(f"blk.{i}.attn_norm.weight", hidden, quantized=False)
        tensor(f"blk.{i}.ffn_norm.weight", hidden, quantized=False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_gguf_loaded_model_saves_with_save_pretrained_and_loads_back(tmp_path):
    model, tok = models.load_model(str(_tiny_gguf(tmp_path / "tiny.gguf")), "causal-lm")
    assert getattr(model.config, "quantization_config", None) is None and not getattr(model, "is_quantized", False)
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    assert "quantization_config" not in (tmp_path / "saved" / "config.json").read_text()
    again, _ = models.load_model(str(tmp_path / "saved"), "causal-lm")
    ids = tok("hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_a_converted_gguf_model_is_checked_and_converted_again_when_damaged(tmp_path, monkeypatch, capsys):
    gguf = _tiny_gguf(tmp_path / "tiny.gguf")
    monkeypatch.setitem(models.EMBEDDED_MODELS, "tiny-gguf", models.EmbeddedModel("none", "", gguf.name))
    real_resolve, conversions = models.resolve, []
    monkeypatch.setattr(models, "resolve", lambda name: (str(tmp_path), gguf.name) if name == "tiny-gguf"
                        else real_resolve(name))
    monkeypatch.setattr(models, "converted_dir", lambda name: tmp_path / "converted" / name)
    real_dequantized = models._gguf_dequantized
    monkeypatch.setattr(models, "_gguf_dequantized", lambda *a, **k: conversions.append(1) or real_dequantized(*a, **k))
    model, tok = models.load_model("tiny-gguf", "causal-lm")
    ids = tok("hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(ids).logits  # now: the loaded weights may be mapped from the file damaged below
    weights = tmp_path / "converted" / "tiny-gguf" / "model.safetensors"
    assert len(conversions) == 1 and (weights.parent / "checksums.json").is_file()
    (weights.parent / "checksums.json").unlink()  # a cache converted before checksums were recorded
    models.load_model("tiny-gguf", "causal-lm")
    assert len(conversions) == 1 and "recorded them now" in capsys.readouterr().err
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    again, _ = models.load_model("tiny-gguf", "causal-lm")
    assert len(conversions) == 2 and f"{weights} does not match the SHA-256" in capsys.readouterr().err
    with torch.no_grad():
        assert torch.equal(again(ids).logits, expected)
