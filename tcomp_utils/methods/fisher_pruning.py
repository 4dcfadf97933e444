"""Fisher-mask structured pruning (Kwon et al., NeurIPS 2022: "A Fast Post-Training Pruning
Framework for Transformers"), the baseline of seed 001, applied physically.

1. **Fisher information of masks.** A mask (one number per head unit and per FFN neuron, all 1)
   multiplies what each unit hands to the next layer. The gradient of the loss with respect to
   the masks, per example, gives the empirical Fisher ``F = Σ g gᵀ``, kept per layer and kind
   (block-diagonal). The loss is the model's own: the task loss for a classifier, the LM loss for
   a decoder (calibration batches with ``labels``; ``input_ids`` for a causal LM).
2. **Mask search** under the MAC constraint (their Algorithm 1): units ranked by the Fisher
   diagonal ``F_ii`` (to second order, the loss increase of removing one unit); for every number
   of heads removed (least important first, over all layers) the fewest least important neurons
   that complete the budget; the combination that removes the least total importance wins (among
   those that land within 1 % of the budget, when any does).
3. **Mask rearrangement**: within each layer, its counts fixed, a removed and a kept unit are
   swapped while that lowers the second-order loss ``(1−m)ᵀF(1−m)`` (the interactions the
   diagonal ignores); a local search, at most ``2·n`` swaps per layer and kind.
4. **Mask tuning**: the kept units' mask values are fitted by least squares so that each layer's
   attention output and FFN output match the dense model's on the calibration tokens: with Z the
   rows a next layer receives and W its weight, the normal equations of ``min ‖Z_K diag(m) W_Kᵀ −
   Z Wᵀ‖`` are ``((Z_KᵀZ_K) ∘ (W_KᵀW_K)) m = ((Z_KᵀZ) ∘ (W_KᵀW)) 1`` (summed over a head's columns),
   solved with ``scipy.sparse.linalg.lsmr``; the values are folded into the next layer's columns.

Kwon et al. keep masks; here the removed units are dropped (narrower layers, fewer heads), so the
savings are measured, and at least one head and one neuron stay in every layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse.linalg
import torch
from tqdm.auto import tqdm

from .. import capture
from ..registry import ConfigError, MethodConfig, check_int, register_method
from ..timing import phase
from .heads import LayerPlan, apply_plans
from .structured import capture_rows, check_budget, prunable_layers


@dataclass
class FisherPruningConfig(MethodConfig):
    """Kwon et al.'s Fisher-mask pruning to ``mu`` of the dense MACs per token at ``seq_len``
    tokens (of the whole model, or of its blocks with ``macs_over="blocks"``); ``rearrange`` and ``tune`` switch their steps 3 and 4 (ablations); calibration
    batches must hold ``labels``."""

    mu: float = 0.5
    units: str = "both"
    seq_len: int = 128
    macs_over: str = "model"
    rearrange: bool = True
    tune: bool = True
    lsmr_iterations: int = 200

    needs_calibration = True

    def validate(self) -> None:
        super().validate()
        check_budget(self)
        for name in ("rearrange", "tune"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_int("lsmr_iterations", self.lsmr_iterations)


# ---------------------------------------------------------------------------------------- Fisher
def mask_fisher(model, layers, structure, calibration, progress: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, the empirical Fisher of the head-unit masks (units × units) and of the neuron
    masks (F × F): per-example gradients of the model's loss with respect to masks of ones."""
    capture.check_labels(model, calibration, "Fisher-mask pruning")
    capture.check_lengths(model, calibration)
    masks: dict[str, torch.Tensor] = {}
    fisher = [[np.zeros((h.units, h.units)), np.zeros((e.ffn_out.module.in_features,) * 2)]
              for e, h in zip(layers, structure)]

    def hook(path: str, width: int):
        def scale(module, args):
            x, m = args[0], masks[path].repeat_interleave(width, dim=1).to(args[0].dtype)
            # one mask row per example: x is (batch, seq, C), or (batch·seq, C) where the model
            # flattens the tokens (OPT's FFN), its rows example by example
            return ((x.reshape(m.shape[0], -1, x.shape[-1]) * m.unsqueeze(1)).reshape(x.shape), *args[1:])
        return scale

    handles = []
    for e, h in zip(layers, structure):
        handles.append(e.attn_out.module.register_forward_pre_hook(hook(e.attn_out.path, h.per_unit * h.head_dim)))
        handles.append(e.ffn_out.module.register_forward_pre_hook(hook(e.ffn_out.path, 1)))
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in frozen:
            p.requires_grad_(False)  # gradients for the masks only
        with torch.enable_grad():
            for batch in tqdm(calibration, desc="mask Fisher", disable=not progress):
                n = batch["input_ids"].shape[0]
                for e, h in zip(layers, structure):
                    masks[e.attn_out.path] = torch.ones(n, h.units, requires_grad=True)
                    masks[e.ffn_out.path] = torch.ones(n, e.ffn_out.module.in_features, requires_grad=True)
                model(**batch).loss.backward()
                for i, e in enumerate(layers):
                    for j, path in enumerate((e.attn_out.path, e.ffn_out.path)):
                        # the loss is a batch mean: n·grad is each example's own gradient (exact for a
                        # classifier; for a language model, up to each example's share of the tokens)
                        g = n * masks[path].grad.double().numpy()
                        fisher[i][j] += g.T @ g
    finally:
        for h in handles:
            h.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
    return [tuple(f) for f in fisher]


# ---------------------------------------------------------------------------------------- search
def search(importance: list[tuple[np.ndarray | None, np.ndarray | None]], macs: list[tuple[float, float]],
           target_saving: float, tolerance: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Kwon's Algorithm 1: the units to remove per layer, ``(heads, neurons)`` index arrays.
    ``importance``: per layer the Fisher diagonals (None: that kind is not pruned); each layer's
    most important unit of each kind is never removed. Among the combinations that save at least
    the target, those within ``tolerance`` MACs of it are preferred; then the least importance."""
    def pool(kind: int):
        items = [(imp[u], i, u, macs[i][kind]) for i, pair in enumerate(importance) if pair[kind] is not None
                 for imp in [pair[kind]] for u in np.argsort(-imp, kind="stable")[1:]]
        items.sort(key=lambda t: t[0])
        cum_imp = np.concatenate([[0.0], np.cumsum([t[0] for t in items])])
        cum_macs = np.concatenate([[0.0], np.cumsum([t[3] for t in items])])
        return items, cum_imp, cum_macs

    heads, h_imp, h_macs = pool(0)
    neurons, n_imp, n_macs = pool(1)
    best = None
    for nh in range(len(heads) + 1):
        need = target_saving - h_macs[nh]
        nn_ = 0 if need <= 0 else int(np.searchsorted(n_macs, need - 1e-9))
        if nn_ > len(neurons):
            continue
        over = h_macs[nh] + n_macs[nn_] - target_saving
        key = (over > tolerance, h_imp[nh] + n_imp[nn_])
        if best is None or key < best[0]:
            best = (key, nh, nn_)
    _, nh, nn_ = best
    removed = [([], []) for _ in importance]
    for _, i, u, _ in heads[:nh]:
        removed[i][0].append(u)
    for _, i, u, _ in neurons[:nn_]:
        removed[i][1].append(u)
    return [(np.array(sorted(a), dtype=int), np.array(sorted(b), dtype=int)) for a, b in removed]


def rearrange(fisher: np.ndarray, removed: np.ndarray, max_swaps: int | None = None) -> np.ndarray:
    """Swap removed and kept units of one layer while the second-order loss ``zᵀFz`` (z = 1 on the
    removed units) drops, the best swap first; the number removed stays. Returns the removed set."""
    n = fisher.shape[0]
    z = np.zeros(n)
    z[removed] = 1.0
    fz = fisher @ z
    diag = np.diag(fisher)
    for _ in range(max_swaps if max_swaps is not None else 2 * n):
        out, keep = np.flatnonzero(z == 1), np.flatnonzero(z == 0)
        if not len(out) or not len(keep):
            break
        # loss change of putting back p (removed) and removing q (kept)
        delta = (-2 * fz[out] + diag[out])[:, None] + (2 * fz[keep] + diag[keep])[None, :] \
            - 2 * fisher[np.ix_(out, keep)]
        p, q = np.unravel_index(np.argmin(delta), delta.shape)
        if delta[p, q] >= -1e-12 * max(1.0, abs(float(z @ fz))):
            break
        z[out[p]], z[keep[q]] = 0.0, 1.0
        fz += fisher[:, keep[q]] - fisher[:, out[p]]
    return np.flatnonzero(z == 1)


def tune(z: np.ndarray, w: np.ndarray, kept: np.ndarray, width: int, iterations: int) -> tuple[np.ndarray, float]:
    """Least-squares mask values of the ``kept`` units (blocks of ``width`` columns) so that the
    pruned layer's output on rows ``z`` (rows × C) matches ``z wᵀ`` (w: out × C); returns the
    folded weight (out × kept columns) and the relative output error left."""
    cols = (kept[:, None] * width + np.arange(width)[None, :]).ravel()
    gz, gw = z.T @ z[:, cols], w.T @ w[:, cols]            # (C × K cols)
    cross = (gz * gw).reshape(-1, len(kept), width).sum(-1)  # (C × K units)
    gram = cross[cols].reshape(len(kept), width, len(kept)).sum(1)  # (K × K)
    rhs = cross.sum(0)
    total = float((z.T @ z * (w.T @ w)).sum())
    m = scipy.sparse.linalg.lsmr(gram, rhs, maxiter=iterations, atol=1e-10, btol=1e-10)[0]
    err = max(float(m @ gram @ m - 2 * m @ rhs + total), 0.0)
    return w[:, cols] * np.repeat(m, width)[None, :], (err / total) ** 0.5 if total > 0 else 0.0


# ---------------------------------------------------------------------------------------- handler
@register_method("fisher_pruning", FisherPruningConfig, family="structured pruning")
def _fisher_pruning(model, config: FisherPruningConfig, calibration, progress) -> list[dict]:
    """Kwon et al.'s Fisher masks (search, rearrangement, LSMR tuning), units removed physically."""
    layers, structure, macs, dense, target_saving = prunable_layers(model, config)
    prune = (config.units in ("both", "heads"), config.units in ("both", "neurons"))
    with phase("fisher"):
        fisher = mask_fisher(model, layers, structure, calibration, progress)
    rows = capture_rows(model, layers, calibration) if config.tune else None
    importance = [tuple(np.diag(f).copy() if p else None for f, p in zip(pair, prune)) for pair in fisher]
    with phase("search"):
        removed = search(importance, macs, target_saving, 0.01 * dense)
    plans = []
    for i, (e, h) in enumerate(zip(layers, structure)):
        plan = LayerPlan()
        for kind, (gone, f, n, width, rm) in enumerate((
                (removed[i][0], fisher[i][0], h.units, h.per_unit * h.head_dim, e.attn_out),
                (removed[i][1], fisher[i][1], e.ffn_out.module.in_features, 1, e.ffn_out))):
            if not len(gone):
                continue
            if config.rearrange:
                gone = rearrange(f, gone)
            kept = np.setdiff1d(np.arange(n), gone)
            weight, err = None, float("nan")
            if config.tune:
                with phase("tuning"):
                    weight, err = tune(rows[rm.path], rm.module.weight.detach().double().numpy(), kept, width,
                                       config.lsmr_iterations)
            if kind == 0:
                plan.heads, plan.attn_out, plan.head_error = kept, weight, err
            else:
                plan.neurons, plan.ffn_out, plan.neuron_error = kept, weight, err
        plans.append(plan)
    return apply_plans(model, layers, structure, plans)
