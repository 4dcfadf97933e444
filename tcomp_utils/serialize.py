"""Save and load compressed models: safetensors weights + a JSON description of what was replaced.

``save_compressed(model, folder)`` writes ``model.safetensors`` (shared tensors stored once) and
``tcomp.json``: the HF config, the model class, and for every compressed module its path, class
and shape configuration (and the path of the shared factor it uses, if any).
``load_compressed(folder)`` rebuilds the architecture from the config, puts empty compressed
modules in place and loads the weights strictly, so the outputs are identical.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import safetensors.torch
from torch import nn

from .adapters import set_module
from .budget import CompressedModule
from .lowrank import LowRankLinear, SharedFactor
from .quantized import QuantEmbedding, QuantLinear
from .tensor_factors import FalconLinear, KroneckerLinear, TuckerCore, TuckerLinear

MODULE_CLASSES = {c.__name__: c for c in (LowRankLinear, SharedFactor, TuckerLinear, TuckerCore,
                                          KroneckerLinear, FalconLinear, QuantLinear, QuantEmbedding)}
DESCRIPTION = "tcomp.json"


def register_module_class(cls: type) -> None:
    """Make a compressed module class (with ``tcomp_config``/``tcomp_empty``) loadable."""
    MODULE_CLASSES[cls.__name__] = cls


def describe(model: nn.Module) -> dict:
    """The JSON description of every compressed module of ``model`` (outermost ones only)."""
    modules, shared_paths = {}, {}
    for path, module in model.named_modules():
        if not isinstance(module, CompressedModule) or any(path.startswith(p + ".") for p in modules):
            continue
        if type(module).__name__ not in MODULE_CLASSES:
            raise TypeError(f"compressed module class {type(module).__name__} at {path} is not registered; "
                            "call tcomp_utils.serialize.register_module_class first")
        entry = {"class": type(module).__name__, "config": module.tcomp_config()}
        shared = getattr(module, "shared", None)
        if isinstance(shared, nn.Module):
            entry["shared"] = shared_paths.setdefault(id(shared), f"{path}.shared")
            if entry["shared"] == f"{path}.shared":
                entry["shared_class"] = type(shared).__name__
                entry["shared_config"] = shared.tcomp_config()
        aliases = [p for p, m in model.named_modules(remove_duplicate=False) if m is module and p != path]
        if aliases:  # the same module under several names (T5's embed_tokens are its `shared` table)
            entry["aliases"] = aliases
        modules[path] = entry
    return modules


def save_compressed(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Save a (possibly) compressed HF model to ``folder`` (written to a temporary folder first,
    then renamed into place)."""
    folder = Path(folder)
    description = {"model_class": type(model).__name__, "config": model.config.to_dict(), "modules": describe(model)}
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-") as tmp:
        tmp = Path(tmp)
        safetensors.torch.save_model(model, str(tmp / "model.safetensors"))
        (tmp / DESCRIPTION).write_text(json.dumps(description, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        tmp.mkdir()
    return folder


def load_compressed(folder: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """Load a model saved by :func:`save_compressed` (in eval mode)."""
    import transformers

    folder = Path(folder)
    if not (folder / DESCRIPTION).is_file():
        raise FileNotFoundError(f"{folder} holds no {DESCRIPTION}: not saved by tcomp_utils.serialize.save_compressed")
    description = json.loads((folder / DESCRIPTION).read_text())
    config = transformers.AutoConfig.for_model(**description["config"])
    model = getattr(transformers, description["model_class"])(config)
    shared_modules: dict[str, nn.Module] = {}
    for path, entry in description["modules"].items():
        shared = None
        if "shared" in entry:
            name = entry["shared"]
            if name not in shared_modules:
                shared_modules[name] = MODULE_CLASSES[entry["shared_class"]].tcomp_empty(entry["shared_config"])
            shared = shared_modules[name]
        module = MODULE_CLASSES[entry["class"]].tcomp_empty(entry["config"], shared)
        for p in [path, *entry.get("aliases", [])]:
            set_module(model, p, module)
    safetensors.torch.load_model(model, str(folder / "model.safetensors"), strict=True)
    return model.to(device).eval()
