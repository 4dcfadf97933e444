"""Magnitude pruning stored sparse: the baseline of seed 000's offline-compression table.

The smallest-magnitude weights are removed with ``torch.nn.utils.prune`` (``l1_unstructured``
per module in ``separated`` mode; ``global_unstructured``, one threshold over one role stacked
across all layers, in ``concatenated`` mode), the pruning is made permanent, and each matrix is
stored in **compressed sparse row** form so the savings are real bytes: ``values`` (nnz, float32),
``col_idx`` (nnz; int16 when the row length allows, else int32) and ``row_ptr`` (rows + 1, int32).

**Budget.** The ratio is one of stored numbers, *indices included* (``count_indices=True``): a
matrix of N = rows × cols numbers keeps ``nnz = floor((N/ratio − (rows + 1)) / 2)`` weights, so
``2·nnz + rows + 1 ≤ N / ratio``; summed over the stack in ``concatenated`` mode. With
``count_indices=False`` (the seed's convention) ``nnz = round(N / ratio)`` and only the values are
held to the ratio. Both the stored-number ratio and the byte ratio are reported (int16 indices
cost half a float32 value). The layer's bias is kept as is and, as for the factorizations, not
part of the ratio.

**At run time** :class:`SparseLinear` scatters its values into a dense weight once and caches it
(rebuilt when a tensor changes): a CPU matmul with an unstructured sparse matrix at these
densities is not faster than the dense one, so the MACs per token reported are those of the dense
layer (``in × out``): pruning here saves storage, not compute. :class:`SparseEmbedding` gathers
only the rows looked up.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import prune
from tqdm.auto import tqdm

from ..budget import BudgetError, CompressedLinear, Footprint, as_parameter, check_ratio, dense_bytes
from ..registry import ConfigError, MethodConfig, check_choice, register_method, register_module
from ..targeting import MEASURED, module_row, replace, stacks_of, targets


def kept_weights(rows: int, cols: int, ratio: float, count_indices: bool = True, n_matrices: int = 1) -> int:
    """Weights kept (nnz) in ``n_matrices`` rows × cols matrices at ``ratio`` of stored numbers."""
    check_ratio(ratio)
    total = n_matrices * rows * cols
    nnz = math.floor((total / ratio - n_matrices * (rows + 1)) / 2) if count_indices else round(total / ratio)
    if nnz < 1:
        raise BudgetError(f"pruning: ratio {ratio} leaves {total / ratio:.0f} stored numbers for {n_matrices} × "
                          f"{rows} × {cols} weights, which the row pointers alone ({n_matrices * (rows + 1)}) exceed")
    return nnz


def _index_dtype(cols: int) -> torch.dtype:
    return torch.int16 if cols <= torch.iinfo(torch.int16).max else torch.int32


class _CSR(CompressedLinear):
    """A rows × cols matrix in compressed sparse row form (buffers ``values``, ``col_idx``, ``row_ptr``)."""

    def __init__(self, rows: int, cols: int, nnz: int):
        super().__init__()
        self.n_rows, self.n_cols = rows, cols
        self.values = nn.Parameter(torch.zeros(nnz))
        self.register_buffer("col_idx", torch.zeros(nnz, dtype=_index_dtype(cols)))
        self.register_buffer("row_ptr", torch.zeros(rows + 1, dtype=torch.int32))

    def _fill(self, dense: torch.Tensor) -> None:
        dense = dense.detach().float()
        rows, cols = dense.nonzero(as_tuple=True)  # row-major order
        with torch.no_grad():
            self.values.copy_(dense[rows, cols])
            self.col_idx.copy_(cols.to(self.col_idx.dtype))
            self.row_ptr.copy_(torch.cat([rows.new_zeros(1), torch.bincount(rows, minlength=self.n_rows).cumsum(0)]))

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def dense(self) -> torch.Tensor:
        """The matrix (rows × cols), zeros where pruned (differentiable in ``values``)."""
        counts = (self.row_ptr[1:] - self.row_ptr[:-1]).long()
        row = torch.repeat_interleave(torch.arange(self.n_rows, device=self.values.device), counts)
        flat = row * self.n_cols + self.col_idx.long()
        out = self.values.new_zeros(self.n_rows * self.n_cols)
        return out.index_put((flat,), self.values).reshape(self.n_rows, self.n_cols)

    def _sparse(self) -> list[torch.Tensor]:
        return [self.values, self.col_idx, self.row_ptr]

    @property
    def rank_label(self) -> str:
        return f"density {self.nnz / (self.n_rows * self.n_cols):.3f}"


@register_module
class SparseLinear(_CSR):
    """``y = x Wᵀ + b`` with W (out × in) stored as CSR; the dense W is built once and cached
    (every call while training with gradients, so fine-tuning trains the kept values only)."""

    def __init__(self, out_features: int, in_features: int, nnz: int, bias: bool = True):
        super().__init__(out_features, in_features, nnz)
        self.out_features, self.in_features = out_features, in_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> "SparseLinear":
        layer = cls(weight.shape[0], weight.shape[1], int((weight != 0).sum()), bias is not None)
        layer._fill(weight)
        if bias is not None:
            layer.bias = as_parameter(bias)
        return layer

    def weight_matrix(self) -> torch.Tensor:
        return self.dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.cached_weight(list(self._sparse())), self.bias)

    def tcomp_footprint(self) -> Footprint:
        tensors = [*self._sparse(), *([self.bias] if self.bias is not None else [])]
        return Footprint(sum(t.numel() for t in tensors), sum(dense_bytes(t) for t in tensors),
                         self.in_features * self.out_features)

    def tcomp_config(self) -> dict:
        return {"out": self.out_features, "in": self.in_features, "nnz": self.nnz, "bias": self.bias is not None}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: None = None) -> "SparseLinear":
        return cls(config["out"], config["in"], config["nnz"], config["bias"])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, " \
               f"bias={self.bias is not None}"


@register_module
class SparseEmbedding(_CSR):
    """An embedding table (vocab × dim) stored as CSR; a look-up gathers only the rows it needs."""

    def __init__(self, num_embeddings: int, embedding_dim: int, nnz: int, padding_idx: int | None = None):
        super().__init__(num_embeddings, embedding_dim, nnz)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx

    @classmethod
    def from_dense(cls, table: torch.Tensor, padding_idx: int | None) -> "SparseEmbedding":
        layer = cls(table.shape[0], table.shape[1], int((table != 0).sum()), padding_idx)
        layer._fill(table)
        return layer

    def weight_matrix(self) -> torch.Tensor:
        return self.dense()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        unique, inverse = torch.unique(flat, return_inverse=True)
        starts, ends = self.row_ptr[unique].long(), self.row_ptr[unique + 1].long()
        counts = ends - starts
        which = torch.repeat_interleave(torch.arange(len(unique), device=flat.device), counts)
        pos = torch.arange(int(counts.sum()), device=flat.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts) + torch.repeat_interleave(starts, counts)
        rows = self.values.new_zeros(len(unique), self.embedding_dim)
        rows = rows.index_put((which, self.col_idx[pos].long()), self.values[pos])
        return rows[inverse].reshape(*input_ids.shape, self.embedding_dim)

    def tcomp_footprint(self) -> Footprint:
        tensors = self._sparse()
        return Footprint(sum(t.numel() for t in tensors), sum(dense_bytes(t) for t in tensors), 0)

    def tcomp_config(self) -> dict:
        return {"vocab": self.num_embeddings, "dim": self.embedding_dim, "nnz": self.nnz, "padding_idx": self.padding_idx}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: None = None) -> "SparseEmbedding":
        return cls(config["vocab"], config["dim"], config["nnz"], config["padding_idx"])

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, nnz={self.nnz}"


@dataclass
class PruneConfig(MethodConfig):
    """Magnitude pruning at ``ratio`` of stored numbers (indices counted unless ``count_indices``
    is False), per module (``separated``) or with one threshold per role across layers
    (``concatenated``); stored sparse (CSR)."""

    ratio: float = 10.0
    mode: str = "separated"
    count_indices: bool = True

    MODES: ClassVar[tuple[str, ...]] = ("separated", "concatenated")

    def validate(self) -> None:
        super().validate()
        check_ratio(self.ratio)
        check_choice("mode", self.mode, self.MODES)
        if not isinstance(self.count_indices, bool):
            raise ConfigError(f"count_indices must be True or False, got {self.count_indices!r}")


@register_method("pruning", PruneConfig, family="pruning",
                 description="Magnitude pruning (per module or one threshold per role across layers), stored as CSR")
def _prune(model, config: PruneConfig, calibration, progress) -> list[dict]:
    groups = stacks_of(targets(model, config.target_roles(model), config.layers), config.mode)
    plans = []
    for rms in groups:  # every budget first
        rows, cols = rms[0].module.weight.shape
        plans.append((rms, kept_weights(rows, cols, config.ratio, config.count_indices, len(rms))))
    out = []
    for rms, nnz in tqdm(plans, desc=f"pruning {config.mode} x{config.ratio:g}", disable=not progress):
        copies = [copy.deepcopy(rm.module) for rm in rms]  # prune copies: the model changes only below
        total = sum(c.weight.numel() for c in copies)
        params = [(c, "weight") for c in copies]
        if len(copies) == 1:
            prune.l1_unstructured(copies[0], "weight", amount=total - nnz)
        else:
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=total - nnz)
        for c in copies:
            prune.remove(c, "weight")
        for rm, c in zip(rms, copies):
            m = rm.module
            new = (SparseEmbedding.from_dense(c.weight, m.padding_idx) if isinstance(m, nn.Embedding)
                   else SparseLinear.from_dense(c.weight, m.bias))
            out.append(module_row(rm, m, new, rank=new.rank_label, rel_error=MEASURED, nnz=new.nnz))
            replace(model, rm, new)
    return out
