"""Save/load of any compressed shape: physically smaller layers and changed attributes load back
with identical outputs; a save never destroys what it did not write; a description cannot name an
arbitrary class."""
import json

import pytest
import torch
from torch import nn

from tcomp_utils import adapters, serialize
from tcomp_utils.methods.factorization import factorize
from conftest import tiny_bert, tiny_gpt2, tiny_llama


def _narrow(linear: nn.Linear, rows=None, cols=None) -> nn.Linear:
    """A physically smaller copy of ``linear`` keeping output ``rows`` and input ``cols``."""
    w = linear.weight.detach()
    rows = torch.arange(w.shape[0]) if rows is None else torch.as_tensor(rows)
    cols = torch.arange(w.shape[1]) if cols is None else torch.as_tensor(cols)
    new = nn.Linear(len(cols), len(rows), bias=linear.bias is not None)
    with torch.no_grad():
        new.weight.copy_(w[rows][:, cols])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[rows])
    return new


def _replace(model, path, **kw):
    adapters.set_module(model, path, _narrow(model.get_submodule(path), **kw))


def _roundtrip(model, batch, folder):
    with torch.no_grad():
        expected = model(**batch).logits
        serialize.save_compressed(model, folder)
        loaded = serialize.load_compressed(folder)
        assert torch.equal(loaded(**batch).logits, expected)
    return loaded


def test_bert_with_narrower_ffn_and_a_pruned_head_loads_back(tmp_path):
    torch.manual_seed(0)
    model = tiny_bert()
    keep = torch.arange(40)  # layer 0: FFN 64 -> 40 neurons
    _replace(model, "bert.encoder.layer.0.intermediate.dense", rows=keep)
    _replace(model, "bert.encoder.layer.0.output.dense", cols=keep)
    heads = torch.cat([torch.arange(0, 8), torch.arange(16, 32)])  # layer 1: head 1 of 4 removed
    for name in ("query", "key", "value"):
        _replace(model, f"bert.encoder.layer.1.attention.self.{name}", rows=heads)
    _replace(model, "bert.encoder.layer.1.attention.output.dense", cols=heads)
    attention = model.get_submodule("bert.encoder.layer.1.attention.self")
    attention.num_attention_heads, attention.all_head_size = 3, 24
    factorize(model, "svd", "ffn", ratio=2, layers=[1])  # and a compressed module beside them
    batch = {"input_ids": torch.randint(1, 100, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    loaded = _roundtrip(model, batch, tmp_path / "pruned")
    assert loaded.get_submodule("bert.encoder.layer.0.intermediate.dense").out_features == 40
    assert loaded.get_submodule("bert.encoder.layer.1.attention.self.query").weight.shape == (24, 32)
    assert loaded.get_submodule("bert.encoder.layer.1.attention.self").num_attention_heads == 3
    description = json.loads((tmp_path / "pruned" / serialize.DESCRIPTION).read_text())
    assert description["attributes"]["bert.encoder.layer.0.intermediate.dense"] == {"out_features": 40}


def test_llama_with_a_removed_kv_group_and_narrower_mlp_loads_back(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama()  # 6 query heads of 8 in 2 groups of 3, 2 key/value heads
    layer = "model.layers.1"
    _replace(model, f"{layer}.self_attn.q_proj", rows=torch.arange(24))  # group 0's three query heads
    _replace(model, f"{layer}.self_attn.k_proj", rows=torch.arange(8))
    _replace(model, f"{layer}.self_attn.v_proj", rows=torch.arange(8))
    _replace(model, f"{layer}.self_attn.o_proj", cols=torch.arange(24))
    for name in ("gate_proj", "up_proj"):
        _replace(model, f"{layer}.mlp.{name}", rows=torch.arange(64))
    _replace(model, f"{layer}.mlp.down_proj", cols=torch.arange(64))
    _roundtrip(model, {"input_ids": torch.randint(1, 100, (2, 9))}, tmp_path / "pruned")


def test_split_fused_projections_load_back(tmp_path):
    torch.manual_seed(0)
    model = tiny_gpt2()
    factorize(model, "svd", "qkv", ratio=2)  # prepares (splits c_attn), then factorizes Q/K/V
    loaded = _roundtrip(model, {"input_ids": torch.randint(1, 100, (2, 9))}, tmp_path / "gpt2")
    assert isinstance(loaded.get_submodule("transformer.h.0.attn.c_attn"), adapters.FusedProjection)


def test_save_never_destroys_what_it_did_not_write(tmp_path, monkeypatch):
    model = tiny_bert()
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not empty and is not a previous save"):
        serialize.save_compressed(model, folder)
    assert (folder / "notes.txt").read_text() == "keep me" and sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    monkeypatch.chdir(folder)
    with pytest.raises(FileExistsError):
        serialize.save_compressed(model, ".")
    assert (folder / "notes.txt").is_file()
    target = tmp_path / "save"
    serialize.save_compressed(model, target)
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        serialize.save_compressed(model, target)
    serialize.save_compressed(model, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "save"]  # no temporary folders left behind
    assert sorted(p.name for p in target.iterdir()) == sorted([serialize.DESCRIPTION, serialize.WEIGHTS])


def test_a_description_cannot_name_an_arbitrary_class(tmp_path):
    folder = serialize.save_compressed(tiny_llama(), tmp_path / "m")
    description = json.loads((folder / serialize.DESCRIPTION).read_text())
    for name in ("AutoTokenizer", "BertModel", "__import__"):
        (folder / serialize.DESCRIPTION).write_text(json.dumps({**description, "model_class": name}))
        with pytest.raises(ValueError, match=rf"model class '{name}' is not a transformers model class for "
                                             r"model_type 'llama'; allowed: .*LlamaForCausalLM"):
            serialize.load_compressed(folder)
    fake = {**description, "modules": {"model.layers.0.mlp.up_proj": {"class": "Evil", "config": {}}}}
    (folder / serialize.DESCRIPTION).write_text(json.dumps(fake))
    with pytest.raises(KeyError, match="compressed module class 'Evil' is not registered"):
        serialize.load_compressed(folder)


def test_a_damaged_save_is_refused_on_load(tmp_path):
    folder = serialize.save_compressed(tiny_bert(), tmp_path / "m")
    weights = folder / serialize.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the SHA-256 recorded in tcomp.json"):
        serialize.load_compressed(folder)
    (folder / serialize.DESCRIPTION).write_text('{"config": ')
    with pytest.raises(ValueError, match=r"m/tcomp.json is not a valid description \(JSONDecodeError"):
        serialize.load_compressed(folder)


def test_a_description_without_the_weights_checksum_is_refused(tmp_path):
    folder = serialize.save_compressed(tiny_bert(), tmp_path / "m")
    description = json.loads((folder / serialize.DESCRIPTION).read_text())
    weights = folder / serialize.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # a damaged weight that nothing could catch without the checksum
    weights.write_bytes(bytes(data))
    for sha256 in (None, {}, {serialize.WEIGHTS: None}):
        broken = {k: v for k, v in description.items() if k != "sha256"}
        if sha256 is not None:
            broken["sha256"] = sha256
        (folder / serialize.DESCRIPTION).write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=r"m/tcomp.json records no SHA-256 of model.safetensors \(key 'sha256'.*"
                                             r"save the model again"):
            serialize.load_compressed(folder)


def test_a_model_class_that_does_not_fit_the_saved_weights_is_refused(tmp_path):
    for model, wrong, right in [(tiny_bert(), "BertForMaskedLM", "BertForSequenceClassification"),
                                (tiny_llama(), "LlamaForSequenceClassification", "LlamaForCausalLM")]:
        folder = serialize.save_compressed(model, tmp_path / wrong)
        description = json.loads((folder / serialize.DESCRIPTION).read_text())
        (folder / serialize.DESCRIPTION).write_text(json.dumps({**description, "model_class": wrong}))
        with pytest.raises(ValueError, match=rf"{wrong}/tcomp.json names model_class '{wrong}', whose architecture "
                                             rf"does not fit the saved model.safetensors \(.*\); the .* classes that "
                                             rf"fit it: .*{right}"):
            serialize.load_compressed(folder)
    with pytest.raises(ValueError, match=r"tensors it has no place for: .*'classifier.weight'"):
        serialize.load_compressed(tmp_path / "BertForMaskedLM")
    import safetensors.torch  # weights without the classifier the description's class has

    folder = serialize.save_compressed(tiny_bert(), tmp_path / "headless")
    weights = folder / serialize.WEIGHTS
    tensors = safetensors.torch.load_file(str(weights))
    safetensors.torch.save_file({k: v for k, v in tensors.items() if not k.startswith("classifier.")}, str(weights))
    description = json.loads((folder / serialize.DESCRIPTION).read_text())
    description["sha256"] = {serialize.WEIGHTS: serialize.sha256_file(weights)}
    (folder / serialize.DESCRIPTION).write_text(json.dumps(description))
    with pytest.raises(ValueError, match=r"names model_class 'BertForSequenceClassification', whose architecture does "
                                         r"not fit the saved model.safetensors \(its tensors the file lacks: "
                                         r"'classifier.bias', 'classifier.weight'\)"):
        serialize.load_compressed(folder)
