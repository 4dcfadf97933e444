"""Models that leave tcomp: folders that plain ``transformers`` (and vLLM) read, no tcomp needed.

* :func:`export_compressed_tensors`: a model quantized by ``rtn`` or ``gptq``
  (:class:`~tcomp_utils.methods.quantized.QuantLinear`, :class:`~tcomp_utils.methods.quantized.QuantEmbedding`)
  in the **compressed-tensors** format (``quant_method: "compressed-tensors"``, format
  ``pack-quantized``: what llm-compressor writes). The de-quantized weights are tcomp's, bit for bit.
* :func:`export_hf`: a model whose layers all keep standard shapes (uniform head pruning, a
  factorization multiplied back, ...) as a plain HF folder (``save_pretrained``).

Anything else (low-rank, sparse or sign-magnitude layers, layers narrowed unevenly) is refused,
naming the first such module; :func:`tcomp_utils.serialize.save_compressed` saves it for tcomp.

**Grid conversion (exact).** tcomp stores ``ŵ = scale · (code − zero)`` with codes and zero
points in ``[0, 2^b − 1]`` and float16 scales. compressed-tensors stores signed codes ``q`` and
zero points ``z`` in ``[−2^(b−1), 2^(b−1) − 1]`` and computes ``(q − z) · scale`` in the scale's
dtype, so ``q = code − 2^(b−1)``, ``z = zero − 2^(b−1)`` (a symmetric tcomp grid has zero
``2^(b−1)``: ``z = 0``, compressed-tensors' symmetric grid, no zero point stored), and the scales
are written in the model's dtype: float32 holds every float16 scale and every product ``(q − z) ·
scale`` exactly (float16 rounds that product once, as tcomp's float16 forward does); bfloat16
cannot hold float16 scales and is refused. compressed-tensors' groups must divide a row; tcomp's
last group may be shorter (``in % group_size ≠ 0``), so a grid is written with group size
``g' = gcd(group_size, every in_features on that grid)`` and each tcomp scale repeated over the
``g'``-groups it covers (exact; more scale bytes than tcomp stores). Act-order's column map
(``g_idx``: GPTQ with ``static_groups=False``) is not expressible (compressed-tensors removed
``actorder="group"``) and is refused.

**Loading** (tested with transformers 5.25 and compressed-tensors 0.20.1, on CPU): a symmetric
grid on linear layers loads with plain ``AutoModelForCausalLM.from_pretrained(folder)`` (weights
decompressed on the first forward). Two cases that compressed-tensors' own checkpoints share fail
in that default, compressed mode: packed zero points of an asymmetric grid (compressing the empty
model on the meta device leaves them unpacked, so their shapes mismatch) and a quantized embedding
table (transformers re-initializes ``nn.Embedding.weight``, which a compressed table lacks); both
load with ``from_pretrained(folder, quantization_config=CompressedTensorsConfig(dequantize=True))``,
which decompresses every layer with the first config group's scheme: one tcomp grid (one config
group) per export then, as a single ``compress`` call gives. A table tied to the output head is
written twice, once per place (``tie_word_embeddings`` false: compressed-tensors has no tied packed
weights); tcomp's budget counts it once.
"""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from ..contract import CompressedModule
from ..files import CHECKSUMS, build_folder, check_replaceable
from ..serialize import attribute_changes
from .quantized import QuantEmbedding, QuantLinear, plain_layer

MARKER = "tcomp_export.json"  # what the export wrote: a later export may replace the folder
WEIGHTS = "model.safetensors"
SAVE_HINT = "save it for tcomp with tcomp_utils.serialize.save_compressed"


class ExportError(ValueError):
    """A model, a folder or an option that an export cannot take (nothing was written)."""


# ------------------------------------------------------------------------------------- checks
def _reference(model: nn.Module, config) -> nn.Module:
    """The model ``config`` builds, on the meta device (shapes only)."""
    with torch.device("meta"):
        return type(model)(config)


def _standard_modules(model: nn.Module, config, quantized_ok: bool) -> dict[str, nn.Module]:
    """Check that every module of ``model`` is what ``config`` builds at its path (same class, same
    tensor shapes, same scalar attributes), a quantized layer standing for an ``nn.Linear`` or
    ``nn.Embedding`` of its shape when ``quantized_ok``. Returns the quantized layers by every path
    that reaches them; raises :class:`ExportError` naming the first module that differs."""
    built = _reference(model, config)
    reference = dict(built.named_modules(remove_duplicate=False))
    allowed = "a QuantLinear or QuantEmbedding (rtn, gptq) standing for " if quantized_ok else ""
    quantized: dict[str, nn.Module] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        if any(path.startswith(p + ".") for p in quantized):
            continue
        name = f"module {path or '(the model)'!r} ({type(module).__name__})"
        ref = reference.get(path)
        if ref is None:
            raise ExportError(f"{name} is not in the architecture {type(model).__name__}'s config builds (split or "
                              f"added by tcomp); an export holds only standard modules: {SAVE_HINT}")
        if quantized_ok and isinstance(module, (QuantLinear, QuantEmbedding)):
            _check_quantized(name, module, ref)
            quantized[path] = module
            continue
        if isinstance(module, CompressedModule) or type(module) is not type(ref):
            raise ExportError(f"{name} is not a standard layer: the config builds a {type(ref).__name__} there and an "
                              f"export holds {allowed}standard layers only; {SAVE_HINT}")
        own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        ref_own = dict(ref.named_parameters(recurse=False)) | dict(ref.named_buffers(recurse=False))
        for key in sorted(own.keys() | ref_own.keys()):
            shape, ref_shape = (tuple(t.shape) if t is not None else None for t in (own.get(key), ref_own.get(key)))
            if shape != ref_shape:
                raise ExportError(f"{name}: its {key} has shape {shape} where the config builds {ref_shape}; give the "
                                  "config fields that build it (config_overrides, e.g. num_attention_heads for uniform "
                                  f"head pruning) or {SAVE_HINT}")
    changed = attribute_changes(model, built, list(quantized))
    if changed:
        path, attrs = next(iter(changed.items()))
        raise ExportError(f"module {path!r} has attributes the config does not build ({attrs}); give the config "
                          f"fields that build them (config_overrides) or {SAVE_HINT}")
    return quantized


def _check_quantized(name: str, module: QuantLinear | QuantEmbedding, ref: nn.Module) -> None:
    if isinstance(module, QuantLinear):
        shape, has_bias = (module.in_features, module.out_features), module.bias is not None
    else:  # a table, here or as the tied output head
        shape, has_bias = (module.embedding_dim, module.num_embeddings), False
    if isinstance(ref, nn.Linear) and plain_layer(ref):
        ref_shape, ref_bias = (ref.in_features, ref.out_features), ref.bias is not None
    elif isinstance(ref, nn.Embedding) and plain_layer(ref) and isinstance(module, QuantEmbedding):
        ref_shape, ref_bias = (ref.embedding_dim, ref.num_embeddings), False
    else:
        raise ExportError(f"{name} stands for a {type(ref).__name__}, which compressed-tensors does not quantize "
                          f"(it packs plain nn.Linear and nn.Embedding weights); {SAVE_HINT}")
    if shape != ref_shape or has_bias != ref_bias:
        raise ExportError(f"{name}: (in, out) {shape}, bias {has_bias}, where the config builds {ref_shape}, bias "
                          f"{ref_bias}; {SAVE_HINT}")
    if isinstance(module, QuantLinear) and module.g_idx.numel():
        raise ExportError(f"{name} has act-order's column map (g_idx: GPTQ with static_groups=False), which "
                          "compressed-tensors cannot express (it removed actorder='group'); quantize with "
                          "static_groups=True (the default) to export")


def _out_config(model: nn.Module, overrides: dict | None):
    """A copy of ``model``'s config with ``overrides`` set (each a field it has)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "save_pretrained"):
        raise ExportError(f"{type(model).__name__} is not a transformers model (no config / save_pretrained)")
    out = copy.deepcopy(config)
    for key, value in (overrides or {}).items():
        if not hasattr(out, key):
            raise ExportError(f"config_overrides names {key!r}, which {type(config).__name__} does not have")
        setattr(out, key, value)
    return out


def _is_export(folder: Path, names: set[str]) -> bool:
    """Whether ``folder``'s files (``names``) are those a previous export listed in :data:`MARKER`."""
    try:
        written = set(json.loads((folder / MARKER).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return names <= written | {MARKER, CHECKSUMS}


def _check_folder(folder: Path, overwrite: bool) -> None:
    """An export goes to a new or empty folder, or replaces a previous export (``overwrite``)."""
    check_replaceable(folder, _is_export, "export", overwrite)


def _write(folder: Path, overwrite: bool, kind: str, write) -> Path:
    """``write(tmp)`` fills a temporary sibling, which then replaces ``folder`` whole (with the
    SHA-256 of every file in ``checksums.json`` and the list of files in :data:`MARKER`)."""
    def build(tmp: Path) -> None:
        write(tmp)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        (tmp / MARKER).write_text(json.dumps({"format": kind, "files": files}, indent=1))

    return build_folder(folder, build, rebuild=True, marker=MARKER)


def _save_extras(model: nn.Module, tokenizer, tmp: Path) -> None:
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)


# ------------------------------------------------------------------------------ compressed-tensors
def _signed(values: torch.Tensor, bits: int) -> torch.Tensor:
    """tcomp's unsigned codes (or zero points) in [0, 2^b − 1] as compressed-tensors' signed int8."""
    return (values.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8)


def _ct_group(modules: list[QuantLinear | QuantEmbedding]) -> int | None:
    """compressed-tensors' group size for modules on one tcomp grid: None (one scale per channel)
    when every row is one group, else the largest size dividing the group size and every row."""
    grid = modules[0].grid
    widths = [m.in_features if isinstance(m, QuantLinear) else m.embedding_dim for m in modules]
    if all(grid.n_groups(w) == 1 for w in widths):
        return None
    return math.gcd(grid.group_size, *widths)


def _ct_tensors(module: QuantLinear | QuantEmbedding, group: int | None, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The pack-quantized tensors of one layer (local names), de-quantizing to tcomp's weight."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    qw = module.quantized()
    bits, cols = qw.grid.bits, qw.codes.shape[1]
    # the tcomp group of each compressed-tensors group (its first column): g' divides tcomp's groups
    groups = qw.column_groups()[:: group or cols]
    out = {"weight_packed": pack_to_int32(_signed(qw.codes, bits), bits),
           "weight_scale": qw.scales[:, groups].to(dtype).contiguous(),
           "weight_shape": torch.tensor(qw.codes.shape)}
    if not qw.grid.symmetric:
        out["weight_zero_point"] = pack_to_int32(_signed(qw.zeros[:, groups], bits), bits, packed_dim=0)
    if isinstance(module, QuantLinear) and module.bias is not None:
        out["bias"] = module.bias.detach().to(dtype).contiguous()
    return out


def _plain_tensors(model: nn.Module, skip: list[str]) -> dict[str, torch.Tensor]:
    """The state dict of everything but the quantized layers (paths ``skip``), a float table tied
    to the head stored once, under the name transformers ties the others to (its own
    ``remove_tied_weights_from_state_dict``, as ``save_pretrained`` does)."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    plain = {key: tensor.contiguous() for key, tensor in model.state_dict().items()
             if not any(key.startswith(p + ".") for p in skip)}
    try:
        return remove_tied_weights_from_state_dict(plain, model)
    except RuntimeError as err:  # tensors shared without the config tying them
        raise ExportError(f"{type(model).__name__} shares tensors its config does not tie ({err}); "
                          f"{SAVE_HINT}") from None


def export_compressed_tensors(model: nn.Module, tokenizer, out_dir: str | os.PathLike, *,
                              config_overrides: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` (its layers quantized by ``rtn``/``gptq``) to ``out_dir`` in the
    compressed-tensors ``pack-quantized`` format: ``model.safetensors`` (per quantized layer
    ``weight_packed`` int32, ``weight_scale``, ``weight_shape``, ``weight_zero_point`` for an
    asymmetric grid; every other tensor as it is), ``config.json`` with the
    ``quantization_config`` (one config group per tcomp grid, its targets the layer names),
    the generation config and the ``tokenizer`` (if not None), plus :data:`MARKER` and
    ``checksums.json``. ``config_overrides``: config fields that build the model's shapes (see
    :func:`export_hf`). See the module docstring for the exact grid conversion and how to load.

    Everything is checked before anything is written: a module that is not a standard layer or a
    quantized one, act-order's column map, a bfloat16 model, no quantized layer at all; a
    non-empty ``out_dir`` that is not a previous export (replaced only with ``overwrite``).
    Written into a temporary sibling and renamed into place. Returns the folder."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    folder = Path(out_dir).resolve()
    out_config = _out_config(model, config_overrides)
    quantized = _standard_modules(model, out_config, quantized_ok=True)
    if not quantized:
        raise ExportError(f"{type(model).__name__} has no QuantLinear or QuantEmbedding layer to export in the "
                          "compressed-tensors format; quantize it with rtn or gptq first, or use export_hf")
    dtype = model.dtype
    if dtype not in (torch.float32, torch.float16):
        raise ExportError(f"the model's dtype is {dtype}: compressed-tensors computes (q − z)·scale in the scales' "
                          "dtype, and only float32 or float16 hold tcomp's float16 scales exactly; convert the model "
                          "(model.float()) first")
    _check_folder(folder, overwrite)

    by_grid: dict = {}
    for path, module in quantized.items():
        by_grid.setdefault(module.grid, []).append(path)
    schemes, tensors = {}, {}
    for i, (grid, paths) in enumerate(by_grid.items()):
        group = _ct_group([quantized[p] for p in paths])
        args = QuantizationArgs(num_bits=grid.bits, type="int", symmetric=grid.symmetric,
                                strategy="channel" if group is None else "group", group_size=group)
        schemes[f"group_{i}"] = QuantizationScheme(targets=paths, weights=args, format="pack-quantized")
        for path in paths:
            tensors |= {f"{path}.{k}": v for k, v in _ct_tensors(quantized[path], group, dtype).items()}
    qconfig = QuantizationConfig(config_groups=schemes, format="pack-quantized", quantization_status="compressed")

    out_config.dtype = dtype
    embeddings = [model.get_input_embeddings(), model.get_output_embeddings()]
    untie = any(any(m is e for m in quantized.values()) for e in embeddings if e is not None)
    if untie:  # a quantized table or head: each place has its own packed tensors
        out_config.tie_word_embeddings = False
    tensors |= _plain_tensors(model, list(quantized))

    def write(tmp: Path) -> None:
        safetensors.torch.save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        out_config.save_pretrained(tmp)
        ModelCompressor(quantization_config=qconfig).update_config(str(tmp))
        _save_extras(model, tokenizer, tmp)

    return _write(folder, overwrite, "compressed-tensors", write)


# ------------------------------------------------------------------------------------------ plain
def export_hf(model: nn.Module, out_dir: str | os.PathLike, tokenizer=None, *, config_overrides: dict | None = None,
              overwrite: bool = False) -> Path:
    """Write ``model`` to ``out_dir`` as a plain HF folder (``save_pretrained``: config, weights,
    generation config, the ``tokenizer`` if given, plus :data:`MARKER` and ``checksums.json``)
    after checking that the config builds exactly its modules: the same classes, tensor shapes and
    attributes at every path. ``config_overrides``: config fields that make it build them (e.g.
    ``{"num_attention_heads": 3, "num_key_value_heads": 1}`` after removing the same heads of every
    layer; the override must match: it is checked like the rest). A compressed or narrowed layer
    the config cannot build is refused, naming it, before anything is written (see
    :func:`tcomp_utils.serialize.save_compressed`); so is a non-empty ``out_dir`` that is not a
    previous export (replaced only with ``overwrite``). Returns the folder."""
    folder = Path(out_dir).resolve()
    out_config = _out_config(model, config_overrides)
    _standard_modules(model, out_config, quantized_ok=False)
    _check_folder(folder, overwrite)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        out_config.save_pretrained(tmp)  # the overrides (model.config itself is left as it is)
        _save_extras(model, tokenizer, tmp)

    return _write(folder, overwrite, "hf", write)
