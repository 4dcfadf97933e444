"""Which modules a method compresses, putting the compressed ones in place, and the report row of
each: owned by the core, so that a method's handler only builds the new module.

As torchao's ``quantize_(model, config, filter_fn)`` walks the model once and hands each module
to the handler, every handler here asks :func:`targets` for the modules of its roles and layers
(checked: the module types it takes, finite weights, a clear error for an unknown role), builds a
compressed module for each (alone or in groups, :func:`stacks_of`), and hands it to
:func:`replace`, which puts it at every path that reaches the old module (a table or a factor
reachable by several names is replaced everywhere). :func:`module_row` is the report row of one
replacement: shape, parameters and bytes before/after and the relative weight error
``‖W − Ŵ‖_F / ‖W‖_F`` (:func:`relative_error`), computed here for every method.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from . import adapters, budget
from .contract import CompressedModule, linear_shape

LINEAR_OR_EMBEDDING = "an nn.Linear or nn.Embedding"
MEASURED = object()  # rel_error=MEASURED: module_row measures the error and puts it in that column


def exactly_linear_or_embedding(module: nn.Module) -> bool:
    """The default module test of :func:`targets`: a plain (uncompressed) ``nn.Linear`` or ``nn.Embedding``."""
    return type(module) in (nn.Linear, nn.Embedding)


def check_finite(found: list[adapters.RoleModule]) -> None:
    """Every targeted module's weights must be finite (NaN or inf would poison the result)."""
    for rm in found:
        for name, p in rm.module.named_parameters():
            if not torch.isfinite(p).all():
                raise ValueError(f"{rm.path}.{name} holds NaN or inf values: nothing was changed")


def targets(model: nn.Module, roles: str | list[str] | tuple[str, ...], layers: list[int] | None = None, *,
            accept: Callable[[nn.Module], bool] = exactly_linear_or_embedding, wants: str = LINEAR_OR_EMBEDDING,
            action: str = "compress", extra: tuple[adapters.RoleModule, ...] = (), unique: bool = False,
            finite: bool = True) -> list[adapters.RoleModule]:
    """The modules of ``roles`` (a role, a group such as ``"ffn"``, or a list) in ``layers`` (None:
    all), in role then layer order, followed by ``extra`` (e.g. an LM head), checked before anything
    changes: each must pass ``accept`` (else a ``TypeError`` saying it is not ``wants``), at least
    one must be found, and (``finite``) their weights must be finite. ``unique``: a module reached
    through several roles is listed once. An unknown role raises
    :class:`tcomp_utils.adapters.UnknownRoleError` naming it and the roles allowed."""
    found, seen = [], set()
    for role in adapters.expand_roles(roles):
        for rm in adapters.find_modules(model, role, layers):
            if unique and id(rm.module) in seen:
                continue
            seen.add(id(rm.module))
            found.append(rm)
    found += list(extra)
    for rm in found:
        if not accept(rm.module):
            raise TypeError(f"{rm.path} ({rm.role}) is a {type(rm.module).__name__}, not {wants}: it is already "
                            f"compressed or cannot be compressed this way")
    if not found:
        raise ValueError(f"no module to {action} for roles {roles} and layers {layers}")
    if finite:
        check_finite(found)
    return found


def by_role(found: list[adapters.RoleModule], roles: list[str]) -> dict[str, list[adapters.RoleModule]]:
    """``found`` grouped by role, one (possibly empty) list for each of ``roles``, in that order."""
    return {role: [rm for rm in found if rm.role == role] for role in roles}


def stacks_of(found: list[adapters.RoleModule], mode: str) -> list[list[adapters.RoleModule]]:
    """Groups compressed together: each module alone (``separated``), or each role of each layer
    stack across its layers (``concatenated``; an embedding table is always alone)."""
    if mode == "separated":
        return [[rm] for rm in found]
    groups: dict[tuple, list] = {}
    for rm in found:
        groups.setdefault((rm.role, rm.stack) if rm.layer is not None else (rm.path,), []).append(rm)
    for group in groups.values():
        if len({tuple(rm.module.weight.shape) for rm in group}) > 1:
            raise budget.BudgetError(f"concatenated needs matrices of one shape; {[rm.path for rm in group]} differ")
    return list(groups.values())


def replace(model: nn.Module, target: str | adapters.RoleModule | nn.Module, new: nn.Module, *,
            tied_weights: bool = False) -> list[str]:
    """Put ``new`` at every path of ``model`` that reaches the module ``target`` names (a dotted
    path, a :class:`~tcomp_utils.adapters.RoleModule`, or the module itself): a module reachable
    by several names (T5's shared token table) is replaced at all of them. ``tied_weights``: also
    every ``nn.Embedding`` holding the very same ``weight`` tensor (token tables tied to one
    table; a tied output head, an ``nn.Linear``, is left alone). Returns the paths replaced."""
    old = (model.get_submodule(target) if isinstance(target, str)
           else target.module if isinstance(target, adapters.RoleModule) else target)
    weight = getattr(old, "weight", None) if tied_weights else None
    paths = [p for p, sub in model.named_modules(remove_duplicate=False)
             if sub is old or (weight is not None and isinstance(sub, nn.Embedding) and sub.weight is weight)]
    if not paths:
        raise ValueError(f"{type(old).__name__} {target if isinstance(target, str) else ''} is not a module of the model")
    for path in paths:
        adapters.set_module(model, path, new)
    return paths


def relative_error(weight: torch.Tensor, approx: torch.Tensor) -> float:
    """``‖W − Ŵ‖_F / ‖W‖_F`` of a dense weight and what a compressed module computes instead."""
    return (torch.linalg.matrix_norm(weight - approx) / torch.linalg.matrix_norm(weight)).item()


def _counts(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, CompressedModule):
        fp = budget.compressed_footprint(module)
        return fp.params, fp.bytes
    return (sum(p.numel() for p in module.parameters()), sum(budget.dense_bytes(t) for t in module.parameters())
            + sum(budget.dense_bytes(t) for t in module.buffers()))


def module_row(rm: adapters.RoleModule, old: nn.Module, new: nn.Module, sharing: int = 1, *,
               weight: torch.Tensor | None = None, approx: torch.Tensor | None = None, **extra: Any) -> dict:
    """The report row of ``old`` replaced by ``new``: shape, parameters and bytes before/after (a
    factor ``new.shared`` used by ``sharing`` modules is spread over them), the relative weight
    error ``rel_error`` and ``extra`` columns. ``rel_error`` is :func:`relative_error` of
    ``weight`` (default: ``old.weight``) and ``approx`` (default: ``new.weight_matrix()``), unless
    ``extra`` gives it as a number (a method that measures its error otherwise). The error column
    comes right after the sizes, or where ``extra`` places ``rel_error=MEASURED``."""
    params_before, bytes_before = _counts(old)
    params_after, bytes_after = _counts(new)
    shared = getattr(new, "shared", None)
    if isinstance(shared, CompressedModule):
        fp = shared.tcomp_footprint()
        params_after, bytes_after = params_after + fp.params / sharing, bytes_after + fp.bytes / sharing
    n_in, n_out = linear_shape(old) or (getattr(old, "embedding_dim", None), getattr(old, "num_embeddings", None))
    if extra.get("rel_error", MEASURED) is MEASURED:
        error = relative_error(old.weight.detach() if weight is None else weight,
                               new.weight_matrix().detach() if approx is None else approx)
        extra = extra | {"rel_error": error} if "rel_error" in extra else {"rel_error": error, **extra}
    return dict(path=rm.path, role=rm.role, stack=rm.stack, layer=rm.layer, **{"in": n_in, "out": n_out},
                params_before=params_before, params_after=params_after, bytes_before=bytes_before,
                bytes_after=bytes_after, **extra)
