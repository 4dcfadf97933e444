"""Training of the autoencoders of :mod:`tcomp_utils.methods.autoencoder` (the stored parts are
:mod:`~tcomp_utils.methods.autoencoder_modules`): the rows a group of modules shares, their
held-out scoring, and the training of one autoencoder per seed, the seeds of one cell together.

**Training.** The rows ``W`` of the group's modules are scaled by one number ``s = max|W|`` into
tanh's range; encoder ``in → e₁x → … → x`` and decoder ``x → d₁x → … → in`` (LeakyReLU between
layers, tanh at the decoder's output); with ``enforce_norm`` each reconstructed row is re-scaled to
its original norm; loss ``cosine_weight · (1 − cos(ŵ, w)) + rmse_weight · RMSE(ŵ, w)``; Adam with
step decay of the learning rate; mini-batches of rows in an order drawn from the seed.

**Seeds together.** The S seeds of one cell are S copies of the same network with their own
initial weights: their parameters are stacked (:func:`torch.func.stack_module_state`) and one
``torch.vmap`` of :func:`torch.func.functional_call` runs the S networks on their own batches at
once (PyTorch's "model ensembling" idiom). Each seed's loss, gradients, Adam state and model
selection are its own, as if it were trained alone (a seed trained alone runs its network
itself); batching divides the operator calls, which are what a step of these small MLPs costs on
a CPU, by S.

**Model selection** on held-out data, never the test split: after each epoch the reconstruction is
scored (``select="output_error"``: the relative output error ``‖X(W − Ŵ)ᵀ‖ / ‖XWᵀ‖`` of the
module(s) on calibration tokens, from their Gram matrix XᵀX; for an embedding table the error of
the rows looked up, weighted by token frequency; ``"weight_error"``: ‖W − Ŵ‖_F / ‖W‖_F; ``"last"``:
the last epoch) and the best epoch is kept. With ``patience`` p > 0 a seed stops once p scorings in
a row have not improved on its best by the fraction ``min_improvement`` (early stopping; the best
epoch is still the one kept; ``epochs`` is then the most it may train): its
network keeps running in the joint step until every seed has stopped, but nothing after its stop is
recorded or kept, so each seed stops where it would alone.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from .. import adapters, capture
from ..progress import Bar
from ..registry import MethodConfig
from .autoencoder_modules import AEDecoder, decoder_widths_for, latent_size, mlp


# ----------------------------------------------------------------------------------------- groups
@dataclass
class RowGroup:
    """Modules compressed by one autoencoder: their role modules, stacked rows, and held-out scorer."""

    rms: list[adapters.RoleModule]
    rows: torch.Tensor           # (N × n) the stacked rows of the modules' weights
    latent: int
    hidden: list[int]
    gram: list[torch.Tensor | None] = field(default_factory=list)  # per module: XᵀX (in × in) or token counts (vocab)
    norm_sq: float | None = None  # the held-out squared norm of the weights themselves (computed once)


def n_rows(rm: adapters.RoleModule) -> int:
    """Rows of a module's weight: a table's entries, a linear layer's outputs."""
    m = rm.module
    return m.num_embeddings if isinstance(m, nn.Embedding) else m.out_features


def group_for(rms: Sequence[adapters.RoleModule], config: MethodConfig) -> RowGroup:
    """The group of ``rms`` (one module, or one role across layers) under an ``AEConfig``: their
    stacked rows and the latent size of the budget (:class:`BudgetError` when it cannot be met)."""
    rows = torch.cat([rm.module.weight.detach() for rm in rms]).float()
    x = latent_size(rows.shape[0], rows.shape[1], config.ratio, config.decoder_widths, config.enforce_norm)
    return RowGroup(rms, rows, x, decoder_widths_for(x, config.decoder_widths))


def capture_held_out(model: nn.Module, groups: list[RowGroup], calibration: list[dict] | None) -> None:
    """Fill each group's Gram matrices (linear layers) or token counts (tables) from calibration."""
    if not calibration:
        raise ValueError("select='output_error' needs calibration batches (held-out inputs)")
    linears = [rm for g in groups for rm in g.rms if isinstance(rm.module, nn.Linear)]
    grams = {rm.path: torch.zeros(rm.module.in_features, rm.module.in_features, dtype=torch.float64) for rm in linears}

    def sink(path: str, x: torch.Tensor) -> None:
        x = x.detach().double()
        grams[path] += x.T @ x

    if linears:
        capture.stream(model, linears, calibration, sink)
    counts = None
    for g in groups:
        for rm in g.rms:
            if isinstance(rm.module, nn.Embedding):
                if counts is None:
                    ids = torch.cat([b["input_ids"][b["attention_mask"].bool()] if "attention_mask" in b
                                     else b["input_ids"].reshape(-1) for b in calibration])
                    counts = torch.bincount(ids, minlength=rm.module.num_embeddings).double()
                g.gram.append(counts)
            else:
                g.gram.append(grams[rm.path])


def _held_out_sq(group: RowGroup, rows: torch.Tensor) -> float:
    """Σ over the group's modules of the squared held-out norm of ``rows`` (N × n; see ``select``)."""
    total, start = 0.0, 0
    for rm, g in zip(group.rms, group.gram):
        d = rows[start:start + n_rows(rm)].double()
        start += n_rows(rm)
        if g is None:                    # weight error
            total += d.pow(2).sum().item()
        elif g.dim() == 1:               # embedding: rows weighted by token frequency
            total += (g[:, None] * d.pow(2)).sum().item()
        else:                            # ‖X dᵀ‖² = tr(d XᵀX dᵀ)
            total += ((d @ g) * d).sum().item()
    return total


def _held_out_error(group: RowGroup, recon: torch.Tensor) -> float:
    """Relative error of the reconstruction on the held-out inputs (see ``select``)."""
    if group.norm_sq is None:  # the weights' own held-out norm, once per group
        group.norm_sq = _held_out_sq(group, group.rows)
    num = _held_out_sq(group, group.rows.double() - recon.double())
    return math.sqrt(num / group.norm_sq) if group.norm_sq > 0 else 0.0


# --------------------------------------------------------------------------------------- training
class _Autoencoder(nn.Module):
    """Encoder and decoder network of one seed: rows (… × n) → (codes … × x, tanh(decoder(codes)))."""

    def __init__(self, encoder: nn.Sequential, decoder: nn.Sequential):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.encoder(rows)
        return codes, torch.tanh(self.decoder(codes))


def _loss(out: torch.Tensor, target: torch.Tensor, config: MethodConfig) -> torch.Tensor:
    """The training loss of reconstructed rows ``out`` against ``target`` (… × B × n): one value
    per leading index (per seed)."""
    loss = out.new_zeros(out.shape[:-2])
    if config.cosine_weight:
        loss = loss + config.cosine_weight * (1 - nn.functional.cosine_similarity(out, target, dim=-1)).mean(-1)
    if config.rmse_weight:
        loss = loss + config.rmse_weight * (out - target).pow(2).mean((-2, -1)).clamp_min(1e-20).sqrt()
    return loss


def _rescaled(rows: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
    """Rows (… × n) re-scaled to ``norms`` (…); as they are without ``enforce_norm``."""
    return rows if norms is None else rows * (norms / rows.norm(dim=-1).clamp_min(1e-12)).unsqueeze(-1)


def _seed_axis(nets: list[_Autoencoder]) -> tuple:
    """The S networks as one: ``joint(params, buffers, x)`` runs network s on ``x[s]`` (S × B × n),
    ``everyone(params, buffers, rows)`` each on all ``rows``, both giving (codes, rows) with a leading
    seed axis; ``params`` to train, ``buffers``, and ``of_seed(tensor, s)``, seed s's part of a
    parameter. Several seeds: their parameters stacked (S × …) and one ``vmap`` of
    ``functional_call``; one seed: its network itself (what a seed trained alone runs)."""
    if len(nets) == 1:
        net = nets[0]

        def alone(p: dict, b: dict, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(o.unsqueeze(0) for o in net(x))

        return (lambda p, b, x: alone(p, b, x[0])), alone, dict(net.named_parameters()), {}, (lambda v, s: v)
    params, buffers = stack_module_state(nets)  # each S × …, leaves of their own
    base = copy.deepcopy(nets[0]).to("meta")

    def run(p: dict, b: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return functional_call(base, (p, b), (x,))

    return torch.vmap(run), torch.vmap(run, in_dims=(0, 0, None)), params, buffers, (lambda v, s: v[s])


def train_autoencoders(group: RowGroup, configs: list[MethodConfig], progress: bool = False) -> list[dict]:
    """Train one autoencoder per config (an ``AEConfig``) on ``group.rows``, all at once: the configs
    may differ in their ``seed`` only. Each seed draws its own initial weights and its own batch
    order, and its loss, gradients, Adam state and model selection are its own, exactly as if it
    were trained alone (to float rounding): the S networks run as one ``vmap`` over their stacked
    parameters.

    Returns per config the kept ``decoder`` (:class:`AEDecoder`), ``latents`` (N × x), ``norms``
    (N, or None), the per-epoch ``history`` (loss, held-out error) up to its stop, the kept
    ``epoch`` and its ``held_out_error``, and ``epochs_run`` (fewer than ``epochs`` when early
    stopping ended it)."""
    config = configs[0]
    if any(dataclasses.replace(c, seed=config.seed) != config for c in configs):
        raise ValueError("autoencoders trained together must share every setting but the seed")
    rows = group.rows.float()
    size, n = rows.shape
    scale = rows.abs().max().clamp_min(1e-12).item()
    target = rows / scale
    nets, decoders = [], []
    for c in configs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            encoder = mlp([n, *[max(1, round(a * group.latent)) for a in config.encoder_widths], group.latent])
            decoders.append(AEDecoder(group.latent, group.hidden, n, scale))
        nets.append(_Autoencoder(encoder, decoders[-1].net))
    joint, everyone, params, buffers, of_seed = _seed_axis(nets)
    gens = [torch.Generator().manual_seed(c.seed) for c in configs]
    norms_scaled = target.norm(dim=-1) if config.enforce_norm else None
    # one fused kernel per tensor and step (the step of a small MLP is otherwise mostly optimizer calls)
    opt = torch.optim.Adam(list(params.values()), lr=config.lr, fused=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=config.lr_step, gamma=config.lr_gamma)
    histories: list[list[dict]] = [[] for _ in configs]
    best: list[dict[str, Any] | None] = [None] * len(configs)
    stale = [0] * len(configs)         # held-out scorings since the seed's best
    stopped: list[int | None] = [None] * len(configs)  # the epoch a seed stopped at (early stopping)
    for epoch in Bar(range(config.epochs), desc=f"ae {group.rms[0].role} x{group.latent}", disable=not progress,
                      leave=False):
        total = torch.zeros(len(configs))
        order = torch.stack([torch.randperm(size, generator=g) for g in gens])  # S × N
        for idx in order.split(config.batch_size, dim=1):
            t = target[idx]                                                    # S × B × n
            out = _rescaled(joint(params, buffers, t)[1], None if norms_scaled is None else norms_scaled[idx])
            loss = _loss(out, t, config)                                       # S
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # each seed's parameters get the gradient of its own loss only
            opt.step()
            total += loss.detach() * idx.shape[1]
        sched.step()
        losses = (total / size).tolist()
        if config.select == "last" and epoch < config.epochs - 1:
            for h, loss_ in zip(histories, losses):
                h.append(dict(epoch=epoch, loss=loss_, held_out_error=float("nan")))
            continue
        with torch.no_grad():
            latents, recon = everyone(params, buffers, target)
            recon = _rescaled(recon, norms_scaled * scale) if norms_scaled is not None else recon * scale
        for s, (h, loss_) in enumerate(zip(histories, losses)):
            if stopped[s] is not None:  # trained on with the others, but no longer this seed's model
                continue
            err = _held_out_error(group, recon[s])
            h.append(dict(epoch=epoch, loss=loss_, held_out_error=err))
            stale[s] += 1
            if best[s] is None or err < best[s]["error"] * (1 - config.min_improvement):
                stale[s] = 0
            if best[s] is None or err < best[s]["error"] or config.select == "last":
                best[s] = dict(error=err, epoch=epoch, latents=latents[s].clone(),
                               decoder={k.removeprefix("decoder."): of_seed(v, s).detach().clone()
                                        for k, v in params.items() if k.startswith("decoder.")})
            if config.patience and stale[s] >= config.patience:
                stopped[s] = epoch
        if all(e is not None for e in stopped):
            break
    norms = norms_scaled * scale if norms_scaled is not None else None
    fits = []
    for decoder, b, h in zip(decoders, best, histories):
        decoder.net.load_state_dict(b["decoder"])
        fits.append(dict(decoder=decoder, latents=b["latents"], norms=norms, history=h, epoch=b["epoch"],
                         held_out_error=b["error"], epochs_run=len(h)))
    return fits


def train_autoencoder(group: RowGroup, config: MethodConfig, progress: bool = False) -> dict:
    """One autoencoder on ``group.rows`` (:func:`train_autoencoders` with one config)."""
    return train_autoencoders(group, [config], progress)[0]


@dataclass
class SeedsTogether:
    """What the copies of one model compressed with seeds ``seeds`` share (one
    ``compress_seeds`` call, passed to each copy's compression): the held-out statistics captured
    once (``grams``, by key) and, per group, the fits of every seed trained together on the first
    request (``fits``), each handed out once to the copy of its seed."""

    seeds: list[int]
    grams: dict = field(default_factory=dict)
    fits: dict = field(default_factory=dict)

    def fit(self, key: Any, group: RowGroup, config: MethodConfig) -> dict:
        """The fit of ``config.seed`` for the group named ``key``: the seeds trained together on
        the first call for that key (:func:`train_autoencoders`), kept for the other seeds."""
        if key not in self.fits:
            configs = [dataclasses.replace(config, seed=s) for s in self.seeds]
            self.fits[key] = dict(zip(self.seeds, train_autoencoders(group, configs)))
        return self.fits[key].pop(config.seed)


def fit_modules(model: nn.Module, rms: list[adapters.RoleModule], config: MethodConfig,
                calibration: list[dict] | None = None) -> dict:
    """Train one autoencoder on the stacked rows of ``rms`` (one module, or one role across layers)
    exactly as :func:`~tcomp_utils.registry.compress` would, without changing the model; returns
    :func:`train_autoencoder`'s dict (with the per-epoch ``history``) and the ``latent`` size."""
    group = group_for(rms, config)
    if config.select == "output_error":
        capture_held_out(model, [group], calibration)
    else:
        group.gram = [None] * len(rms)
    return train_autoencoder(group, config) | {"latent": group.latent}
