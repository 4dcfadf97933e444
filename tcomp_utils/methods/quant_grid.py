"""Uniform integer grids for weight quantization, and packing of integer codes.

A weight row is quantized on a min–max grid of ``2^bits`` levels, per output channel (one scale
per row) or per group of ``group_size`` consecutive input columns (one scale per row and group;
the last group is shorter when ``group_size`` does not divide the row, e.g. 576 = 4·128 + 64):

* asymmetric: ``scale = (max − min) / (2^b − 1)``, ``zero = round(−min / scale)``, with the
  range widened to include 0 (so zero padding and dead inputs stay exact);
* symmetric: ``scale = 2·max|w| / (2^b − 1)``, ``zero = 2^(b−1)`` (implicit, not stored).

``code = clamp(round(w / scale) + zero, 0, 2^b − 1)`` and ``ŵ = scale · (code − zero)``.
Scales are stored as float16 (and rounded to float16 *before* quantizing, so the grid the
codes were chosen on is the grid they are decoded with); codes and zero points are packed at
``bits`` bits each into a uint8 bit stream (most significant bit first).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_BITS, MAX_BITS = 2, 8  # of a grid (round-to-nearest, GPTQ)
PACK_BITS = (1, 8)         # of packed codes (1: sign bits of sign-magnitude and binary weights)
FP16_TINY = 2.0**-24  # the smallest positive float16: a scale must survive the cast


@dataclass(frozen=True)
class QuantGrid:
    """``bits`` in [2, 8]; ``group_size`` None (per output channel) or a positive number of input
    columns; ``symmetric`` grid around 0 or asymmetric min–max with a zero point."""

    bits: int = 4
    group_size: int | None = None
    symmetric: bool = False

    def __post_init__(self):
        if not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {self.bits!r}")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ValueError(f"group_size must be None (per output channel) or a positive integer, got {self.group_size!r}")

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def n_groups(self, in_features: int) -> int:
        """Groups per row for ``in_features`` columns (1 per channel; the last group may be shorter)."""
        if self.group_size is None or self.group_size >= in_features:
            return 1
        return -(-in_features // self.group_size)

    def group_width(self, in_features: int) -> int:
        """Columns per group (all but possibly the last)."""
        return in_features if self.group_size is None else min(self.group_size, in_features)

    def implicit_zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The zero points of a symmetric grid (2^(b−1) everywhere; never stored), uint8."""
        return torch.full(shape, 2 ** (self.bits - 1), dtype=torch.uint8)

    def describe(self) -> str:
        g = "per-channel" if self.group_size is None else f"g{self.group_size}"
        return f"{self.bits}-bit {'sym' if self.symmetric else 'asym'} {g}"


def fit_grid(w: torch.Tensor, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of ``w`` (rows × cols): two (rows,) tensors; the scale is
    already rounded to float16 precision and the zero point is an integer in [0, 2^b − 1]."""
    w = w.float()
    xmin = w.min(dim=1).values.clamp(max=0)
    xmax = w.max(dim=1).values.clamp(min=0)
    if grid.symmetric:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    flat = (xmin == 0) & (xmax == 0)
    xmin, xmax = torch.where(flat, -1.0, xmin), torch.where(flat, 1.0, xmax)
    scale = ((xmax - xmin) / grid.maxq).clamp(min=FP16_TINY).half().float()
    if grid.symmetric:
        zero = torch.full_like(scale, (grid.maxq + 1) // 2)
    else:
        zero = torch.round(-xmin / scale).clamp(0, grid.maxq)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integer codes of ``w`` on the grid (``scale``/``zero`` broadcast against ``w``), as float."""
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


@dataclass
class QuantizedWeight:
    """A weight on a grid: ``codes`` (out × in, uint8), ``scales`` (out × groups, float16), ``zeros``
    (out × groups, uint8), the ``grid``, ``g_idx`` (in, int32) when act-order made the groups
    non-contiguous (else None: contiguous groups of ``grid.group_size`` columns), and ``loss``
    (GPTQ's H⁻¹-weighted squared error; None for RTN)."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    grid: QuantGrid
    g_idx: torch.Tensor | None = None
    loss: float | None = None

    def column_groups(self) -> torch.Tensor:
        """The group of every input column (in,), as int64."""
        return self.g_idx.long() if self.g_idx is not None else column_groups(self.grid, self.codes.shape[1])

    def dequantize(self) -> torch.Tensor:
        """``scale · (code − zero)`` as float32 (out × in)."""
        return dequantize(self.codes, self.scales, self.zeros, self.column_groups())


def column_groups(grid: QuantGrid, in_features: int) -> torch.Tensor:
    """Contiguous groups: column j is in group ``j // group_size`` (all 0 per channel), int64 (in,)."""
    return torch.arange(in_features) // grid.group_width(in_features)


def rtn(weight: torch.Tensor, grid: QuantGrid) -> QuantizedWeight:
    """Round-to-nearest of ``weight`` (out × in) on ``grid``; group k covers input columns
    ``[k·g, min((k+1)·g, in))``."""
    out_f, in_f = weight.shape
    n_groups, width = grid.n_groups(in_f), grid.group_width(in_f)
    # zero padding of a short last group leaves its grid unchanged: the range always includes 0
    w = torch.nn.functional.pad(weight.detach().float(), (0, n_groups * width - in_f)).reshape(out_f, n_groups, width)
    scale, zero = fit_grid(w.reshape(out_f * n_groups, width), grid)
    scale, zero = scale.reshape(out_f, n_groups, 1), zero.reshape(out_f, n_groups, 1)
    codes = quantize_codes(w, scale, zero, grid.maxq).reshape(out_f, -1)[:, :in_f]
    return QuantizedWeight(codes.to(torch.uint8), scale[..., 0].half(), zero[..., 0].to(torch.uint8), grid)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``scale · (code − zero)`` as float32 (out × in): ``scales``/``zeros`` are (out × groups) and
    column j uses group ``groups[j]`` (int64, (in,))."""
    return (codes.float() - zeros.float()[:, groups]) * scales.float()[:, groups]


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2^bits) into a uint8 bit stream of ``ceil(numel·bits/8)`` bytes
    (row-major order, most significant bit first)."""
    return pack_rows(codes.reshape(1, -1), bits)[0]


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``numel`` codes as a uint8 tensor (numel,)."""
    return unpack_rows(packed.reshape(1, -1), bits, numel)[0]


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack each row of ``codes`` (rows × n) on its own: (rows × ceil(n·bits/8)) uint8, so that any
    row can be unpacked without the others. Eight codes make exactly ``bits`` bytes: each run of
    eight is joined into one int64 (first code in the high bits) and split into its bytes."""
    if not PACK_BITS[0] <= bits <= PACK_BITS[1]:
        raise ValueError(f"packed codes have {PACK_BITS[0]} to {PACK_BITS[1]} bits, got {bits}")
    c = codes.to(torch.int64)
    if c.numel() and (c.min() < 0 or c.max() >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits - 1}] for {bits} bits, got [{c.min()}, {c.max()}]")
    rows, n = c.shape
    c = torch.nn.functional.pad(c, (0, (-n) % 8)).reshape(rows, -1, 8)
    word = (c << torch.arange(7 * bits, -1, -bits, dtype=torch.int64)).sum(dim=2)  # 8·bits bits per word
    out = (word[..., None] >> torch.arange(8 * (bits - 1), -1, -8, dtype=torch.int64)) & 0xFF
    return out.reshape(rows, -1)[:, : -(-n * bits // 8)].to(torch.uint8)


def unpack_rows(packed: torch.Tensor, bits: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_rows`: the first ``width`` codes of each row, (rows × width) uint8."""
    data, rows = packed.to(torch.int64), packed.shape[0]
    if 8 % bits == 0:  # whole codes per byte: plain shifts
        shifts = torch.arange(8 - bits, -1, -bits, dtype=torch.int64)
        return ((data[..., None] >> shifts) & (2**bits - 1)).reshape(rows, -1)[:, :width].to(torch.uint8)
    data = torch.nn.functional.pad(data, (0, (-data.shape[1]) % bits)).reshape(rows, -1, bits)
    word = (data << torch.arange(8 * (bits - 1), -1, -8, dtype=torch.int64)).sum(dim=2)
    codes = (word[..., None] >> torch.arange(7 * bits, -1, -bits, dtype=torch.int64)) & (2**bits - 1)
    return codes.reshape(rows, -1)[:, :width].to(torch.uint8)
