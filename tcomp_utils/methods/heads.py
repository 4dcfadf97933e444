"""Head and neuron surgery on a transformer layer: the public API every structured-pruning method
shares (:mod:`~tcomp_utils.methods.structured`, :mod:`~tcomp_utils.methods.fisher_pruning`,
:mod:`~tcomp_utils.methods.composable`).

A :class:`PrunableLayer` holds one layer's role modules (Q/K/V/output projection, the FFN's
projections) and the attention module that keeps the head count; :class:`HeadUnits` says how its
heads group into prunable units (one head, or a grouped-query group with its key/value head); a
:class:`LayerPlan` says what to keep. :func:`apply_plans` replaces the layers by narrower
``nn.Linear`` layers (through the core's :func:`tcomp_utils.targeting.replace`) and lowers the
head counts, one report row per replaced module.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import adapters
from ..targeting import module_row, replace


@dataclass
class PrunableLayer:
    """One layer's prunable units: attention (q/k/v/o role modules) and FFN (ffn_in list, ffn_out)."""

    stack: str
    layer: int
    attention: nn.Module | None = None   # the module holding the head count (see attention_path)
    query: adapters.RoleModule | None = None
    key: adapters.RoleModule | None = None
    value: adapters.RoleModule | None = None
    attn_out: adapters.RoleModule | None = None
    ffn_in: tuple[adapters.RoleModule, ...] = ()
    ffn_out: adapters.RoleModule | None = None


@dataclass
class HeadUnits:
    """Head structure of one layer: ``units`` prunable units of ``per_unit`` query heads (1, or a
    grouped-query group), each with one key/value head when grouped."""

    head_dim: int
    n_heads: int
    n_kv: int

    @property
    def grouped(self) -> bool:
        return self.n_kv < self.n_heads

    @property
    def units(self) -> int:
        return self.n_kv if self.grouped else self.n_heads

    @property
    def per_unit(self) -> int:
        return self.n_heads // self.units

    def q_cols(self, unit: int) -> slice:
        """Columns of the attention output (rows of Q) of ``unit``."""
        w = self.per_unit * self.head_dim
        return slice(unit * w, (unit + 1) * w)

    def kv_rows(self, unit: int) -> slice:
        return slice(unit * self.head_dim, (unit + 1) * self.head_dim) if self.grouped else self.q_cols(unit)


def attention_path(model: nn.Module, query: adapters.RoleModule) -> str:
    """Path of the attention module that holds the head count of ``query``: its parent, or the
    parent of the fused projection it was split from (GPT-2's ``attn.c_attn.query``: ``attn``)."""
    path = query.path.rsplit(".", 1)[0]
    return path.rsplit(".", 1)[0] if isinstance(model.get_submodule(path), adapters.FusedProjection) else path


# a forward that reads a head count from the model's config, which every layer shares: lowering
# one layer's heads cannot reach it (Phi-3 slices its fused qkv output at config.num_attention_heads)
_CONFIG_HEAD_COUNT = re.compile(r"\bconfig\.(num_attention_heads|num_key_value_heads|num_kv_heads|n_head|num_heads)\b")


def check_head_pruning(model: nn.Module, layers: list[PrunableLayer]) -> None:
    """Refuse, before anything changes, attention modules whose forward takes its head count from
    the shared model config rather than from attributes of the module that pruning lowers."""
    for e in layers:
        check_head_count_source(e.attention, f"{attention_path(model, e.query)} ({type(e.attention).__name__})")


def check_head_count_source(attention: nn.Module, where: str, instead: str = "prune neurons only (units='neurons')"
                            ) -> None:
    """Refuse ``attention`` (named ``where`` in the message, ``instead`` the advice) when its forward
    reads the head count from the model config, which every layer shares: a narrower layer would be
    sliced at the old count."""
    try:
        source = inspect.getsource(type(attention).forward)
    except (OSError, TypeError):  # no source to read: trust the attributes
        return
    found = _CONFIG_HEAD_COUNT.search(source)
    if found:
        raise adapters.UnsupportedArchitectureError(
            f"cannot remove heads of {where}: its forward reads the head count from the model config "
            f"({found.group(0)}), which all layers share, so a narrower layer would be sliced at the old head "
            f"count; {instead}")


def head_units(model: nn.Module, entry: PrunableLayer) -> HeadUnits:
    """The head units of ``entry``, read from its query and key widths (after any earlier pruning)."""
    declared = adapters.head_structure(model)
    d = declared.head_dim
    n_heads = entry.query.module.out_features // d
    n_kv = entry.key.module.out_features // d
    if n_heads % n_kv:
        raise adapters.UnsupportedArchitectureError(f"layer {entry.layer}: {n_heads} query heads over {n_kv} key/value "
                                                    "heads are not equal groups")
    return HeadUnits(d, n_heads, n_kv)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=like.weight.device,
                      dtype=like.weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _rows(rm: adapters.RoleModule, idx: torch.Tensor) -> nn.Linear:
    m = rm.module
    return _linear(m.weight.detach()[idx], m.bias.detach()[idx] if m.bias is not None else None, m)


def _cols(rm: adapters.RoleModule, idx: torch.Tensor, weight: np.ndarray | None) -> nn.Linear:
    m = rm.module
    w = torch.from_numpy(weight).to(m.weight.dtype) if weight is not None else m.weight.detach()[:, idx]
    return _linear(w, m.bias.detach() if m.bias is not None else None, m)


def _set_heads(attention: nn.Module, heads: HeadUnits, kept_units: int) -> None:
    """Lower the head counts an attention module keeps as attributes (HF names differ by family)."""
    n_q, n_kv = kept_units * heads.per_unit, kept_units if heads.grouped else kept_units * heads.per_unit
    for name, value in (("num_attention_heads", n_q), ("num_heads", n_q), ("n_heads", n_q),
                        ("all_head_size", n_q * heads.head_dim), ("inner_dim", n_q * heads.head_dim),
                        ("split_size", n_q * heads.head_dim),  # GPT-2 splits its fused output at it
                        ("num_key_value_heads", n_kv), ("num_kv_heads", n_kv)):  # Falcon: num_kv_heads
        if isinstance(getattr(attention, name, None), int):
            setattr(attention, name, value)


@dataclass
class LayerPlan:
    """What to keep in one layer: head units and neurons (None: all), in the order their columns
    are stacked, the next layer's new weight for them (None: the kept columns as they are) and the
    error the criterion gives the choice."""

    heads: np.ndarray | None = None
    attn_out: np.ndarray | None = None
    head_error: float = 0.0
    neurons: np.ndarray | None = None
    ffn_out: np.ndarray | None = None
    neuron_error: float = 0.0


def apply_plans(model: nn.Module, layers: list[PrunableLayer], structure: list[HeadUnits],
                plans: list[LayerPlan]) -> list[dict]:
    """Replace the pruned layers by narrower ``nn.Linear`` layers and lower the head counts (every
    decision is made before: nothing here can fail half-way). One report row per replaced module."""
    out = []
    for e, h, plan in zip(layers, structure, plans):
        if plan.heads is not None:
            units = plan.heads
            q_idx = torch.from_numpy(np.concatenate([np.arange(h.q_cols(u).start, h.q_cols(u).stop) for u in units]))
            kv_idx = torch.from_numpy(np.concatenate([np.arange(h.kv_rows(u).start, h.kv_rows(u).stop) for u in units]))
            new = {"query": _rows(e.query, q_idx), "key": _rows(e.key, kv_idx), "value": _rows(e.value, kv_idx),
                   "attn_out": _cols(e.attn_out, q_idx, plan.attn_out)}
            for role, layer in new.items():
                rm = getattr(e, role)
                out.append(module_row(rm, rm.module, layer, rank=f"{len(units)}/{h.units} heads",
                                      rel_error=plan.head_error, units_kept=len(units), units_before=h.units,
                                      unit="head"))
                replace(model, rm.path, layer)
            _set_heads(e.attention, h, len(units))
        if plan.neurons is not None:
            n = e.ffn_out.module.in_features
            idx = torch.from_numpy(np.asarray(plan.neurons).copy())
            new = [(rm, _rows(rm, idx)) for rm in e.ffn_in] + [(e.ffn_out, _cols(e.ffn_out, idx, plan.ffn_out))]
            for rm, layer in new:
                out.append(module_row(rm, rm.module, layer, rank=f"{len(idx)}/{n} neurons", rel_error=plan.neuron_error,
                                      units_kept=len(idx), units_before=n, unit="neuron"))
                replace(model, rm.path, layer)
    return out
