"""Composable pruning (seed 002): prune and fine-tune each shared module once, then compose.

Several pruning **configurations** of one model often prune some modules identically (the same
module at the same rate). Each distinct **unit** — a (site, kind, rate) — is pruned and
fine-tuned once *at module level*, its output trained to match the original module's output on
recorded calibration inputs; each configuration's model is then **composed** from its units and
fine-tuned briefly on the task. The baseline fine-tunes the same pruned configuration directly,
without module-level fine-tuning.

**Sites and kinds** (through the adapters' roles, so any encoder-decoder or encoder with an
adapter works):

* ``heads`` on an attention block (``{stack}.{layer}.self_attn`` or ``.cross_attn``): head-wise L1
  structured pruning, heads ranked by the L1 norm of their rows of Q, K and V, the
  ``rate × heads`` (rounded half up) smallest removed *physically* (:func:`tcomp_utils.methods.heads.apply_plans`:
  narrower Q/K/V, the output projection's columns of those heads dropped, the head count lowered).
  Module-level fine-tuning trains the kept Q/K/V rows; the output projection is not part of this
  unit (it is its own ``l1`` site) and stays as it is while they train.
* ``l1`` on a linear layer (``{stack}.{layer}.{role}`` for the FFN's ``ffn_in``/``ffn_out`` and the
  attention outputs ``attn_out``/``cross_attn_out``): L1 unstructured pruning with
  ``torch.nn.utils.prune.l1_unstructured``; the mask stays on through both fine-tunings, so pruned
  weights stay zero, and :func:`to_sparse` finally makes it permanent and stores the matrix sparse
  (:class:`tcomp_utils.methods.pruning.SparseLinear`: values, column indices, row pointers, all counted).

The two kinds compose independently: an attention output projection is L1-pruned as its own unit
on the full attention context, and composition drops the columns of the heads its attention unit
removed (those columns only ever multiply zeros).

**Files a user edits** (YAML, validated before anything is pruned): the configurations
(:func:`generate`, :func:`write_configurations`, :func:`load_configurations`) and the scheme
(:func:`build_scheme`, :func:`write_scheme`, :func:`load_scheme`): every distinct unit with the
configurations that use it.

    configurations:
      - {name: a25-l30, attention: 0.25, linear: 0.3}
      - {name: deep, attention: {"*": 0.25, "decoder.*": 0.5}, linear: 0.3}   # fnmatch patterns, later wins

Why one module of ~690 lines: it is seed 002's whole protocol (sites, units, configuration files,
composition, module-level fine-tuning, unit files, the pipeline and its time accounting), whose
parts share the unit and site types; head removal is the shared public API of
:mod:`tcomp_utils.methods.heads`, L1 sparsity storage that of :mod:`tcomp_utils.methods.pruning`.
"""
from __future__ import annotations

import copy
import fnmatch
import itertools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn
from torch.nn.utils import prune

from .. import adapters, capture, trainer
from .heads import HeadUnits, LayerPlan, PrunableLayer, apply_plans

KINDS = ("heads", "l1")
ATTENTION_BLOCKS = {"self_attn": ("query", "key", "value", "attn_out"),
                    "cross_attn": ("cross_query", "cross_key", "cross_value", "cross_attn_out")}
LINEAR_ROLES = ("ffn_in", "ffn_out", "attn_out", "cross_attn_out")
CONFIG_FIELDS = ("name", "attention", "linear")


class CompositionError(ValueError):
    """A malformed configuration or scheme, named by its entry."""


# ------------------------------------------------------------------------------------------ sites
@dataclass(frozen=True)
class Site:
    """A prunable module: ``id`` (``encoder.0.self_attn``, ``decoder.2.ffn_in``), ``kind`` (heads or
    l1) and the full paths of its modules by role (an attention's four; a linear layer's one)."""

    id: str
    kind: str
    paths: dict[str, str]
    stack: str
    layer: int


def sites(model: nn.Module) -> dict[str, Site]:
    """Every site of ``model`` by id, attention blocks first, in layer order."""
    adapter = adapters.get_adapter(model)
    have = set(adapter.roles())
    found: dict[str, Site] = {}
    for block, roles in ATTENTION_BLOCKS.items():
        if not set(roles) <= have:
            continue
        found_roles = {r: adapters.find_modules(model, r) for r in roles}
        for q, k, v, o in zip(*found_roles.values()):
            found[f"{q.stack}.{q.layer}.{block}"] = Site(
                f"{q.stack}.{q.layer}.{block}", "heads", dict(zip(roles, (q.path, k.path, v.path, o.path))),
                q.stack, q.layer)
    for role in LINEAR_ROLES:
        if role not in have:
            continue
        by_layer: dict[tuple, list[adapters.RoleModule]] = {}
        for rm in adapters.find_modules(model, role):
            by_layer.setdefault((rm.stack, rm.layer), []).append(rm)
        for (stack, layer), rms in by_layer.items():
            for n, rm in enumerate(rms):  # a gated FFN has two input projections: ffn_in.0, ffn_in.1
                sid = f"{stack}.{layer}.{role}" + (f".{n}" if len(rms) > 1 else "")
                found[sid] = Site(sid, "l1", {"linear": rm.path}, stack, layer)
    return found


# ---------------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class Unit:
    """One pruned module: a site at a rate by a kind; ``key`` names it in files and tables."""

    site: str
    kind: str
    rate: float

    @property
    def key(self) -> str:
        return f"{self.site}@{self.kind}{self.rate:g}"


@dataclass(frozen=True)
class Configuration:
    """A named configuration: its rate specs as given and the units they resolve to (rate-0 sites
    are left dense and have no unit)."""

    name: str
    attention: Any
    linear: Any
    units: tuple[Unit, ...]

    def unit_at(self, site: str) -> Unit | None:
        return next((u for u in self.units if u.site == site), None)


def _check_rate(rate: Any, where: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise CompositionError(f"{where}: rate {rate!r} is not in [0, 1)")
    return float(rate)


def _resolve(spec: Any, kind: str, field_: str, found: dict[str, Site], where: str) -> dict[str, float]:
    """Site id → rate for one field (a rate, or {fnmatch pattern: rate} applied in order)."""
    ids = [s for s, site in found.items() if site.kind == kind]
    patterns = spec.items() if isinstance(spec, dict) else [("*", spec)]
    rates: dict[str, float] = {}
    for pattern, rate in patterns:
        rate = _check_rate(rate, f"{where}, {field_} {pattern!r}")
        hit = fnmatch.filter(ids, str(pattern))
        if not hit:
            raise CompositionError(f"{where}: {field_} pattern {pattern!r} matches no {kind} site; the model has "
                                   f"{', '.join(ids)}")
        rates.update(dict.fromkeys(hit, rate))
    return rates


def resolve(entries: Sequence[dict], model: nn.Module) -> list[Configuration]:
    """Validate configuration entries (dicts with ``name``, ``attention``, ``linear``) against the
    model and resolve their units; every error names the entry."""
    if not entries:
        raise CompositionError("no configuration given")
    found, names, out = sites(model), set(), []
    for i, entry in enumerate(entries):
        where = f"configuration {i}" + (f" ({entry.get('name')!r})" if isinstance(entry, dict) and "name" in entry
                                         else "")
        if not isinstance(entry, dict):
            raise CompositionError(f"{where} is a {type(entry).__name__}, not a mapping with {', '.join(CONFIG_FIELDS)}")
        missing = [f for f in CONFIG_FIELDS if f not in entry]
        unknown = sorted(set(entry) - set(CONFIG_FIELDS))
        if missing or unknown:
            raise CompositionError(f"{where}: " + (f"missing field {', '.join(missing)}" if missing else
                                                   f"unknown field {', '.join(unknown)}") +
                                   f" (fields: {', '.join(CONFIG_FIELDS)})")
        name = str(entry["name"])
        if name in names:
            raise CompositionError(f"{where}: the name {name!r} is used twice")
        names.add(name)
        units = []
        for field_, kind in (("attention", "heads"), ("linear", "l1")):
            for site, rate in _resolve(entry[field_], kind, field_, found, where).items():
                if rate > 0:
                    units.append(Unit(site, kind, rate))
        out.append(Configuration(name, entry["attention"], entry["linear"], tuple(units)))
    return out


def generate(attention: Sequence[float], linear: Sequence[float]) -> list[dict]:
    """Every (attention rate, linear rate) pair as a uniform configuration named ``a25-l30``."""
    return [{"name": f"a{round(a * 100)}-l{round(l_ * 100)}", "attention": a, "linear": l_}
            for a, l_ in itertools.product(attention, linear)]


def _write_yaml(path: str | os.PathLike, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)
    return path


def write_configurations(path: str | os.PathLike, entries: Sequence[dict]) -> Path:
    return _write_yaml(path, {"configurations": list(entries)})


def load_configurations(path: str | os.PathLike, model: nn.Module) -> list[Configuration]:
    """Read and validate a configurations file (``configurations:`` list)."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("configurations"), list):
        raise CompositionError(f"{path}: expected a mapping with a 'configurations' list")
    return resolve(data["configurations"], model)


# ------------------------------------------------------------------------------------------ scheme
def build_scheme(configurations: Sequence[Configuration]) -> pd.DataFrame:
    """Every distinct unit once: ``unit`` (key), ``site``, ``kind``, ``rate``, ``configurations``
    (the names using it, in order) and ``uses``."""
    users: dict[Unit, list[str]] = {}
    for c in configurations:
        for u in c.units:
            users.setdefault(u, []).append(c.name)
    return pd.DataFrame([{"unit": u.key, "site": u.site, "kind": u.kind, "rate": u.rate, "configurations": names,
                          "uses": len(names)} for u, names in users.items()],
                        columns=["unit", "site", "kind", "rate", "configurations", "uses"])


def write_scheme(path: str | os.PathLike, scheme: pd.DataFrame) -> Path:
    return _write_yaml(path, {"units": [{"site": r.site, "kind": r.kind, "rate": r.rate,
                                         "configurations": list(r.configurations)} for r in scheme.itertuples()]})


def load_scheme(path: str | os.PathLike, configurations: Sequence[Configuration]) -> pd.DataFrame:
    """Read a scheme file and check it is the scheme of ``configurations``: the same units, each
    used by the same configurations (an edited scheme that disagrees is an error naming the entry)."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("units"), list):
        raise CompositionError(f"{path}: expected a mapping with a 'units' list")
    expected = {r.unit: r for r in build_scheme(configurations).itertuples()}
    seen = set()
    for i, entry in enumerate(data["units"]):
        if not isinstance(entry, dict) or not {"site", "kind", "rate", "configurations"} <= set(entry):
            raise CompositionError(f"{path}: unit {i} needs site, kind, rate and configurations, got {entry!r}")
        if entry["kind"] not in KINDS:
            raise CompositionError(f"{path}: unit {i} has kind {entry['kind']!r}; kinds: {', '.join(KINDS)}")
        unit = Unit(entry["site"], entry["kind"], _check_rate(entry["rate"], f"{path}: unit {i}"))
        if unit.key not in expected:
            raise CompositionError(f"{path}: unit {i} ({unit.key}) is not used by any configuration")
        if list(entry["configurations"]) != list(expected[unit.key].configurations):
            raise CompositionError(f"{path}: unit {i} ({unit.key}) lists configurations {entry['configurations']}, "
                                   f"the configurations give {expected[unit.key].configurations}")
        seen.add(unit.key)
    if missing := [k for k in expected if k not in seen]:
        raise CompositionError(f"{path}: the scheme lacks unit {missing[0]} (and {len(missing) - 1} more) that the "
                               "configurations use; regenerate it with build_scheme")
    return build_scheme(configurations)


# ---------------------------------------------------------------------------------------- pruning
def _weight(linear: nn.Module) -> torch.Tensor:
    """A linear layer's effective weight (masked when ``torch.nn.utils.prune`` is on it)."""
    return linear.weight.detach()


def head_scores(model: nn.Module, site: Site) -> np.ndarray:
    """L1 norm of each head's rows of Q, K and V, shape (heads,)."""
    d = adapters.head_structure(model).head_dim
    total = 0
    for role in tuple(site.paths)[:3]:
        w = _weight(model.get_submodule(site.paths[role])).abs()
        total = total + w.reshape(-1, d, w.shape[1]).sum(dim=(1, 2))
    return total.double().numpy()


def kept_heads(model: nn.Module, site: Site, rate: float) -> np.ndarray:
    """Indices (ascending) of the heads kept at ``rate``: the ``rate × heads`` (rounded half up) of
    smallest L1 norm are removed; at least one head stays."""
    scores = head_scores(model, site)
    drop = int(np.floor(rate * len(scores) + 0.5))
    if drop >= len(scores):
        raise CompositionError(f"{site.id}: rate {rate} removes all {len(scores)} heads; at most "
                               f"{(len(scores) - 1) / len(scores):.3f} keeps one")
    order = np.argsort(scores, kind="stable")  # smallest first
    return np.sort(order[drop:])


def _head_rows(kept: np.ndarray, head_dim: int) -> torch.Tensor:
    """Rows of Q/K/V (columns of the output projection) of the ``kept`` heads."""
    return torch.from_numpy(np.concatenate([np.arange(h * head_dim, (h + 1) * head_dim) for h in kept]))


def _attention_path(site: Site) -> str:
    return site.paths[tuple(site.paths)[0]].rsplit(".", 1)[0]


def _check_heads_supported(model: nn.Module, site: Site) -> None:
    attention = model.get_submodule(_attention_path(site))
    if hasattr(attention, "relative_attention_bias"):
        raise adapters.UnsupportedArchitectureError(
            f"{site.id}: this attention's heads share one relative position bias across layers (T5), so removing "
            "heads in one layer would misalign the others; prune its linear layers (l1) only")
    heads = adapters.head_structure(model)
    if heads.n_kv_heads != heads.n_heads:
        raise adapters.UnsupportedArchitectureError(f"{site.id}: grouped-query attention is not supported by "
                                                    "composable head pruning")


def remove_heads(root: nn.Module, site: Site, kept: np.ndarray, head_dim: int) -> None:
    """Remove every head of ``site`` (paths relative to ``root``) not in ``kept``, in place, with
    :func:`tcomp_utils.methods.heads.apply_plans`: Q/K/V rows, the output projection's columns (and its L1
    mask's, when it has one) and the head count."""
    roles = tuple(site.paths)
    rms = [adapters.RoleModule(site.paths[r], r, site.stack, site.layer, root.get_submodule(site.paths[r]))
           for r in roles]
    n = rms[0].module.out_features // head_dim
    mask = getattr(rms[3].module, "weight_mask", None)
    layer = PrunableLayer(site.stack, site.layer, root.get_submodule(_attention_path(site)), *rms)
    apply_plans(root, [layer], [HeadUnits(head_dim, n, n)], [LayerPlan(heads=np.asarray(kept))])
    if mask is not None:  # the output projection keeps its L1 mask on the columns that remain
        new = root.get_submodule(site.paths[roles[3]])
        adapters.set_module(root, site.paths[roles[3]], _masked_linear(new.weight.detach(), new.bias,
                                                                       mask[:, _head_rows(kept, head_dim)]))


def l1_prune(linear: nn.Linear, rate: float) -> nn.Linear:
    """A copy of ``linear`` with ``torch.nn.utils.prune``'s L1 unstructured mask at ``rate`` (the
    mask stays on: fine-tuning keeps the pruned weights at zero)."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"L1 pruning needs an nn.Linear, got {type(linear).__name__}")
    new = copy.deepcopy(linear)
    prune.l1_unstructured(new, "weight", amount=float(rate))
    return new


def _masked_linear(weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor) -> nn.Linear:
    """A new ``nn.Linear`` of ``weight`` with ``torch.nn.utils.prune``'s mask ``mask`` on it."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    prune.custom_from_mask(lin, "weight", mask)
    return lin


def copy_pruned(lin: nn.Linear) -> nn.Linear:
    """A copy of a masked linear layer (``copy.deepcopy`` refuses its computed ``weight``)."""
    return _masked_linear(lin.weight_orig.detach(), None if lin.bias is None else lin.bias.detach(),
                          lin.weight_mask.clone())


def prune_unit(model: nn.Module, unit: Unit) -> dict:
    """The unit's pruned module(s) from ``model`` (not changed), as a payload :func:`compose`
    installs: ``{"kept", "query", "key", "value"}`` (narrow ``nn.Linear``) for heads,
    ``{"linear"}`` (masked) for l1."""
    site = sites(model)[unit.site]
    if unit.kind == "l1":
        return {"linear": l1_prune(model.get_submodule(site.paths["linear"]), unit.rate)}
    _check_heads_supported(model, site)
    kept = kept_heads(model, site, unit.rate)
    rows = _head_rows(kept, adapters.head_structure(model).head_dim)
    out = {"kept": kept}
    for role, name in zip(tuple(site.paths)[:3], ("query", "key", "value")):
        m = model.get_submodule(site.paths[role])
        layer = nn.Linear(m.in_features, len(rows), bias=m.bias is not None)
        with torch.no_grad():
            layer.weight.copy_(m.weight.detach()[rows])
            if m.bias is not None:
                layer.bias.copy_(m.bias.detach()[rows])
        out[name] = layer
    return out


# ------------------------------------------------------------------------------------ composition
def compose(model: nn.Module, configuration: Configuration, payloads: dict[str, dict]) -> nn.Module:
    """A copy of ``model`` with each unit of ``configuration`` replaced by its payload (from
    :func:`prune_unit`, fine-tuned or not; by unit key): linear units first, then heads (which
    drop the output projection's columns of the removed heads)."""
    missing = [u.key for u in configuration.units if u.key not in payloads]
    if missing:
        raise CompositionError(f"configuration {configuration.name!r}: no module for unit {missing[0]}"
                               + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    out = copy.deepcopy(model)
    found = sites(out)
    for unit in sorted(configuration.units, key=lambda u: u.kind != "l1"):
        site, payload = found[unit.site], payloads[unit.key]
        if unit.kind == "l1":
            adapters.set_module(out, site.paths["linear"], copy_pruned(payload["linear"]))
            continue
        _check_heads_supported(out, site)
        remove_heads(out, site, np.asarray(payload["kept"]), adapters.head_structure(out).head_dim)
        for role, name in zip(tuple(site.paths)[:3], ("query", "key", "value")):
            adapters.set_module(out, site.paths[role], copy.deepcopy(payload[name]))
    return out


def to_sparse(model: nn.Module) -> int:
    """Make every L1 mask permanent and store those layers as ``SparseLinear`` (values, column
    indices, row pointers: the bytes the budget counter sees). Returns how many were converted."""
    from .pruning import SparseLinear

    done = 0
    for path, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
            adapters.set_module(model, path, SparseLinear.from_dense(module.weight.detach(),
                                                                     None if module.bias is None else module.bias.detach()))
            done += 1
    return done


# ------------------------------------------------------------------------- module-level fine-tuning
@dataclass
class Call:
    """One recorded call of a site's module: the inputs, the original output and the mask of real
    tokens (None: every position)."""

    args: tuple
    kwargs: dict
    output: torch.Tensor
    mask: torch.Tensor | None


def _detached(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (list, tuple)):
        return type(x)(_detached(v) for v in x)
    if isinstance(x, dict):
        return {k: _detached(v) for k, v in x.items()}
    return x


def _decoder_mask(batch: dict) -> torch.Tensor | None:
    """Real decoder positions of a training batch: position t predicts label t (-100: padding)."""
    labels = batch.get("labels")
    return None if labels is None else labels != -100


@torch.no_grad()
def record(model: nn.Module, batches: Iterable[dict], site_ids: Iterable[str]) -> dict[str, list[Call]]:
    """Run ``model`` on ``batches`` (no cache) and record every call of the sites' modules: an
    attention block's inputs and first output, a linear layer's. The model is not changed."""
    found = sites(model)
    wanted = {s: found[s] for s in site_ids}
    calls: dict[str, list[Call]] = {s: [] for s in wanted}
    current: dict = {}
    hooks = []
    for sid, site in wanted.items():
        path = site.paths["linear"] if site.kind == "l1" else _attention_path(site)

        def hook(module, args, kwargs, output, sid=sid, site=site):
            out = output[0] if isinstance(output, tuple) else output
            mask = _decoder_mask(current) if site.stack == "decoder" else current.get("attention_mask")
            calls[sid].append(Call(_detached(args), _detached(kwargs), out.detach(),
                                   None if mask is None else mask.bool()))
        hooks.append(model.get_submodule(path).register_forward_hook(hook, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            current.clear()
            current.update(batch)
            capture.forward(model, batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return calls


class _HeadsModule(nn.Module):
    """A copy of a site's attention block with the unit's narrow Q/K/V (the only parameters it
    trains), called like the block on its recorded calls."""

    def __init__(self, model: nn.Module, site: Site, payload: dict):
        super().__init__()
        self.attention = copy.deepcopy(model.get_submodule(_attention_path(site)))
        local = Site(site.id, "heads", {r: "attention." + p.rsplit(".", 1)[1] for r, p in site.paths.items()},
                     site.stack, site.layer)
        remove_heads(self, local, np.asarray(payload["kept"]), adapters.head_structure(model).head_dim)
        for role, name in zip(tuple(local.paths)[:3], ("query", "key", "value")):
            adapters.set_module(self, local.paths[role], payload[name])
        self.trainable = [p for name in ("query", "key", "value") for p in payload[name].parameters()]

    def forward(self, *args, **kwargs) -> torch.Tensor:
        out = self.attention(*args, **kwargs)
        return out[0] if isinstance(out, tuple) else out


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None and tuple(mask.shape) == tuple(pred.shape[:-1]):
        return nn.functional.mse_loss(pred[mask], target[mask])
    return nn.functional.mse_loss(pred, target)


def finetune_unit(model: nn.Module, unit: Unit, payload: dict, calls: list[Call], steps: int = 100,
                  lr: float = 1e-3, seed: int = 0) -> trainer.TrainResult:
    """Train a unit's pruned module (in place in ``payload``) to reproduce the original module's
    outputs on the recorded ``calls`` (MSE over real tokens, AdamW, constant ``lr``, one recorded
    batch a step); the L1 mask keeps pruned weights at zero. Returns the trainer's result (its
    ``log`` is the loss curve)."""
    if not calls:
        raise ValueError(f"no recorded calls for {unit.key}")
    torch.manual_seed(seed)
    if unit.kind == "l1":
        module = payload["linear"]
        params = [module.weight_orig, *([module.bias] if module.bias is not None else [])]
    else:
        module = _HeadsModule(model, sites(model)[unit.site], payload)
        params = module.trainable
    config = trainer.TrainConfig(steps=steps, lr=lr, weight_decay=0.0, schedule="constant", warmup_steps=0,
                                 max_grad_norm=1.0, progress=False, desc=unit.key)
    return trainer.train(module, trainer.ListBatches(calls, seed=seed), config, parameters=params,
                         loss=lambda m, c: _masked_mse(m(*c.args, **c.kwargs), c.output, c.mask))


# ------------------------------------------------------------------------------------- unit files
def save_payload(path: str | os.PathLike, unit: Unit, payload: dict) -> Path:
    """Write a unit's module(s) to ``path`` atomically (a ``.pt`` of tensors and the unit)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if unit.kind == "l1":
        lin = payload["linear"]
        state = {"weight": _weight(lin).clone(), "mask": lin.weight_mask.clone(),
                 "bias": None if lin.bias is None else lin.bias.detach().clone()}
    else:
        state = {"kept": np.asarray(payload["kept"]).tolist(),
                 **{n: {k: v.detach().clone() for k, v in payload[n].state_dict().items()}
                    for n in ("query", "key", "value")}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    torch.save({"unit": [unit.site, unit.kind, unit.rate], "state": state}, tmp)
    Path(tmp).replace(path)
    return path


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), wall seconds)``."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# -------------------------------------------------------------------------------------- pipeline
@dataclass
class PipelineResult:
    """What :func:`run_pipeline` measured. ``arms``: one row per (configuration, arm), arm
    ``baseline`` (pruned, fine-tuned as a model) or ``composed`` (from module-level fine-tuned
    units, then fine-tuned as a model); ``units``: one row per distinct unit (its module-level
    time and MSE); ``unit_log`` / ``model_log``: the loss curves (model-level rows of kind
    ``eval`` carry ``val_bleu`` and ``train_seconds``, the training time up to that evaluation);
    ``summary``: one row per configuration (:func:`summarize`); ``totals``: the whole set's times."""

    arms: pd.DataFrame
    units: pd.DataFrame
    unit_log: pd.DataFrame
    model_log: pd.DataFrame
    summary: pd.DataFrame
    totals: dict


def finetune_translation(model: nn.Module, tokenizer, recipe, task, steps: int, lr: float, eval_every: int,
                         val_examples: int, progress: bool = False, desc: str = "model-level fine-tuning"
                         ) -> trainer.TrainResult:
    """Model-level fine-tuning on the translation task's training split by the recipe's batches and
    label-smoothed loss, ``steps`` at constant ``lr``; validation BLEU on ``val_examples`` pairs every
    ``eval_every`` steps, logged with ``train_seconds`` (training time so far, evaluations excluded)."""
    from .. import translation

    data = translation.seq2seq_batches(tokenizer, task["train"], task.spec, recipe.batch_size, recipe.max_length,
                                       seed=recipe.seed)
    start, in_eval = time.perf_counter(), [0.0]

    def evaluate(m: nn.Module) -> dict:
        t = time.perf_counter()
        trained = t - start - in_eval[0]
        scores, _ = translation.evaluate(m, tokenizer, task["validation"], task.spec, val_examples, recipe.max_length)
        in_eval[0] += time.perf_counter() - t
        return {"val_bleu": scores["bleu"], "val_chrf": scores["chrf"], "train_seconds": trained}

    config = trainer.TrainConfig(steps=steps, lr=lr, weight_decay=0.0, schedule="constant", warmup_steps=0,
                                 max_grad_norm=1.0, eval_every=eval_every, progress=progress, desc=desc,
                                 precision=recipe.precision)
    torch.manual_seed(recipe.seed)
    return trainer.train(model, data, config, loss=translation.smoothed_loss(recipe.label_smoothing),
                         evaluate=evaluate)


def summarize(arms: pd.DataFrame, model_log: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: both arms' validation BLEU before and after model-level
    fine-tuning, test BLEU and training seconds, and the steps and training seconds the composed
    model took to reach the baseline's final validation BLEU (0 when it started there; NaN when it
    did not get there within the steps)."""
    rows = []
    for name, group in arms.groupby("configuration", sort=False):
        base, comp = (group[group.arm == arm].iloc[0] for arm in ("baseline", "composed"))
        evals = model_log[(model_log.configuration == name) & (model_log.arm == "composed") & (model_log.kind == "eval")]
        hit = evals[evals.val_bleu >= base.val_bleu_after]
        steps, seconds = ((0, 0.0) if comp.val_bleu_before >= base.val_bleu_after else
                          (int(hit.step.iloc[0]), float(hit.train_seconds.iloc[0])) if len(hit) else (np.nan, np.nan))
        rows.append({"configuration": name, "attention": comp.attention, "linear": comp.linear, "units": comp.units,
                     "shared_units": comp.shared_units, "param_fraction": comp.param_fraction, "MB": comp.bytes / 1e6,
                     **{f"{k}_{arm}": r[k] for arm, r in (("baseline", base), ("composed", comp))
                        for k in ("val_bleu_before", "val_bleu_after", "test_bleu", "train_seconds")},
                     "steps_to_baseline": steps, "seconds_to_baseline": seconds})
    return pd.DataFrame(rows)


def run_pipeline(model: nn.Module, tokenizer, recipe, task, configurations: Sequence[Configuration], *,
                 calibration: int = 256, unit_steps: int = 100, unit_lr: float = 1e-3, model_steps: int = 200,
                 model_lr: float = 5e-4, eval_every: int = 50, val_examples: int = 200, test_examples: int | None = None,
                 unit_dir: str | os.PathLike | None = None, progress: bool = True) -> PipelineResult:
    """Seed 002's pipeline on a translation model: the scheme of ``configurations``; one recording of
    every site's calls on ``calibration`` training pairs; each distinct unit pruned and fine-tuned
    once at module level (``unit_steps`` at ``unit_lr``; saved to ``unit_dir`` when given); per
    configuration, the baseline (pruned units composed, no module-level fine-tuning) and the composed
    model (fine-tuned units) each fine-tuned for ``model_steps`` at ``model_lr``, then stored sparse
    and scored on the test split (greedy BLEU/chrF).

    ``totals``: ``without_s`` (the baselines' model-level training seconds), ``with_s`` (recording +
    every unit once + each composed model's seconds until it reached its baseline's final validation
    BLEU, all its seconds when it did not), ``saved_s`` and how many configurations ``matched``."""
    from tqdm.auto import tqdm

    from .. import budget, translation

    scheme = build_scheme(configurations)
    src_split = task["train"].select(range(min(calibration, len(task["train"]))))
    batches = list(translation.seq2seq_batches(tokenizer, src_split, task.spec, 32, recipe.max_length,
                                               shuffle=False).epoch(0))
    calls, record_s = timed(record, model, batches, scheme.site.unique())
    pruned, tuned, unit_rows, unit_logs = {}, {}, [], []
    for r in tqdm(list(scheme.itertuples()), desc="module-level fine-tuning", disable=not progress):
        unit = Unit(r.site, r.kind, r.rate)
        pruned[unit.key] = prune_unit(model, unit)
        tuned[unit.key] = prune_unit(model, unit)
        result = finetune_unit(model, unit, tuned[unit.key], calls[unit.site], unit_steps, unit_lr)
        loss = result.log[result.log.kind == "train"].loss.to_numpy()
        unit_rows.append({"unit": unit.key, "site": unit.site, "kind": unit.kind, "rate": unit.rate, "uses": r.uses,
                          "seconds": result.seconds, "mse_first": float(loss[:5].mean()),
                          "mse_last": float(loss[-5:].mean())})
        unit_logs.append(pd.DataFrame({"unit": unit.key, "step": np.arange(1, len(loss) + 1), "loss": loss}))
        if unit_dir is not None:
            save_payload(Path(unit_dir) / f"{unit.key}.pt", unit, tuned[unit.key])
    del calls
    test = task["test"] if test_examples is None else task["test"].select(range(test_examples))
    dense_params = budget.footprint(model).params
    arms, logs = [], []
    for config in tqdm(configurations, desc="configurations", disable=not progress):
        shared = sum(len(scheme.configurations[scheme.unit == u.key].iloc[0]) > 1 for u in config.units)
        for arm, payloads in (("baseline", pruned), ("composed", tuned)):
            m = compose(model, config, payloads)
            before, _ = translation.evaluate(m, tokenizer, task["validation"], task.spec, val_examples, recipe.max_length)
            result = finetune_translation(m, tokenizer, recipe, task, model_steps, model_lr, eval_every, val_examples,
                                          desc=f"{config.name} {arm}")
            scores, _ = translation.evaluate(m, tokenizer, test, task.spec, None, recipe.max_length)
            to_sparse(m)
            fp = budget.footprint(m)
            evals = result.log[result.log.kind == "eval"]
            arms.append({"configuration": config.name, "arm": arm, "attention": str(config.attention),
                         "linear": str(config.linear), "units": len(config.units), "shared_units": shared,
                         "val_bleu_before": before["bleu"], "val_bleu_after": float(evals.val_bleu.iloc[-1]),
                         "test_bleu": scores["bleu"], "test_chrf": scores["chrf"],
                         "train_seconds": float(evals.train_seconds.iloc[-1]), "steps": result.steps,
                         "params": fp.params, "param_fraction": fp.params / dense_params, "bytes": fp.bytes})
            logs.append(result.log.assign(configuration=config.name, arm=arm))
    arms_df, model_log = pd.DataFrame(arms), pd.concat(logs, ignore_index=True)
    units = pd.DataFrame(unit_rows)
    summary = summarize(arms_df, model_log)
    totals = {"n_configurations": len(configurations), "n_units": len(scheme), "unit_uses": int(scheme.uses.sum()),
              **time_totals(summary, units, record_s)}
    return PipelineResult(arms_df, units, pd.concat(unit_logs, ignore_index=True), model_log, summary, totals)


def time_totals(summary: pd.DataFrame, units: pd.DataFrame, record_s: float) -> dict:
    """The whole set's training seconds. Without composition: every baseline's model-level
    fine-tuning. With: the recording, every unit once, and each composed model's seconds until it
    reached its baseline's final validation BLEU (all its seconds where it did not: ``matched``
    counts those that did)."""
    reach = summary.seconds_to_baseline.fillna(summary.train_seconds_composed)
    without = float(summary.train_seconds_baseline.sum())
    with_s = record_s + float(units.seconds.sum()) + float(reach.sum())
    return {"record_s": record_s, "unit_s": float(units.seconds.sum()), "composed_model_s": float(reach.sum()),
            "without_s": without, "with_s": with_s, "saved_s": without - with_s,
            "matched": int(summary.seconds_to_baseline.notna().sum())}
