"""GPTQ (Frantar et al., ICLR 2023) for one weight matrix, given the Hessian of its inputs.

For a linear layer with inputs X (tokens × in), the layer-wise loss ‖WXᵀ − ŴXᵀ‖² has Hessian
``H = 2 XᵀX / n`` (in × in), the same for every output row. GPTQ quantizes the columns one at a
time and spreads each column's rounding error over the columns not yet quantized, along the
inverse Hessian (the optimal brain surgeon update):

    q_j = quant(w_j);   e = (w_j − q_j) / [H⁻¹]_jj;   w_{k>j} −= e · [H⁻¹]_{j,k}

with H⁻¹ taken as the upper Cholesky factor of (H + λI)⁻¹, λ = ``damp`` · mean(diag H). Updates
are applied lazily in blocks of ``block_size`` columns (the same result, fewer memory passes).
``act_order`` visits columns by decreasing diag(H) (the most active inputs first).

**Groups.** With dynamic groups (``static_groups=False``) the grid of a group is fitted when its
first column is reached, on the group's columns *as updated so far* by the errors of every column
quantized before it (within the current lazy block too, so the result does not depend on
``block_size``; the reference implementation reads the weights updated only up to the start of the
current block, the same thing when groups and blocks align as at 128/128). With act-order the
visited groups are then not contiguous in the original column order, and ``g_idx`` maps each column
to its group. With ``static_groups`` every group's grid is fitted once, on the *original* weights,
before any column moves: groups stay contiguous (no ``g_idx`` to store), which is what makes
act-order free with grouping.
"""
from __future__ import annotations

import torch

from .quant_grid import QuantGrid, QuantizedWeight, fit_grid, quantize_codes


class HessianAccumulator:
    """Running ``H = 2/n Σ xᵀx`` over the inputs a layer sees (in × in), in ``dtype`` (float32 by
    default, as the reference does: the sum over ~10⁴ tokens loses nothing that matters next to the
    damping, and costs half of float64)."""

    def __init__(self, in_features: int, dtype: torch.dtype = torch.float32):
        self.H = torch.zeros(in_features, in_features, dtype=dtype)
        self.n = 0

    def add(self, x: torch.Tensor) -> torch.Tensor:
        """Add inputs ``x`` (..., in); padding positions should be removed by the caller. Returns
        their Gram matrix ``xᵀx`` (in × in), which layers reading the same inputs can pass to
        :meth:`add_gram` instead of computing it again."""
        x = x.detach().reshape(-1, x.shape[-1]).to(self.H.dtype)
        gram = x.T @ x
        self.add_gram(gram, x.shape[0])
        return gram

    def add_gram(self, gram: torch.Tensor, m: int) -> None:
        """Add the Gram matrix ``xᵀx`` (in × in) of ``m`` input rows."""
        if m == 0:
            return
        self.H.mul_(self.n / (self.n + m))
        self.n += m
        self.H.add_(gram.to(self.H.dtype), alpha=2.0 / self.n)


def check_options(block_size: int, damp: float) -> None:
    """GPTQ's options: a positive column block size, a positive damping fraction."""
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive number of columns, got {block_size!r}")
    if not damp > 0:
        raise ValueError(f"damp must be > 0 (a fraction of the mean diagonal of H), got {damp!r}")


def inverse_hessian_factor(H: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor R of ``(H + λI)⁻¹`` (``Rᵀ R = (H + λI)⁻¹``), λ = ``damp`` ·
    mean(diag H), float32 (in × in). With J the order-reversing permutation and ``J(H + λI)J = LLᵀ``,
    ``R = J L⁻¹ J``: one Cholesky factorization and one triangular inverse (float64 if float32 fails)."""
    H = H.float().clone()
    H.diagonal().add_(damp * torch.mean(torch.diagonal(H)))
    for dtype in (torch.float32, torch.float64):
        L, info = torch.linalg.cholesky_ex(H.to(dtype).flip(0, 1))
        if int(info) == 0:
            eye = torch.eye(len(H), dtype=dtype)
            return torch.linalg.solve_triangular(L, eye, upper=False).flip(0, 1).float()
    torch.linalg.cholesky(H.double())  # raises LinAlgError naming the failing minor
    raise AssertionError("unreachable")


def gptq(weight: torch.Tensor, H: torch.Tensor, grid: QuantGrid, block_size: int = 128, damp: float = 0.01,
         act_order: bool = False, static_groups: bool = False) -> QuantizedWeight:
    """GPTQ of ``weight`` (out × in) with input Hessian ``H`` (in × in) on ``grid``; ``g_idx`` of the
    result is set when act-order with dynamic groups makes the groups non-contiguous."""
    check_options(block_size, damp)
    out_f, in_f = weight.shape
    if H.shape != (in_f, in_f):
        raise ValueError(f"H must be {in_f} × {in_f} for a weight with {in_f} input columns, got {tuple(H.shape)}")
    n_groups, g = grid.n_groups(in_f), grid.group_width(in_f)
    H = H.float().clone()
    dead = torch.diagonal(H) == 0  # inputs never active: their columns cannot matter
    H[dead, dead] = 1
    W = weight.detach().float().clone()
    W[:, dead] = 0

    scales = torch.zeros(out_f, n_groups)
    zeros = torch.zeros(out_f, n_groups)
    if n_groups == 1:
        scales[:, 0], zeros[:, 0] = fit_grid(W, grid)
    elif static_groups:
        for k in range(n_groups):
            scales[:, k], zeros[:, k] = fit_grid(W[:, k * g:(k + 1) * g], grid)
    perm = torch.argsort(torch.diagonal(H), descending=True, stable=True) if act_order else torch.arange(in_f)
    Hinv = inverse_hessian_factor(H[perm][:, perm], damp)
    # columns as contiguous rows (in × out): every per-column read, write and update is contiguous
    Wt = W.T[perm].contiguous()
    order = perm.tolist()
    dynamic = n_groups > 1 and not static_groups
    # the group of each visited column: its own contiguous group, or (dynamic) the j-th visited g
    col_group = [j // g if dynamic else order[j] // g for j in range(in_f)]

    codes = torch.empty(in_f, out_f, dtype=torch.uint8)
    loss = torch.zeros((), dtype=torch.float64)
    scale, zero = scales[:, 0], zeros[:, 0]
    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        W1, Hinv1 = Wt[i1:i2].clone(), Hinv[i1:i2, i1:i2]
        C1, Err1 = torch.empty_like(W1), torch.empty_like(W1)
        for i in range(i2 - i1):
            j = i1 + i  # permuted column index
            if dynamic and j % g == 0:  # fit on this group's columns as updated so far
                end = min(j + g, in_f)
                cols = W1[i:end - i1]
                if end > i2:  # columns past this block still owe it the updates of its columns before j
                    cols = torch.cat([cols, Wt[i2:end] - Hinv[i1:j, i2:end].T @ Err1[:i]])
                scales[:, j // g], zeros[:, j // g] = fit_grid(cols.T, grid)
            if n_groups > 1:
                scale, zero = scales[:, col_group[j]], zeros[:, col_group[j]]
            w = W1[i]
            c = quantize_codes(w, scale, zero, grid.maxq)
            C1[i] = c
            err = Err1[i]
            torch.sub(w, scale * (c - zero), out=err).div_(Hinv1[i, i])
            W1[i:].addr_(Hinv1[i, i:], err, alpha=-1)
        codes[i1:i2] = C1
        loss += Err1.double().pow(2).sum() / 2
        Wt[i2:].addmm_(Hinv[i1:i2, i2:].T, Err1, alpha=-1)

    inv = torch.argsort(perm)
    codes = codes[inv].T.contiguous()
    g_idx = None
    if dynamic and act_order:
        g_idx = torch.tensor(col_group, dtype=torch.int32)[inv]
    return QuantizedWeight(codes, scales.half(), zeros.to(torch.uint8), grid, g_idx, float(loss))
