"""Save and load compressed models: safetensors weights + a JSON description of what was changed.

``save_compressed(model, folder)`` writes ``model.safetensors`` (shared tensors stored once) and
``tcomp.json``: the HF config, the model class, whether fused projections were split
(:func:`tcomp_utils.adapters.prepare`), every compressed module (path, registered class name,
shape configuration, the shared factor it uses) and every attribute that differs from the model
the config builds (``in_features`` of a narrowed layer, the head count of a pruned attention).
``load_compressed(folder)`` rebuilds the architecture from the config with no hub, puts empty
compressed modules in place, restores the changed attributes, gives every tensor the shape it has
in the file (so physically smaller layers load back) and loads the weights strictly: the outputs
are identical. The weights are checked first against the SHA-256 every save records (a
description without it is refused), then the model class against them: one with no place for a
saved tensor is refused, naming the classes that fit. Module classes come from
:mod:`tcomp_utils.registry` and the model class from transformers' auto mappings for the config's
``model_type``, never from an arbitrary name.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import nn

from . import adapters, registry
from .contract import CompressedModule
from .files import check_replaceable, sha256_file

DESCRIPTION = "tcomp.json"
WEIGHTS = "model.safetensors"
FORMAT = 2
_SCALARS = (bool, int, float, str)


def _compressed_paths(model: nn.Module) -> dict[str, nn.Module]:
    """The outermost compressed modules of ``model`` by path."""
    found: dict[str, nn.Module] = {}
    for path, module in model.named_modules():
        if isinstance(module, CompressedModule) and not any(path.startswith(p + ".") for p in found):
            found[path] = module
    return found


def describe_modules(model: nn.Module) -> dict:
    """The JSON description of every compressed module of ``model`` (outermost ones only)."""
    modules, shared_paths = {}, {}
    for path, module in _compressed_paths(model).items():
        if not registry.is_registered_module(module):
            raise TypeError(f"compressed module class {type(module).__name__} at {path} is not registered; "
                            "decorate it with tcomp_utils.registry.register_module")
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


def _model_classes(model_type: str) -> set[str]:
    """The names of the model classes transformers' auto mappings list for ``model_type``."""
    from transformers.models.auto import modeling_auto

    allowed = set()
    for attr in dir(modeling_auto):
        mapping = getattr(modeling_auto, attr)
        if attr.endswith("_MAPPING_NAMES") and isinstance(mapping, dict) and model_type in mapping:
            value = mapping[model_type]
            allowed |= set(value) if isinstance(value, (tuple, list)) else {value}
    return allowed


def model_class(name: str, model_type: str) -> type:
    """The transformers class ``name``, if it is one of the classes transformers' auto mappings list
    for ``model_type`` (so a description cannot make us call an arbitrary attribute)."""
    import transformers

    allowed = _model_classes(model_type)
    if name not in allowed:
        raise ValueError(f"model class {name!r} is not a transformers model class for model_type {model_type!r}; "
                         f"allowed: {', '.join(sorted(allowed)) or 'none'}")
    return getattr(transformers, name)


def _build(description: dict, device: str | torch.device = "cpu") -> nn.Module:
    import transformers

    config = transformers.AutoConfig.for_model(**description["config"])
    cls = model_class(description["model_class"], config.model_type)
    with torch.device(device):
        model = cls(config)
    if description.get("prepared"):
        adapters.prepare(model)
    return model


def _listed(what: str, names: list[str]) -> list[str]:
    """``["what: 'a', 'b', ... (n in all)"]``, or ``[]`` when there are no names."""
    if not names:
        return []
    more = f", ... ({len(names)} in all)" if len(names) > 5 else ""
    return [f"{what}: {', '.join(map(repr, names[:5]))}{more}"]


def _misfits(model: nn.Module, description: dict, keys: set[str], missing: bool = True) -> list[str]:
    """What of a save the model built from its description has no place for: module paths the
    description names, tensors of the weights file (those of compressed modules aside, which are
    rebuilt), and with ``missing`` tensors of the model that the file lacks (tied copies aside)."""
    compressed = [p for path, entry in description["modules"].items() for p in [path, *entry.get("aliases", [])]]
    modules = dict(model.named_modules(remove_duplicate=False))
    lacking = [p for p in description.get("attributes", {}) if p not in modules]
    lacking += [p for p in compressed if p.rpartition(".")[0] not in modules]

    def plain(key: str) -> bool:
        return not any(key == p or key.startswith(p + ".") for p in compressed)

    state = model.state_dict(keep_vars=True)
    problems = _listed("modules it lacks", lacking)
    problems += _listed("saved tensors it has no place for", sorted(k for k in keys if plain(k) and k not in state))
    if missing:
        tied: dict[int, list[str]] = {}  # a tied tensor is saved under one of its names
        for k, tensor in state.items():
            if plain(k):
                tied.setdefault(id(tensor), []).append(k)
        problems += _listed("its tensors the file lacks",
                            [names[0] for names in tied.values() if not any(n in keys for n in names)])
    return problems


def _architecture_error(folder: Path, description: dict, problems: list[str]) -> ValueError:
    """The error for a description whose ``model_class`` does not fit the weights: what does not
    fit and which classes of the same ``model_type`` would (tried on the meta device)."""
    import transformers

    config = transformers.AutoConfig.for_model(**description["config"])
    keys = _weight_keys(folder / WEIGHTS)
    fitting = []
    for name in sorted(_model_classes(config.model_type)):
        try:
            candidate = _build({**description, "model_class": name}, device="meta")
        except Exception:  # a class this config cannot build
            continue
        if not _misfits(candidate, description, keys):
            fitting.append(name)
    shown = "; ".join(problems)
    if description["model_class"] in fitting:  # the class fits: the compressed modules do not match the file
        return ValueError(f"{folder / WEIGHTS} does not hold the tensors of the compressed modules {DESCRIPTION} "
                          f"describes ({shown}): the save is damaged or its files come from different saves")
    return ValueError(f"{folder / DESCRIPTION} names model_class {description['model_class']!r}, whose architecture "
                      f"does not fit the saved {WEIGHTS} ({shown}); the {config.model_type} classes that fit it: "
                      f"{', '.join(fitting) or 'none'}")


def _weight_keys(weights: Path) -> set[str]:
    with safetensors.safe_open(str(weights), framework="pt") as f:
        return set(f.keys())


def attribute_changes(model: nn.Module, reference: nn.Module, skip: list[str]) -> dict[str, dict]:
    """Scalar attributes (ints, floats, flags, strings, tuples of ints) of plain modules that
    differ from the freshly built ``reference``: what pruning changes besides tensor shapes."""
    changes = {}
    ref_modules = dict(reference.named_modules())
    for path, module in model.named_modules():
        ref = ref_modules.get(path)
        if ref is None or type(ref) is not type(module) or any(path == p or path.startswith(p + ".") for p in skip):
            continue
        diff = {}
        for name, value in vars(module).items():
            if name.startswith("_") or name == "training" or name not in vars(ref):
                continue
            plain = isinstance(value, _SCALARS) or (isinstance(value, tuple) and all(isinstance(v, int) for v in value))
            if plain and value != vars(ref)[name]:
                diff[name] = list(value) if isinstance(value, tuple) else value
        if diff:
            changes[path] = diff
    return changes


def describe(model: nn.Module) -> dict:
    """The whole description written to ``tcomp.json``."""
    description = {"format": FORMAT, "model_class": type(model).__name__, "config": model.config.to_dict(),
                   "modules": describe_modules(model)}
    reference = _build({**description, "prepared": False}, device="meta")
    try:  # fused projections the config builds but this model has split
        description["prepared"] = (adapters.get_adapter(reference).needs_prepare()
                                   and not adapters.get_adapter(model).needs_prepare())
    except adapters.UnsupportedArchitectureError:
        description["prepared"] = False
    if description["prepared"]:
        adapters.prepare(reference)
    description["attributes"] = attribute_changes(model, reference, list(description["modules"]))
    return description


def check_target(folder: Path, overwrite: bool) -> None:
    """Refuse (``FileExistsError``) a ``folder`` that :func:`save_compressed` must not write: a file, a
    non-empty folder that is not a previous save, or a previous save without ``overwrite``."""
    check_replaceable(folder, lambda _, names: DESCRIPTION in names and names <= {DESCRIPTION, WEIGHTS}, "save",
                      overwrite)


def save_compressed(model: nn.Module, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save a (possibly) compressed HF model to ``folder``: written into a temporary sibling and
    renamed into place, so nothing is half-written. A non-empty ``folder`` that is not a previous
    save is refused; a previous save is replaced only with ``overwrite=True``."""
    folder = Path(folder).resolve()
    check_target(folder, overwrite)
    description = describe(model)  # everything that can fail is checked before anything is written
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        safetensors.torch.save_model(model, str(tmp / WEIGHTS))
        description["sha256"] = {WEIGHTS: sha256_file(tmp / WEIGHTS)}
        (tmp / DESCRIPTION).write_text(json.dumps(description, indent=1))
        if folder.exists():  # empty, or a previous save (only our two files): swap it out
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-old-"))
            folder.replace(old / "save")
            tmp.replace(folder)
            shutil.rmtree(old)
        else:
            tmp.replace(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def _fit_shapes(model: nn.Module, weights: Path) -> None:
    """Give every tensor of ``model`` that the file stores with another shape an empty tensor of
    the stored shape (a layer made physically smaller)."""
    with safetensors.safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            shape = tuple(f.get_slice(key).get_shape())
            owner, _, name = key.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            if name in module._parameters and module._parameters[name] is not None:
                old = module._parameters[name]
                if tuple(old.shape) != shape:
                    module._parameters[name] = nn.Parameter(torch.empty(shape, dtype=old.dtype),
                                                            requires_grad=old.requires_grad)
            elif name in module._buffers and module._buffers[name] is not None:
                old = module._buffers[name]
                if tuple(old.shape) != shape:
                    module._buffers[name] = torch.empty(shape, dtype=old.dtype)


def load_compressed(folder: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """Load a model saved by :func:`save_compressed` (in eval mode)."""
    folder = Path(folder)
    if not (folder / DESCRIPTION).is_file():
        raise FileNotFoundError(f"{folder} holds no {DESCRIPTION}: not saved by tcomp_utils.serialize.save_compressed")
    try:
        description = json.loads((folder / DESCRIPTION).read_text())
        config, modules = description["config"], description["modules"]
        if not isinstance(config, dict) or not isinstance(modules, dict):
            raise TypeError("config and modules must be mappings")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{folder / DESCRIPTION} is not a valid description ({type(err).__name__}: {err})") from None
    recorded = description.get("sha256")
    expected = recorded.get(WEIGHTS) if isinstance(recorded, dict) else None
    if not isinstance(expected, str):  # every save records it: without it a damaged file would load silently
        raise ValueError(f"{folder / DESCRIPTION} records no SHA-256 of {WEIGHTS} (key 'sha256': "
                         f"{{{WEIGHTS!r}: <hex digest>}}, found {recorded!r}), so the weights cannot be checked; "
                         "save the model again with tcomp_utils.serialize.save_compressed")
    if sha256_file(folder / WEIGHTS) != expected:
        raise ValueError(f"{folder / WEIGHTS} does not match the SHA-256 recorded in {DESCRIPTION}: the file is damaged "
                         "or was changed after saving")
    model = _build(description)
    problems = _misfits(model, description, _weight_keys(folder / WEIGHTS), missing=False)
    if problems:  # checked before anything is put in place, so the error names the class, not an attribute
        raise _architecture_error(folder, description, problems)
    for path, attrs in description.get("attributes", {}).items():
        module = model.get_submodule(path)
        for name, value in attrs.items():
            setattr(module, name, tuple(value) if isinstance(value, list) else value)
    shared_modules: dict[str, nn.Module] = {}
    for path, entry in description["modules"].items():
        shared = None
        if "shared" in entry:
            name = entry["shared"]
            if name not in shared_modules:
                shared_modules[name] = registry.module_class(entry["shared_class"]).tcomp_empty(entry["shared_config"])
            shared = shared_modules[name]
        module = registry.module_class(entry["class"]).tcomp_empty(entry["config"], shared)
        for p in [path, *entry.get("aliases", [])]:
            adapters.set_module(model, p, module)
    _fit_shapes(model, folder / WEIGHTS)
    missing, unexpected = safetensors.torch.load_model(model, str(folder / WEIGHTS), strict=False)
    if missing or unexpected:
        raise _architecture_error(folder, description, _listed("its tensors the file lacks", sorted(missing))
                                  + _listed("saved tensors it has no place for", sorted(unexpected)))
    return model.to(device).eval()
