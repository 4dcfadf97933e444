"""The units of composable pruning (:mod:`tcomp_utils.methods.composable`): pruning a site,
fine-tuning the pruned module on its own, putting units into a model, and unit files.

* ``heads`` (an attention block): head-wise L1 structured pruning, heads ranked by the L1 norm of
  their rows of Q, K and V, the ``rate × heads`` (rounded half up) smallest removed *physically*
  (:func:`tcomp_utils.methods.heads.apply_plans`: narrower Q/K/V, the output projection's columns
  of those heads dropped, the head count lowered; a T5/mT5 attention also adds only its kept
  heads' columns of the stack's shared position bias, :mod:`tcomp_utils.methods.t5_heads`).
  Module-level fine-tuning trains the kept Q/K/V rows; the output projection is not part of this
  unit (it is its own ``l1`` site) and stays as it is while they train.
* ``l1`` (a linear layer): L1 unstructured pruning with ``torch.nn.utils.prune.l1_unstructured``;
  the mask stays on through both fine-tunings, so pruned weights stay zero, and :func:`to_sparse`
  finally makes it permanent and stores the matrix sparse
  (:class:`tcomp_utils.methods.pruning.SparseLinear`: values, column indices, row pointers, all counted).

A unit's pruned module(s) travel as a *payload* (:func:`prune_unit`); :func:`finetune_unit` trains
it to reproduce the original module's outputs on calls :func:`record` captured; :func:`compose`
installs a configuration's payloads in a copy of the model (linear units first, then heads, which
drop the output projection's columns of the heads they removed: those columns only ever multiply
zeros); :func:`save_payload` writes one to a unit file.
"""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from .. import adapters, capture, trainer
from .composable_sites import CompositionError, Configuration, Site, Unit, sites
from . import t5_heads
from .heads import HeadUnits, LayerPlan, PrunableLayer, apply_plans, check_head_count_source


# ---------------------------------------------------------------------------------------- pruning
def _weight(linear: nn.Module) -> torch.Tensor:
    """A linear layer's effective weight (masked when ``torch.nn.utils.prune`` is on it)."""
    return linear.weight.detach()


def head_scores(model: nn.Module, site: Site) -> np.ndarray:
    """L1 norm of each head's rows of Q, K and V, shape (heads,)."""
    d = adapters.head_structure(model).head_dim
    total = 0
    for role in tuple(site.paths)[:3]:
        w = _weight(model.get_submodule(site.paths[role])).abs()
        total = total + w.reshape(-1, d, w.shape[1]).sum(dim=(1, 2))
    return total.double().numpy()


def kept_heads(model: nn.Module, site: Site, rate: float) -> np.ndarray:
    """Indices (ascending) of the heads kept at ``rate``: the ``rate × heads`` (rounded half up) of
    smallest L1 norm are removed; at least one head stays."""
    scores = head_scores(model, site)
    drop = int(np.floor(rate * len(scores) + 0.5))
    if drop >= len(scores):
        raise CompositionError(f"{site.id}: rate {rate} removes all {len(scores)} heads; at most "
                               f"{(len(scores) - 1) / len(scores):.3f} keeps one")
    order = np.argsort(scores, kind="stable")  # smallest first
    return np.sort(order[drop:])


def _head_rows(kept: np.ndarray, head_dim: int) -> torch.Tensor:
    """Rows of Q/K/V (columns of the output projection) of the ``kept`` heads."""
    return torch.from_numpy(np.concatenate([np.arange(h * head_dim, (h + 1) * head_dim) for h in kept]))


def _check_heads_supported(model: nn.Module, site: Site) -> None:
    attention = model.get_submodule(site.attention_path)
    if t5_heads.shares_position_bias(attention) and not t5_heads.supported(attention):
        raise adapters.UnsupportedArchitectureError(
            f"{site.id}: this attention ({type(attention).__name__}) shares one relative position bias across its "
            "layers and is not a T5 or mT5 attention, so removing its heads would misalign the others; prune its "
            "linear layers (l1) only")
    check_head_count_source(attention, f"{site.id} ({type(attention).__name__})", "prune its linear layers (l1) only")
    heads = adapters.head_structure(model)
    if heads.n_kv_heads != heads.n_heads:
        raise adapters.UnsupportedArchitectureError(f"{site.id}: grouped-query attention is not supported by "
                                                    "composable head pruning")


def remove_heads(root: nn.Module, site: Site, kept: np.ndarray, head_dim: int) -> None:
    """Remove every head of ``site`` (paths relative to ``root``) not in ``kept`` (indices among its
    current heads, ascending), in place, with :func:`tcomp_utils.methods.heads.apply_plans`: Q/K/V
    rows, the output projection's columns (and its L1 mask's, when it has one) and the head count.
    A T5/mT5 attention first becomes :class:`tcomp_utils.methods.t5_heads.HeadPrunedT5Attention`
    (or its mT5 twin), which adds its kept heads' columns of the stack's shared position bias and
    passes the full-head bias on."""
    roles = tuple(site.paths)
    rms = [adapters.RoleModule(site.paths[r], r, site.stack, site.layer, root.get_submodule(site.paths[r]))
           for r in roles]
    n = rms[0].module.out_features // head_dim
    mask = getattr(rms[3].module, "weight_mask", None)
    attention = root.get_submodule(site.attention_path)
    if t5_heads.supported(attention):  # checked before anything changes: apply_plans cannot fail half-way
        t5_heads.keep_heads(attention, kept)
    layer = PrunableLayer(site.stack, site.layer, attention, *rms)
    apply_plans(root, [layer], [HeadUnits(head_dim, n, n)], [LayerPlan(heads=np.asarray(kept))])
    if mask is not None:  # the output projection keeps its L1 mask on the columns that remain
        new = root.get_submodule(site.paths[roles[3]])
        adapters.set_module(root, site.paths[roles[3]], _masked_linear(new.weight.detach(), new.bias,
                                                                       mask[:, _head_rows(kept, head_dim)]))


def l1_prune(linear: nn.Linear, rate: float) -> nn.Linear:
    """A copy of ``linear`` with ``torch.nn.utils.prune``'s L1 unstructured mask at ``rate`` (the
    mask stays on: fine-tuning keeps the pruned weights at zero)."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"L1 pruning needs an nn.Linear, got {type(linear).__name__}")
    new = copy.deepcopy(linear)
    prune.l1_unstructured(new, "weight", amount=float(rate))
    return new


def _masked_linear(weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor) -> nn.Linear:
    """A new ``nn.Linear`` of ``weight`` with ``torch.nn.utils.prune``'s mask ``mask`` on it."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    prune.custom_from_mask(lin, "weight", mask)
    return lin


def copy_pruned(lin: nn.Linear) -> nn.Linear:
    """A copy of a masked linear layer (``copy.deepcopy`` refuses its computed ``weight``)."""
    return _masked_linear(lin.weight_orig.detach(), None if lin.bias is None else lin.bias.detach(),
                          lin.weight_mask.clone())


def prune_unit(model: nn.Module, unit: Unit) -> dict:
    """The unit's pruned module(s) from ``model`` (not changed), as a payload :func:`compose`
    installs: ``{"kept", "query", "key", "value"}`` (narrow ``nn.Linear``) for heads,
    ``{"linear"}`` (masked) for l1."""
    site = sites(model)[unit.site]
    if unit.kind == "l1":
        return {"linear": l1_prune(model.get_submodule(site.paths["linear"]), unit.rate)}
    _check_heads_supported(model, site)
    kept = kept_heads(model, site, unit.rate)
    rows = _head_rows(kept, adapters.head_structure(model).head_dim)
    out = {"kept": kept}
    for role, name in zip(tuple(site.paths)[:3], ("query", "key", "value")):
        m = model.get_submodule(site.paths[role])
        layer = nn.Linear(m.in_features, len(rows), bias=m.bias is not None, device=m.weight.device,
                          dtype=m.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(m.weight.detach()[rows])
            if m.bias is not None:
                layer.bias.copy_(m.bias.detach()[rows])
        out[name] = layer
    return out


# ------------------------------------------------------------------------------------ composition
def compose(model: nn.Module, configuration: Configuration, payloads: dict[str, dict]) -> nn.Module:
    """A copy of ``model`` with each unit of ``configuration`` replaced by its payload (from
    :func:`prune_unit`, fine-tuned or not; by unit key): linear units first, then heads (which
    drop the output projection's columns of the removed heads)."""
    missing = [u.key for u in configuration.units if u.key not in payloads]
    if missing:
        raise CompositionError(f"configuration {configuration.name!r}: no module for unit {missing[0]}"
                               + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    out = copy.deepcopy(model)
    found = sites(out)
    for unit in sorted(configuration.units, key=lambda u: u.kind != "l1"):
        site, payload = found[unit.site], payloads[unit.key]
        if unit.kind == "l1":
            adapters.set_module(out, site.paths["linear"], copy_pruned(payload["linear"]))
            continue
        _check_heads_supported(out, site)
        remove_heads(out, site, np.asarray(payload["kept"]), adapters.head_structure(out).head_dim)
        for role, name in zip(tuple(site.paths)[:3], ("query", "key", "value")):
            adapters.set_module(out, site.paths[role], copy.deepcopy(payload[name]))
    return out


def to_sparse(model: nn.Module) -> int:
    """Make every L1 mask permanent and store those layers as ``SparseLinear`` (values, column
    indices, row pointers: the bytes the budget counter sees). Returns how many were converted."""
    from .pruning import SparseLinear

    done = 0
    for path, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
            adapters.set_module(model, path, SparseLinear.from_dense(module.weight.detach(),
                                                                     None if module.bias is None else module.bias.detach()))
            done += 1
    return done


# ------------------------------------------------------------------------- module-level fine-tuning
@dataclass
class Call:
    """One recorded call of a site's module: the inputs, the original output and the mask of real
    tokens (None: every position)."""

    args: tuple
    kwargs: dict
    output: torch.Tensor
    mask: torch.Tensor | None


def _detached(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (list, tuple)):
        return type(x)(_detached(v) for v in x)
    if isinstance(x, dict):
        return {k: _detached(v) for k, v in x.items()}
    return x


def _decoder_mask(batch: dict) -> torch.Tensor | None:
    """Real decoder positions of a training batch: position t predicts label t (-100: padding)."""
    labels = batch.get("labels")
    return None if labels is None else labels != -100


@torch.no_grad()
def record(model: nn.Module, batches: Iterable[dict], site_ids: Iterable[str]) -> dict[str, list[Call]]:
    """Run ``model`` on ``batches`` (no cache) and record every call of the sites' modules: an
    attention block's inputs and first output, a linear layer's. The model is not changed."""
    found = sites(model)
    wanted = {s: found[s] for s in site_ids}
    batches = list(batches)
    capture.check_lengths(model, batches)  # a too long batch named before any hook is placed
    calls: dict[str, list[Call]] = {s: [] for s in wanted}
    current: dict = {}
    hooks = []
    for sid, site in wanted.items():
        path = site.paths["linear"] if site.kind == "l1" else site.block_path

        def hook(module, args, kwargs, output, sid=sid, site=site):
            out = output[0] if isinstance(output, tuple) else output
            mask = _decoder_mask(current) if site.stack == "decoder" else current.get("attention_mask")
            calls[sid].append(Call(_detached(args), _detached(kwargs), out.detach(),
                                   None if mask is None else mask.bool()))
        hooks.append(model.get_submodule(path).register_forward_hook(hook, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            current.clear()
            current.update(batch)
            capture.forward(model, batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return calls


class _HeadsModule(nn.Module):
    """A copy of a site's attention block (:attr:`Site.block_path`) with the unit's narrow Q/K/V (the only parameters it
    trains), called like the block on its recorded calls."""

    def __init__(self, model: nn.Module, site: Site, payload: dict):
        super().__init__()
        self.attention = copy.deepcopy(model.get_submodule(site.block_path))
        def below(path: str) -> str:  # a path inside the block, as seen from this module
            return "attention" + path[len(site.block_path):]

        local = Site(site.id, "heads", {r: below(p) for r, p in site.paths.items()}, site.stack, site.layer,
                     below(site.attention_path))
        remove_heads(self, local, np.asarray(payload["kept"]), adapters.head_structure(model).head_dim)
        for role, name in zip(tuple(local.paths)[:3], ("query", "key", "value")):
            adapters.set_module(self, local.paths[role], payload[name])
        self.trainable = [p for name in ("query", "key", "value") for p in payload[name].parameters()]

    def forward(self, *args, **kwargs) -> torch.Tensor:
        out = self.attention(*args, **kwargs)
        return out[0] if isinstance(out, tuple) else out


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None and tuple(mask.shape) == tuple(pred.shape[:-1]):
        return nn.functional.mse_loss(pred[mask], target[mask])
    return nn.functional.mse_loss(pred, target)


def finetune_unit(model: nn.Module, unit: Unit, payload: dict, calls: list[Call], steps: int = 100,
                  lr: float = 1e-3, seed: int = 0) -> trainer.TrainResult:
    """Train a unit's pruned module (in place in ``payload``) to reproduce the original module's
    outputs on the recorded ``calls`` (MSE over real tokens, AdamW, constant ``lr``, one recorded
    batch a step); the L1 mask keeps pruned weights at zero. Returns the trainer's result (its
    ``log`` is the loss curve)."""
    if not calls:
        raise ValueError(f"no recorded calls for {unit.key}")
    torch.manual_seed(seed)
    if unit.kind == "l1":
        module = payload["linear"]
        params = [module.weight_orig, *([module.bias] if module.bias is not None else [])]
    else:
        module = _HeadsModule(model, sites(model)[unit.site], payload)
        params = module.trainable
    config = trainer.TrainConfig(steps=steps, lr=lr, weight_decay=0.0, schedule="constant", warmup_steps=0,
                                 max_grad_norm=1.0, progress=False, desc=unit.key)
    return trainer.train(module, trainer.ListBatches(calls, seed=seed), config, parameters=params,
                         loss=lambda m, c: _masked_mse(m(*c.args, **c.kwargs), c.output, c.mask))


# ------------------------------------------------------------------------------------- unit files
def save_payload(path: str | os.PathLike, unit: Unit, payload: dict) -> Path:
    """Write a unit's module(s) to ``path`` atomically (a ``.pt`` of tensors and the unit)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if unit.kind == "l1":
        lin = payload["linear"]
        state = {"weight": _weight(lin).clone(), "mask": lin.weight_mask.clone(),
                 "bias": None if lin.bias is None else lin.bias.detach().clone()}
    else:
        state = {"kept": np.asarray(payload["kept"]).tolist(),
                 **{n: {k: v.detach().clone() for k, v in payload[n].state_dict().items()}
                    for n in ("query", "key", "value")}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    torch.save({"unit": [unit.site, unit.kind, unit.rate], "state": state}, tmp)
    Path(tmp).replace(path)
    return path
