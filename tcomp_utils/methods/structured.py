"""Structured pruning of attention heads and FFN neurons to a MAC budget (seed 001: STAT).

A trained transformer is shrunk, with no retraining, to ``mu`` of its dense MACs per token (counted
by :mod:`tcomp_utils.budget` at ``seq_len`` tokens) by removing whole **FFN neurons** (a row of the
first projection(s), a column of the second) and whole **attention heads** (their rows of Q, K, V
and columns of the output projection). The model is *physically* smaller: the layers are replaced
by narrower ``nn.Linear`` layers and the attention's head count is lowered, so it runs faster,
saves and loads back (:mod:`tcomp_utils.serialize` records the changed shapes and head counts).

**Which units (``criterion``).**

* ``"id"`` (STAT): the interpolative decomposition of the activations a unit hands to the next
  layer. For the FFN of one layer, Z (tokens × F) is the input of the second projection on
  calibration tokens (padding dropped), its columns scaled by the norms of the next weight's
  columns so that a column's size is its share of the output. A pivoted QR, ``Z_s P = Q R``,
  orders the neurons: keeping the first k pivots leaves the residual ``‖R₂₂‖_F`` (the rows of R
  from k on), and the dropped columns are rebuilt from the kept ones by ``T = R₁₁⁻¹R₁₂``, folded
  into the second projection, ``W' = W_K + W_rest Tᵀ`` (in unscaled units): the pruned layer
  outputs the least-squares projection of the dense layer's output onto what the kept neurons
  span. Heads: the same at head granularity on the input of the attention output projection
  (block-pivoted: at each step the head whose columns keep the most energy after projecting out
  the heads chosen before), folded into that projection by least squares. All of it depends on Z
  only through ``ZᵀZ``: the calibration Gram is accumulated and a square root of it decomposed
  (exact for any number of tokens, ``F × F`` memory; the seed sketches the rows instead).
* ``"magnitude"``: units ranked by the norm of their weights (in × out norms), dropped, no folding.
* ``"random"``: a seeded random order, dropped, no folding.

**Where the budget goes.** Each criterion gives every layer's heads and neurons an order and an
error curve ``e(k)`` for keeping the first k (0 when all are kept). ID: the residual ``‖R₂₂‖``,
which is in units of the next layer's output (the columns are scaled by its weight), so heads and
neurons of every layer are compared on one scale, what they change in the residual stream. By
default (``error="stream"``) each calibration token's row is first divided by the norm of the
residual stream entering its layer at that token: the error is then *relative to the stream it is
added to*, which is what the next (RMS/Layer) normalization sees; the fold becomes the least-squares
fit in those weights. This matters for decoders, whose stream grows from layer to layer and is
huge at a few tokens (attention sinks): counted in absolute units (``"absolute"``) the early layers,
whose stream is small, look cheap to prune and are cut hardest (smollm2-135m at μ = 0.9: perplexity
35.6 against 26.9 with ``"stream"``, dense 22.4, on 8 calibration segments); ``"relative"`` divides
by the block's whole output instead (``‖R₂₂‖/‖R‖``). Where a layer normalizes a sublayer's output
before adding it to the stream (Gemma's ``post_attention_layernorm`` and
``post_feedforward_layernorm``, named by the adapter's ``post_norms``), each token's row is also
multiplied by that norm's gain ``‖N(y_t)‖/‖y_t‖``, in every ``error`` mode: the norm divides the
output by its own scale, so an error measured before it is on the wrong scale (Gemma-3-270M at
μ = 0.9 without it: perplexity 85.6 → 345.6, some FFNs keeping 1-2 of 2,048 neurons); other
architectures are unchanged. Magnitude: the dropped share of the squared scores; random: the
dropped share.
One **global threshold** τ, the same for heads and neurons in every layer, keeps in each the fewest
units whose error is at most τ (STAT's rule); τ is the smallest value whose model fits ``mu`` of
the dense MACs, counted exactly (a head costs ``4·H·d + 2·s·d`` MACs per token, a neuron ``2·H``,
or ``3·H`` gated), with no hand-set split between heads and neurons. As a head costs many
neurons' MACs, the last stretch is closed unit by unit (:func:`allocate`), so the model lands just
under ``mu`` (within a neuron's MACs when neurons are pruned; when τ removes a head and no
neuron, the head is put back and neurons close the gap). At least one head and one neuron
stay in every layer (an attention cannot have zero heads); a ``mu`` that needs fewer is an error
naming the smallest reachable ``mu``. ``macs_over="blocks"`` (the seeds' convention) counts ``mu``
over the transformer blocks only (their linear layers and attention cores, :func:`budget.block_macs`)
instead of the whole model (embeddings, pooler, classifier or LM head included): the same ``mu``
then removes fewer MACs, most visibly on a decoder whose LM head is a large share of its MACs.

**Grouped-query attention** (several query heads sharing a key/value head): a *group* (its query
heads and their key/value head) is the unit, because HF's attention repeats each key/value head
for a fixed number of query heads; pruning query heads unevenly inside groups would need copies
of key/value heads. So smollm2-135m (9 query heads over 3 key/value heads) prunes 3 units per layer.

The head and neuron surgery itself (the layers' units, the plans, narrower layers put in place)
is the public API of :mod:`tcomp_utils.methods.heads`, shared with Fisher and composable pruning;
this module (under 500 lines, most of it this write-up) orders units and splits the budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import adapters, budget, capture, targeting
from ..budget import BudgetError
from ..registry import ConfigError, MethodConfig, check_choice, check_int, register_method
from ..timing import phase
from .heads import HeadUnits, LayerPlan, PrunableLayer, apply_plans, attention_path, check_head_pruning, head_units

CRITERIA = ("id", "magnitude", "random")
ERRORS = ("stream", "absolute", "relative")
UNITS = ("both", "heads", "neurons")
MACS_OVER = ("model", "blocks")  # what mu is a fraction of: the whole model's MACs, or its blocks' only


def check_budget(config: MethodConfig) -> None:
    """The fields every structured-pruning config shares: no ``roles`` (whole units are removed),
    ``mu`` in (0, 1], ``units``, ``seq_len`` and ``macs_over``."""
    if config.roles is not None:
        raise ConfigError(f"structured pruning removes whole heads and neurons; roles={config.roles!r} is not "
                          "used (choose units='heads', 'neurons' or 'both')")
    if isinstance(config.mu, bool) or not isinstance(config.mu, (int, float)) or not 0 < config.mu <= 1:
        raise ConfigError(f"mu must be a fraction of the dense model's MACs in (0, 1], got {config.mu!r}")
    check_choice("units", config.units, UNITS)
    check_choice("macs_over", config.macs_over, MACS_OVER)
    check_int("seq_len", config.seq_len)


@dataclass
class StructuredConfig(MethodConfig):
    """Prune heads and/or neurons (``units``) of every layer (or ``layers``) chosen by ``criterion``
    until the model's MACs per token at ``seq_len`` tokens are at most ``mu`` of the dense model's.
    ``error``: how the ID errors of different layers and kinds are compared (see the module
    docstring); ``seed``: the random order. ``roles`` is not used: heads and neurons are whole
    units across roles."""

    mu: float = 0.5
    criterion: str = "id"
    units: str = "both"
    seq_len: int = 128
    macs_over: str = "model"
    error: str = "stream"
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_budget(self)
        check_choice("criterion", self.criterion, CRITERIA)
        check_choice("error", self.error, ERRORS)
        check_int("seed", self.seed, low=0)

    def calibration_needed(self) -> bool:
        return self.criterion == "id"


# ------------------------------------------------------------------------------------ the layers
def _layers(model: nn.Module, config: StructuredConfig) -> list[PrunableLayer]:
    """The layers to prune, with their role modules; architecture errors before anything changes."""
    adapter = adapters.get_adapter(model)
    if adapter.family != "encoder" and adapter.family != "decoder":
        raise adapters.UnsupportedArchitectureError(
            f"structured pruning supports encoders and decoder-only models, not a {adapter.family} model "
            f"({getattr(model.config, 'model_type', type(model).__name__)})")
    wanted = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
    for role in wanted:
        if role not in adapter.roles():
            raise adapters.UnsupportedArchitectureError(f"{adapter.family} model_type "
                                                        f"{model.config.model_type!r} has no {role} role")
    found: dict[tuple, PrunableLayer] = {}
    for rm in targeting.targets(model, wanted, config.layers, accept=lambda m: type(m) is nn.Linear,
                                wants="an nn.Linear (structured pruning needs the dense layers)", action="prune"):
        entry = found.setdefault((rm.stack, rm.layer), PrunableLayer(rm.stack, rm.layer))
        if rm.role == "ffn_in":
            entry.ffn_in = (*entry.ffn_in, rm)
        else:
            setattr(entry, rm.role, rm)
    layers = list(found.values())
    for entry in layers:
        entry.attention = model.get_submodule(attention_path(model, entry.query))
    return layers


def _unit_macs(entry: PrunableLayer, heads: HeadUnits, seq_len: int) -> tuple[float, float]:
    """MACs per token of one head unit and of one neuron of ``entry`` (the budget counter's rules:
    ``in × out`` per linear layer, ``2·s·d`` per head for the attention core)."""
    hidden = entry.query.module.in_features
    q_width = heads.per_unit * heads.head_dim
    kv_width = heads.head_dim if heads.grouped else q_width
    head = hidden * q_width + 2 * hidden * kv_width + q_width * entry.attn_out.module.out_features \
        + 2 * seq_len * q_width
    neuron = sum(rm.module.in_features for rm in entry.ffn_in) + entry.ffn_out.module.out_features
    return float(head), float(neuron)


# ------------------------------------------------------------------------------- calibration Gram
class Gram:
    """``XᵀX`` (float64) of the rows a module receives, accumulated batch by batch."""

    def __init__(self):
        self.gram: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double().cpu()
        self.gram = x.T @ x if self.gram is None else self.gram + x.T @ x

    def root(self) -> np.ndarray:
        """A square matrix M with ``MᵀM = XᵀX``: the same column norms, relations and least-squares
        fits as the rows X themselves, whatever their number (so no sketch is needed)."""
        values, vectors = np.linalg.eigh(self.gram.numpy())
        return np.sqrt(np.clip(values, 0.0, None))[:, None] * vectors.T


# ------------------------------------------------------------------------------- unit orderings
@dataclass
class UnitOrder:
    """One layer's units of one kind: ``order`` (keep-first), ``error[k]`` for keeping the first k
    (k = 0 … n; error[n] = 0), and what to fold into the next layer for a kept set (ID only)."""

    order: np.ndarray
    error: np.ndarray
    fold: object = None  # callable(k) -> new weight of the next layer (out × kept width), or None
    scale: float = 1.0   # error · scale: the absolute error (ID: in units of the next layer's output)


def _relative(curve: np.ndarray) -> tuple[np.ndarray, float]:
    return (curve / curve[0], float(curve[0])) if curve[0] > 0 else (curve, 1.0)


def id_neurons(z: np.ndarray, w_next: np.ndarray) -> UnitOrder:
    """Pivoted QR of the activations Z (rows × F) scaled by the column norms of the next weight (out × F)."""
    norms = np.linalg.norm(w_next, axis=0)
    _, r, perm = scipy.linalg.qr(z * norms, mode="economic", pivoting=True)
    n = z.shape[1]
    row_energy = np.zeros(n)
    row_energy[:r.shape[0]] = (r ** 2).sum(axis=1)
    tail = np.sqrt(np.concatenate([np.cumsum(row_energy[::-1])[::-1], [0.0]]))  # ‖R[k:, :]‖ for k = 0 … n

    def fold(k: int) -> np.ndarray:
        kept, rest = perm[:k], perm[k:]
        if len(rest) == 0:
            return w_next[:, kept]
        r11 = r[:k, :k]
        r12 = r[:k, k:] if r.shape[0] >= k else np.zeros((k, n - k))
        t_scaled = scipy.linalg.solve_triangular(r11, r12, check_finite=False) if k else np.zeros((0, n - k))
        # unscaled: Z_rest ≈ Z_K · diag(d_K) T_s diag(1/d_rest); columns of zero norm contribute nothing
        inv = np.divide(1.0, norms[rest], out=np.zeros(len(rest)), where=norms[rest] > 0)
        t = norms[kept][:, None] * t_scaled * inv[None, :]
        return w_next[:, kept] + w_next[:, rest] @ t.T

    error, scale = _relative(tail)
    return UnitOrder(perm, error, fold, scale)


def id_heads(c: np.ndarray, w_next: np.ndarray, heads: HeadUnits) -> UnitOrder:
    """Block-pivoted QR of the attention output projection's inputs C (rows × heads·d), columns
    scaled by the next weight's column norms; folding by least squares on the unscaled columns."""
    scaled = c * np.linalg.norm(w_next, axis=0)
    blocks = [np.arange(heads.q_cols(u).start, heads.q_cols(u).stop) for u in range(heads.units)]
    residual, order, energy = scaled.copy(), [], [float((scaled ** 2).sum())]
    remaining = list(range(heads.units))
    while remaining:
        best = max(remaining, key=lambda u: float((residual[:, blocks[u]] ** 2).sum()))
        q, _ = np.linalg.qr(residual[:, blocks[best]])
        residual -= q @ (q.T @ residual)
        remaining.remove(best)
        order.append(best)
        energy.append(float(sum((residual[:, blocks[u]] ** 2).sum() for u in remaining)))
    order = np.array(order)

    def fold(k: int) -> np.ndarray:
        kept = np.concatenate([blocks[u] for u in order[:k]])
        rest = np.concatenate([blocks[u] for u in order[k:]]) if k < heads.units else np.array([], dtype=int)
        if len(rest) == 0:
            return w_next[:, kept]
        t, *_ = np.linalg.lstsq(c[:, kept], c[:, rest], rcond=None)  # C_rest ≈ C_K T
        return w_next[:, kept] + w_next[:, rest] @ t.T

    error, scale = _relative(np.sqrt(np.maximum(energy, 0.0)))
    return UnitOrder(order, error, fold, scale)


def _scored(scores: np.ndarray) -> UnitOrder:
    """Units kept in decreasing ``scores``; the error of keeping k is the dropped share of Σ score²."""
    order = np.argsort(-scores, kind="stable")
    sq = scores[order] ** 2
    dropped = np.concatenate([np.cumsum(sq[::-1])[::-1], [0.0]])
    return UnitOrder(order, np.sqrt(dropped / dropped[0]) if dropped[0] > 0 else dropped)


def _magnitude(entry: PrunableLayer, heads: HeadUnits) -> tuple[UnitOrder, UnitOrder]:
    w_in = [rm.module.weight.detach().double() for rm in entry.ffn_in]
    neuron = torch.sqrt(sum(w.pow(2).sum(1) for w in w_in)) * entry.ffn_out.module.weight.detach().double().norm(dim=0)
    q, k, v, o = (rm.module.weight.detach().double() for rm in (entry.query, entry.key, entry.value, entry.attn_out))
    head = [torch.sqrt(q[heads.q_cols(u)].pow(2).sum() + k[heads.kv_rows(u)].pow(2).sum()
                       + v[heads.kv_rows(u)].pow(2).sum()) * o[:, heads.q_cols(u)].norm() for u in range(heads.units)]
    return _scored(torch.stack(head).numpy()), _scored(neuron.numpy())


def _random(n_heads: int, n_neurons: int, gen: np.random.Generator) -> tuple[UnitOrder, UnitOrder]:
    def make(n: int) -> UnitOrder:
        return UnitOrder(gen.permutation(n), (n - np.arange(n + 1)) / n)
    return make(n_heads), make(n_neurons)


# ---------------------------------------------------------------------------------- allocation
def allocate(curves: list[tuple[np.ndarray, float]], target_saving: float) -> list[int]:
    """Units to keep per curve. ``curves``: (error[k] for k = 0 … n, MACs per unit); at least one
    unit stays in each; the saving must be reachable (checked by the caller).

    STAT's rule: each curve keeps the fewest units with error <= τ, for the smallest global τ that
    saves at least ``target_saving`` MACs. A head costs far more MACs than a neuron, so that step
    can overshoot the budget by whole heads; two ways of landing closer are tried and the one
    nearest the budget is kept: (a) from τ, add units back (largest error drop per MAC first) while
    the saving stays at least the target; (b) from the τ just below (which saves too little),
    remove units, smallest error increase per MAC first, until the target is saved, then add back
    as in (a). When even the nearest of these overshoots by more than the smallest unit's MACs (a
    head removed while every neuron stays), (c): each removed unit larger than the overshoot is put
    back in turn, the units at least as large stay as they are, the smaller ones are chosen by
    their own smallest τ that saves the target, then added back as in (a)."""
    def keep_at(tau: float, fixed: dict[int, int]) -> list[int]:
        return [fixed[i] if i in fixed else max(1, int(np.argmax(err <= tau + 1e-15)))
                for i, (err, _) in enumerate(curves)]

    def saving(keep: list[int]) -> float:
        return sum((len(err) - 1 - k) * macs for k, (err, macs) in zip(keep, curves))

    def threshold(fixed: dict[int, int]) -> tuple[np.ndarray, int] | None:
        """The τ values of the curves not ``fixed`` and the index of the smallest that saves the
        target with the ``fixed`` curves at their counts (None: even the largest saves too little)."""
        taus = np.unique(np.concatenate([err for i, (err, _) in enumerate(curves) if i not in fixed]))
        if saving(keep_at(taus[-1], fixed)) < target_saving:
            return None
        lo, hi = 0, len(taus) - 1  # the saving grows with tau
        while lo < hi:
            mid = (lo + hi) // 2
            if saving(keep_at(taus[mid], fixed)) >= target_saving:
                hi = mid
            else:
                lo = mid + 1
        return taus, lo

    def add_back(keep: list[int]) -> list[int]:
        keep, slack = list(keep), saving(keep) - target_saving
        while True:
            best, gain = None, -1.0
            for i, ((err, macs), k) in enumerate(zip(curves, keep)):
                if k < len(err) - 1 and macs <= slack + 1e-9 and (err[k] - err[k + 1]) / macs > gain:
                    best, gain = i, (err[k] - err[k + 1]) / macs
            if best is None:
                return keep
            keep[best] += 1
            slack -= curves[best][1]

    def remove_until_saved(keep: list[int]) -> list[int]:
        keep = list(keep)
        while saving(keep) < target_saving:
            i = min((i for i, k in enumerate(keep) if k > 1),
                    key=lambda i: (curves[i][0][keep[i] - 1] - curves[i][0][keep[i]]) / curves[i][1])
            keep[i] -= 1
        return keep

    if target_saving <= 0:
        return [len(err) - 1 for err, _ in curves]
    found = threshold({})
    if found is None:  # the callers check this first, with the budget's own words
        raise BudgetError(f"target_saving={target_saving} is more than keeping one unit per curve saves "
                          f"({saving([1] * len(curves))})")
    taus, lo = found
    options = [add_back(keep_at(taus[lo], {}))]
    if lo > 0:
        options.append(add_back(remove_until_saved(keep_at(taus[lo - 1], {}))))
    best = min(options, key=saving)
    slack = saving(best) - target_saving
    if slack >= min(macs for _, macs in curves):  # (c): only then can smaller units land closer
        for i, ((err, macs), k) in enumerate(zip(curves, best)):
            if k < len(err) - 1 and macs > slack:
                fixed = {j: best[j] for j, (_, m) in enumerate(curves) if m >= macs} | {i: k + 1}
                found = threshold(fixed) if len(fixed) < len(curves) else None
                if found is not None:
                    options.append(add_back(keep_at(found[0][found[1]], fixed)))
        best = min(options, key=saving)
    return best


def prunable_layers(model: nn.Module, config) -> tuple[list[PrunableLayer], list[HeadUnits], list[tuple[float, float]],
                                                      float, float]:
    """The layers, their head structures and unit MACs, the dense MACs that ``mu`` is a fraction of
    (the whole model's or the blocks', ``config.macs_over``) and the MACs to remove; a budget that
    cannot be met is a :class:`BudgetError` naming the smallest reachable ``mu``."""
    layers = _layers(model, config)
    if config.units in ("both", "heads"):
        check_head_pruning(model, layers)
    structure = [head_units(model, e) for e in layers]
    macs = [_unit_macs(e, h, config.seq_len) for e, h in zip(layers, structure)]
    dense = (budget.footprint(model, config.seq_len).macs if config.macs_over == "model"
             else budget.block_macs(model, config.seq_len))
    prune_heads, prune_neurons = config.units in ("both", "heads"), config.units in ("both", "neurons")
    removable = sum((h.units - 1) * mh * prune_heads + (e.ffn_out.module.in_features - 1) * mn * prune_neurons
                    for e, h, (mh, mn) in zip(layers, structure, macs))
    target_saving = dense - config.mu * dense
    if target_saving > removable + 1e-9:
        raise BudgetError(f"mu={config.mu} needs {target_saving:,.0f} of the {dense:,.0f} MACs per token "
                          f"({'of the blocks' if config.macs_over == 'blocks' else 'of the model'}) removed, but "
                          f"pruning {config.units} (keeping one head and one neuron per layer) removes at most "
                          f"{removable:,.0f}: the smallest reachable mu is {(dense - removable) / dense:.3f}")
    return layers, structure, macs, dense, target_saving


def capture_rows(model: nn.Module, layers: list[PrunableLayer], calibration: list[dict],
                 per_stream: bool = False, post_norm: bool = False) -> dict[str, np.ndarray]:
    """``{path: M}``: for what each layer's attention output and second FFN projection receive on
    the calibration tokens (X, tokens × features, padding dropped), a square root M of ``XᵀX``
    (features × features): every decomposition here depends on X only through ``XᵀX``.
    ``per_stream``: each token's row divided by the norm of the residual stream entering its layer
    at that token, ``X_w = diag(1/‖h_t‖) X`` (errors then count relative to the stream they are
    added to, as the next normalization sees them). ``post_norm``: where the architecture passes a
    sublayer's output y through a norm N before adding it to the stream (the adapter's
    ``post_norms``: Gemma), each row is also multiplied by that norm's gain at the token,
    ``‖N(y_t)‖ / ‖y_t‖`` (an error δy reaches the stream as about gain · δy: the norm divides by
    the output's own scale, which varies from layer to layer and token to token); no effect on
    architectures without such norms."""
    targets = [rm for e in layers for rm in (e.attn_out, e.ffn_out)]
    grams = {rm.path: Gram() for rm in targets}
    stacks = adapters.layer_stacks(model)
    blocks = {f"{stacks[e.stack][0]}.{e.layer}": e for e in layers}
    post = adapters.get_adapter(model).stacks
    norms = {f"{block}.{norm}": getattr(e, role).path  # norm path -> the module whose rows its gain weights
             for block, e in blocks.items() if post_norm for role, norm in post[e.stack].post_norms.items()}
    pending: dict[str, torch.Tensor] = {}
    gains: dict[str, torch.Tensor] = {}
    mask: dict[str, torch.Tensor | None] = {}

    def sink(path: str, x: torch.Tensor) -> None:
        if path not in blocks:  # an inner module: its rows wait for the stream (its block's hook fires last)
            real = mask["now"]
            if real is not None and x.shape[0] == real.numel() != int(real.sum()):
                x = x[real.flatten().bool()]  # a module fed (batch·seq) × features (OPT's FFN): drop padding too
            if path in norms:  # .forward: a call through __call__ would fire this hook again
                y = x.double()
                out = model.get_submodule(path).forward(x).double()
                gains[norms[path]] = (out.norm(dim=-1) / y.norm(dim=-1).clamp_min(1e-30))[:, None]
            else:
                pending[path] = x
            return
        weight = 1.0 / x.double().norm(dim=-1).clamp_min(1e-12)[:, None] if per_stream else 1.0
        for rm in (blocks[path].attn_out, blocks[path].ffn_out):
            if rm.path in pending:
                grams[rm.path].add(pending.pop(rm.path).double() * weight * gains.pop(rm.path, 1.0))

    block_targets = [adapters.RoleModule(path, "block", e.stack, e.layer, stacks[e.stack][1][e.layer])
                     for path, e in blocks.items()]
    norm_targets = [adapters.RoleModule(path, "post_norm", None, None, model.get_submodule(path)) for path in norms]
    with phase("capture"):
        for batch in calibration:
            mask["now"] = capture.token_mask(batch)
            capture.stream(model, targets + norm_targets + block_targets, [batch], sink)
    missed = [p for p, g in grams.items() if g.gram is None]
    if missed:
        raise ValueError(f"the calibration batches never reached {', '.join(missed)}: nothing was pruned")
    bad = [p for p, g in grams.items() if not torch.isfinite(g.gram).all()]
    if bad:
        raise ValueError(f"the calibration inputs of {', '.join(bad)} hold NaN or inf values (a non-finite weight, "
                         "norm or input before them): nothing was pruned")
    return {p: g.root() for p, g in grams.items()}


# ---------------------------------------------------------------------------------------- handler
@register_method("structured", StructuredConfig, family="structured pruning")
def _structured(model, config: StructuredConfig, calibration, progress) -> list[dict]:
    """Whole heads and FFN neurons removed to a MAC budget (STAT's ID, magnitude or random), physically."""
    layers, structure, macs, _, target_saving = prunable_layers(model, config)
    prune_heads, prune_neurons = config.units in ("both", "heads"), config.units in ("both", "neurons")
    if config.criterion == "id":
        rows = capture_rows(model, layers, calibration, per_stream=config.error == "stream", post_norm=True)
        with phase("decomposition"):
            orders = [(id_heads(rows[e.attn_out.path], e.attn_out.module.weight.detach().double().numpy(), h)
                       if prune_heads else None,
                       id_neurons(rows[e.ffn_out.path], e.ffn_out.module.weight.detach().double().numpy())
                       if prune_neurons else None)
                      for e, h in tqdm(list(zip(layers, structure)), desc="interpolative decompositions",
                                       disable=not progress)]
    elif config.criterion == "magnitude":
        orders = [_magnitude(e, h) for e, h in zip(layers, structure)]
    else:
        gen = np.random.default_rng(config.seed)
        orders = [_random(h.units, e.ffn_out.module.in_features, gen) for e, h in zip(layers, structure)]
    orders = [(oh if prune_heads else None, on if prune_neurons else None) for oh, on in orders]
    curves, where = [], []
    for i, ((oh, on), (mh, mn)) in enumerate(zip(orders, macs)):
        for kind, order, unit in (("heads", oh, mh), ("neurons", on, mn)):
            if order is not None:
                curves.append((order.error * (1.0 if config.error == "relative" else order.scale), unit))
                where.append((i, kind))
    kept = dict(zip(where, allocate(curves, target_saving)))
    plans = []
    for i, (e, h) in enumerate(zip(layers, structure)):
        oh, on = orders[i]
        plan = LayerPlan()
        k = kept.get((i, "heads"), h.units)
        if k < h.units:  # ID keeps its pivot order (the folded weight follows it); the others, layer order
            plan.heads = oh.order[:k] if oh.fold else np.sort(oh.order[:k])
            plan.attn_out, plan.head_error = (oh.fold(k) if oh.fold else None), float(oh.error[k])
        k = kept.get((i, "neurons"), e.ffn_out.module.in_features)
        if k < e.ffn_out.module.in_features:
            plan.neurons = on.order[:k] if on.fold else np.sort(on.order[:k])
            plan.ffn_out, plan.neuron_error = (on.fold(k) if on.fold else None), float(on.error[k])
        plans.append(plan)
    return apply_plans(model, layers, structure, plans)
