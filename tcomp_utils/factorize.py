"""One call to factorize the chosen roles of a whole model, and the report that comes back.

    report = factorize(model, "svd", roles=["ffn_in", "ffn_out"], ratio=3)
    report = factorize(model, "svd", roles=["query"], ratio=10, mode="concatenated")
    report = factorize(model, "tucker", roles=["query", "key", "value"], ratio=3, mode="qkv")
    report = factorize(model, "asvd", roles=["ffn_in"], ratio=3, calibration=batches)

The model is changed in place (``copy.deepcopy`` it first to keep the original). Every budget is
checked, for every module, before the first module is replaced: an impossible budget raises
:class:`~tcomp_utils.lowrank.BudgetError` and leaves the model untouched.

Methods and modes:

=========== ======================================= =============================================
method      modes                                   what
=========== ======================================= =============================================
svd         separated, concatenated                 truncated SVD; concatenated = one role across
                                                    all layers stacked, sharing the right factor
asvd        separated                               activation-aware SVD: W·diag(s), s = mean|x|^α
                                                    over calibration inputs (α = 0.5)
fwsvd       separated                               Fisher-weighted SVD: rows weighted by
                                                    √(Σ grad²) of the task loss on calibration data
tucker      concatenated, qkv, qkv-concatenated      Tucker of [L,out,in], [3,out,in] per layer, or
                                                    [3,L,out,in] (roles query, key, value)
kronecker   separated                               sum of Kronecker products (nearest-KP SVD)
falcon      separated                               depthwise × pointwise (option ``groups``)
=========== ======================================= =============================================
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import adapters, budget
from .lowrank import BudgetError, check_rank, rank_for_ratio, stacked_svd, svd_linear
from .tensor_factors import falcon_linear, kronecker_linear, tucker_linears, tucker_params, tucker_ranks_for_ratio

ROLE_GROUPS = {
    "qkv": ("query", "key", "value"),
    "attention": ("query", "key", "value", "attn_out"),
    "ffn": ("ffn_in", "ffn_out"),
    "linear": ("query", "key", "value", "attn_out", "ffn_in", "ffn_out"),
}

MODES = {
    "svd": ("separated", "concatenated"),
    "asvd": ("separated",),
    "fwsvd": ("separated",),
    "tucker": ("concatenated", "qkv", "qkv-concatenated"),
    "kronecker": ("separated",),
    "falcon": ("separated",),
}


@dataclass
class CompressionReport:
    """What :func:`factorize` did: per-module table, footprints before/after, time taken (s)."""

    method: str
    mode: str
    budget: dict
    modules: pd.DataFrame
    before: budget.Footprint
    after: budget.Footprint
    seconds: float
    options: dict = field(default_factory=dict)

    @property
    def param_ratio(self) -> float:
        """Stored numbers of the targeted modules before / after (biases included)."""
        return self.modules.params_before.sum() / self.modules.params_after.sum()

    def summary(self) -> dict:
        return {"method": self.method, "mode": self.mode, **self.budget,
                "modules": len(self.modules), "module_param_ratio": float(self.param_ratio),
                "mean_rel_error": float(self.modules.rel_error.mean()),
                "params_before": self.before.params, "params_after": self.after.params,
                "macs_before": self.before.macs, "macs_after": self.after.macs, "seconds": self.seconds}


def expand_roles(roles: list[str] | str) -> list[str]:
    """A role, a list of roles, or a group name of :data:`ROLE_GROUPS` (``"qkv"``, ``"ffn"``, ...)."""
    if isinstance(roles, str):
        return list(ROLE_GROUPS.get(roles, (roles,)))
    return [r for role in roles for r in ROLE_GROUPS.get(role, (role,))]


def _linear(rm: adapters.RoleModule) -> nn.Linear:
    if not isinstance(rm.module, nn.Linear):
        raise TypeError(f"{rm.path} ({rm.role}) is a {type(rm.module).__name__}, not an nn.Linear: "
                        "it is already compressed or cannot be factorized")
    return rm.module


def _n_params(m: nn.Module) -> int:
    return m.tcomp_footprint().params if isinstance(m, budget.CompressedModule) else sum(p.numel() for p in m.parameters())


@torch.no_grad()
def activation_scales(model: nn.Module, targets: list[adapters.RoleModule], calibration: Iterable[dict],
                      alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """Per-input-channel scales ``mean|x|^α`` of each target's inputs over ``calibration`` batches."""
    sums = {rm.path: torch.zeros(rm.module.in_features, dtype=torch.float64) for rm in targets}
    counts = dict.fromkeys(sums, 0)

    def hook(path):
        def fn(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[path] += x.abs().sum(0)
            counts[path] += x.shape[0]
        return fn

    handles = [rm.module.register_forward_hook(hook(rm.path)) for rm in targets]
    try:
        model.eval()
        for batch in calibration:
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    if not all(counts.values()):
        raise ValueError("calibration produced no inputs for some target modules")
    return {p: (sums[p] / counts[p]).clamp_min(1e-8).pow(alpha).float() for p in sums}


def fisher_row_scales(model: nn.Module, targets: list[adapters.RoleModule], calibration: Iterable[dict]) -> dict[str, torch.Tensor]:
    """Per-output-row √(Σ grad²) of the task loss (batches must hold ``labels``)."""
    sums = {rm.path: torch.zeros(rm.module.out_features, dtype=torch.float64) for rm in targets}
    model.eval()
    for batch in calibration:
        if "labels" not in batch:
            raise ValueError("Fisher-weighted SVD needs calibration batches with 'labels'")
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            model(**batch).loss.backward()
        for rm in targets:
            sums[rm.path] += rm.module.weight.grad.double().pow(2).sum(1)
    model.zero_grad(set_to_none=True)
    return {p: s.sqrt().clamp_min(1e-12).float() for p, s in sums.items()}


def factorize(model: nn.Module, method: str, roles: list[str] | str, ratio: float | None = None,
              rank: int | tuple[int, ...] | None = None, mode: str = "separated",
              calibration: Iterable[dict] | None = None, layers: list[int] | None = None,
              seq_len: int = 128, **options) -> CompressionReport:
    """Factorize every module of ``roles`` (optionally only ``layers``) with ``method``.

    ``roles``: role names or groups (:data:`ROLE_GROUPS`). Budget: ``ratio`` (stored numbers of a module or stack before / after, biases excluded;
    see each method for the rank formula) or explicit ``rank`` (an int; for Tucker a tuple of
    ranks). ``calibration``: batches for ``model(**batch)`` (asvd, fwsvd with labels, kronecker
    refinement). ``options``: ``alpha`` (asvd), ``groups`` (falcon), ``shape``/``refine_steps``
    (kronecker), ``lead_ranks`` (tucker with a ratio).
    """
    if method not in MODES:
        raise ValueError(f"unknown factorization method {method!r}; allowed: {', '.join(MODES)}")
    if mode not in MODES[method]:
        raise ValueError(f"method {method!r} has no mode {mode!r}; allowed: {', '.join(MODES[method])}")
    if (ratio is None) == (rank is None):
        raise BudgetError("give exactly one budget: ratio= (stored numbers before/after, > 1) or rank=")
    roles = expand_roles(roles)
    targets = {role: adapters.find_modules(model, role, layers) for role in roles}
    for rms in targets.values():
        for rm in rms:
            _linear(rm)
    if method in ("asvd", "fwsvd") and calibration is None:
        raise ValueError(f"method {method!r} needs calibration batches")
    calibration = list(calibration) if calibration is not None else None
    before = budget.footprint(model, seq_len)
    start = time.perf_counter()
    plan = _plan(model, method, mode, targets, ratio, rank, calibration, options)  # all checks, no changes yet
    rows = []
    for paths, build in plan:
        old = {p: model.get_submodule(p) for p in paths}
        new = build()
        for p, module in new.items():
            w = old[p].weight.detach()
            err = (torch.linalg.matrix_norm(w - module.weight_matrix().detach()) / torch.linalg.matrix_norm(w)).item()
            rm = next(r for rs in targets.values() for r in rs if r.path == p)
            rows.append(dict(path=p, role=rm.role, layer=rm.layer, out=w.shape[0], **{"in": w.shape[1]},
                             rank=_rank_label(module), params_before=_n_params(old[p]),
                             params_after=_n_params(module) + _shared_share(module, len(new)), rel_error=err))
        for p, module in new.items():
            adapters.set_module(model, p, module)
    seconds = time.perf_counter() - start
    return CompressionReport(method, mode, {"ratio": ratio, "rank": rank}, pd.DataFrame(rows), before,
                             budget.footprint(model, seq_len), round(seconds, 3), options)


def _rank_label(module: nn.Module) -> str:
    for attr in ("rank", "depth"):
        if hasattr(module, attr):
            return str(getattr(module, attr))
    if hasattr(module, "shared") and hasattr(module.shared, "core"):
        return "x".join(str(d) for d in module.shared.core.shape)
    return ""


def _shared_share(module: nn.Module, n: int) -> float:
    """A shared factor's stored numbers spread over the n modules that use it (for per-module ratios)."""
    shared = getattr(module, "shared", None)
    return shared.tcomp_footprint().params / n if isinstance(shared, budget.CompressedModule) else 0.0


def _plan(model, method, mode, targets, ratio, rank, calibration, options):
    """Check every budget and return [(paths, build)] where ``build()`` makes the new modules."""
    plan = []
    flat = [rm for rms in targets.values() for rm in rms]
    if method in ("svd", "asvd", "fwsvd") and mode == "separated":
        scales_in = activation_scales(model, flat, calibration, options.get("alpha", 0.5)) if method == "asvd" else {}
        scales_out = fisher_row_scales(model, flat, calibration) if method == "fwsvd" else {}
        for rm in flat:
            lin = rm.module
            r = rank_for_ratio(lin.in_features, lin.out_features, ratio) if ratio else \
                check_rank(rank, lin.in_features, lin.out_features)
            plan.append(([rm.path], lambda rm=rm, r=r: {rm.path: svd_linear(
                rm.module, r, scales_in.get(rm.path), scales_out.get(rm.path))}))
    elif method == "svd":  # concatenated: each role (and stack) across its layers
        for role, rms in targets.items():
            for stack in dict.fromkeys(rm.stack for rm in rms):
                group = [rm for rm in rms if rm.stack == stack]
                n_in, n_out = group[0].module.in_features, group[0].module.out_features
                r = rank_for_ratio(n_in, n_out, ratio, len(group)) if ratio else check_rank(rank, n_in, len(group) * n_out)
                plan.append(([rm.path for rm in group], lambda group=group, r=r: dict(zip(
                    [rm.path for rm in group], stacked_svd([rm.module for rm in group], r)[1]))))
    elif method == "tucker":
        for grid_paths in _tucker_grids(targets, mode):
            grid = np.empty(grid_paths.shape, dtype=object)
            for idx, p in np.ndenumerate(grid_paths):
                grid[idx] = model.get_submodule(p)
            n_out, n_in = grid.flat[0].out_features, grid.flat[0].in_features
            ranks = tuple(rank) if rank is not None else tucker_ranks_for_ratio(
                grid.shape, n_out, n_in, ratio, options.get("lead_ranks"))
            if ratio is None and tucker_params(grid.shape, ranks[:-2], n_out, n_in, *ranks[-2:]) >= grid.size * n_out * n_in:
                raise BudgetError(f"Tucker ranks {list(ranks)} store more numbers than the {grid.size} dense matrices")
            plan.append((list(grid_paths.flat), lambda grid=grid, gp=grid_paths, ranks=ranks: dict(zip(
                gp.flat, tucker_linears(grid, ranks)[1].flat))))
    elif method == "kronecker":
        for rm in flat:
            _check_kronecker(rm.module, ratio, rank, options.get("shape"))
            plan.append(([rm.path], lambda rm=rm: {rm.path: kronecker_linear(
                rm.module, ratio=ratio, rank=rank, shape=options.get("shape"),
                calibration=_inputs_of(model, rm, calibration) if options.get("refine_steps") else None,
                refine_steps=options.get("refine_steps", 0))}))
    elif method == "falcon":
        for rm in flat:
            groups = options.get("groups") or _default_groups(rm.module.in_features)
            _check_falcon(rm.module, groups, rank, ratio)
            plan.append(([rm.path], lambda rm=rm, g=groups: {rm.path: falcon_linear(rm.module, g, depth=rank, ratio=ratio)}))
    return plan


def _tucker_grids(targets: dict, mode: str) -> list[np.ndarray]:
    """Arrays of module paths shaped like the Tucker stacks of ``mode``."""
    if mode == "concatenated":
        out = []
        for rms in targets.values():
            for stack in dict.fromkeys(rm.stack for rm in rms):
                out.append(np.array([rm.path for rm in rms if rm.stack == stack], dtype=object))
        return out
    if sorted(targets) != ["key", "query", "value"]:
        raise ValueError(f"Tucker mode {mode!r} stacks Q/K/V: give roles ['query', 'key', 'value'], got {sorted(targets)}")
    by = {(rm.stack, rm.layer): {} for rm in targets["query"]}
    for role in ("query", "key", "value"):
        for rm in targets[role]:
            by[(rm.stack, rm.layer)][role] = rm.path
    per_layer = {k: [v["query"], v["key"], v["value"]] for k, v in by.items()}
    if mode == "qkv":
        return [np.array(paths, dtype=object) for paths in per_layer.values()]
    stacks = dict.fromkeys(s for s, _ in per_layer)
    return [np.array([per_layer[k] for k in per_layer if k[0] == s], dtype=object).T for s in stacks]


def _default_groups(n_in: int) -> int:
    """Blocks of 64 inputs where they divide the input, else the divisor nearest √in."""
    if n_in % 64 == 0 and n_in > 64:
        return n_in // 64
    return min((d for d in range(1, n_in + 1) if n_in % d == 0), key=lambda d: abs(d - math.sqrt(n_in)))


def _check_kronecker(lin: nn.Linear, ratio, rank, shape) -> None:
    from .tensor_factors import kronecker_shape
    m1, n1 = shape or kronecker_shape(lin.out_features, lin.in_features)
    if lin.out_features % m1 or lin.in_features % n1:
        raise BudgetError(f"Kronecker factor {m1} × {n1} does not divide {lin.out_features} × {lin.in_features}")
    m2, n2 = lin.out_features // m1, lin.in_features // n1
    r = rank if rank is not None else math.floor(lin.out_features * lin.in_features / (ratio * (m1 * n1 + m2 * n2)))
    if not 1 <= r < min(m1 * n1, m2 * n2):
        raise BudgetError(f"Kronecker rank {r} (from {'rank' if rank is not None else f'ratio {ratio}'}) must lie in "
                          f"[1, {min(m1 * n1, m2 * n2)}) for factors {m1}×{n1} and {m2}×{n2}")


def _check_falcon(lin: nn.Linear, groups: int, depth, ratio) -> None:
    if lin.in_features % groups:
        raise BudgetError(f"groups={groups} must divide the input size {lin.in_features}")
    block = lin.in_features // groups
    t = depth if depth is not None else math.floor(
        lin.out_features * lin.in_features / (ratio * (lin.in_features + lin.out_features * groups)))
    if not 1 <= t < min(block, lin.out_features):
        raise BudgetError(f"FALCON depth {t} must lie in [1, {min(block, lin.out_features)}) for {groups} blocks")


@torch.no_grad()
def _inputs_of(model: nn.Module, rm: adapters.RoleModule, calibration) -> torch.Tensor:
    """The inputs a module sees on the calibration batches (tokens × in)."""
    if calibration is None:
        raise ValueError("Kronecker refinement needs calibration batches")
    seen = []
    handle = rm.module.register_forward_hook(lambda m, i, o: seen.append(i[0].reshape(-1, i[0].shape[-1])))
    try:
        for batch in calibration:
            model(**batch)
    finally:
        handle.remove()
    return torch.cat(seen)
