"""GPTQ (Frantar et al., ICLR 2023) for one weight matrix, given the Hessian of its inputs.

For a linear layer with inputs X (tokens × in), the layer-wise loss ‖WXᵀ − ŴXᵀ‖² has Hessian
``H = 2 XᵀX / n`` (in × in), the same for every output row. GPTQ quantizes the columns one at a
time and spreads each column's rounding error over the columns not yet quantized, along the
inverse Hessian (the optimal brain surgeon update):

    q_j = quant(w_j);   e = (w_j − q_j) / [H⁻¹]_jj;   w_{k>j} −= e · [H⁻¹]_{j,k}

with H⁻¹ taken as the upper Cholesky factor of (H + λI)⁻¹, λ = ``damp`` · mean(diag H). Updates
are applied lazily in blocks of ``block_size`` columns (the same result, fewer memory passes).
``act_order`` visits columns by decreasing diag(H) (the most active inputs first); with groups
the grid of each group is fitted when its first column is reached (on the error-updated
weights), or once on the original weights with ``static_groups``.
"""
from __future__ import annotations

import torch

from .quant_grid import QuantGrid, QuantizedWeight, fit_grid, quantize_codes


class HessianAccumulator:
    """Running ``H = 2/n Σ xᵀx`` over the inputs a layer sees (float64, in × in)."""

    def __init__(self, in_features: int):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        """Add inputs ``x`` (..., in); padding positions should be removed by the caller."""
        x = x.detach().reshape(-1, x.shape[-1]).double()
        m = x.shape[0]
        if m == 0:
            return
        self.H *= self.n / (self.n + m)
        self.n += m
        self.H += (2.0 / self.n) * (x.T @ x)


def check_options(block_size: int, damp: float) -> None:
    """GPTQ's options: a positive column block size, a positive damping fraction."""
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive number of columns, got {block_size!r}")
    if not damp > 0:
        raise ValueError(f"damp must be > 0 (a fraction of the mean diagonal of H), got {damp!r}")


def gptq(weight: torch.Tensor, H: torch.Tensor, grid: QuantGrid, block_size: int = 128, damp: float = 0.01,
         act_order: bool = False, static_groups: bool = False) -> QuantizedWeight:
    """GPTQ of ``weight`` (out × in) with input Hessian ``H`` (in × in) on ``grid``; ``g_idx`` of the
    result is set when act-order with dynamic groups makes the groups non-contiguous."""
    check_options(block_size, damp)
    W = weight.detach().float().clone()
    out_f, in_f = W.shape
    if H.shape != (in_f, in_f):
        raise ValueError(f"H must be {in_f} × {in_f} for a weight with {in_f} input columns, got {tuple(H.shape)}")
    n_groups, g = grid.n_groups(in_f), grid.group_width(in_f)
    H = H.double().clone()
    dead = torch.diag(H) == 0  # inputs never active: their columns cannot matter
    H[dead, dead] = 1
    W[:, dead] = 0

    group_params: list[tuple[torch.Tensor, torch.Tensor]] = []
    if n_groups > 1 and static_groups:
        group_params = [fit_grid(W[:, k * g:(k + 1) * g], grid) for k in range(n_groups)]
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(in_f)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(in_f, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()

    codes = torch.zeros_like(W)
    scales = torch.zeros(out_f, n_groups)
    zeros = torch.zeros(out_f, n_groups)
    col_group = torch.zeros(in_f, dtype=torch.long)  # group of each (permuted) column
    if n_groups == 1:
        scale, zero = fit_grid(W, grid)
        scales[:, 0], zeros[:, 0] = scale, zero
    loss = 0.0
    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            j = i1 + i  # permuted column index
            if n_groups > 1:
                if static_groups:
                    k = int(perm[j]) // g
                    scale, zero = group_params[k]
                elif j % g == 0:
                    k = j // g  # fit on the columns of this group as updated so far
                    scale, zero = fit_grid(torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :g], grid)
                scales[:, k], zeros[:, k] = scale, zero
                col_group[j] = k
            w, d = W1[:, i], Hinv1[i, i]
            c = quantize_codes(w, scale, zero, grid.maxq)
            q = scale * (c - zero)
            codes[:, j] = c
            err = (w - q) / d
            loss += float((err**2).sum()) / 2
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    inv = torch.argsort(perm)
    codes = codes[:, inv]
    g_idx = None
    if n_groups > 1 and act_order and not static_groups:
        g_idx = col_group[inv].to(torch.int32)
    return QuantizedWeight(codes.to(torch.uint8), scales.half(), zeros.to(torch.uint8), grid, g_idx, loss)
