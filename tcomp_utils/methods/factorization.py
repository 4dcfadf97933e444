"""Factorization methods: a config per method and its handler, applied with one call.

    compress(model, SVDConfig(roles="ffn", ratio=3))
    compress(model, SVDConfig(roles="query", ratio=10, mode="concatenated"))
    compress(model, TuckerConfig(roles="qkv", ratio=3, mode="qkv"))
    compress(model, ASVDConfig(roles="ffn_in", ratio=3), calibration=batches)
    factorize(model, "svd", "ffn", ratio=3)            # the same by name (sweeps, notebooks)

The model is changed in place (``copy.deepcopy`` it first to keep the original). Every budget is
checked, for every module, before the first module is replaced: an impossible budget raises
:class:`~tcomp_utils.budget.BudgetError` and leaves the model untouched. A budget is a ``ratio``
of stored numbers (a module or stack before / after, biases excluded; each method's rank formula
is in its module's docstring) or an explicit ``rank``.

=========== ======================================= =============================================
method      modes                                   what
=========== ======================================= =============================================
svd         separated, concatenated                 truncated SVD; concatenated = one role across
                                                    all layers stacked, sharing the right factor
asvd        separated                               activation-aware SVD: W·diag(s), s = mean|x|^α
                                                    over calibration inputs (real tokens; α = 0.5)
fwsvd       separated                               Fisher-weighted SVD: rows weighted by
                                                    √(Σ grad²) of the task loss on calibration data
tucker      concatenated, qkv, qkv-concatenated      Tucker of [L,out,in], [3,out,in] per layer, or
                                                    [3,L,out,in] (roles query, key, value)
kronecker   separated                               sum of Kronecker products (nearest-KP SVD)
falcon      separated, concatenated, qkv,           depthwise × pointwise (option ``groups``); the
            qkv-concatenated                        stacks of tucker's modes share the pointwise
                                                    factor; fit by SVD or SGD (``fit``)
=========== ======================================= =============================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import adapters, capture, targeting
from ..budget import BudgetError, check_ratio
from ..registry import (CompressionReport, ConfigError, MethodConfig, check_choice, check_int, compress, method_config,
                        register_method)
from ..targeting import MEASURED, by_role, module_row, replace
from .lowrank import LowRankEmbedding, LowRankLinear, check_rank, rank_for_ratio, stacked_svd
from .tensor_factors import (FalconLinear, KroneckerLinear, check_falcon_fit, check_tucker_ranks, falcon_linears,
                             tucker_linears, tucker_ranks_for_ratio)

Plan = list[tuple[list[str], Callable[[], dict[str, nn.Module]]]]


# --------------------------------------------------------------------------------------- configs
@dataclass
class FactorizationConfig(MethodConfig):
    """Roles and layers (see :class:`MethodConfig`), one budget (``ratio`` > 1 of stored numbers,
    or ``rank``), and the ``mode`` (which matrices are factorized together)."""

    ratio: float | None = None
    rank: int | None = None
    mode: str = "separated"

    MODES: ClassVar[tuple[str, ...]] = ("separated",)

    def validate(self) -> None:
        super().validate()
        check_choice("mode", self.mode, self.MODES)
        if (self.ratio is None) == (self.rank is None):
            raise BudgetError(f"{self.method}: give exactly one budget: ratio= (stored numbers before / after, > 1) "
                              f"or rank=, got ratio={self.ratio!r}, rank={self.rank!r}")
        if self.ratio is not None:
            check_ratio(self.ratio)
        else:
            self.check_rank()
        if (self.roles is not None and "embeddings" in adapters.expand_roles(self.roles)
                and not (self.method == "svd" and self.mode == "separated")):
            raise ConfigError(f"{self.method} ({self.mode}) factorizes linear layers; 'embeddings' is not one "
                              "(the embedding table is factorized by svd, separated)")

    def check_rank(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise BudgetError(f"{self.method}: rank must be an integer >= 1, got {self.rank!r}")


@dataclass
class SVDConfig(FactorizationConfig):
    """Truncated SVD per module (``separated``) or of one role stacked across layers sharing its
    right factor (``concatenated``): ``r = floor(L·in·out / (ratio·(in + L·out)))``."""

    MODES: ClassVar[tuple[str, ...]] = ("separated", "concatenated")


@dataclass
class ASVDConfig(FactorizationConfig):
    """Activation-aware SVD: SVD of ``W·diag(s)``, ``s = mean|x|^alpha`` over calibration inputs."""

    alpha: float = 0.5
    needs_calibration: ClassVar[bool] = True

    def validate(self) -> None:
        super().validate()
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha >= 0:
            raise ConfigError(f"alpha must be a number >= 0, got {self.alpha!r}")


@dataclass
class FWSVDConfig(FactorizationConfig):
    """Fisher-weighted SVD: rows weighted by √(Σ grad²) of the task loss (batches with ``labels``)."""

    needs_calibration: ClassVar[bool] = True


@dataclass
class TuckerConfig(FactorizationConfig):
    """Tucker (tensorly HOOI) of a stack: one role across layers (``concatenated``), Q/K/V of one
    layer (``qkv``) or Q/K/V across layers (``qkv-concatenated``). ``rank``: a list of ranks, one
    per mode; with a ``ratio``, ``lead_ranks`` fixes the leading modes' ranks (default: full)."""

    rank: list[int] | None = None
    mode: str = "concatenated"
    lead_ranks: list[int] | None = None

    MODES: ClassVar[tuple[str, ...]] = ("concatenated", "qkv", "qkv-concatenated")

    def check_rank(self) -> None:
        if isinstance(self.rank, (str, int)) or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1
                                                        for r in self.rank):
            raise BudgetError(f"tucker: rank must be a list of integers >= 1 (one per mode), got {self.rank!r}")


@dataclass
class KroneckerConfig(FactorizationConfig):
    """Sums of Kronecker products (nearest-KP SVD): ``rank`` terms or the most within ``ratio``;
    factor sizes ``shape`` = (m₁, n₁) (default: fewest stored numbers); ``refine_steps`` of Adam
    (learning rate ``lr``) on the output error over calibration inputs."""

    shape: list[int] | None = None
    refine_steps: int = 0
    lr: float = 1e-3

    def validate(self) -> None:
        super().validate()
        check_int("refine_steps", self.refine_steps, low=0)
        if self.shape is not None and (len(self.shape) != 2 or not all(isinstance(d, int) and d >= 1 for d in self.shape)):
            raise ConfigError(f"shape must be two positive integers (m1, n1) or None, got {self.shape!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"lr must be a number > 0, got {self.lr!r}")

    def calibration_needed(self) -> bool:
        return self.refine_steps > 0


@dataclass
class FalconConfig(FactorizationConfig):
    """FALCON-style depthwise × pointwise: ``groups`` input blocks (default: blocks of 64 inputs, else
    the divisor nearest √in), depth ``rank`` or the largest within ``ratio``. ``mode``: each matrix
    alone (``separated``) or stacks sharing one pointwise factor, as Tucker stacks them: one role
    across layers (``concatenated``), Q/K/V of a layer (``qkv``), Q/K/V across layers
    (``qkv-concatenated``); the ratio is then the stack's. ``fit``: per-block truncated SVD
    (``svd``, the Frobenius optimum) or, as the seed, SGD (``sgd``: ``fit_steps``, ``fit_lr``,
    ``fit_seed``; see :func:`~tcomp_utils.methods.tensor_factors.falcon_fit`)."""

    groups: int | None = None
    fit: str = "svd"
    fit_steps: int | None = None
    fit_lr: float | None = None
    fit_seed: int | None = None

    MODES: ClassVar[tuple[str, ...]] = ("separated", "concatenated", "qkv", "qkv-concatenated")

    def validate(self) -> None:
        super().validate()
        check_int("groups", self.groups, none_ok=True)
        check_falcon_fit(self.fit, self.fit_steps, self.fit_lr, self.fit_seed)

    def fit_options(self) -> dict:
        """The fit and its options as keyword arguments of :func:`~tcomp_utils.methods.tensor_factors.falcon_linears`."""
        return dict(fit=self.fit, fit_steps=self.fit_steps, fit_lr=self.fit_lr, fit_seed=self.fit_seed)


# --------------------------------------------------------------------------------------- helpers
def _factorizable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module) is nn.Embedding  # a table: svd, separated only (validate)


def _selected(model: nn.Module, config: FactorizationConfig) -> dict[str, list[adapters.RoleModule]]:
    """The core's :func:`~tcomp_utils.targeting.targets` of ``config``, by role."""
    roles = config.target_roles(model)
    return by_role(targeting.targets(model, roles, config.layers, accept=_factorizable, wants="an nn.Linear",
                           action="factorize"), roles)


def _flat(targets: dict[str, list[adapters.RoleModule]]) -> list[adapters.RoleModule]:
    return [rm for rms in targets.values() for rm in rms]


def _apply(model: nn.Module, targets: dict[str, list[adapters.RoleModule]], plan: Plan, progress: bool,
           desc: str) -> list[dict]:
    """Build each planned group of modules, measure it against the dense weights, put it in place."""
    by_path = {rm.path: rm for rm in _flat(targets)}
    rows = []
    for paths, build in tqdm(plan, desc=desc, disable=not progress):
        new = build()
        for p, module in new.items():
            rows.append(module_row(by_path[p], model.get_submodule(p), module, sharing=len(new), rank=module.rank_label,
                                   rel_error=MEASURED))
        for p, module in new.items():
            replace(model, p, module)
    return rows


def _svd_budget(module: nn.Module, config: FactorizationConfig) -> int:
    n_in, n_out = ((module.embedding_dim, module.num_embeddings) if isinstance(module, nn.Embedding)
                   else (module.in_features, module.out_features))
    if config.ratio is not None:
        return rank_for_ratio(n_in, n_out, config.ratio)
    return check_rank(config.rank, n_in, n_out)


def _separated_svd(targets, config, scales_in: dict | None = None, scales_out: dict | None = None) -> Plan:
    """One rank-r SVD per module (an embedding table: vocab × dim); every budget is checked here,
    the scales are read when built."""
    scales_in = {} if scales_in is None else scales_in
    scales_out = {} if scales_out is None else scales_out

    def build(rm: adapters.RoleModule, r: int) -> dict[str, nn.Module]:
        if isinstance(rm.module, nn.Embedding):  # svd only (see FactorizationConfig.validate)
            return {rm.path: LowRankEmbedding.from_embedding(rm.module, r)}
        return {rm.path: LowRankLinear.from_linear(rm.module, r, scales_in.get(rm.path), scales_out.get(rm.path))}

    return [([rm.path], lambda rm=rm, r=_svd_budget(rm.module, config): build(rm, r)) for rm in _flat(targets)]


def activation_scales(model: nn.Module, targets: list[adapters.RoleModule], calibration: list[dict],
                      alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """Per-input-channel scales ``mean|x|^α`` (in,) of each target's inputs at real tokens."""
    sums = {rm.path: torch.zeros(rm.module.in_features, dtype=torch.float64) for rm in targets}
    counts = dict.fromkeys(sums, 0)

    def sink(path: str, x: torch.Tensor) -> None:
        sums[path] += x.double().abs().sum(0)
        counts[path] += x.shape[0]

    capture.stream(model, targets, calibration, sink)
    if not all(counts.values()):
        raise ValueError("calibration produced no inputs for some target modules")
    return {p: (sums[p] / counts[p]).clamp_min(1e-8).pow(alpha).float() for p in sums}


def fisher_row_scales(model: nn.Module, targets: list[adapters.RoleModule], calibration: list[dict]) -> dict[str, torch.Tensor]:
    """Per-output-row √(Σ grad²) (out,) of the task loss (batches must hold ``labels``; the model
    needs a task head that returns a loss, see :func:`tcomp_utils.capture.check_labels`)."""
    capture.check_labels(model, calibration, "Fisher-weighted SVD")
    capture.check_lengths(model, calibration)
    sums = {rm.path: torch.zeros(rm.module.out_features, dtype=torch.float64) for rm in targets}
    for batch in calibration:
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            model(**batch).loss.backward()
        for rm in targets:
            sums[rm.path] += rm.module.weight.grad.double().pow(2).sum(1)
    model.zero_grad(set_to_none=True)
    return {p: s.sqrt().clamp_min(1e-12).float() for p, s in sums.items()}


# -------------------------------------------------------------------------------------- handlers
@register_method("svd", SVDConfig, family="factorization")
def _svd(model, config: SVDConfig, calibration, progress) -> list[dict]:
    """Truncated SVD per module or stacked across layers."""
    targets = _selected(model, config)
    if config.mode == "separated":
        plan = _separated_svd(targets, config)
    else:  # concatenated: each role (and stack) across its layers
        plan = []
        for rms in targets.values():
            for stack in dict.fromkeys(rm.stack for rm in rms):
                group = [rm for rm in rms if rm.stack == stack]
                n_in, n_out = group[0].module.in_features, group[0].module.out_features
                r = (rank_for_ratio(n_in, n_out, config.ratio, len(group)) if config.ratio
                     else check_rank(config.rank, n_in, len(group) * n_out))
                plan.append(([rm.path for rm in group], lambda group=group, r=r: dict(zip(
                    [rm.path for rm in group], stacked_svd([rm.module for rm in group], r)[1]))))
    return _apply(model, targets, plan, progress, f"svd {config.mode}")


@register_method("asvd", ASVDConfig, family="factorization")
def _asvd(model, config: ASVDConfig, calibration, progress) -> list[dict]:
    """Activation-aware SVD (input channels weighted by mean|x|^α)."""
    targets, scales = _selected(model, config), {}
    plan = _separated_svd(targets, config, scales_in=scales)  # budgets checked before the calibration pass
    scales.update(activation_scales(model, _flat(targets), calibration, config.alpha))
    return _apply(model, targets, plan, progress, "asvd")


@register_method("fwsvd", FWSVDConfig, family="factorization")
def _fwsvd(model, config: FWSVDConfig, calibration, progress) -> list[dict]:
    """Fisher-weighted SVD (output rows weighted by √Fisher of the task loss)."""
    targets, scales = _selected(model, config), {}
    plan = _separated_svd(targets, config, scales_out=scales)
    scales.update(fisher_row_scales(model, _flat(targets), calibration))
    return _apply(model, targets, plan, progress, "fwsvd")


def _stack_grids(targets: dict, mode: str, method: str) -> list[np.ndarray]:
    """Arrays of module paths shaped like the stacks of ``mode`` (``method`` names the method in errors)."""
    if mode == "concatenated":
        out = []
        for rms in targets.values():
            for stack in dict.fromkeys(rm.stack for rm in rms):
                out.append(np.array([rm.path for rm in rms if rm.stack == stack], dtype=object))
        return out
    if sorted(targets) != ["key", "query", "value"]:
        raise ConfigError(f"{method} mode {mode!r} stacks Q/K/V: give roles ['query', 'key', 'value'] (or 'qkv'), "
                          f"got {sorted(targets)}")
    by = {(rm.stack, rm.layer): {} for rm in targets["query"]}
    for role in ("query", "key", "value"):
        for rm in targets[role]:
            by[(rm.stack, rm.layer)][role] = rm.path
    per_layer = {k: [v["query"], v["key"], v["value"]] for k, v in by.items()}
    if mode == "qkv":
        return [np.array(paths, dtype=object) for paths in per_layer.values()]
    stacks = dict.fromkeys(s for s, _ in per_layer)
    return [np.array([per_layer[k] for k in per_layer if k[0] == s], dtype=object).T for s in stacks]


def _same_shape(model: nn.Module, paths: list[str], method: str, mode: str) -> list[nn.Module]:
    """The modules at ``paths``, which a stack of ``mode`` needs to be of one shape (else a
    BudgetError naming them and, for a Q/K/V stack, the mode that takes them)."""
    modules = [model.get_submodule(p) for p in paths]
    if any(m.weight.shape != modules[0].weight.shape for m in modules):
        shapes = ", ".join(f"{p} {list(m.weight.shape)}" for p, m in zip(paths, modules))
        hint = (f" (mode {mode!r} stacks query, key and value, whose widths differ under grouped-query attention; "
                "mode='concatenated' stacks each role across layers)" if mode.startswith("qkv") else "")
        raise BudgetError(f"{method} stacks need matrices of one shape; {shapes} differ{hint}")
    return modules


@register_method("tucker", TuckerConfig, family="factorization")
def _tucker(model, config: TuckerConfig, calibration, progress) -> list[dict]:
    """Tucker of stacked weights (one role across layers, Q/K/V in a layer, or both)."""
    targets = _selected(model, config)
    plan = []
    for grid_paths in _stack_grids(targets, config.mode, "Tucker"):
        grid = np.empty(grid_paths.shape, dtype=object)
        modules = _same_shape(model, list(grid_paths.flat), "Tucker", config.mode)
        for idx, module in zip(np.ndindex(grid.shape), modules):
            grid[idx] = module
        first = grid.flat[0]
        ranks = tuple(config.rank) if config.rank is not None else tucker_ranks_for_ratio(
            grid.shape, first.out_features, first.in_features, config.ratio, config.lead_ranks)
        check_tucker_ranks(grid.shape, first.out_features, first.in_features, ranks)
        plan.append((list(grid_paths.flat), lambda grid=grid, gp=grid_paths, ranks=ranks: dict(zip(
            gp.flat, tucker_linears(grid, ranks)[1].flat))))
    return _apply(model, targets, plan, progress, f"tucker {config.mode}")


@register_method("kronecker", KroneckerConfig, family="factorization")
def _kronecker(model, config: KroneckerConfig, calibration, progress) -> list[dict]:
    """Sums of Kronecker products, optionally refined on calibration inputs."""
    targets = _selected(model, config)
    flat = _flat(targets)
    shape = tuple(config.shape) if config.shape else None
    budgets = {rm.path: KroneckerLinear.plan(rm.module.out_features, rm.module.in_features, config.ratio,
                                             config.rank, shape) for rm in flat}
    inputs = capture.capture_inputs(model, flat, calibration) if config.refine_steps else {}
    plan = [([rm.path], lambda rm=rm: {rm.path: KroneckerLinear.from_linear(
        rm.module, rank=budgets[rm.path][2], shape=budgets[rm.path][:2], calibration=inputs.get(rm.path),
        refine_steps=config.refine_steps, lr=config.lr)}) for rm in flat]
    return _apply(model, targets, plan, progress, "kronecker")


def default_groups(n_in: int) -> int:
    """FALCON's input blocks: blocks of 64 inputs where they divide the input, else the divisor nearest √in."""
    if n_in % 64 == 0 and n_in > 64:
        return n_in // 64
    return min((d for d in range(1, n_in + 1) if n_in % d == 0), key=lambda d: abs(d - math.sqrt(n_in)))


@register_method("falcon", FalconConfig, family="factorization")
def _falcon(model, config: FalconConfig, calibration, progress) -> list[dict]:
    """FALCON-style depthwise × pointwise factorization, per matrix or of stacks sharing the pointwise factor."""
    targets = _selected(model, config)
    stacks = ([[rm.path] for rm in _flat(targets)] if config.mode == "separated"
              else [list(grid.flat) for grid in _stack_grids(targets, config.mode, "FALCON")])
    plan = []
    for paths in stacks:
        lins = _same_shape(model, paths, "FALCON", config.mode)
        groups = config.groups or default_groups(lins[0].in_features)
        depth = FalconLinear.plan(lins[0].out_features, lins[0].in_features, groups, config.ratio, config.rank,
                                  n_stacked=len(lins))
        plan.append((paths, lambda paths=paths, lins=lins, g=groups, t=depth: dict(zip(
            paths, falcon_linears(lins, g, t, **config.fit_options())[1]))))
    return _apply(model, targets, plan, progress, f"falcon {config.mode}")


# ----------------------------------------------------------------------------------- convenience
def factorize(model: nn.Module, method: str, roles: list[str] | str | None = None, *, calibration: list[dict] | None = None,
              seq_len: int = 128, progress: bool = False, **fields) -> CompressionReport:
    """``compress(model, method_config(method, roles=roles, **fields), calibration)``: a method by
    name with its config fields as keyword arguments (``ratio``, ``rank``, ``mode``, ``layers``, ...)."""
    return compress(model, method_config(method, roles=roles, **fields), calibration, progress=progress, seq_len=seq_len)
