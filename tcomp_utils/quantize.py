"""One call to quantize the linear layers of a whole model (encoder, decoder or seq2seq) with
round-to-nearest or GPTQ, and the report that comes back.

    report = quantize(model, "rtn", bits=8)                                   # no data needed
    report = quantize(model, "gptq", bits=4, group_size=128, calibration=batches)
    report = quantize(model, "gptq", bits=3, calibration=batches, act_order=True, lm_head=True)

Every targeted ``nn.Linear`` becomes a :class:`~tcomp_utils.quantized.QuantLinear` (packed
codes, de-quantized on the fly). Everything is checked before the first layer changes: bit width,
group size, roles, and that GPTQ has
calibration data.

With calibration data the layers are processed **block by block in forward order** (GPTQ's
sequential protocol): the inputs of the first block are recorded once, then for each block the
Hessians ``H = 2XᵀX/n`` of its linear layers are accumulated from its current inputs (padding
positions dropped), its layers are quantized, and the block is run again, now quantized, to give
the next block's inputs. So every block is calibrated on the outputs of the already-quantized
blocks before it. RTN with calibration follows the same path only to measure each layer's output
error ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` (square-rooted) next to GPTQ's. The LM head (``lm_head=True``)
is quantized last, on the inputs the quantized model gives it; a head tied to the input
embeddings is untied. The embedding table is quantized only when the roles name
``"embeddings"``, always by round-to-nearest (a look-up has no input Hessian), row by row, and
first, so that the blocks are calibrated on what the quantized table gives them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from . import adapters, budget
from .factorize import expand_roles
from .gptq import HessianAccumulator, check_options, gptq
from .quant_grid import QuantGrid, rtn
from .quantized import QuantEmbedding, QuantLinear

METHODS = ("rtn", "gptq")


@dataclass
class QuantReport:
    """What :func:`quantize` did: one row per layer (path, role, layer, shape, relative weight
    error, relative output error on calibration inputs, bytes before/after, seconds), footprints
    of the whole model before/after, total seconds."""

    method: str
    grid: QuantGrid
    modules: pd.DataFrame
    before: budget.Footprint
    after: budget.Footprint
    seconds: float

    def summary(self) -> dict:
        return {"method": self.method, "bits": self.grid.bits, "group_size": self.grid.group_size or 0,
                "symmetric": self.grid.symmetric, "modules": len(self.modules),
                "mean_rel_error": float(self.modules.rel_error.mean()),
                "mean_output_error": float(self.modules.output_error.mean()),
                "bytes_before": self.before.bytes, "bytes_after": self.after.bytes,
                "params_before": self.before.params, "params_after": self.after.params, "seconds": self.seconds}


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the inputs it needs are recorded."""


def _targets(model: nn.Module, roles: Iterable[str], layers: list[int] | None,
             lm_head: bool) -> list[adapters.RoleModule]:
    found = []
    for role in roles:
        found += adapters.find_modules(model, role, None if role == "embeddings" else layers)
    if lm_head:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not isinstance(head, nn.Linear):
            raise ValueError(f"lm_head=True but {type(model).__name__} has no linear output head")
        path = next(p for p, m in model.named_modules() if m is head)
        found.append(adapters.RoleModule(path, "lm_head", None, None, head))
    for rm in found:
        if rm.role == "embeddings":
            if not isinstance(rm.module, nn.Embedding):
                raise TypeError(f"{rm.path} (embeddings) is a {type(rm.module).__name__}, not an nn.Embedding")
        elif not isinstance(rm.module, nn.Linear):
            raise TypeError(f"{rm.path} ({rm.role}) is a {type(rm.module).__name__}, not an nn.Linear: "
                            "it is already compressed or cannot be quantized")
    if not found:
        raise ValueError(f"no module to quantize for roles {list(roles)} and layers {layers}")
    return found


def _quantize_layer(linear: nn.Linear, method: str, grid: QuantGrid, H: torch.Tensor | None,
                    opts: dict) -> tuple[QuantLinear, dict]:
    t0 = time.perf_counter()
    W = linear.weight.detach().float()
    qw = gptq(W, H, grid, **opts) if method == "gptq" else rtn(W, grid)
    q = QuantLinear.from_quantized(qw, linear.bias)
    dW = (W - qw.dequantize()).double()
    row = dict(rel_error=(dW.norm() / W.double().norm()).item(), output_error=float("nan"))
    if H is not None:
        num, den = torch.trace(dW @ H @ dW.T), torch.trace(W.double() @ H @ W.double().T)
        row["output_error"] = (num / den).sqrt().item() if den > 0 else float("nan")
    row["seconds"] = time.perf_counter() - t0
    return q, row


def _quantize_embedding(table: nn.Embedding, grid: QuantGrid) -> tuple[QuantEmbedding, dict]:
    t0 = time.perf_counter()
    W = table.weight.detach().float()
    qw = rtn(W, grid)
    dW = W - qw.dequantize()
    row = dict(rel_error=(dW.norm() / W.norm()).item(), output_error=float("nan"))
    return QuantEmbedding.from_quantized(qw, table.padding_idx), row | {"seconds": time.perf_counter() - t0}


def _positions(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (..., in) at real tokens: ``mask`` (batch × seq) when it matches x's leading shape."""
    if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
        return x[mask.bool()]
    return x.reshape(-1, x.shape[-1])


class _HessianHooks:
    """Forward hooks accumulating each layer's input Hessian; ``mask`` is the current batch's."""

    def __init__(self, modules: dict[str, nn.Linear]):
        self.acc = {p: HessianAccumulator(m.in_features) for p, m in modules.items()}
        self.mask: torch.Tensor | None = None
        self.handles = [m.register_forward_hook(self._hook(p)) for p, m in modules.items()]

    def _hook(self, path: str):
        def hook(module, inputs, output):
            self.acc[path].add(_positions(self.mask, inputs[0]))
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _forward(model: nn.Module, batch: dict) -> None:
    kwargs = dict(batch)
    if getattr(model.config, "use_cache", None) is not None:
        kwargs["use_cache"] = False  # no key/value cache object shared between replayed blocks
    model(**kwargs)


def _block_inputs(model: nn.Module, blocks: nn.ModuleList, first: int, last: int,
                  batches: list[dict]) -> tuple[list[torch.Tensor], dict[int, list]]:
    """Run the model on each batch; return the hidden states entering block ``first`` (one per
    batch) and, for blocks ``first..last``, their other inputs (args after the hidden states,
    kwargs: masks, position embeddings, encoder states...), which quantization does not change."""
    hidden, other = [], {i: [] for i in range(first, last + 1)}

    def pre_hook(i):
        def hook(module, args, kwargs):
            if i == first:
                hidden.append(args[0] if args else kwargs["hidden_states"])
            other[i].append((args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"}))
            if i == last:
                raise _Stop
        return hook

    handles = [blocks[i].register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i in range(first, last + 1)]
    try:
        for batch in batches:
            try:
                _forward(model, batch)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return hidden, other


def _run_block(block: nn.Module, hidden: torch.Tensor, other: tuple[tuple, dict]) -> torch.Tensor:
    args, kwargs = other
    out = block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def _calibrated_pass(model: nn.Module, targets: list[adapters.RoleModule], calibration: list[dict],
                     replace: Callable[[adapters.RoleModule, torch.Tensor], None], bar: tqdm) -> None:
    """Quantize ``targets`` block by block in forward order, each on the inputs the already
    quantized blocks give it, then the LM head (if targeted) on the quantized model's outputs."""
    for stack_name, (_, blocks) in adapters.layer_stacks(model).items():
        by_layer: dict[int, list[adapters.RoleModule]] = {}
        for rm in targets:
            if rm.stack == stack_name:
                by_layer.setdefault(rm.layer, []).append(rm)
        if not by_layer:
            continue
        first, last = min(by_layer), max(by_layer)
        hidden, other = _block_inputs(model, blocks, first, last, calibration)
        mask_key = "decoder_attention_mask" if stack_name == "decoder" else "attention_mask"
        masks = [b.get(mask_key if "decoder_input_ids" in b else "attention_mask") for b in calibration]
        for i in range(first, last + 1):
            block, todo = blocks[i], by_layer.get(i, [])
            if todo:
                hooks = _HessianHooks({rm.path: rm.module for rm in todo})
                try:
                    for b, h in enumerate(hidden):
                        hooks.mask = masks[b]
                        _run_block(block, h, other[i][b])
                finally:
                    hooks.remove()
                for rm in todo:
                    replace(rm, hooks.acc[rm.path].H)
                    bar.update()
            if i < last:
                hidden = [_run_block(block, h, other[i][b]) for b, h in enumerate(hidden)]
    for rm in targets:
        if rm.role == "lm_head":
            hooks = _HessianHooks({rm.path: rm.module})
            try:
                for b in calibration:
                    hooks.mask = b.get("attention_mask")
                    _forward(model, b)
            finally:
                hooks.remove()
            replace(rm, hooks.acc[rm.path].H)
            bar.update()


@torch.no_grad()
def quantize(model: nn.Module, method: str = "gptq", bits: int = 4, group_size: int | None = None,
             symmetric: bool = False, roles: list[str] | str | None = None, layers: list[int] | None = None,
             calibration: list[dict] | None = None, lm_head: bool = False, block_size: int = 128,
             damp: float = 0.01, act_order: bool = False, static_groups: bool = False,
             progress: bool = True) -> QuantReport:
    """Quantize ``model`` in place; return a :class:`QuantReport`.

    ``roles``: a role, role group or list (default: every linear role of the architecture, cross
    attention included; ``"embeddings"`` adds the embedding table). ``calibration``: batches for
    ``model(**batch)`` (an ``attention_mask`` marks real tokens), required by GPTQ, optional for RTN
    (then only used to report output errors). ``bits`` in [2, 8]; ``group_size`` None (per output
    channel) or a number of input columns per group;
    ``block_size``, ``damp``, ``act_order``, ``static_groups``: GPTQ's options (see
    :func:`tcomp_utils.gptq.gptq`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; allowed: {', '.join(METHODS)}")
    grid = QuantGrid(bits, group_size, symmetric)
    if roles is None:
        roles = [r for r in adapters.get_adapter(model).roles() if r != "embeddings"]
    targets = _targets(model, expand_roles(roles), layers, lm_head)
    if method == "gptq" and not calibration:
        raise ValueError("GPTQ needs calibration batches (calibration=[{'input_ids': ..., 'attention_mask': ...}, ...])")
    bad = [i for i, b in enumerate(calibration or []) if not (isinstance(b, dict) and "input_ids" in b)]
    if bad:
        raise ValueError(f"calibration batch {bad[0]} is not a dict with 'input_ids' (batches are model(**batch) inputs)")
    opts = dict(block_size=block_size, damp=damp, act_order=act_order, static_groups=static_groups) if method == "gptq" else {}
    if method == "gptq":
        check_options(block_size, damp)

    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    before = budget.footprint(model)
    rows = []

    def replace(rm: adapters.RoleModule, H: torch.Tensor | None) -> None:
        m = rm.module
        if rm.role == "embeddings":
            q, row = _quantize_embedding(m, grid)
            shape = dict(in_features=m.embedding_dim, out_features=m.num_embeddings)
        else:
            q, row = _quantize_layer(m, method, grid, H, opts)
            shape = dict(in_features=m.in_features, out_features=m.out_features)
        # every path to the module, and for a table every embedding tied to its weight (T5's
        # encoder/decoder embed_tokens share the `shared` table): they all use the one quantized table
        same = [p for p, sub in model.named_modules(remove_duplicate=False)
                if sub is m or (rm.role == "embeddings" and isinstance(sub, nn.Embedding) and sub.weight is m.weight)]
        for path in same:
            adapters.set_module(model, path, q)
        dense = budget.dense_bytes(m.weight) + (budget.dense_bytes(m.bias) if getattr(m, "bias", None) is not None else 0)
        rows.append(dict(path=rm.path, role=rm.role, stack=rm.stack, layer=rm.layer, **shape, bytes_before=dense,
                         bytes_after=q.tcomp_footprint().bytes, **row))

    # embeddings first (a look-up table has no input Hessian: always round-to-nearest), so the
    # blocks are calibrated on what the quantized table gives them
    for rm in targets:
        if rm.role == "embeddings":
            replace(rm, None)
    layers_todo = [rm for rm in targets if rm.role != "embeddings"]
    with tqdm(total=len(layers_todo), desc=f"{method} {grid.describe()}", disable=not progress) as bar:
        if not calibration:
            for rm in layers_todo:
                replace(rm, None)
                bar.update()
        else:
            _calibrated_pass(model, layers_todo, calibration, replace, bar)
    model.train(was_training)
    table = pd.DataFrame(rows)
    table["layer"] = table["layer"].astype("Int64")
    return QuantReport(method, grid, table, before, budget.footprint(model), time.perf_counter() - t0)
