"""Tensor factorizations of linear layers: Tucker on stacked weights, sums of Kronecker
products, and the FALCON-style depthwise × pointwise form. Each computes in factorized form (a
Tucker layer can instead run its rebuilt matrix, as the seed's Tucker students do: ``dense``).

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
  (t = 1 is FALCON's depthwise-then-pointwise convolution). A stack of matrices of one shape
  (Q/K/V of a layer, one role across layers, or both, as for Tucker) shares one pointwise factor P,
  stored once, each matrix keeping its depthwise factors: ``W_i[:, c] ≈ P_c D_i,c``. The seed
  (LoBERT) shares a full out × in pointwise matrix and keeps a depthwise vector per matrix,
  ``W_i = diag(d_i)·P``, and computes with the rebuilt matrices (its 4-D mode: a matrix per layer
  scaled per Q/K/V); here the shared part is the block form's pointwise factor, with a depth t that
  meets a budget, and the layers compute in factorized form. Fitted per block by truncated SVD of
  the block's columns of all the stacked matrices side by side (the Frobenius optimum), or by SGD
  as the seed fits it.
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
from ..registry import ConfigError, check_choice, check_int, register_module
from .lowrank import SharedFactor, truncated_svd


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
    contracted with this matrix's rows of the leading factors (``coeffs``).

    With ``dense`` (:attr:`runs_dense`) it computes with its matrix rebuilt from the factors, as the
    seed's Tucker students do: ``out·in`` MACs per token, the same stored numbers (the factors); the
    matrix is built once and cached while nothing trains, rebuilt per call while the factors do."""

    def __init__(self, coeffs: list[torch.Tensor], shared: TuckerCore, bias: torch.Tensor | None = None,
                 dense: bool = False):
        super().__init__()
        self.coeffs = nn.ParameterList([as_parameter(c) for c in coeffs])
        self.shared = shared
        self.bias = as_parameter(bias) if bias is not None else None
        self.out_features, self.in_features = shared.out_factor.shape[0], shared.in_factor.shape[0]
        self.runs_dense = dense

    @property
    def rank_label(self) -> str:
        return "x".join(str(d) for d in self.shared.core.shape)

    def middle(self) -> torch.Tensor:
        m = self.shared.core
        for c in self.coeffs:  # contract the leading modes one by one
            # under autocast the first contraction comes back in bf16 and tensordot does not cast its inputs
            m = torch.tensordot(c.to(m.dtype), m, dims=([0], [0]))
        return m  # (r_out, r_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.runs_dense:
            core = self.shared
            return nn.functional.linear(x, self.cached_weight([*self.coeffs, core.core, core.out_factor, core.in_factor]),
                                        self.bias)
        h = x @ self.shared.in_factor
        h = h @ self.middle().T
        return nn.functional.linear(h, self.shared.out_factor, self.bias)

    def weight_matrix(self) -> torch.Tensor:
        return self.shared.out_factor @ self.middle() @ self.shared.in_factor.T

    def tcomp_footprint(self) -> Footprint:
        own = [*self.coeffs, *([self.bias] if self.bias is not None else [])]
        r_out, r_in = self.shared.core.shape[-2:]
        macs = (self.in_features * self.out_features if self.runs_dense
                else self.in_features * r_in + r_in * r_out + r_out * self.out_features)
        return Footprint(sum(t.numel() for t in own), sum(dense_bytes(t) for t in own), macs)

    def tcomp_config(self) -> dict:
        return {"coeffs": [c.numel() for c in self.coeffs], "bias": self.bias is not None, "dense": self.runs_dense}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: TuckerCore) -> "TuckerLinear":
        bias = torch.empty(shared.out_factor.shape[0]) if config["bias"] else None
        return cls([torch.empty(n) for n in config["coeffs"]], shared, bias, config.get("dense", False))


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
FALCON_FITS = ("svd", "sgd")
SGD_STEPS, SGD_LR, SGD_SEED = 2000, 1e-2, 0  # defaults of fit="sgd" (the seed: 10 000 SGD steps at lr 0.01)


@register_module
class FalconLinear(CompressedLinear):
    """Depthwise × pointwise: input split into ``groups`` blocks of ``in/groups``; depthwise
    factor D (groups, t, in/groups) maps each block to t channels, pointwise P (out, groups·t)
    mixes them. Stored numbers (with its own P) and MACs per token: ``t·(in + out·groups)``.

    ``pointwise`` is this layer's own P or a :class:`~tcomp_utils.methods.lowrank.SharedFactor`
    holding the P that a stack of matrices shares (see :func:`falcon_linears`); a shared P is
    counted once, by the budget counter and by the report (spread over the stack). Sharing lets a
    stack reach depths whose factored path costs more than the dense matrix (BERT-base's Q/K/V
    across layers at self_svd's budget: ~5×): then the layer computes with its matrix, built once
    and cached like :class:`KroneckerLinear`'s (rebuilt per call while the factors train), and
    counts ``in·out`` MACs, as the seed's FALCON students compute."""

    def __init__(self, depthwise: torch.Tensor, pointwise: torch.Tensor | SharedFactor, bias: torch.Tensor | None = None):
        super().__init__()
        self.depthwise = as_parameter(depthwise)
        if isinstance(pointwise, SharedFactor):
            self.shared = pointwise
            self.register_parameter("pointwise", None)
        else:
            self.shared = None
            self.pointwise = as_parameter(pointwise)
        self.bias = as_parameter(bias) if bias is not None else None
        self.groups, self.depth, block = self.depthwise.shape
        self.in_features, self.out_features = self.groups * block, self._pointwise().shape[0]
        self.factored_macs = self.depth * (self.in_features + self.out_features * self.groups)  # per token
        self.runs_dense = self.factored_macs > self.in_features * self.out_features

    @staticmethod
    def plan(n_out: int, n_in: int, groups: int, ratio: float | None = None, depth: int | None = None,
             n_stacked: int = 1) -> int:
        """The depth t for ``groups`` input blocks of ``n_stacked`` out × in matrices sharing one
        pointwise factor (1: a matrix alone): ``depth``, or the largest with
        ``t·(n·in + out·g) ≤ n·out·in / ratio``. It must lie below the full rank ``min(out, n·in/g)``
        of a block's columns side by side and store fewer numbers than the dense matrices.
        Raises :class:`BudgetError` naming the depth and the allowed range when impossible."""
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or n_in % groups:
            raise BudgetError(f"groups={groups!r} must be a positive divisor of the input size {n_in}")
        if (depth is None) == (ratio is None):
            raise BudgetError("give exactly one of depth= (rank=) or ratio=")
        block, dense = n_in // groups, n_stacked * n_out * n_in
        per_depth = n_stacked * n_in + n_out * groups  # stored numbers per unit of depth
        t = depth if depth is not None else math.floor(dense / (check_ratio(ratio) * per_depth))
        full = min(n_stacked * block, n_out)
        high = min(full - 1, math.ceil(dense / per_depth) - 1)
        if not 1 <= t <= high:
            what = f"{n_stacked} stacked {n_out} × {n_in} matrices" if n_stacked > 1 else f"a {n_out} × {n_in} matrix"
            source = f"depth={depth!r}" if depth is not None else f"ratio {ratio}"
            raise BudgetError(f"FALCON depth {t} (from {source}) must lie in [1, {high}] for {what} in {groups} blocks "
                              f"of {block} inputs: below the full rank {full} of a block and storing fewer numbers "
                              f"than the dense matrices (the budget is too small or too large)")
        return t

    @classmethod
    def from_linear(cls, linear: nn.Linear, groups: int, depth: int | None = None, ratio: float | None = None,
                    fit: str = "svd", **fit_options) -> "FalconLinear":
        """Fitted block by block (see :func:`falcon_fit`; the budget: :meth:`plan`)."""
        depth = cls.plan(linear.out_features, linear.in_features, groups, ratio, depth)
        return falcon_linears([linear], groups, depth, fit, **fit_options)[1][0]

    @property
    def rank_label(self) -> str:
        return str(self.depth)

    def _pointwise(self) -> torch.Tensor:
        return self.shared.weight if self.shared is not None else self.pointwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.runs_dense:  # the factored path costs more than the dense matmul: W built once, cached
            return nn.functional.linear(x, self.cached_weight([self.depthwise, self._pointwise()]), self.bias)
        xs = x.reshape(*x.shape[:-1], self.groups, -1)
        z = torch.einsum("...gs,gts->...gt", xs, self.depthwise).reshape(*x.shape[:-1], -1)
        return nn.functional.linear(z, self._pointwise(), self.bias)

    def weight_matrix(self) -> torch.Tensor:
        p = self._pointwise().reshape(self.out_features, self.groups, self.depth)
        return torch.einsum("ogt,gts->ogs", p, self.depthwise).reshape(self.out_features, self.in_features)

    def tcomp_footprint(self) -> Footprint:
        own = [t for t in (self.depthwise, self.pointwise, self.bias) if t is not None]
        return Footprint(sum(t.numel() for t in own), sum(dense_bytes(t) for t in own),
                         min(self.factored_macs, self.in_features * self.out_features))

    def tcomp_config(self) -> dict:
        return {"depthwise": list(self.depthwise.shape), "pointwise": list(self._pointwise().shape),
                "bias": self.bias is not None, "shared": self.shared is not None}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: SharedFactor | None = None) -> "FalconLinear":
        pointwise = shared if config.get("shared") else torch.empty(config["pointwise"])  # saves before stacking lack it
        bias = torch.empty(config["pointwise"][0]) if config["bias"] else None
        return cls(torch.empty(config["depthwise"]), pointwise, bias)


def check_falcon_fit(fit: str, fit_steps: int | None = None, fit_lr: float | None = None,
                     fit_seed: int | None = None) -> None:
    """``fit`` is one of :data:`FALCON_FITS`; the SGD fit's options (None: the defaults) are given
    with ``fit="sgd"`` only. Raises :class:`ConfigError` naming the bad value."""
    check_choice("fit", fit, FALCON_FITS)
    given = {k: v for k, v in (("fit_steps", fit_steps), ("fit_lr", fit_lr), ("fit_seed", fit_seed)) if v is not None}
    if fit == "svd" and given:
        raise ConfigError(f"{', '.join(f'{k}={v!r}' for k, v in given.items())}: options of the SGD fit, given with "
                          "fit='svd' (which has none); give fit='sgd' or leave them out")
    check_int("fit_steps", fit_steps, low=0, none_ok=True)
    check_int("fit_seed", fit_seed, low=0, none_ok=True)
    if fit_lr is not None and (isinstance(fit_lr, bool) or not isinstance(fit_lr, (int, float))
                               or not 0 < fit_lr < math.inf):
        raise ConfigError(f"fit_lr must be a finite number > 0 or None, got {fit_lr!r}")


def falcon_fit(weights: list[torch.Tensor], groups: int, depth: int, fit: str = "svd", fit_steps: int | None = None,
               fit_lr: float | None = None, fit_seed: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The pointwise factor P (out × groups·t) shared by the out × in matrices ``weights`` and each
    matrix's depthwise factor D_i (groups, t, in/groups), with ``W_i[:, c] ≈ P_c D_i,c`` for every
    input block c. Per block the problem is ``X_c ≈ P_c [D_1,c … D_n,c]`` with X_c the block's
    columns of all the matrices side by side (out × n·in/g), so:

    * ``fit="svd"``: the rank-t truncated SVD of each X_c, the Frobenius optimum;
    * ``fit="sgd"``: as the seed fits FALCON, gradient descent on the mean squared error from a
      random normal start (the seed: unscaled ``torch.randn``; here scaled so that the start's
      product has the weights' size), with Adam (the seed: plain SGD) and the seed's schedule (the
      learning rate ÷10 at 40 % and 70 % of the steps): ``fit_steps`` (default
      :data:`SGD_STEPS`; 0 gives the random start), ``fit_lr`` (:data:`SGD_LR`), ``fit_seed``
      (:data:`SGD_SEED`, fixes the start: on a CPU the same seed gives the same factors).
    """
    check_falcon_fit(fit, fit_steps, fit_lr, fit_seed)
    n, n_out, block = len(weights), weights[0].shape[0], weights[0].shape[1] // groups
    dtype = weights[0].dtype
    x = torch.stack([w.detach() for w in weights]).double().reshape(n, n_out, groups, block)
    x = x.permute(2, 1, 0, 3).reshape(groups, n_out, n * block)  # X_c = [W_1[:, c] … W_n[:, c]]
    if fit == "svd":
        left, right = map(torch.stack, zip(*(truncated_svd(x[c], depth) for c in range(groups))))
    else:
        left, right = _sgd_fit(x, depth, SGD_STEPS if fit_steps is None else fit_steps,
                               SGD_LR if fit_lr is None else fit_lr, SGD_SEED if fit_seed is None else fit_seed,
                               torch.promote_types(dtype, torch.float32))
    pointwise = left.permute(1, 0, 2).reshape(n_out, groups * depth)  # block c's t columns side by side
    depthwise = right.reshape(groups, depth, n, block).permute(2, 0, 1, 3)
    return pointwise.to(dtype), [d.to(dtype) for d in depthwise]


def _sgd_fit(x: torch.Tensor, depth: int, steps: int, lr: float, seed: int,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (g, out, t), (g, t, m) of ``x`` (g, out, m) by Adam on the mean squared error in
    ``dtype``, computed on x scaled to unit RMS (so that ``lr`` does not depend on the weights' size)."""
    rms = x.pow(2).mean().sqrt().clamp_min(1e-30)
    target = (x / rms).to(dtype)
    g, n_out, m = x.shape
    gen = torch.Generator().manual_seed(seed)
    sigma = depth ** -0.25  # entries of left @ right then have unit variance
    left = (torch.randn(g, n_out, depth, generator=gen, dtype=dtype) * sigma).to(x.device).requires_grad_()
    right = (torch.randn(g, depth, m, generator=gen, dtype=dtype) * sigma).to(x.device).requires_grad_()
    opt = torch.optim.Adam([left, right], lr=lr)
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.4 * steps), int(0.7 * steps)], gamma=0.1)
    with torch.enable_grad():
        for _ in range(steps):
            loss = (left @ right - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    root = rms.sqrt()
    return left.detach().double() * root, right.detach().double() * root


def falcon_linears(linears: list[nn.Linear], groups: int, depth: int, fit: str = "svd",
                   **fit_options) -> tuple[SharedFactor | None, list[FalconLinear]]:
    """FALCON-factorize ``linears`` (one shape) with ``groups`` blocks and ``depth`` (checked by
    :meth:`FalconLinear.plan`), fitted by :func:`falcon_fit` (``fit``, ``fit_options``): several
    share one pointwise factor (stored once, as a :class:`SharedFactor`, returned first) and keep
    their own depthwise factors and biases; a matrix alone keeps its own (None is returned first)."""
    first = linears[0]
    if any(lin.weight.shape != first.weight.shape for lin in linears):
        raise BudgetError(f"FALCON stacks need matrices of one shape, got {[list(lin.weight.shape) for lin in linears]}")
    FalconLinear.plan(first.out_features, first.in_features, groups, depth=depth, n_stacked=len(linears))
    pointwise, depthwise = falcon_fit([lin.weight for lin in linears], groups, depth, fit, **fit_options)
    shared = SharedFactor(pointwise) if len(linears) > 1 else None
    own = shared if shared is not None else pointwise
    return shared, [FalconLinear(d, own, lin.bias) for d, lin in zip(depthwise, linears)]
