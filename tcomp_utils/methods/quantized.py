"""Quantized modules: ``QuantLinear`` (a linear layer stored as packed integer codes, float16
scales and packed zero points), ``QuantEmbedding`` (an embedding table stored the same way, row by
row, de-quantizing only the rows looked up; a table tied to the output head is the head too), and
torch's dynamic int8 path for real integer matmuls on CPU.

**De-quantized weight cache.** Un-packing and de-quantizing a layer costs more than its matmul on
a CPU, so ``QuantLinear.forward`` keeps each layer's de-quantized weight (float32, in the dtype and
on the device of the inputs) in a process-wide cache bounded by :func:`set_dequant_cache_limit`
(default ``$TCOMP_DEQUANT_CACHE_MB``, else 1024 MiB). It pins rather than evicts: layers are cached
in the order they are first run until the limit is reached, and the rest are de-quantized on every
call (with a cyclic access pattern, as a forward pass is, evicting would hit nothing). What it
holds is working memory, not storage: it is not in the state dict, not saved, not counted by the
budget counter, and dropped when the codes change or the module is freed. With the whole model
cached, a quantized model runs at fp32 speed and uses the fp32 weights' memory *in addition to* the
packed codes; limit 0 gives the packed footprint and the per-call de-quantization. ``make bench``
measures both.
"""
from __future__ import annotations

import os
import warnings
import weakref

import torch
from torch import nn

from ..budget import CompressedLinear, Footprint, dense_bytes
from ..registry import register_module
from .quant_grid import (QuantGrid, QuantizedWeight, column_groups, dequantize, pack, pack_rows, rtn, unpack,
                         unpack_rows)


_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, torch.Tensor]]" = weakref.WeakKeyDictionary()
_LIMIT = [int(float(os.environ.get("TCOMP_DEQUANT_CACHE_MB", 1024)) * 2**20)]


PLAIN_LAYER = "a plain nn.Linear or nn.Embedding (not a subclass with its own forward, such as Gemma's scaled token table)"


def plain_layer(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Linear`` or ``nn.Embedding`` that computes just what its class
    does with its weight, so a packed layer can stand in for it: a subclass with its own forward
    adds to it (Gemma's token table multiplies the rows it looks up by √hidden), which the packed
    layer would drop. A fake-quantized layer (torch's parametrized subclass) keeps its forward."""
    return any(isinstance(module, cls) and type(module).forward is cls.forward for cls in (nn.Linear, nn.Embedding))


def set_dequant_cache_limit(mib: float) -> None:
    """Bound the de-quantized weight cache of :class:`QuantLinear` at ``mib`` MiB (0: no cache);
    the layers already cached beyond the new bound are dropped."""
    if not mib >= 0:
        raise ValueError(f"the de-quantized weight cache limit must be >= 0 MiB, got {mib!r}")
    _LIMIT[0] = int(mib * 2**20)
    while _CACHE and dequant_cache_bytes() > _LIMIT[0]:
        _CACHE.popitem()


def dequant_cache_bytes() -> int:
    """Bytes held by the de-quantized weight cache now."""
    return sum(w.numel() * w.element_size() for _, w in list(_CACHE.values()))


class _CachedDequant(CompressedLinear):
    """A linear layer whose weight is de-quantized from packed buffers (:meth:`_packed`) through
    the process-wide de-quantized weight cache."""

    def _packed(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _cache_key(self, x: torch.Tensor) -> tuple:
        # a buffer's _version moves on every in-place change (load_state_dict copies in place)
        return (x.device, x.dtype) + tuple((b.data_ptr(), b._version) for b in self._packed())

    def dequantized(self, x: torch.Tensor) -> torch.Tensor:
        """The de-quantized weight in ``x``'s dtype and device, from the cache when it holds it."""
        key = self._cache_key(x)
        hit = _CACHE.get(self)
        if hit is not None and hit[0] == key:
            return hit[1]
        # a normal tensor even under inference_mode, so that a later forward with autograd on may
        # save it for backward
        with torch.inference_mode(False), torch.no_grad():
            w = self.weight_matrix().to(device=x.device, dtype=x.dtype)
        _CACHE.pop(self, None)
        if dequant_cache_bytes() + w.numel() * w.element_size() <= _LIMIT[0]:
            _CACHE[self] = (key, w)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.dequantized(x), None if self.bias is None else self.bias.to(x.dtype))


@register_module
class QuantLinear(_CachedDequant):
    """``y = x Ŵᵀ + b`` with ``Ŵ = scale · (code − zero)`` (out × in).

    Buffers: ``qweight`` (packed codes, ``ceil(out·in·bits/8)`` bytes), ``scales`` (out × groups,
    float16), ``qzeros`` (packed zero points; empty for a symmetric grid, whose zero point is
    2^(b−1)), ``g_idx`` (in, int32; empty unless act-order made the groups non-contiguous);
    parameter ``bias`` (float32) if the layer had one. The stored bytes reported to the budget
    counter are exactly the sizes of these tensors.
    """

    def __init__(self, in_features: int, out_features: int, grid: QuantGrid, bias: bool = True,
                 g_idx: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.grid = in_features, out_features, grid
        n_groups = grid.n_groups(in_features)
        self.register_buffer("qweight", torch.zeros(-(-out_features * in_features * grid.bits // 8), dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, n_groups, dtype=torch.float16))
        n_zero_bytes = 0 if grid.symmetric else -(-out_features * n_groups * grid.bits // 8)
        self.register_buffer("qzeros", torch.zeros(n_zero_bytes, dtype=torch.uint8))
        self.register_buffer("g_idx", torch.zeros(in_features if g_idx else 0, dtype=torch.int32))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: torch.Tensor | None = None) -> "QuantLinear":
        """Pack a :class:`~tcomp_utils.quant_grid.QuantizedWeight` (and the float bias, if any)."""
        out_f, in_f = qw.codes.shape
        layer = cls(in_f, out_f, qw.grid, bias=bias is not None, g_idx=qw.g_idx is not None)
        layer.qweight.copy_(pack(qw.codes, qw.grid.bits))
        layer.scales.copy_(qw.scales.half())
        if not qw.grid.symmetric:
            layer.qzeros.copy_(pack(qw.zeros, qw.grid.bits))
        if qw.g_idx is not None:
            layer.g_idx.copy_(qw.g_idx.to(torch.int32))
        if bias is not None:
            layer.bias.data.copy_(bias.detach().float())
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, grid: QuantGrid) -> "QuantLinear":
        """Round-to-nearest quantization of an ``nn.Linear`` on ``grid`` (GPTQ: :mod:`.gptq`, then
        :meth:`from_quantized`)."""
        return cls.from_quantized(rtn(linear.weight.detach().float(), grid), linear.bias)

    def codes(self) -> torch.Tensor:
        """Unpacked codes (out × in, uint8)."""
        return unpack(self.qweight, self.grid.bits, self.out_features * self.in_features).reshape(
            self.out_features, self.in_features)

    def quantized(self) -> QuantizedWeight:
        """The stored weight as a :class:`~tcomp_utils.methods.quant_grid.QuantizedWeight` (the
        inverse of :meth:`from_quantized`; its ``dequantize()`` is :meth:`weight_matrix`)."""
        return QuantizedWeight(self.codes(), self.scales, self.zeros(), self.grid,
                               self.g_idx if self.g_idx.numel() else None)

    def zeros(self) -> torch.Tensor:
        """Zero points (out × groups)."""
        if self.grid.symmetric:
            return self.grid.implicit_zeros(tuple(self.scales.shape))
        return unpack(self.qzeros, self.grid.bits, self.scales.numel()).reshape(self.scales.shape)

    def weight_matrix(self) -> torch.Tensor:
        """The de-quantized weight (out × in, float32)."""
        groups = self.g_idx.long() if self.g_idx.numel() else column_groups(self.grid, self.in_features)
        return dequantize(self.codes(), self.scales, self.zeros(), groups)

    def _packed(self) -> tuple[torch.Tensor, ...]:
        return self.qweight, self.scales, self.qzeros, self.g_idx

    def tcomp_footprint(self) -> Footprint:
        """Stored numbers: codes, scales, zero points (if stored), group map, bias; bytes: exact."""
        tensors = [self.qweight, self.scales, self.qzeros, self.g_idx] + ([self.bias] if self.bias is not None else [])
        n_zeros = 0 if self.grid.symmetric else self.scales.numel()
        params = (self.out_features * self.in_features + self.scales.numel() + n_zeros + self.g_idx.numel()
                  + (self.out_features if self.bias is not None else 0))
        return Footprint(params, sum(dense_bytes(t) for t in tensors), self.in_features * self.out_features)

    def tcomp_config(self) -> dict:
        return {"in": self.in_features, "out": self.out_features, "bits": self.grid.bits,
                "group_size": self.grid.group_size, "symmetric": self.grid.symmetric,
                "bias": self.bias is not None, "g_idx": bool(self.g_idx.numel())}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: None = None) -> "QuantLinear":
        grid = QuantGrid(config["bits"], config["group_size"], config["symmetric"])
        return cls(config["in"], config["out"], grid, bias=config["bias"], g_idx=config["g_idx"])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.grid.describe()}, " \
               f"bias={self.bias is not None}"


@register_module
class QuantLowRankLinear(CompressedLinear):
    """A low-rank layer ``y = U (Vᵀ x) + b`` with both factors quantized: ``first`` = Vᵀ (rank ×
    in, no bias) and ``second`` = U (out × rank, with the bias), each a :class:`QuantLinear`. It
    stores nothing of its own: the budget counter counts the two factors (rank · (in + out) MACs)."""

    def __init__(self, first: QuantLinear, second: QuantLinear):
        super().__init__()
        if first.out_features != second.in_features or first.bias is not None:
            raise ValueError(f"factors do not chain: first {first.in_features}→{first.out_features} "
                             f"(bias {first.bias is not None}), second {second.in_features}→{second.out_features}")
        self.first, self.second = first, second
        self.in_features, self.out_features, self.rank = first.in_features, second.out_features, first.out_features

    @property
    def bias(self) -> torch.Tensor | None:
        return self.second.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def weight_matrix(self) -> torch.Tensor:
        """The dense (out × in) product of the de-quantized factors."""
        return self.second.weight_matrix() @ self.first.weight_matrix()

    def tcomp_footprint(self) -> Footprint:
        return Footprint(0, 0, 0.0)  # the factors are compressed modules, counted on their own

    def tcomp_config(self) -> dict:
        return {"first": self.first.tcomp_config(), "second": self.second.tcomp_config()}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: None = None) -> "QuantLowRankLinear":
        return cls(QuantLinear.tcomp_empty(config["first"]), QuantLinear.tcomp_empty(config["second"]))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


@register_module
class QuantEmbedding(_CachedDequant):
    """An embedding table (vocab × dim) quantized row by row: each token's vector is a row of the
    grid (one scale per row, or per group of ``group_size`` dimensions).

    Buffers: ``qweight`` (vocab × ceil(dim·bits/8) uint8: each row packed on its own, so a look-up
    unpacks only the rows it needs), ``scales`` (vocab × groups, float16), ``qzeros`` (vocab ×
    ceil(groups·bits/8) uint8; empty columns for a symmetric grid). No MACs: a look-up.

    ``head``: the table is also the model's output head (a tied LM head): the one module sits at
    both places, token ids (integers) look rows up and hidden states (floats) are multiplied by the
    de-quantized table (``x Ŵᵀ``, through the same de-quantized weight cache as
    :class:`QuantLinear`), so the codes are stored once and the head's ``vocab × dim`` MACs are
    counted once, with the table.
    """

    bias = None  # as an output head: none (a tied head has no bias)

    def __init__(self, num_embeddings: int, embedding_dim: int, grid: QuantGrid, padding_idx: int | None = None,
                 head: bool = False):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.grid, self.padding_idx = num_embeddings, embedding_dim, grid, padding_idx
        self.head = head
        n_groups = grid.n_groups(embedding_dim)
        self.register_buffer("qweight", torch.zeros(num_embeddings, -(-embedding_dim * grid.bits // 8), dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(num_embeddings, n_groups, dtype=torch.float16))
        zero_bytes = 0 if grid.symmetric else -(-n_groups * grid.bits // 8)
        self.register_buffer("qzeros", torch.zeros(num_embeddings, zero_bytes, dtype=torch.uint8))

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, padding_idx: int | None = None) -> "QuantEmbedding":
        """Pack a row-wise quantized table (contiguous groups only)."""
        if qw.g_idx is not None:
            raise ValueError("an embedding table is quantized with contiguous groups (no act-order)")
        vocab, dim = qw.codes.shape
        layer = cls(vocab, dim, qw.grid, padding_idx)
        layer.qweight.copy_(pack_rows(qw.codes, qw.grid.bits))
        layer.scales.copy_(qw.scales.half())
        if not qw.grid.symmetric:
            layer.qzeros.copy_(pack_rows(qw.zeros, qw.grid.bits))
        return layer

    @classmethod
    def from_embedding(cls, table: nn.Embedding, grid: QuantGrid) -> "QuantEmbedding":
        """Round-to-nearest quantization of an embedding table, row by row."""
        return cls.from_quantized(rtn(table.weight.detach().float(), grid), table.padding_idx)

    def _rows(self, idx: torch.Tensor) -> torch.Tensor:
        """De-quantized rows ``idx`` (n,) -> (n × dim) float32."""
        bits, n = self.grid.bits, idx.numel()
        codes = unpack_rows(self.qweight[idx], bits, self.embedding_dim)
        scales = self.scales[idx]
        if self.grid.symmetric:
            zeros = self.grid.implicit_zeros(tuple(scales.shape))
        else:
            zeros = unpack_rows(self.qzeros[idx], bits, scales.shape[1])
        return dequantize(codes, scales, zeros, column_groups(self.grid, self.embedding_dim)).reshape(n, -1)

    def weight_matrix(self) -> torch.Tensor:
        """The de-quantized table (vocab × dim, float32)."""
        return self._rows(torch.arange(self.num_embeddings))

    def quantized(self) -> QuantizedWeight:
        """The stored table as a :class:`~tcomp_utils.methods.quant_grid.QuantizedWeight` (the
        inverse of :meth:`from_quantized`; its ``dequantize()`` is :meth:`weight_matrix`)."""
        codes = unpack_rows(self.qweight, self.grid.bits, self.embedding_dim)
        zeros = (self.grid.implicit_zeros(tuple(self.scales.shape)) if self.grid.symmetric
                 else unpack_rows(self.qzeros, self.grid.bits, self.scales.shape[1]))
        return QuantizedWeight(codes, self.scales, zeros, self.grid)

    def _packed(self) -> tuple[torch.Tensor, ...]:
        return self.qweight, self.scales, self.qzeros

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.is_floating_point():  # hidden states: the table as the output head
            if not self.head:
                raise TypeError(f"this QuantEmbedding looks up token ids (integers), got {input.dtype} inputs; "
                                "only a table tied to the output head (head=True) takes hidden states")
            return super().forward(input)
        flat = input.reshape(-1)
        unique, inverse = torch.unique(flat, return_inverse=True)  # unpack each distinct row once
        return self._rows(unique)[inverse].reshape(*input.shape, self.embedding_dim)

    def tcomp_footprint(self) -> Footprint:
        """Stored numbers and bytes of the table (once, also when it is the head); MACs: the
        head's ``vocab × dim`` when tied to it, else none (a look-up)."""
        n_zeros = 0 if self.grid.symmetric else self.scales.numel()
        params = self.num_embeddings * self.embedding_dim + self.scales.numel() + n_zeros
        macs = self.num_embeddings * self.embedding_dim if self.head else 0
        return Footprint(params, sum(dense_bytes(t) for t in (self.qweight, self.scales, self.qzeros)), macs)

    def tcomp_config(self) -> dict:
        config = {"vocab": self.num_embeddings, "dim": self.embedding_dim, "bits": self.grid.bits,
                  "group_size": self.grid.group_size, "symmetric": self.grid.symmetric, "padding_idx": self.padding_idx}
        return config | {"head": True} if self.head else config  # saves of untied tables stay as they were

    @classmethod
    def tcomp_empty(cls, config: dict, shared: None = None) -> "QuantEmbedding":
        grid = QuantGrid(config["bits"], config["group_size"], config["symmetric"])
        return cls(config["vocab"], config["dim"], grid, config["padding_idx"], head=config.get("head", False))

    def extra_repr(self) -> str:
        tied = ", tied output head" if self.head else ""
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.grid.describe()}{tied}"

# --------------------------------------------------------------------------------------- sign-magnitude
def signmag_value(negative: torch.Tensor, magnitude: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``±magnitude · scale`` as float32 (negative where ``negative``); the one formula that both
    the fake quantizer of QAT and the packed modules use, so that they agree bit for bit."""
    m = magnitude.float()
    return torch.where(negative, -m, m) * scale.float()


def _signmag_rows(qsign: torch.Tensor, qmag: torch.Tensor, scales: torch.Tensor, mag_bits: int, width: int) -> torch.Tensor:
    """Rows (n × width) float32 from row-packed sign bits, magnitudes (``mag_bits`` each; none
    for binary weights, whose magnitude is 1) and scales ((n × 1), or (1 × 1) per tensor)."""
    negative = unpack_rows(qsign, 1, width).bool()
    magnitude = unpack_rows(qmag, mag_bits, width) if mag_bits else torch.ones(())
    return signmag_value(negative, magnitude, scales)


class _SignMag:
    """Buffers and checks shared by the sign-magnitude modules: ``qsign`` (rows × ⌈cols/8⌉ uint8,
    bit 1 = negative), ``qmag`` (rows × ⌈cols·b/8⌉ uint8; no columns for b = 0) and ``scales``
    (float16: (1 × 1) for one scale per tensor, (rows × 1) for one per row)."""

    def _init_buffers(self, rows: int, cols: int, mag_bits: int, per_row: bool) -> None:
        if isinstance(mag_bits, bool) or not isinstance(mag_bits, int) or not 0 <= mag_bits <= 8:
            raise ValueError(f"magnitude bits must be an integer in [0, 8] (0: binary ±scale), got {mag_bits!r}")
        self.mag_bits, self.per_row = mag_bits, bool(per_row)
        self.register_buffer("qsign", torch.zeros(rows, -(-cols // 8), dtype=torch.uint8))
        self.register_buffer("qmag", torch.zeros(rows, -(-cols * mag_bits // 8), dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(rows if per_row else 1, 1, dtype=torch.float16))

    def _fill(self, negative: torch.Tensor, magnitude: torch.Tensor | None, scales: torch.Tensor) -> None:
        if tuple(scales.reshape(-1, 1).shape) != tuple(self.scales.shape):
            raise ValueError(f"scales of shape {tuple(scales.shape)} for a module storing {tuple(self.scales.shape)}")
        self.qsign.copy_(pack_rows(negative.to(torch.uint8), 1))
        if self.mag_bits:
            self.qmag.copy_(pack_rows(magnitude.to(torch.uint8), self.mag_bits))
        self.scales.copy_(scales.reshape(-1, 1).half())

    def _stored_bytes(self) -> int:
        return sum(dense_bytes(t) for t in (self.qsign, self.qmag, self.scales))


@register_module
class SignMagLinear(_SignMag, _CachedDequant):
    """``y = x Ŵᵀ + b`` with ``Ŵ = ±magnitude · scale`` (out × in): a sign bit and a ``mag_bits``-bit
    magnitude per weight. Seed 003's b-bit quantizer stores magnitudes 0…2^b − 1 of a max-abs
    scale and a separate sign, so **b + 1 bits** a weight (b = 1 is ternary {−s, 0, s}); binary
    weights have no magnitude bits (``mag_bits=0``: ±scale, 1 bit a weight). Buffers: see
    :class:`_SignMag`; ``bias`` float32. De-quantized through the same cache as :class:`QuantLinear`."""

    def __init__(self, in_features: int, out_features: int, mag_bits: int, per_row: bool = False, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_buffers(out_features, in_features, mag_bits, per_row)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_codes(cls, negative: torch.Tensor, magnitude: torch.Tensor | None, scales: torch.Tensor, mag_bits: int,
                   bias: torch.Tensor | None = None) -> "SignMagLinear":
        """Pack signs (out × in, bool), magnitudes (out × in integers in [0, 2^mag_bits − 1]; None
        when ``mag_bits`` is 0) and scales (one, or one per row)."""
        out_f, in_f = negative.shape
        layer = cls(in_f, out_f, mag_bits, per_row=scales.numel() > 1, bias=bias is not None)
        layer._fill(negative, magnitude, scales)
        if bias is not None:
            layer.bias.data.copy_(bias.detach().float())
        return layer

    def _packed(self) -> tuple[torch.Tensor, ...]:
        return self.qsign, self.qmag, self.scales

    def weight_matrix(self) -> torch.Tensor:
        """The de-quantized weight (out × in, float32)."""
        return _signmag_rows(self.qsign, self.qmag, self.scales, self.mag_bits, self.in_features)

    def tcomp_footprint(self) -> Footprint:
        """Stored numbers: one signed code per weight, the scales, the bias; bytes: exact."""
        n_bias = self.out_features if self.bias is not None else 0
        return Footprint(self.out_features * self.in_features + self.scales.numel() + n_bias,
                         self._stored_bytes() + (dense_bytes(self.bias) if self.bias is not None else 0),
                         self.in_features * self.out_features)

    def tcomp_config(self) -> dict:
        return {"in": self.in_features, "out": self.out_features, "mag_bits": self.mag_bits, "per_row": self.per_row,
                "bias": self.bias is not None}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: None = None) -> "SignMagLinear":
        return cls(config["in"], config["out"], config["mag_bits"], config["per_row"], config["bias"])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={1 + self.mag_bits} " \
               f"(sign + {self.mag_bits}), {'per-row' if self.per_row else 'per-tensor'} scale, bias={self.bias is not None}"


@register_module
class SignMagEmbedding(_SignMag, CompressedLinear):
    """An embedding table (vocab × dim) stored as :class:`SignMagLinear` stores a weight, row by
    row, so that a look-up unpacks only the rows it needs. No MACs: a look-up."""

    def __init__(self, num_embeddings: int, embedding_dim: int, mag_bits: int, per_row: bool = False,
                 padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self._init_buffers(num_embeddings, embedding_dim, mag_bits, per_row)

    @classmethod
    def from_codes(cls, negative: torch.Tensor, magnitude: torch.Tensor | None, scales: torch.Tensor, mag_bits: int,
                   padding_idx: int | None = None) -> "SignMagEmbedding":
        vocab, dim = negative.shape
        table = cls(vocab, dim, mag_bits, per_row=scales.numel() > 1, padding_idx=padding_idx)
        table._fill(negative, magnitude, scales)
        return table

    def _rows(self, idx: torch.Tensor) -> torch.Tensor:
        scales = self.scales[idx] if self.per_row else self.scales
        return _signmag_rows(self.qsign[idx], self.qmag[idx], scales, self.mag_bits, self.embedding_dim)

    def weight_matrix(self) -> torch.Tensor:
        """The de-quantized table (vocab × dim, float32)."""
        return self._rows(torch.arange(self.num_embeddings))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        unique, inverse = torch.unique(flat, return_inverse=True)
        return self._rows(unique)[inverse].reshape(*input_ids.shape, self.embedding_dim)

    def tcomp_footprint(self) -> Footprint:
        return Footprint(self.num_embeddings * self.embedding_dim + self.scales.numel(), self._stored_bytes(), 0)

    def tcomp_config(self) -> dict:
        return {"vocab": self.num_embeddings, "dim": self.embedding_dim, "mag_bits": self.mag_bits,
                "per_row": self.per_row, "padding_idx": self.padding_idx}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: None = None) -> "SignMagEmbedding":
        return cls(config["vocab"], config["dim"], config["mag_bits"], config["per_row"], config["padding_idx"])

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={1 + self.mag_bits} (sign + {self.mag_bits}), " \
               f"{'per-row' if self.per_row else 'per-tensor'} scale"


def int8_dynamic(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers run as int8 × int8 matmuls on CPU (torch's
    dynamic quantization: per-tensor int8 weights, activations quantized per batch on the fly).
    This is the real integer path used for speed; it is not a :class:`QuantLinear`."""
    with warnings.catch_warnings():  # torch.ao's eager quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=False)
