"""Post-training quantization methods: round-to-nearest and GPTQ of the linear layers of a whole
model (encoder, decoder or seq2seq), as configs with one handler.

    compress(model, RTNConfig(bits=8))                                             # no data needed
    compress(model, GPTQConfig(bits=4, group_size=128), calibration=batches)
    compress(model, GPTQConfig(bits=3, act_order=True, lm_head=True), calibration=batches)
    quantize(model, "gptq", bits=4, group_size=128, calibration=batches)           # the same by name

Every targeted ``nn.Linear`` becomes a :class:`~tcomp_utils.methods.quantized.QuantLinear` (packed
codes, de-quantized on the fly). Everything is checked before the first layer changes.

With calibration data the layers are processed **block by block in forward order** (GPTQ's
sequential protocol, :func:`tcomp_utils.capture.sequential`): for each block the Hessians
``H = 2XᵀX/n`` of its linear layers are accumulated from its current inputs (real tokens only),
its layers are quantized, and the block is run again, now quantized, to give the next block its
inputs. With ``true_sequential`` the layers of a block are quantized group by group in forward
order (q/k/v, then o, then gate/up, then down), each group's Hessians taken on the inputs the
already quantized groups give it (one partial pass of the block per group). The report's
``phases`` give the seconds of capture, hessians, solves, packing (codes, output errors) and rerun. RTN with calibration follows the same path only to measure each layer's output error
``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` (square-rooted) next to GPTQ's. The LM head (``lm_head=True``) is
quantized last, on the inputs the quantized model gives it. The embedding table is quantized only
when the roles name ``"embeddings"``, always by round-to-nearest (a look-up has no input
Hessian), row by row, and first, so that the blocks are calibrated on what it gives them.

**A head tied to the table** (a decoder with ``tie_word_embeddings``) stays tied when both are
quantized (``"embeddings"`` in the roles and ``lm_head=True``): the one
:class:`~tcomp_utils.methods.quantized.QuantEmbedding` is put at both places (``head=True``), its
codes stored and counted once, and the head computes with the table's round-to-nearest codes (one
stored tensor holds one rounding, so GPTQ does not re-solve a tied head). Quantizing the table
with ``lm_head=False`` leaves the head its float copy of the table (the tie is broken; warned).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn

from .. import adapters, capture
from ..progress import Bar
from ..timing import phase
from .. import targeting
from ..registry import CompressionReport, ConfigError, MethodConfig, compress, method_config, register_method
from ..targeting import check_finite, module_row, replace
from .gptq import HessianAccumulator, check_options, gptq
from .quant_grid import QuantGrid, rtn
from .lowrank import LowRankLinear
from .quantized import PLAIN_LAYER, QuantEmbedding, QuantLinear, QuantLowRankLinear, plain_layer


@dataclass
class QuantConfig(MethodConfig):
    """Roles (default: every linear role; ``"embeddings"`` adds the table) and layers, the grid
    (``bits`` in [2, 8]; ``group_size`` None for one scale per output channel, else input columns
    per group; ``symmetric``), and ``lm_head`` (quantize the output head too; a head tied to a
    quantized table becomes that table: see the module docstring)."""

    bits: int = 4
    group_size: int | None = None
    symmetric: bool = False
    lm_head: bool = False

    def validate(self) -> None:
        super().validate()
        self.grid()

    def grid(self) -> QuantGrid:
        try:
            return QuantGrid(self.bits, self.group_size, self.symmetric)
        except ValueError as err:
            raise ConfigError(str(err)) from None


@dataclass
class RTNConfig(QuantConfig):
    """Round-to-nearest on the grid (calibration, if given, only measures output errors)."""


@dataclass
class GPTQConfig(QuantConfig):
    """GPTQ (see :func:`tcomp_utils.methods.gptq.gptq`): ``block_size`` columns per lazy update,
    ``damp`` fraction of mean diag(H) added, ``act_order`` (columns by decreasing diag H; the
    default: it wins across the bits × grouping table of ``06_gptq_table``), ``static_groups``
    (group grids fitted on the original weights, so act-order keeps contiguous groups and stores no
    column map; the default), ``true_sequential`` (see the module docstring)."""

    block_size: int = 128
    damp: float = 0.01
    act_order: bool = True
    static_groups: bool = True
    true_sequential: bool = False

    needs_calibration: ClassVar[bool] = True

    def validate(self) -> None:
        super().validate()
        try:
            check_options(self.block_size, self.damp)
        except ValueError as err:
            raise ConfigError(str(err)) from None


def _quantizable(module: nn.Module) -> bool:
    return plain_layer(module) or (isinstance(module, LowRankLinear) and module.shared is None)


def _lm_head(model: nn.Module) -> adapters.RoleModule:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        raise ValueError(f"lm_head=True but {type(model).__name__} has no linear output head")
    return adapters.RoleModule(next(p for p, m in model.named_modules() if m is head), "lm_head", None, None, head)


def _tied_table(model: nn.Module, found: list[adapters.RoleModule]) -> adapters.RoleModule | None:
    """The targeted token table (role ``embeddings``) whose weight the output head uses, if any."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        return None
    return next((rm for rm in found if rm.role == "embeddings" and rm.module.weight is head.weight), None)


def _warn_if_tied(model: nn.Module, found: list[adapters.RoleModule]) -> None:
    if _tied_table(model, found) is not None:
        # the head keeps the float table: the tie is broken and the quantized table is stored beside it
        warnings.warn(f"{type(model).__name__}'s output head is tied to its token table: quantizing the table "
                      "leaves the head's float32 copy stored beside it (the tie is broken); pass lm_head=True to "
                      "keep the head tied to the quantized table (stored once)", stacklevel=3)


def _quantize_layer(linear: nn.Linear, config: QuantConfig, grid: QuantGrid, H: torch.Tensor | None) -> tuple[QuantLinear, dict]:
    t0 = time.perf_counter()
    W = linear.weight.detach().float()
    with phase("solves"):
        if isinstance(config, GPTQConfig):
            qw = gptq(W, H, grid, block_size=config.block_size, damp=config.damp, act_order=config.act_order,
                      static_groups=config.static_groups)
        else:
            qw = rtn(W, grid)
    with phase("packing"):
        q = QuantLinear.from_quantized(qw, linear.bias)
        row = _errors(W, qw.dequantize(), H)
    row["seconds"] = time.perf_counter() - t0
    return q, row


def _errors(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor | None) -> dict:
    """What :func:`tcomp_utils.targeting.module_row` measures the relative weight error on (``weight``,
    ``approx``) and, given the input Hessian, the relative output error
    sqrt(tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)), as sums of products (no out × out matrix)."""
    row = dict(weight=W, approx=W_hat, output_error=float("nan"))
    if H is not None:
        dW, H = W - W_hat, H.float()
        num, den = ((dW @ H) * dW).sum(), ((W @ H) * W).sum()
        row["output_error"] = (num / den).clamp(min=0).sqrt().item() if den > 0 else float("nan")
    return row


def _quantize_lowrank(layer: LowRankLinear, config: QuantConfig, grid: QuantGrid,
                      H: torch.Tensor | None) -> tuple[QuantLowRankLinear, dict]:
    """Both factors of a low-rank layer, Vᵀ on the layer's inputs (Hessian ``H``), then U on what
    the quantized Vᵀ gives (Hessian V̂ᵀ H V̂, exact: no second capture)."""
    t0 = time.perf_counter()
    first = nn.Linear(layer.in_features, layer.rank, bias=False)
    second = nn.Linear(layer.rank, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(layer.right)
        second.weight.copy_(layer.left)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    q1, _ = _quantize_layer(first, config, grid, H)
    V = q1.weight_matrix()
    q2, _ = _quantize_layer(second, config, grid, None if H is None else V @ H.float() @ V.T)
    q = QuantLowRankLinear(q1, q2)
    row = _errors(layer.weight_matrix().detach().float(), q.weight_matrix(), H)
    row["seconds"] = time.perf_counter() - t0
    return q, row


def _quantize_embedding(table: nn.Embedding, grid: QuantGrid) -> tuple[QuantEmbedding, dict]:
    t0 = time.perf_counter()
    W = table.weight.detach().float()
    qw = rtn(W, grid)
    row = _errors(W, qw.dequantize(), None)
    return QuantEmbedding.from_quantized(qw, table.padding_idx), row | {"seconds": time.perf_counter() - t0}


def _shared_gram_sink(acc: dict[str, HessianAccumulator]) -> Callable[[str, torch.Tensor], None]:
    """A capture sink adding each layer's inputs to its accumulator; layers called one after the
    other on the very same input rows (q/k/v, gate/up) share one Gram matrix product."""
    last: dict = {}

    def sink(path: str, x: torch.Tensor) -> None:
        prev = last.get("x")  # held, so its memory cannot be reused: an equal pointer means the same rows
        if (prev is not None and prev.data_ptr() == x.data_ptr() and prev.shape == x.shape
                and prev.stride() == x.stride() and prev._version == x._version and prev.dtype == x.dtype):
            acc[path].add_gram(last["gram"], x.shape[0])
        else:
            last["x"], last["gram"] = x, acc[path].add(x)
    return sink


def _calibrated_pass(model: nn.Module, targets: list[adapters.RoleModule], calibration: list[dict],
                     quantize_one: Callable[[adapters.RoleModule, torch.Tensor], None], bar: Bar,
                     true_sequential: bool = False) -> None:
    """Quantize ``targets`` block by block in forward order, each on the inputs the already
    quantized blocks (and, with ``true_sequential``, layer groups) give it, then the LM head (if
    targeted) on the quantized model's outputs."""
    in_blocks = [rm for rm in targets if rm.stack is not None]
    for step in capture.sequential(model, calibration, in_blocks):
        todo = [rm for rm in in_blocks if rm.stack == step.stack and rm.layer == step.layer]
        for group in step.input_groups(todo) if true_sequential else [todo]:
            acc = {rm.path: HessianAccumulator(rm.module.in_features) for rm in group}
            with phase("hessians"):
                step.run(group, _shared_gram_sink(acc), stop=True)
            for rm in group:
                quantize_one(rm, acc[rm.path].H)
                bar.update()
    for rm in targets:
        if rm.role == "lm_head":
            acc = HessianAccumulator(rm.module.in_features)
            with phase("hessians"):
                capture.stream(model, [rm], calibration, lambda path, x: acc.add(x))
            quantize_one(rm, acc.H)
            bar.update()


def _quantize(model: nn.Module, config: QuantConfig, calibration: list[dict] | None, progress: bool) -> list[dict]:
    grid = config.grid()
    if calibration:  # before the embedding table, quantized ahead of the calibrated pass, changes
        capture.check_lengths(model, calibration)
    targets = targeting.targets(model, config.target_roles(model), config.layers, accept=_quantizable,
                                extra=(_lm_head(model),) if config.lm_head else (), action="quantize", finite=False,
                                wants=f"{PLAIN_LAYER} or a low-rank layer with its own factors (not one whose "
                                      "right factor is shared across layers: mode 'concatenated')")
    if not config.lm_head:
        _warn_if_tied(model, targets)
    # a head tied to a targeted table becomes the quantized table itself (not a second copy)
    tied = _tied_table(model, targets) if config.lm_head else None
    tied_head = next((rm for rm in targets if rm.role == "lm_head"), None) if tied is not None else None
    if tied_head is not None:
        targets = [rm for rm in targets if rm is not tied_head]
    check_finite(targets)
    rows = []

    def quantize_one(rm: adapters.RoleModule, H: torch.Tensor | None) -> None:
        m = rm.module
        try:
            if rm.role == "embeddings":
                q, row = _quantize_embedding(m, grid)
            elif isinstance(m, LowRankLinear):
                q, row = _quantize_lowrank(m, config, grid, H)
            else:
                q, row = _quantize_layer(m, config, grid, H)
        except torch.linalg.LinAlgError as err:
            raise ValueError(f"{config.method} of {rm.path}: its input Hessian is not positive definite even with "
                             f"damping {getattr(config, 'damp', None)} (inputs NaN, or too few distinct tokens); "
                             f"raise damp or give more calibration data ({err})") from None
        # every path to the module, and for a table every embedding tied to its weight (T5's
        # encoder/decoder embed_tokens share the `shared` table): they all use the one quantized table
        replace(model, rm, q, tied_weights=rm.role == "embeddings")
        if rm is tied:
            q.head = True
            replace(model, tied_head, q)
        rows.append(module_row(rm, m, q, **row))

    # embeddings first (a look-up table has no input Hessian: always round-to-nearest), so the
    # blocks are calibrated on what the quantized table gives them
    for rm in targets:
        if rm.role == "embeddings":
            quantize_one(rm, None)
    layers_todo = [rm for rm in targets if rm.role != "embeddings"]
    with Bar(total=len(layers_todo), desc=f"{config.method} {grid.describe()}", disable=not progress) as bar:
        if not calibration:
            for rm in layers_todo:
                quantize_one(rm, None)
                bar.update()
        else:
            _calibrated_pass(model, layers_todo, calibration, quantize_one, bar, getattr(config, "true_sequential", False))
    return rows


register_method("rtn", RTNConfig, family="quantization",
                description="Round-to-nearest on a min-max grid per channel or group")(_quantize)
register_method("gptq", GPTQConfig, family="quantization",
                description="GPTQ: columns quantized in turn, the error spread along the inverse Hessian")(_quantize)


def quantize(model: nn.Module, method: str = "gptq", bits: int = 4, group_size: int | None = None,
             calibration: list[dict] | None = None, progress: bool = True, **fields) -> CompressionReport:
    """``compress(model, method_config(method, bits=bits, group_size=group_size, **fields), calibration)``
    for ``method`` ``"rtn"`` or ``"gptq"``; ``fields`` are the config's other fields (``roles``,
    ``layers``, ``symmetric``, ``lm_head``, ``block_size``, ``damp``, ``act_order``, ``static_groups``,
    ``true_sequential``)."""
    if method not in ("rtn", "gptq"):
        raise ConfigError(f"unknown quantization method {method!r}; allowed: rtn, gptq")
    return compress(model, method_config(method, bits=bits, group_size=group_size, **fields), calibration, progress=progress)
