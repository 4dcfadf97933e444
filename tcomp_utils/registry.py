"""Methods as a config and a registered handler, compressed modules by class name, and one call
that applies any method to a whole model.

    from tcomp_utils.registry import compress, method_config
    from tcomp_utils.methods.factorization import SVDConfig
    report = compress(model, SVDConfig(roles="ffn", ratio=3))
    report = compress(model, method_config("gptq", bits=4, group_size=128), calibration=batches)

**A method** is a config dataclass deriving from :class:`MethodConfig` (its knobs and budget,
checked on construction) and a *handler* registered for it::

    @dataclass
    class MyConfig(MethodConfig):
        ratio: float = 2.0
        def validate(self):
            super().validate()
            check_ratio(self.ratio)

    @register_method("mine", MyConfig, family="factorization")
    def _apply(model, config, calibration, progress) -> list[dict]:
        ...  # check everything first, then replace modules; one row per replaced module

**A compressed module** is registered with :func:`register_module` so that a saved model can name
its class (``tcomp_config()`` describes its shapes, ``tcomp_empty(config, shared)`` rebuilds it
empty, ``tcomp_footprint()`` counts it). Nothing central lists the methods: a module under
``tcomp_utils/methods/`` registers itself when imported. A method or module class asked for by
name imports only the module whose source registers it (read without importing, so a result
depends only on the code it ran: see ``runner.package_digest``); :func:`discover` imports them all
(what a user registers in their own code is found the same way).
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib
import pkgutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import pandas as pd
import torch
from torch import nn

from . import adapters, budget, timing
from .targeting import check_finite, module_row  # noqa: F401 (re-exported for method modules)

Handler = Callable[[nn.Module, "MethodConfig", "list[dict] | None", bool], list[dict]]


class UnknownMethodError(ValueError):
    pass


class ConfigError(ValueError):
    """A method config with a bad value: the message names the value and what is allowed."""


# --------------------------------------------------------------------------------------- configs
def check_choice(name: str, value: Any, allowed: tuple) -> Any:
    """``value`` must be one of ``allowed``."""
    if value not in allowed:
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{name}={value!r} is not allowed{hint}; allowed: {', '.join(map(str, allowed))}")
    return value


def check_int(name: str, value: Any, low: int = 1, high: int | None = None, none_ok: bool = False) -> Any:
    """``value`` must be an int in ``[low, high]`` (or None when ``none_ok``)."""
    if value is None and none_ok:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be an integer {span}{' or None' if none_ok else ''}, got {value!r}")
    return value


@dataclass
class MethodConfig:
    """Base of every method's config: which modules (``roles``: a role, a group such as ``"ffn"``,
    or a list; None: every linear role of the architecture; ``layers``: layer indices, None: all)
    and the method's own knobs in the subclass. Checked on construction (:meth:`validate`)."""

    roles: str | list[str] | None = None
    layers: list[int] | None = None

    method: ClassVar[str] = ""          # set by register_method
    needs_calibration: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` (or a subclass' own error) naming any bad value."""
        if self.roles is not None:
            if not isinstance(self.roles, str) and not list(self.roles):
                raise ConfigError("roles=[] names no module: give a role, a group (qkv, attention, ffn, linear), a list, "
                                  "or None for every linear role")
            adapters.expand_roles(self.roles)
        if self.layers is not None:
            if (isinstance(self.layers, (int, str)) or not list(self.layers)
                    or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers)):
                raise ConfigError(f"layers must be a non-empty list of layer indices >= 0 (or None: every layer), "
                                  f"got {self.layers!r}")

    def calibration_needed(self) -> bool:
        """Whether :func:`compress` must be given calibration batches for this config."""
        return self.needs_calibration

    def target_roles(self, model: nn.Module) -> list[str]:
        """The roles to compress in ``model`` (``roles``, or every linear role it has)."""
        if self.roles is None:
            return [r for r in adapters.get_adapter(model).roles() if r != "embeddings"]
        return adapters.expand_roles(self.roles)

    def as_record(self) -> dict[str, Any]:
        """The config's fields as plain values (for a results table)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "MethodConfig":
        """Build from a dict; an unknown field raises naming it, a close match and the allowed fields."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        for key in fields:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"unknown option {key!r} for method {cls.method or cls.__name__!r}{hint}; "
                                  f"allowed: {', '.join(allowed)}")
        return cls(**fields)


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config: type
    handler: Handler
    family: str
    description: str


_METHODS: dict[str, MethodEntry] = {}
_MODULES: dict[str, type] = {}


def register_method(name: str, config: type, family: str, description: str = "") -> Callable[[Handler], Handler]:
    """Decorator registering ``handler`` for ``config`` (a :class:`MethodConfig` subclass) under ``name``.

    ``handler(model, config, calibration, progress) -> rows`` checks everything before it changes
    the model, replaces modules in place, and returns one dict per replaced module (see
    :func:`module_row`)."""
    if not (isinstance(config, type) and issubclass(config, MethodConfig)):
        raise TypeError(f"method {name!r}: config must be a MethodConfig subclass, got {config!r}")

    def decorator(handler: Handler) -> Handler:
        old = _METHODS.get(name)
        if old is not None and old.config.__qualname__ != config.__qualname__:
            raise ValueError(f"method name {name!r} is already registered for {old.config.__qualname__}")
        config.method = name
        _METHODS[name] = MethodEntry(name, config, handler, family, description or (handler.__doc__ or "").strip())
        return handler

    return decorator


def register_module(cls: type) -> type:
    """Class decorator making a compressed module class loadable by name (see :mod:`serialize`)."""
    for attr in ("tcomp_footprint", "tcomp_config", "tcomp_empty"):
        if not callable(getattr(cls, attr, None)):
            raise TypeError(f"compressed module class {cls.__name__} lacks {attr}(): it cannot be counted or saved")
    old = _MODULES.get(cls.__name__)
    if old is not None and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"a compressed module class named {cls.__name__} is already registered ({old.__module__})")
    _MODULES[cls.__name__] = cls
    return cls


def discover() -> None:
    """Import every module of the ``tcomp_utils.methods`` package, so that their methods and
    compressed modules register themselves (a plugin folder: nothing lists them)."""
    package = importlib.import_module(f"{__package__}.methods")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def _called(node: ast.expr) -> str | None:
    node = node.func if isinstance(node, ast.Call) else node
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


@functools.cache
def source_index() -> tuple[dict[str, str], dict[str, str]]:
    """``({method name: module}, {compressed module class: module})`` for ``tcomp_utils.methods``,
    read from the sources without importing them: ``@register_method("name", ...)`` calls with a
    literal name and classes decorated with ``@register_module``."""
    methods_found, classes = {}, {}
    for path in sorted((Path(__file__).parent / "methods").glob("*.py")):
        module = f"{__package__}.methods.{path.stem}"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and _called(node) == "register_method" and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                methods_found[node.args[0].value] = module
            elif isinstance(node, ast.ClassDef) and any(_called(d) == "register_module" for d in node.decorator_list):
                classes[node.name] = module
    return methods_found, classes


def _import_for(name: str, registered: dict, index: dict[str, str]) -> None:
    """Import the module that registers ``name`` (only that one); all of them when the sources do not say."""
    if name in registered:
        return
    if name in index:
        importlib.import_module(index[name])
    if name not in registered:
        discover()


def methods() -> pd.DataFrame:
    """Every registered method: name, family, config class, description."""
    discover()
    return pd.DataFrame([dict(method=e.name, family=e.family, config=e.config.__name__, description=e.description)
                         for e in _METHODS.values()])


def method_entry(name: str) -> MethodEntry:
    """The registered entry of method ``name`` (its config class, handler, family and description);
    an unknown name raises :class:`UnknownMethodError` listing the registered ones."""
    method_family(name)
    return _METHODS[name]


def method_family(name: str) -> str:
    """The family method ``name`` was registered with (importing only its module)."""
    _import_for(name, _METHODS, source_index()[0])
    if name not in _METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; registered: {', '.join(sorted(_METHODS))}")
    return _METHODS[name].family


def method_config(name: str, **fields: Any) -> MethodConfig:
    """The config of method ``name`` with ``fields`` (e.g. from a sweep spec's parameters)."""
    _import_for(name, _METHODS, source_index()[0])
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownMethodError(f"unknown method {name!r}{hint}; registered: {', '.join(sorted(_METHODS))}")
    return _METHODS[name].config.from_dict(fields)


def module_class(name: str) -> type:
    """The registered compressed module class called ``name``."""
    _import_for(name, _MODULES, source_index()[1])
    if name not in _MODULES:
        raise KeyError(f"compressed module class {name!r} is not registered; registered: {', '.join(sorted(_MODULES))}. "
                       "Import the module that defines it (decorated with tcomp_utils.registry.register_module)")
    return _MODULES[name]


def is_registered_module(module: nn.Module) -> bool:
    return _MODULES.get(type(module).__name__) is type(module)


# ---------------------------------------------------------------------------------------- report
@dataclass
class CompressionReport:
    """What :func:`compress` did: the config, one row per replaced module (``path``, ``role``,
    ``stack``, ``layer``, ``in``, ``out``, ``params_before/after``, ``bytes_before/after``,
    ``rel_error`` and the method's own columns), footprints of the whole model before/after (at
    ``seq_len`` tokens), the seconds taken and, where the method times them, the seconds of each of
    its phases (``phases``, e.g. GPTQ's capture, hessians, solves, packing, rerun)."""

    config: MethodConfig
    modules: pd.DataFrame
    before: budget.Footprint
    after: budget.Footprint
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def param_ratio(self) -> float:
        """Stored numbers of the replaced modules before / after (biases included)."""
        return float(self.modules.params_before.sum() / self.modules.params_after.sum())

    @property
    def bytes_ratio(self) -> float:
        """Stored bytes of the replaced modules before / after (indices, scales and codes as stored)."""
        return float(self.modules.bytes_before.sum() / self.modules.bytes_after.sum())

    def summary(self) -> dict[str, Any]:
        """One flat record: method, config fields, module count, mean errors, footprints, seconds."""
        out = {"method": self.method, **{k: v for k, v in self.config.as_record().items()
                                         if not isinstance(v, (list, tuple, dict))},
               "modules": len(self.modules), "module_param_ratio": self.param_ratio,
               "module_bytes_ratio": self.bytes_ratio,
               "mean_rel_error": float(self.modules.rel_error.mean())}
        if "output_error" in self.modules:
            out["mean_output_error"] = float(self.modules.output_error.mean())
        for name, fp in (("before", self.before), ("after", self.after)):
            out |= {f"params_{name}": fp.params, f"bytes_{name}": fp.bytes, f"macs_{name}": fp.macs}
        return out | {"seconds": self.seconds}


def check_calibration(calibration: Any, model: nn.Module | None = None) -> list[dict] | None:
    """Calibration must be a list (or iterable) of ``model(**batch)`` dicts holding ``input_ids``:
    2-D integer tensors (batch × tokens) within the vocabulary, each mask shaped like its ids."""
    if calibration is None:
        return None
    if isinstance(calibration, dict) or not hasattr(calibration, "__iter__"):
        raise ValueError(f"calibration must be a list of batches (dicts for model(**batch)), got a "
                         f"{type(calibration).__name__}")
    batches = list(calibration)
    embeddings = model.get_input_embeddings() if model is not None and hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embeddings, "num_embeddings", None)
    for i, b in enumerate(batches):
        if not (isinstance(b, dict) and "input_ids" in b):
            raise ValueError(f"calibration batch {i} is a {type(b).__name__}, not a dict with 'input_ids' "
                             "(batches are model(**batch) inputs)")
        for ids_key, mask_key in (("input_ids", "attention_mask"), ("decoder_input_ids", "decoder_attention_mask")):
            ids, mask = b.get(ids_key), b.get(mask_key)
            if ids is None:
                continue
            if not (isinstance(ids, torch.Tensor) and ids.ndim == 2 and not ids.is_floating_point()
                    and not ids.is_complex()):
                raise ValueError(f"calibration batch {i}: {ids_key} must be a 2-D integer tensor (batch × tokens), "
                                 f"got {type(ids).__name__} {getattr(ids, 'dtype', '')} of shape "
                                 f"{tuple(getattr(ids, 'shape', ()))}")
            if vocab is not None and ids.numel() and (ids.min() < 0 or ids.max() >= vocab):
                raise ValueError(f"calibration batch {i}: {ids_key} holds ids in [{int(ids.min())}, {int(ids.max())}], "
                                 f"outside the model's vocabulary [0, {vocab})")
            if mask is not None and tuple(getattr(mask, "shape", ())) != tuple(ids.shape):
                raise ValueError(f"calibration batch {i}: {mask_key} has shape {tuple(getattr(mask, 'shape', ()))}, "
                                 f"but {ids_key} has {tuple(ids.shape)}: the mask must mark each token")
    return batches


def _restore(model: nn.Module, original: list[tuple[str, nn.Module]]) -> list[str]:
    """Put back every module that a failed handler replaced; returns their paths."""
    changed = []
    for path, module in original:  # parents first (named_modules order)
        try:
            current = model.get_submodule(path)
        except AttributeError:
            current = None
        if current is not module:
            adapters.set_module(model, path, module)
            changed.append(path)
    return changed


def compress(model: nn.Module, config: MethodConfig, calibration: list[dict] | None = None, *,
             progress: bool = True, seq_len: int = 128, handler: Handler | None = None) -> CompressionReport:
    """Apply ``config``'s method to ``model`` in place (``copy.deepcopy`` first to keep the
    original) and return a :class:`CompressionReport`. Every check (roles, budgets, calibration)
    happens before the first module changes; a failed check leaves the model untouched.
    ``handler``: called in place of the method's registered handler, with the same arguments (a
    method's entry point that shares work among several calls passes its handler with that state
    bound, e.g. ``functools.partial(handler, shared=...)``)."""
    entry = _METHODS.get(getattr(type(config), "method", ""))
    if not isinstance(config, MethodConfig) or entry is None or entry.config is not type(config):
        raise UnknownMethodError(f"{type(config).__name__} is not a registered method config; registered: "
                                 f"{', '.join(sorted(e.config.__name__ for e in _METHODS.values()))}")
    calibration = check_calibration(calibration, model)
    if config.calibration_needed() and not calibration:
        raise ValueError(f"method {entry.name!r} needs calibration batches "
                         "(calibration=[{'input_ids': ..., 'attention_mask': ...}, ...])")
    adapters.prepare(model)
    before = budget.footprint(model, seq_len)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    original = [(p, m) for p, m in model.named_modules(remove_duplicate=False) if p]
    try:
        with timing.recording() as phases:
            rows = (handler or entry.handler)(model, config, calibration, progress)
    except Exception as err:
        restored = _restore(model, original)
        if restored:  # the model is as it was; say so in the error
            note = f"{entry.name} failed after replacing {len(restored)} module(s); the model was restored to its original modules"
            if hasattr(err, "add_note"):
                err.add_note(note)
        raise
    finally:
        model.train(was_training)
    seconds = round(time.perf_counter() - start, 3)
    table = pd.DataFrame(rows)
    if "layer" in table:
        table["layer"] = table["layer"].astype("Int64")
    return CompressionReport(config, table, before, budget.footprint(model, seq_len), seconds,
                             {k: round(v, 3) for k, v in phases.items()})
