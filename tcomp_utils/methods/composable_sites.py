"""The site-selection language of composable pruning (:mod:`tcomp_utils.methods.composable`):
where a model can be pruned, and the configurations that say at which rates.

**Sites and kinds** (through the adapters' roles, so any encoder-decoder or encoder with an
adapter works): a :class:`Site` is an attention block (``{stack}.{layer}.self_attn`` or
``.cross_attn``, kind ``heads``) or a linear layer (``{stack}.{layer}.{role}`` for the FFN's
``ffn_in``/``ffn_out`` and the attention outputs ``attn_out``/``cross_attn_out``, kind ``l1``;
a gated FFN's two input projections are ``ffn_in.0`` and ``ffn_in.1``). A :class:`Unit` is a site
pruned by its kind at a rate.

**Configurations** are entries ``{name, attention, linear}``: a rate for every site of that kind,
or ``{fnmatch pattern: rate}`` applied in order (later wins); :func:`resolve` checks them against
the model (every error names the entry) and gives each :class:`Configuration` its units (a rate-0
site is left dense and has no unit).

    {name: deep, attention: {"*": 0.25, "decoder.*": 0.5}, linear: 0.3}
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from .. import adapters
from .heads import attention_path

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
    l1) and the full paths of its modules by role (an attention's four; a linear layer's one);
    ``attention``: a ``heads`` site's attention block, when it is not the parent of its projections
    (Q/K/V split from a fused projection: GPT-2's ``attn.c_attn.query`` belongs to ``attn``)."""

    id: str
    kind: str
    paths: dict[str, str]
    stack: str
    layer: int
    attention: str = ""

    @property
    def attention_path(self) -> str:
        """The path of a ``heads`` site's attention block (the module holding its head count)."""
        return self.attention or self.paths[tuple(self.paths)[0]].rsplit(".", 1)[0]

    @property
    def block_path(self) -> str:
        """The innermost module holding all of a ``heads`` site's projections (the output projection
        included: BERT's ``attention``, whose ``self`` holds Q/K/V and ``output`` the dense layer);
        its calls are what the site's module-level fine-tuning reproduces."""
        shared = []
        for names in zip(*(p.split(".") for p in self.paths.values())):
            if len(set(names)) > 1:
                break
            shared.append(names[0])
        return ".".join(shared)


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
                q.stack, q.layer, attention_path(model, q))
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


def check_rate(rate: Any, where: str) -> float:
    """A pruning rate in [0, 1) as a float; :class:`CompositionError` naming ``where`` otherwise."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise CompositionError(f"{where}: rate {rate!r} is not in [0, 1)")
    return float(rate)


def _resolve(spec: Any, kind: str, field_: str, found: dict[str, Site], where: str) -> dict[str, float]:
    """Site id → rate for one field (a rate, or {fnmatch pattern: rate} applied in order)."""
    ids = [s for s, site in found.items() if site.kind == kind]
    patterns = spec.items() if isinstance(spec, dict) else [("*", spec)]
    rates: dict[str, float] = {}
    for pattern, rate in patterns:
        rate = check_rate(rate, f"{where}, {field_} {pattern!r}")
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
