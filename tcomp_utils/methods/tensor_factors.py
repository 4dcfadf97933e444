"""Tensor factorizations of linear layers: Tucker on stacked weights, sums of Kronecker
products, and the FALCON-style depthwise × pointwise form. Each computes in factorized form.

* **Tucker** (tensorly): stack matrices of the same shape along leading modes (Q/K/V of a layer:
  [3, out, in]; one role across layers: [L, out, in]; Q/K/V across layers: [3, L, out, in]) and
  decompose ``T ≈ G ×₁ F₁ … ×ₖ Fₖ ×_out B ×_in C``. Matrix ``(i, j, …)`` is then
  ``W = B · M · Cᵀ`` with ``M = G contracted with rows F₁[i], F₂[j], …`` (r_out × r_in). The core
  G and the factors B, C are stored once (:class:`TuckerCore`); each layer keeps its rows of the
  leading factors. Per token a layer costs ``in·r_in + r_in·r_out + r_out·out`` MACs.
* **Kronecker**: ``W ≈ Σᵢ Aᵢ ⊗ Bᵢ`` (Aᵢ: m₁ × n₁, Bᵢ: m₂ × n₂) from the nearest-Kronecker-product
  construction (Van Loan): the rank-r SVD of the rearranged matrix, which is optimal in the
  Frobenius norm; optional gradient refinement on calibration inputs.
* **FALCON-style**: split the input into g blocks; each block's columns ``W_c`` (out × in/g) ≈
  ``P_c D_c`` with a depthwise factor D_c (t × in/g) and a pointwise factor P_c (out × t)
  (t = 1 is FALCON's depthwise-then-pointwise convolution; LoBERT fits it by SGD, the per-block
  truncated SVD used here is its Frobenius optimum).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import tensorly as tl
import torch
from tensorly.decomposition import tucker
from torch import nn

from ..budget import BudgetError, CompressedLinear, Footprint, as_parameter, check_ratio, dense_bytes
from ..registry import register_module
from .lowrank import truncated_svd


# ---------------------------------------------------------------------------------------- Tucker
@register_module
class TuckerCore(nn.Module):
    """The shared part of a Tucker-factorized stack: core G (r₁, …, r_k, r_out, r_in), output
    factor B (out × r_out) and input factor C (in × r_in)."""

    def __init__(self, core: torch.Tensor, out_factor: torch.Tensor, in_factor: torch.Tensor):
        super().__init__()
        self.core = as_parameter(core)
        self.out_factor = as_parameter(out_factor)
        self.in_factor = as_parameter(in_factor)

    def tcomp_footprint(self) -> Footprint:
        ts = (self.core, self.out_factor, self.in_factor)
        return Footprint(sum(t.numel() for t in ts), sum(dense_bytes(t) for t in ts), 0)

    def tcomp_config(self) -> dict:
        return {"core": list(self.core.shape), "out": list(self.out_factor.shape), "in": list(self.in_factor.shape)}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: None = None) -> "TuckerCore":
        return cls(torch.empty(config["core"]), torch.empty(config["out"]), torch.empty(config["in"]))


@register_module
class TuckerLinear(CompressedLinear):
    """One matrix of a Tucker-factorized stack: ``y = B (M (Cᵀ x)) + b`` with ``M`` the shared core
    contracted with this matrix's rows of the leading factors (``coeffs``)."""

    def __init__(self, coeffs: list[torch.Tensor], shared: TuckerCore, bias: torch.Tensor | None = None):
        super().__init__()
        self.coeffs = nn.ParameterList([as_parameter(c) for c in coeffs])
        self.shared = shared
        self.bias = as_parameter(bias) if bias is not None else None
        self.out_features, self.in_features = shared.out_factor.shape[0], shared.in_factor.shape[0]

    @property
    def rank_label(self) -> str:
        return "x".join(str(d) for d in self.shared.core.shape)

    def middle(self) -> torch.Tensor:
        m = self.shared.core
        for c in self.coeffs:  # contract the leading modes one by one
            m = torch.tensordot(c, m, dims=([0], [0]))
        return m  # (r_out, r_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.shared.in_factor
        h = h @ self.middle().T
        return nn.functional.linear(h, self.shared.out_factor, self.bias)

    def weight_matrix(self) -> torch.Tensor:
        return self.shared.out_factor @ self.middle() @ self.shared.in_factor.T

    def tcomp_footprint(self) -> Footprint:
        own = [*self.coeffs, *([self.bias] if self.bias is not None else [])]
        r_out, r_in = self.shared.core.shape[-2:]
        return Footprint(sum(t.numel() for t in own), sum(dense_bytes(t) for t in own),
                         self.in_features * r_in + r_in * r_out + r_out * self.out_features)

    def tcomp_config(self) -> dict:
        return {"coeffs": [c.numel() for c in self.coeffs], "bias": self.bias is not None}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: TuckerCore) -> "TuckerLinear":
        core = shared
        bias = torch.empty(core.out_factor.shape[0]) if config["bias"] else None
        return cls([torch.empty(n) for n in config["coeffs"]], core, bias)


def tucker_params(lead: tuple[int, ...], lead_ranks: tuple[int, ...], n_out: int, n_in: int, r_out: int, r_in: int) -> int:
    """Stored numbers of a Tucker stack (biases excluded)."""
    return math.prod(lead_ranks) * r_out * r_in + sum(d * r for d, r in zip(lead, lead_ranks)) + n_out * r_out + n_in * r_in


def tucker_ranks_for_ratio(lead: tuple[int, ...], n_out: int, n_in: int, ratio: float,
                           lead_ranks: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Ranks ``lead_ranks + (r, r')`` for a ratio of stored numbers: the leading ranks are kept
    (default: the leading sizes) and the largest r_out, r_in in proportion to out and in are
    chosen such that the stack stores at most ``1/ratio`` of ``prod(lead)·out·in`` numbers."""
    check_ratio(ratio)
    lead_ranks = tuple(lead_ranks or lead)
    budget = math.prod(lead) * n_out * n_in / ratio
    best = None
    for r_in in range(1, n_in):
        r_out = max(1, round(r_in * n_out / n_in))
        if r_out >= n_out or tucker_params(lead, lead_ranks, n_out, n_in, r_out, r_in) > budget:
            break
        best = (r_out, r_in)
    if best is None:
        raise BudgetError(f"ratio {ratio} is too high for a Tucker stack {list(lead) + [n_out, n_in]} with leading "
                          f"ranks {list(lead_ranks)}: even ranks 1 exceed the budget")
    return lead_ranks + best


def check_tucker_ranks(lead: tuple[int, ...], n_out: int, n_in: int, ranks: tuple[int, ...]) -> None:
    """Ranks of a Tucker stack ``lead + (out, in)``: one per mode, each in [1, size], storing fewer
    numbers than the dense matrices. Raises :class:`BudgetError` naming the bad rank."""
    sizes = list(lead) + [n_out, n_in]
    if len(ranks) != len(sizes):
        raise BudgetError(f"Tucker of a {sizes} stack needs {len(sizes)} ranks, got {list(ranks)}")
    for r, d in zip(ranks, sizes):
        if not 1 <= r <= d:
            raise BudgetError(f"Tucker rank {r} must lie in [1, {d}] for ranks {list(ranks)} of a {sizes} stack")
    if ranks[-2] >= n_out and ranks[-1] >= n_in:
        raise BudgetError(f"Tucker ranks {list(ranks)} keep the full matrix size {n_out} × {n_in}: nothing is compressed")
    if tucker_params(lead, ranks[:-2], n_out, n_in, *ranks[-2:]) >= math.prod(lead) * n_out * n_in:
        raise BudgetError(f"Tucker ranks {list(ranks)} store more numbers than the {math.prod(lead)} dense matrices")


def tucker_linears(grid: np.ndarray, ranks: tuple[int, ...]) -> tuple[TuckerCore, np.ndarray]:
    """Tucker-factorize a grid of ``nn.Linear`` of equal shape (``grid``: object array of shape
    ``lead``) with ``ranks`` (one per leading mode, then r_out, r_in). Returns the shared core and a
    grid of :class:`TuckerLinear` of the same shape."""
    lead = grid.shape
    first = grid.flat[0]
    n_out, n_in = first.out_features, first.in_features
    if any(lin.weight.shape != (n_out, n_in) for lin in grid.flat):
        raise BudgetError("Tucker stacks need matrices of one shape")
    check_tucker_ranks(lead, n_out, n_in, ranks)
    tensor = np.stack([lin.weight.detach().double().numpy() for lin in grid.flat]).reshape(*lead, n_out, n_in)
    tl.set_backend("numpy")
    core, factors = tucker(tensor, rank=list(ranks), init="svd", n_iter_max=20, tol=1e-6, random_state=0)
    dtype = first.weight.dtype
    shared = TuckerCore(torch.from_numpy(core).to(dtype), torch.from_numpy(factors[-2]).to(dtype),
                        torch.from_numpy(factors[-1]).to(dtype))
    out = np.empty(lead, dtype=object)
    for idx in itertools.product(*[range(d) for d in lead]):
        coeffs = [torch.from_numpy(factors[m][i]).to(dtype) for m, i in enumerate(idx)]
        out[idx] = TuckerLinear(coeffs, shared, grid[idx].bias)
    return shared, out


# ------------------------------------------------------------------------------------- Kronecker
@register_module
class KroneckerLinear(CompressedLinear):
    """``y = (Σᵢ Aᵢ ⊗ Bᵢ) x + b`` computed without forming the matrix: with x reshaped to
    (n₁ × n₂), ``Y = Σᵢ Aᵢ X Bᵢᵀ`` (m₁ × m₂), contracting A or B first, whichever is cheaper.
    MACs per token: ``r·min(m₁n₂(n₁ + m₂), m₂n₁(n₂ + m₁))``, or ``in·out`` when that is less (many
    terms, low ratios): then the matrix is formed once, cached like a dense layer's weight (the
    factors stay what is stored) and applied with one matmul."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.a = as_parameter(a)  # (r, m1, n1)
        self.b = as_parameter(b)  # (r, m2, n2)
        self.bias = as_parameter(bias) if bias is not None else None
        r, m1, n1 = self.a.shape
        _, m2, n2 = self.b.shape
        self.rank, self.in_features, self.out_features = r, n1 * n2, m1 * m2
        self._a_first = m1 * n2 * (n1 + m2) <= m2 * n1 * (n2 + m1)
        self.factored_macs = r * min(m1 * n2 * (n1 + m2), m2 * n1 * (n2 + m1))  # per token
        self.runs_dense = self.factored_macs > self.in_features * self.out_features

    @staticmethod
    def plan(n_out: int, n_in: int, ratio: float | None = None, rank: int | None = None,
             shape: tuple[int, int] | None = None) -> tuple[int, int, int]:
        """``(m₁, n₁, r)`` for an out × in matrix: factor sizes (``shape`` or :func:`kronecker_shape`)
        and ``rank`` terms, or the most terms within ``ratio``:
        ``r = floor(out·in / (ratio·(m₁n₁ + m₂n₂)))``. Raises :class:`BudgetError` when impossible."""
        if (rank is None) == (ratio is None):
            raise BudgetError("give exactly one of ratio= or rank=")
        m1, n1 = shape or kronecker_shape(n_out, n_in)
        if n_out % m1 or n_in % n1:
            raise BudgetError(f"Kronecker factor {m1} × {n1} does not divide the {n_out} × {n_in} matrix")
        m2, n2 = n_out // m1, n_in // n1
        r = rank if rank is not None else math.floor(n_out * n_in / (check_ratio(ratio) * (m1 * n1 + m2 * n2)))
        if not 1 <= r < min(m1 * n1, m2 * n2):
            raise BudgetError(f"Kronecker rank {r} (from {'rank' if rank is not None else f'ratio {ratio}'}) must lie "
                              f"in [1, {min(m1 * n1, m2 * n2)}) for factors {m1}×{n1} and {m2}×{n2}")
        return m1, n1, r

    @classmethod
    def from_linear(cls, linear: nn.Linear, ratio: float | None = None, rank: int | None = None,
                    shape: tuple[int, int] | None = None, calibration: torch.Tensor | None = None,
                    refine_steps: int = 0, lr: float = 1e-3) -> "KroneckerLinear":
        """The nearest sum of Kronecker products to an ``nn.Linear`` within the budget (see
        :meth:`plan`). With ``refine_steps`` and ``calibration`` inputs (tokens × in), Adam then
        minimises the output error ‖(W − Ŵ)Xᵀ‖², which the Frobenius-optimal fit does not."""
        m1, n1, rank = cls.plan(linear.out_features, linear.in_features, ratio, rank, shape)
        a, b = nearest_kronecker(linear.weight, m1, n1, rank)
        module = cls(a, b, linear.bias)
        if refine_steps and calibration is not None:
            target = (calibration @ linear.weight.detach().T).detach()
            opt = torch.optim.Adam([module.a, module.b], lr=lr)
            for _ in range(refine_steps):
                with torch.enable_grad():
                    loss = (module(calibration) - (module.bias if module.bias is not None else 0)
                            - target).pow(2).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        return module

    @property
    def rank_label(self) -> str:
        return str(self.rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.runs_dense:  # the factored path costs more than the dense matmul: W built once, cached
            return nn.functional.linear(x, self.cached_weight([self.a, self.b]), self.bias)
        r, m1, n1 = self.a.shape
        _, m2, n2 = self.b.shape
        xs = x.reshape(-1, n1, n2)
        n = xs.shape[0]
        # each stage is one large GEMM over all tokens and terms (not N·r small ones)
        if self._a_first:  # U_i = A_i X (m1 × n2 per token); Y = [U_1 … U_r] [B_1 … B_r]ᵀ
            u = self.a.reshape(r * m1, n1) @ xs.permute(1, 0, 2).reshape(n1, n * n2)
            u = u.reshape(r, m1, n, n2).permute(2, 1, 0, 3).reshape(n * m1, r * n2)
            y = u @ self.b.permute(0, 2, 1).reshape(r * n2, m2)
        else:  # T_i = X B_iᵀ (n1 × m2 per token); Y = [A_1 … A_r] [T_1; …; T_r]
            t = xs.reshape(n * n1, n2) @ self.b.reshape(r * m2, n2).T
            t = t.reshape(n, n1, r, m2).permute(2, 1, 0, 3).reshape(r * n1, n * m2)
            y = (self.a.permute(1, 0, 2).reshape(m1, r * n1) @ t).reshape(m1, n, m2).permute(1, 0, 2)
        y = y.reshape(*x.shape[:-1], m1 * m2)
        return y + self.bias if self.bias is not None else y

    def weight_matrix(self) -> torch.Tensor:
        """Σ_i A_i ⊗ B_i (out × in)."""
        r, m1, n1 = self.a.shape
        _, m2, n2 = self.b.shape
        return torch.einsum("rij,rkl->ikjl", self.a, self.b).reshape(m1 * m2, n1 * n2)

    def tcomp_footprint(self) -> Footprint:
        own = [self.a, self.b, *([self.bias] if self.bias is not None else [])]
        return Footprint(sum(t.numel() for t in own), sum(dense_bytes(t) for t in own),
                         min(self.factored_macs, self.in_features * self.out_features))

    def tcomp_config(self) -> dict:
        return {"a": list(self.a.shape), "b": list(self.b.shape), "bias": self.bias is not None}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: None = None) -> "KroneckerLinear":
        bias = torch.empty(config["a"][1] * config["b"][1]) if config["bias"] else None
        return cls(torch.empty(config["a"]), torch.empty(config["b"]), bias)


def kronecker_shape(n_out: int, n_in: int) -> tuple[int, int]:
    """Factor sizes (m₁, n₁) with m₁ | out and n₁ | in that minimise the stored numbers per term,
    ``m₁n₁ + (out/m₁)(in/n₁)``; ties go to the most balanced sizes, then to factors closest to
    square (a 2 × 384 ⊗ 768 × 1 split stores as little as 32 × 24 ⊗ 48 × 16 but keeps no 2-D structure)."""
    def key(m1: int, n1: int) -> tuple:
        m2, n2 = n_out // m1, n_in // n1
        skew = abs(math.log(m1 / n1)) + abs(math.log(m2 / n2))
        return m1 * n1 + m2 * n2, abs(m1 * n1 - m2 * n2), round(skew, 9), abs(math.log(m1 / n1) - math.log(m2 / n2)), m1, n1
    divisors = lambda n: [d for d in range(1, n + 1) if n % d == 0]  # noqa: E731
    candidates = [(m1, n1) for m1 in divisors(n_out) for n1 in divisors(n_in) if (m1, n1) not in ((1, 1), (n_out, n_in))]
    return min(candidates, key=lambda c: key(*c))


def nearest_kronecker(weight: torch.Tensor, m1: int, n1: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (r, m₁, n₁), (r, m₂, n₂) of the best Frobenius approximation of ``weight`` by a sum
    of ``rank`` Kronecker products: rank-r SVD of the rearranged (m₁n₁ × m₂n₂) matrix."""
    n_out, n_in = weight.shape
    if n_out % m1 or n_in % n1:
        raise BudgetError(f"Kronecker factor {m1} × {n1} does not divide the {n_out} × {n_in} matrix")
    m2, n2 = n_out // m1, n_in // n1
    full = min(m1 * n1, m2 * n2)
    if not 1 <= rank < full:
        raise BudgetError(f"Kronecker rank {rank} must lie in [1, {full}) for factors {m1}×{n1} and {m2}×{n2}")
    rearranged = weight.detach().double().reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)
    left, right = truncated_svd(rearranged, rank)
    return (left.T.reshape(rank, m1, n1).to(weight.dtype), right.reshape(rank, m2, n2).to(weight.dtype))


# ---------------------------------------------------------------------------------------- FALCON
@register_module
class FalconLinear(CompressedLinear):
    """Depthwise × pointwise: input split into ``groups`` blocks of ``in/groups``; depthwise
    factor D (groups, t, in/groups) maps each block to t channels, pointwise P (out, groups·t)
    mixes them. Stored numbers and MACs per token: ``t·(in + out·groups)``."""

    def __init__(self, depthwise: torch.Tensor, pointwise: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.depthwise = as_parameter(depthwise)
        self.pointwise = as_parameter(pointwise)
        self.bias = as_parameter(bias) if bias is not None else None
        self.groups, self.depth, block = self.depthwise.shape
        self.in_features, self.out_features = self.groups * block, self.pointwise.shape[0]

    @staticmethod
    def plan(n_out: int, n_in: int, groups: int, ratio: float | None = None, depth: int | None = None) -> int:
        """The depth t for ``groups`` input blocks: ``depth``, or the largest with
        ``t·(in + out·g) ≤ out·in / ratio``. Raises :class:`BudgetError` when impossible."""
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or n_in % groups:
            raise BudgetError(f"groups={groups!r} must be a positive divisor of the input size {n_in}")
        if (depth is None) == (ratio is None):
            raise BudgetError("give exactly one of depth= (rank=) or ratio=")
        block = n_in // groups
        t = depth if depth is not None else math.floor(n_out * n_in / (check_ratio(ratio) * (n_in + n_out * groups)))
        if not 1 <= t < min(block, n_out):
            raise BudgetError(f"FALCON depth {t} must lie in [1, {min(block, n_out)}) for {groups} blocks of "
                              f"{block} inputs and {n_out} outputs (the budget is too small or too large)")
        return t

    @classmethod
    def from_linear(cls, linear: nn.Linear, groups: int, depth: int | None = None,
                    ratio: float | None = None) -> "FalconLinear":
        """Fitted block by block: the rank-t SVD of each input block's columns (see :meth:`plan`)."""
        depth = cls.plan(linear.out_features, linear.in_features, groups, ratio, depth)
        block = linear.in_features // groups
        w = linear.weight.detach()
        ps, ds = [], []
        for g in range(groups):
            left, right = truncated_svd(w[:, g * block:(g + 1) * block], depth)
            ps.append(left)
            ds.append(right)
        return cls(torch.stack(ds), torch.cat(ps, dim=1), linear.bias)

    @property
    def rank_label(self) -> str:
        return str(self.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.reshape(*x.shape[:-1], self.groups, -1)
        z = torch.einsum("...gs,gts->...gt", xs, self.depthwise).reshape(*x.shape[:-1], -1)
        return nn.functional.linear(z, self.pointwise, self.bias)

    def weight_matrix(self) -> torch.Tensor:
        p = self.pointwise.reshape(self.out_features, self.groups, self.depth)
        return torch.einsum("ogt,gts->ogs", p, self.depthwise).reshape(self.out_features, self.in_features)

    def tcomp_footprint(self) -> Footprint:
        own = [self.depthwise, self.pointwise, *([self.bias] if self.bias is not None else [])]
        return Footprint(sum(t.numel() for t in own), sum(dense_bytes(t) for t in own),
                         self.depth * (self.in_features + self.out_features * self.groups))

    def tcomp_config(self) -> dict:
        return {"depthwise": list(self.depthwise.shape), "pointwise": list(self.pointwise.shape),
                "bias": self.bias is not None}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: None = None) -> "FalconLinear":
        bias = torch.empty(config["pointwise"][0]) if config["bias"] else None
        return cls(torch.empty(config["depthwise"]), torch.empty(config["pointwise"]), bias)
