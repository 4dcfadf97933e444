"""Low-rank linear layers that compute in factorized form, and the truncated-SVD family.

``LowRankLinear`` replaces ``y = W x + b`` (W: out × in) by ``y = U (Vᵀ x) + b`` with U: out × r
and Vᵀ: r × in: two thin matmuls, ``r·(in + out)`` stored numbers and MACs per token instead of
``in·out``. Its right factor may be a :class:`SharedFactor` held by several layers (the stacked,
"concatenated" SVD across layers): stored once, applied in each layer.

Budget → rank: a compression ratio ``cr`` of stored numbers (``in·out / (r·(in+out))``, biases
excluded, for a stack of L matrices ``L·in·out / (r·(in + L·out))``) gives
``r = floor(in·out / (cr·(in+out)))`` (resp. ``floor(L·in·out / (cr·(in + L·out)))``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..budget import BudgetError, CompressedLinear, Footprint, as_parameter, check_ratio, dense_bytes
from ..registry import register_module


def rank_for_ratio(n_in: int, n_out: int, ratio: float, n_stacked: int = 1) -> int:
    """Largest rank whose factors store at most ``1/ratio`` of the numbers of ``n_stacked``
    stacked (out × in) matrices sharing their right factor: ``floor(L·in·out / (ratio·(in + L·out)))``."""
    check_ratio(ratio)
    rank = math.floor(n_stacked * n_in * n_out / (ratio * (n_in + n_stacked * n_out)))
    return check_rank(rank, n_in, n_stacked * n_out, f"ratio {ratio}")


def check_rank(rank: int, n_in: int, n_out: int, what: str = "") -> int:
    """A rank must lie in [1, min(in, out)); at or above ``min`` factorizing saves nothing."""
    full = min(n_in, n_out)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise BudgetError(f"rank {rank!r}{' from ' + what if what else ''} is below 1 for a {n_out} × {n_in} matrix: "
                          f"the budget is too small")
    if rank >= full:
        raise BudgetError(f"rank {rank}{' from ' + what if what else ''} is at or above full rank {full} of a "
                          f"{n_out} × {n_in} matrix: factorizing would store more, not less")
    return rank


@register_module
class SharedFactor(nn.Module):
    """A factor stored once and used by several compressed layers (counted once by the budget)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = as_parameter(weight)

    def tcomp_footprint(self) -> Footprint:
        return Footprint(self.weight.numel(), dense_bytes(self.weight), 0)

    def tcomp_config(self) -> dict:
        return {"shape": list(self.weight.shape)}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: None = None) -> "SharedFactor":
        return cls(torch.empty(config["shape"]))


@register_module
class LowRankLinear(CompressedLinear):
    """``y = U (Vᵀ x) + b``: U (out × r), Vᵀ (r × in), optional bias (out).

    ``right`` is either this layer's own Vᵀ or a :class:`SharedFactor` shared across layers.
    Exposes ``in_features``/``out_features``/``rank`` like ``nn.Linear``.
    """

    def __init__(self, left: torch.Tensor, right: torch.Tensor | SharedFactor, bias: torch.Tensor | None = None):
        super().__init__()
        self.left = as_parameter(left)
        if isinstance(right, SharedFactor):
            self.shared = right
            self.register_parameter("right", None)
        else:
            self.shared = None
            self.right = as_parameter(right)
        self.bias = as_parameter(bias) if bias is not None else None
        self.out_features, self.rank = self.left.shape
        self.in_features = self._right().shape[1]

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, in_scale: torch.Tensor | None = None,
                    out_scale: torch.Tensor | None = None) -> "LowRankLinear":
        """Rank-``rank`` truncated SVD of an ``nn.Linear`` (optionally weighted, see
        :func:`truncated_svd`), bias kept as is."""
        check_rank(rank, linear.in_features, linear.out_features)
        left, right = truncated_svd(linear.weight, rank, in_scale, out_scale)
        return cls(left, right, linear.bias)

    @property
    def rank_label(self) -> str:
        return str(self.rank)

    def _right(self) -> torch.Tensor:
        return self.shared.weight if self.shared is not None else self.right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(nn.functional.linear(x, self._right()), self.left, self.bias)

    def weight_matrix(self) -> torch.Tensor:
        """The dense (out × in) matrix this layer computes with (for error measurement)."""
        return self.left @ self._right()

    def tcomp_footprint(self) -> Footprint:
        own = [t for t in (self.left, self.right, self.bias) if t is not None]
        return Footprint(sum(t.numel() for t in own), sum(dense_bytes(t) for t in own),
                         self.rank * (self.in_features + self.out_features))

    def tcomp_config(self) -> dict:
        return {"in": self.in_features, "out": self.out_features, "rank": self.rank, "bias": self.bias is not None,
                "shared": self.shared is not None}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: SharedFactor | None = None) -> "LowRankLinear":
        right = shared if config["shared"] else torch.empty(config["rank"], config["in"])
        bias = torch.empty(config["out"]) if config["bias"] else None
        return cls(torch.empty(config["out"], config["rank"]), right, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, " \
               f"shared={self.shared is not None}, bias={self.bias is not None}"


@register_module
class LowRankEmbedding(CompressedLinear):
    """An embedding table (vocab × dim) stored as ``A`` (vocab × r) and ``B`` (r × dim): a look-up
    takes the rows of A it needs and multiplies them by B. No MACs are counted (a look-up plus
    ``r·dim`` per token, small next to any layer)."""

    def __init__(self, left: torch.Tensor, right: torch.Tensor, padding_idx: int | None = None):
        super().__init__()
        self.left, self.right = as_parameter(left), as_parameter(right)
        (self.num_embeddings, self.rank), self.embedding_dim = self.left.shape, self.right.shape[1]
        self.padding_idx = padding_idx

    @classmethod
    def from_embedding(cls, table: nn.Embedding, rank: int) -> "LowRankEmbedding":
        """Rank-``rank`` truncated SVD of the table."""
        check_rank(rank, table.embedding_dim, table.num_embeddings)
        left, right = truncated_svd(table.weight, rank)
        return cls(left, right, table.padding_idx)

    @property
    def rank_label(self) -> str:
        return str(self.rank)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(input_ids, self.left) @ self.right

    def weight_matrix(self) -> torch.Tensor:
        return self.left @ self.right

    def tcomp_footprint(self) -> Footprint:
        return Footprint(self.left.numel() + self.right.numel(), dense_bytes(self.left) + dense_bytes(self.right), 0)

    def tcomp_config(self) -> dict:
        return {"vocab": self.num_embeddings, "dim": self.embedding_dim, "rank": self.rank, "padding_idx": self.padding_idx}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: None = None) -> "LowRankEmbedding":
        return cls(torch.empty(config["vocab"], config["rank"]), torch.empty(config["rank"], config["dim"]),
                   config["padding_idx"])

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}"


def truncated_svd(weight: torch.Tensor, rank: int, in_scale: torch.Tensor | None = None,
                  out_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors ``(U·Σ^½, Σ^½·Vᵀ)`` of ``weight`` (out × in), optionally of the
    weighted matrix ``diag(out_scale) W diag(in_scale)`` with the weights undone afterwards.

    Unweighted this minimises ‖W − UVᵀ‖_F (Eckart–Young). ``in_scale`` (per input channel,
    from calibration activations) makes it minimise the error on typical inputs (ASVD);
    ``out_scale`` (per output row, e.g. √Fisher) weights rows by importance (FWSVD).
    """
    w = weight.detach().double()
    if in_scale is not None:
        w = w * in_scale.double()[None, :]
    if out_scale is not None:
        w = w * out_scale.double()[:, None]
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    left, right = u[:, :rank] * root, root[:, None] * vh[:rank]
    if in_scale is not None:
        right = right / in_scale.double()[None, :]
    if out_scale is not None:
        left = left / out_scale.double()[:, None]
    return left.to(weight.dtype), right.to(weight.dtype)


def stacked_svd(linears: list[nn.Linear], rank: int) -> tuple[SharedFactor, list[LowRankLinear]]:
    """Factor L matrices with the same input size together: SVD of ``[W_1; …; W_L]`` (L·out × in)
    gives one shared right factor Vᵀ (r × in) and one left factor U_l (out × r) per matrix."""
    n_in = linears[0].in_features
    if any(lin.in_features != n_in for lin in linears):
        raise BudgetError(f"stacked SVD needs equal input sizes, got {[lin.in_features for lin in linears]}")
    stacked = torch.cat([lin.weight for lin in linears], dim=0)
    check_rank(rank, n_in, stacked.shape[0])
    left, right = truncated_svd(stacked, rank)
    shared = SharedFactor(right)
    outs = [lin.out_features for lin in linears]
    lefts = torch.split(left, outs, dim=0)
    return shared, [LowRankLinear(u, shared, lin.bias) for u, lin in zip(lefts, linears)]
