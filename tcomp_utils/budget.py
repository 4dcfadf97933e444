"""One budget axis: parameters, stored bytes and MACs per token, for dense and compressed models.

Conventions (state them with every table):

* **parameters**: stored numbers of the module (a tensor shared by two modules, e.g. tied
  input/output embeddings, is counted once, at its first occurrence);
* **bytes**: what storing them takes: ``numel × bit width / 8`` per tensor, plus whatever a
  compressed module declares (scales, zero points, indices);
* **MACs per token**: multiply-accumulates of the matrix products for one token of a sequence
  of ``seq_len`` tokens. A linear layer costs ``in × out``; attention adds, per query head of
  dimension d, ``2·s·d`` (scores Q·Kᵀ and the weighted sum of values, over all s keys: the
  s² term, counted in full even for causal masks); a convolution costs ``in/groups × kernel
  size × out`` per output position, one position per token (a ViT's patch embedding: kernel =
  stride = patch, one position per patch token, and the class token, which has none, counts one);
  embedding look-ups, norms, activations and added tables (positions, class tokens) count 0;
  modules applied once per sequence (pooler, classifier) count ``in × out / s``. A module
  holding weights of another kind is counted as 0 with a warning naming it.

A compressed module reports its own counts by implementing the :class:`CompressedModule`
protocol (``tcomp_footprint()``); the counter then does not look inside it, except for
sub-modules that are compressed modules themselves (e.g. a factor shared by several layers),
which are counted once, at their first path, with no layer.
"""
from __future__ import annotations

import math
import warnings

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize

from . import adapters
from .contract import CompressedModule, Footprint, linear_shape  # noqa: F401 (re-exported: defined there)


class BudgetError(ValueError):
    """A budget that cannot be met (rank < 1, rank at or above full rank, ratio <= 1)."""


def check_ratio(ratio: float) -> float:
    """A compression ratio of stored numbers (before / after) must be a finite number > 1."""
    if isinstance(ratio, bool) or not (isinstance(ratio, (int, float)) and ratio > 1 and math.isfinite(ratio)):
        raise BudgetError(f"compression ratio must be a number > 1 (stored numbers before / after), got {ratio!r}")
    return float(ratio)


def as_parameter(t: torch.Tensor) -> nn.Parameter:
    """A contiguous copy as a parameter (so a saved and reloaded module computes bit-identically)."""
    return nn.Parameter(t.detach().clone(memory_format=torch.contiguous_format))


class CompressedLinear(nn.Module):
    """Base of the drop-in replacements for ``nn.Linear``. They hold no dense ``weight``;
    ``weight = None`` says so to library code that reads ``layer.weight`` (HF T5 checks
    ``wo.weight.dtype`` in every forward) instead of failing on a missing attribute."""

    weight = None
    _cache: tuple[tuple, torch.Tensor] | None = None

    def weight_matrix(self) -> torch.Tensor:
        """The dense weight (out × in) the stored tensors represent."""
        raise NotImplementedError

    def cached_weight(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """:meth:`weight_matrix` built once and reused until one of ``tensors`` (those it is built
        from) changes in place, is replaced or moves; rebuilt on every call while one of them needs
        a gradient, so that training reaches the stored tensors."""
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            self._cache = None
            return self.weight_matrix()
        key = tuple((id(t), t._version, t.device, t.dtype) for t in tensors)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.weight_matrix())
        return self._cache[1]


def compressed_footprint(module: "CompressedModule") -> Footprint:
    """A compressed module's counts as the budget counter adds them up inside a model: its own
    :meth:`tcomp_footprint` plus those of the compressed modules it holds (each counted once),
    except a factor it shares with other layers (its ``shared``), which belongs to all of them."""
    total, seen = module.tcomp_footprint(), {id(module), id(getattr(module, "shared", None))}
    for child in module.modules():
        if id(child) not in seen and isinstance(child, CompressedModule):
            seen.add(id(child))
            total = total + child.tcomp_footprint()
    return total


def dense_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _own_tensors(module: nn.Module, seen: set[int]) -> tuple[int, int]:
    """Parameters and bytes of ``module``'s own (non-recursive) parameters not seen before."""
    params = nbytes = 0
    for p in module.parameters(recurse=False):
        if id(p) in seen:  # shared (tied) tensors are one Parameter object
            continue
        seen.add(id(p))
        params += p.numel()
        nbytes += dense_bytes(p)
    return params, nbytes


def _conv_macs(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> int:
    """MACs of one output position of a convolution: ``in/groups × kernel size × out``."""
    return conv.in_channels // conv.groups * math.prod(conv.kernel_size) * conv.out_channels


def _zero_macs(module: nn.Module) -> bool:
    """Whether ``module``'s own weights do no matrix product: a look-up table, or vectors (norm
    gains, biases, a class token) and position tables, applied elementwise or added."""
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return True
    if isinstance(module, parametrize.ParametrizationList):  # a parametrized tensor's original: its
        return True                                             # layer counts the MACs (QAT's fake quantization)
    return all(p.squeeze().ndim <= 1 or "position" in name for name, p in module.named_parameters(recurse=False))


def module_table(model: nn.Module, seq_len: int = 128) -> pd.DataFrame:
    """Per-module footprint of ``model`` at sequence length ``seq_len`` (tokens).

    One row per leaf that holds parameters or compute: linear layers, convolutions, embeddings,
    norms, compressed modules, and one ``attention core`` row per attention block for the s² MACs.
    Columns: ``path``, ``kind``, ``role``, ``stack``, ``layer``, ``params``, ``bytes``,
    ``macs_per_token``. The column sums are the model's totals (see :func:`footprint`).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be a positive number of tokens, got {seq_len}")
    try:
        adapter = adapters.get_adapter(model)
        roles = {} if adapter.needs_prepare() else adapters.role_index(model)  # fused: no per-role rows
    except adapters.UnsupportedArchitectureError:
        adapter, roles = None, {}
    per_sequence = adapter.per_sequence if adapter else ()
    seen: set[int] = set()
    rows = []

    def add(path: str, kind: str, params: int, nbytes: int, macs: float, shared: bool = False) -> None:
        rm = roles.get(path)
        if rm is None:  # a sub-module of a role module (e.g. inside a compressed one)
            rm = next((r for p, r in roles.items() if path.startswith(p + ".")), None)
        rows.append(dict(path=path, kind=kind, role=rm.role if rm else None,
                         stack=rm.stack if rm else None, layer=rm.layer if rm and not shared else None,
                         params=params, bytes=nbytes, macs_per_token=macs))

    # a module reachable by several paths (a factor shared across layers) is counted once
    paths_of: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        paths_of[id(m)] = paths_of.get(id(m), 0) + 1
    visited: set[int] = set()
    unknown: list[str] = []  # modules with weights of a kind not counted (0 MACs, warned)
    guessed: list[str] = []  # convolutions whose output positions per token are not known (warned)

    def visit(module: nn.Module, path: str) -> None:
        once = any(part in per_sequence for part in path.split("."))
        if isinstance(module, CompressedModule):
            if id(module) in visited:
                return
            visited.add(id(module))
            fp = module.tcomp_footprint()  # covers its tensors except compressed sub-modules
            seen.update(id(p) for p in module.parameters())
            add(path, type(module).__name__, fp.params, fp.bytes, fp.macs / seq_len if once else fp.macs,
                shared=paths_of.get(id(module), 1) > 1)
            for name, child in module.named_children():
                if isinstance(child, CompressedModule):
                    visit(child, f"{path}.{name}")
            return
        params, nbytes = _own_tensors(module, seen)
        shape = linear_shape(module)
        if shape is not None:
            macs = shape[0] * shape[1]
            add(path, "Linear", params, nbytes, macs / seq_len if once else macs)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            macs = _conv_macs(module)
            if module.stride not in (module.kernel_size, (1,) * len(module.stride)):  # not patches nor per token
                guessed.append(f"'{path}' ({type(module).__name__}, kernel {module.kernel_size}, "
                               f"stride {module.stride})")
            add(path, type(module).__name__, params, nbytes, macs / seq_len if once else macs)
        elif params:
            if not _zero_macs(module):
                unknown.append(f"'{path}' ({type(module).__name__})")
            add(path, type(module).__name__, params, nbytes, 0)
        for name, child in module.named_children():
            visit(child, f"{path}.{name}" if path else name)

    visit(model, "")
    if unknown:
        warnings.warn(f"the MAC counter does not know how to count {', '.join(unknown)}: counted as 0 MACs per "
                      "token (their parameters and bytes are counted). It counts linear layers, convolutions, "
                      "look-up tables, norms and added tables; a module of another kind can report its own counts "
                      "with tcomp_footprint() (see tcomp_utils.contract.CompressedModule)", stacklevel=2)
    if guessed:
        warnings.warn(f"MACs of {', '.join(guessed)} counted for one output position per token: with a stride "
                      "neither 1 nor the kernel's, its positions per token are not known", stacklevel=2)
    if adapter is not None:
        heads = adapter.heads(model.config)
        stacks = adapters.layer_stacks(model)
        for stack_name, stack in adapter.stacks.items():
            for q_role in stack.attention_queries:
                if roles:  # the query projections say how many heads are left (after pruning)
                    found = [(rm.path.rsplit(".", 1)[0], rm.layer, rm.module.out_features // heads.head_dim)
                             for rm in adapters.find_modules(model, q_role) if rm.stack == stack_name]
                else:  # fused projections not split yet: the heads the config declares
                    stack_path, blocks = stacks[stack_name]
                    found = [(f"{stack_path}.{i}", i, heads.n_heads) for i in range(len(blocks))]
                for path, layer, n_heads in found:
                    rows.append(dict(path=path + ":core", kind="attention core",
                                     role="attention" if q_role == "query" else "cross_attention",
                                     stack=stack_name, layer=layer, params=0, bytes=0,
                                     macs_per_token=2 * seq_len * n_heads * heads.head_dim))
    table = pd.DataFrame(rows, columns=["path", "kind", "role", "stack", "layer", "params", "bytes", "macs_per_token"])
    table["layer"] = table["layer"].astype("Int64")
    return table


def footprint(model: nn.Module, seq_len: int = 128) -> Footprint:
    """Total parameters, stored bytes and MACs per token of ``model`` at ``seq_len`` tokens."""
    t = module_table(model, seq_len)
    return Footprint(int(t["params"].sum()), int(t["bytes"].sum()), float(t["macs_per_token"].sum()))


def block_macs(model: nn.Module, seq_len: int = 128) -> float:
    """MACs per token of the transformer blocks alone (the seeds' count for a pruning budget): the
    rows of :func:`module_table` that belong to a layer (its role modules and attention cores), so
    not the embeddings, a pooler, a classifier or an LM head."""
    t = module_table(model, seq_len)
    return float(t.loc[t["layer"].notna(), "macs_per_token"].sum())


def summarize(table: pd.DataFrame, by: str = "role") -> pd.DataFrame:
    """Totals of a :func:`module_table` grouped by ``by`` (``role``, ``kind``, ``layer``...), with
    each group's share of the whole in percent. Rows without a role are grouped as ``other``."""
    t = table.copy()
    t[by] = t[by].astype(object).where(t[by].notna(), "other")
    g = t.groupby(by, sort=False)[["params", "bytes", "macs_per_token"]].sum()
    for col in ("params", "bytes", "macs_per_token"):
        total = g[col].sum()
        g[f"{col}_%"] = 100 * g[col] / total if total else 0.0
    return g.reset_index()
