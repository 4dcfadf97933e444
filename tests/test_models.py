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
