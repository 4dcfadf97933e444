"""Exports that leave tcomp (tcomp_utils.methods.export): compressed-tensors folders of RTN/GPTQ models and
plain HF folders of models with standard shapes, read back by plain transformers on CPU.

Logits are compared exactly (``torch.equal``): the export de-quantizes to tcomp's weights bit for
bit (float32 scales holding tcomp's float16 ones, see the module docstring) and transformers then
runs the same float32 matmuls as tcomp's model, so there is nothing to tolerate. With
transformers 5.25 and compressed-tensors 0.20.1, plain ``from_pretrained(folder)`` runs symmetric
grids on the linear layers; asymmetric grids (packed zero points) and quantized embedding tables
fail in that default compressed mode for compressed-tensors' own checkpoints too, so those are
loaded with ``CompressedTensorsConfig(dequantize=True)`` and, besides, compared weight by weight
with compressed-tensors' own decompression of the file.
"""
import json

import numpy as np
import pytest
import safetensors.torch
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationScheme
from torch import nn
from transformers import AutoModelForCausalLM, CompressedTensorsConfig

from tcomp_utils import adapters
from tcomp_utils.methods.export import ExportError, export_compressed_tensors, export_hf
from tcomp_utils.methods.heads import HeadUnits, LayerPlan, PrunableLayer, apply_plans, attention_path
from tcomp_utils.methods.quantization import quantize
from tcomp_utils.methods.quantized import QuantLinear
from tcomp_utils.registry import compress, method_config
from conftest import tiny_llama

# transformers notes that the folder's quantization_config wins over the dequantize=True passed to it
pytestmark = pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")

IDS = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(5))
CALIBRATION = [{"input_ids": torch.randint(0, 100, (4, 12), generator=torch.Generator().manual_seed(6))}]


def quantized_llama(method: str, group_size: int | None, symmetric: bool, embeddings: bool = False, **kw) -> nn.Module:
    torch.manual_seed(0)
    model = tiny_llama()
    roles = ["embeddings", "linear"] if embeddings else ["linear"]
    quantize(model, method, bits=4, group_size=group_size, symmetric=symmetric, roles=roles, lm_head=True,
             calibration=CALIBRATION, progress=False, **kw)
    return model


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def ct_weights(folder) -> dict[str, torch.Tensor]:
    """Every quantized layer's weight as compressed-tensors' own decompression gives it."""
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    tensors = safetensors.torch.load_file(str(folder / "model.safetensors"))
    out = {}
    for group in config["config_groups"].values():
        scheme = QuantizationScheme.model_validate(group)
        for path in scheme.targets:
            local = {k.removeprefix(path + "."): v for k, v in tensors.items() if k.startswith(path + ".")}
            out[path] = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
    return out


@pytest.mark.parametrize("method", ["rtn", "gptq"])
@pytest.mark.parametrize("group_size", [32, None])
@pytest.mark.parametrize("symmetric", [True, False])
def test_export_round_trip_gives_tcomps_weights_and_logits(tmp_path, method, group_size, symmetric):
    model = quantized_llama(method, group_size, symmetric)
    folder = export_compressed_tensors(model, None, tmp_path / "ct")
    config = json.loads((folder / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    [group] = qc["config_groups"].values()  # one tcomp grid: one config group
    assert group["weights"]["num_bits"] == 4 and group["weights"]["symmetric"] == symmetric
    # 48 = 32 + 16 columns: tcomp's short last group is written as groups of gcd(32, 48, 96) = 16
    assert (group["weights"]["strategy"], group["weights"]["group_size"]) == (("group", 16) if group_size else
                                                                              ("channel", None))
    layers = {p: m for p, m in model.named_modules() if isinstance(m, QuantLinear)}
    decompressed = ct_weights(folder)
    assert decompressed.keys() == layers.keys()
    assert all(torch.equal(decompressed[p], m.weight_matrix()) for p, m in layers.items())

    reference = logits(model)
    if symmetric:  # plain transformers, in its default compressed mode
        loaded = AutoModelForCausalLM.from_pretrained(folder)
        assert torch.equal(logits(loaded), reference)
    loaded = AutoModelForCausalLM.from_pretrained(folder, quantization_config=CompressedTensorsConfig(dequantize=True))
    assert all(torch.equal(loaded.get_submodule(p).weight, m.weight_matrix()) for p, m in layers.items())
    assert torch.equal(logits(loaded), reference)


def test_a_quantized_table_tied_to_the_head_is_exported_at_both_places(tmp_path):
    model = quantized_llama("rtn", 32, False, embeddings=True)
    assert model.lm_head is model.model.embed_tokens
    folder = export_compressed_tensors(model, None, tmp_path / "ct")
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False
    decompressed = ct_weights(folder)
    table = model.model.embed_tokens.weight_matrix()
    assert torch.equal(decompressed["model.embed_tokens"], table) and torch.equal(decompressed["lm_head"], table)
    loaded = AutoModelForCausalLM.from_pretrained(folder, quantization_config=CompressedTensorsConfig(dequantize=True))
    assert torch.equal(logits(loaded), logits(model))


def head_pruned_llama() -> nn.Module:
    """tiny_llama with the same key/value group (3 query heads, 1 key/value head) kept in every layer."""
    torch.manual_seed(0)
    model = tiny_llama()
    layers = []
    for i in range(2):
        q, k, v, o = (adapters.find_modules(model, role, [i])[0] for role in ("query", "key", "value", "attn_out"))
        layers.append(PrunableLayer(q.stack, i, model.get_submodule(attention_path(model, q)), q, k, v, o))
    apply_plans(model, layers, [HeadUnits(8, 6, 2)] * 2, [LayerPlan(heads=np.array([1]))] * 2)
    return model


def test_export_hf_round_trip_of_a_uniformly_head_pruned_model(tmp_path):
    model = head_pruned_llama()
    # the config still builds 6 heads: refused, naming the first layer it cannot build, nothing written
    with pytest.raises(ExportError, match=r"'model\.layers\.0\.self_attn\.q_proj'.*\(24, 48\).*\(48, 48\).*"
                                          "config_overrides"):
        export_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    with pytest.raises(ExportError, match="config_overrides names 'n_heads', which LlamaConfig does not have"):
        export_hf(model, tmp_path / "hf", config_overrides={"n_heads": 3})
    folder = export_hf(model, tmp_path / "hf", config_overrides={"num_attention_heads": 3, "num_key_value_heads": 1})
    assert model.config.num_attention_heads == 6  # the model's own config is left alone
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert loaded.model.layers[1].self_attn.o_proj.in_features == 24
    assert torch.equal(logits(loaded), logits(model))


def test_layers_an_export_cannot_hold_are_refused_by_name_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"'model\.layers\.0\.self_attn\.q_proj' \(QuantLinear\) is not a standard "
                                          r"layer.*save_compressed"):
        export_hf(quantized_llama("rtn", 32, True), out)
    torch.manual_seed(0)
    factorized = tiny_llama()
    compress(factorized, method_config("svd", roles=["ffn"], ratio=2), progress=False)
    with pytest.raises(ExportError, match=r"'model\.layers\.0\.mlp\.gate_proj' \(LowRankLinear\) is not a standard "
                                          r"layer.*QuantLinear or QuantEmbedding.*save_compressed"):
        export_compressed_tensors(factorized, None, out)
    with pytest.raises(ExportError, match="no QuantLinear or QuantEmbedding layer.*export_hf"):
        export_compressed_tensors(tiny_llama(), None, out)
    act_order = quantized_llama("gptq", 16, False, act_order=True, static_groups=False)
    with pytest.raises(ExportError, match=r"'model\.layers\.0\.self_attn\.q_proj'.*act-order's column map.*"
                                          "static_groups=True"):
        export_compressed_tensors(act_order, None, out)
    with pytest.raises(ExportError, match=r"dtype is torch\.bfloat16.*float32 or float16"):
        export_compressed_tensors(quantized_llama("rtn", 32, True).to(torch.bfloat16), None, out)
    assert not out.exists()


def test_an_export_replaces_only_a_previous_export(tmp_path):
    model = quantized_llama("rtn", None, True)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"busy is not empty and is not a previous export \(notes\.txt\)"):
        export_compressed_tensors(model, None, busy)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    folder = export_compressed_tensors(model, None, tmp_path / "ct")
    with pytest.raises(FileExistsError, match="holds a previous export; pass overwrite=True"):
        export_compressed_tensors(model, None, folder)
    (folder / "model.safetensors").write_bytes(b"damaged")
    export_compressed_tensors(model, None, folder, overwrite=True)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(folder)), logits(model))
    (folder / "extra.bin").write_bytes(b"")  # a file the export did not write: no longer only an export
    with pytest.raises(FileExistsError, match="is not empty and is not a previous export"):
        export_compressed_tensors(model, None, folder, overwrite=True)
