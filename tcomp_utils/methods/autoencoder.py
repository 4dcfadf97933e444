"""Autoencoder compression of weight matrices (seed 000: Banaei et al., EACL 2023).

The rows of a weight matrix W (out × in: ``out`` rows of ``in`` numbers; for an embedding table,
one row per token) are the training samples of a small MLP autoencoder. After training, the
**encoder is discarded**: what is stored is each row's latent code (``x`` numbers) and the decoder,
which maps a code back to a row. ``separated`` trains one autoencoder per module; ``concatenated``
trains one over the rows of one role stacked across all layers (L·out rows), so the decoder is
stored once for the L modules (the seed's "collaboration between modules across layers").

**Design** (each knob is a field of :class:`AEConfig`): rows scaled by one number ``s = max|W|``
into tanh's range (and back); encoder ``in → e₁x → … → x`` and decoder ``x → d₁x → … → in`` with
LeakyReLU between layers and tanh at the decoder's output, hidden widths given as multiples of the
latent size (the seed's relative sizes: encoder [8, 4], decoder [2, 4]); with ``enforce_norm``
each reconstructed row is re-scaled to its original norm (the norms are stored); loss
``cosine_weight · (1 − cos(ŵ, w)) + rmse_weight · RMSE(ŵ, w)`` (0.9091 / 0.0909); Adam with
step decay of the learning rate; a fixed seed.

**Budget.** For N rows of n numbers at ratio c the stored numbers are ``N·n / c`` at most:

    N·x  +  [x·d₁x + d₁x + Σ dᵢx·dᵢ₊₁x + dᵢ₊₁x + d_k x·n + n]  +  N·[enforce_norm]  +  1
    latents  decoder weights and biases                         row norms            scale

a quadratic in x whose largest integer root is the latent size (widths rounded, then x lowered
until the exact count fits). The layer's bias is kept as is and, as for every factorization here,
not part of the ratio. The budget counter counts exactly these tensors.

**Model selection** on held-out data, never the test split: after each epoch the reconstruction is
scored on calibration inputs (``select="output_error"``: the relative output error
``‖X(W − Ŵ)ᵀ‖ / ‖XWᵀ‖`` of the module(s) on the calibration tokens, from their Gram matrix XᵀX; for
an embedding table the error of the rows looked up, weighted by token frequency), and the best
epoch is kept; ``"weight_error"`` scores ‖W − Ŵ‖_F (no data), ``"last"`` keeps the last epoch.

**At run time** an :class:`AELinear` reconstructs its weight once and caches it (the decoder MLP
over all rows costs more than the layer's matmul on a short input), re-building it when its tensors
change; while training with gradients it reconstructs on every call so that fine-tuning trains the
codes and the decoder. So an autoencoder saves **storage, not compute**: the MACs per token are
those of the dense layer. :class:`AEEmbedding` decodes, per call, only the rows looked up.

Why one module of ~570 lines: the latent budget, the compressed modules, the joint training of
seeds and the handler are one method whose parts change together (the stored-number count of
:func:`stored_numbers` is what the modules store and what the training fits); module selection,
replacement and the report row are the core's (:mod:`tcomp_utils.targeting`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import adapters, capture
from ..budget import BudgetError, CompressedLinear, Footprint, as_parameter, check_ratio, dense_bytes
from ..registry import (CompressionReport, ConfigError, MethodConfig, check_choice, check_int, compress,
                        register_method, register_module)
from ..targeting import MEASURED, module_row, replace, stacks_of, targets
from ..timing import phase

SELECTIONS = ("output_error", "weight_error", "last")


# --------------------------------------------------------------------------------------- budget
def decoder_widths_for(x: int, relative: list[float]) -> list[int]:
    """Hidden widths of the decoder for latent size ``x``: ``max(1, round(a·x))`` per relative width ``a``."""
    return [max(1, round(a * x)) for a in relative]


def decoder_params(x: int, hidden: list[int], n: int) -> int:
    """Weights and biases of the decoder ``x → hidden… → n``."""
    sizes = [x, *hidden, n]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def stored_numbers(n_rows: int, n: int, x: int, relative: list[float], enforce_norm: bool) -> int:
    """Numbers an autoencoder with latent size ``x`` stores for ``n_rows`` rows of ``n``: latents,
    decoder, row norms (with ``enforce_norm``) and the scale."""
    return n_rows * x + decoder_params(x, decoder_widths_for(x, relative), n) + (n_rows if enforce_norm else 0) + 1


def latent_size(n_rows: int, n: int, ratio: float, relative: list[float], enforce_norm: bool) -> int:
    """The largest latent size whose stored numbers (:func:`stored_numbers`) are at most
    ``n_rows·n / ratio``; :class:`BudgetError` when even x = 1 does not fit."""
    check_ratio(ratio)
    budget = n_rows * n / ratio
    # a·x² + b·x + c <= budget with the relative widths (rounding is settled by the exact count below)
    rel = list(relative)
    a = (rel[0] + sum(p * q for p, q in zip(rel, rel[1:]))) if rel else 0.0
    b = n_rows + (sum(rel) + rel[-1] * n if rel else n)
    c = n + (n_rows if enforce_norm else 0) + 1 - budget
    root = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a) if a > 0 else -c / b
    x = max(1, math.floor(root) + 1)
    while x >= 1 and stored_numbers(n_rows, n, x, rel, enforce_norm) > budget:
        x -= 1
    if x < 1:
        need = stored_numbers(n_rows, n, 1, rel, enforce_norm)
        raise BudgetError(f"autoencoder: ratio {ratio} allows {budget:.0f} stored numbers for {n_rows} rows of {n}, "
                          f"but even a latent size of 1 needs {need} (decoder widths {rel}, enforce_norm={enforce_norm}); "
                          f"the largest feasible ratio is {n_rows * n / need:.2f}")
    if x >= n:
        raise BudgetError(f"autoencoder: ratio {ratio} gives latent size {x} >= row length {n}: it would not compress")
    return x


# --------------------------------------------------------------------------------------- modules
def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU())
    return nn.Sequential(*layers)


@register_module
class AEDecoder(nn.Module):
    """The stored decoder ``x → hidden… → n`` (LeakyReLU, tanh output) and the row scale ``s``;
    shared by every module whose rows it decodes (one for a ``concatenated`` stack)."""

    def __init__(self, latent: int, hidden: list[int], n: int, scale: float = 1.0):
        super().__init__()
        self.latent, self.hidden, self.n = latent, list(hidden), n
        self.net = _mlp([latent, *self.hidden, n])
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, codes: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        """Rows (… × n) from codes (… × x); with ``norms`` (…) each row gets its stored norm."""
        rows = torch.tanh(self.net(codes))
        if norms is not None:
            rows = rows * (norms / rows.norm(dim=-1).clamp_min(1e-12)).unsqueeze(-1)
            return rows
        return rows * self.scale

    def tcomp_footprint(self) -> Footprint:
        tensors = [*self.net.parameters(), self.scale]
        return Footprint(sum(t.numel() for t in tensors), sum(dense_bytes(t) for t in tensors), 0)

    def tcomp_config(self) -> dict:
        return {"latent": self.latent, "hidden": self.hidden, "n": self.n}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: None = None) -> "AEDecoder":
        return cls(config["latent"], config["hidden"], config["n"])


class _AERows(CompressedLinear):
    """Latent codes (rows × x), optional row norms (rows) and a shared :class:`AEDecoder`."""

    def __init__(self, latents: torch.Tensor, decoder: AEDecoder, norms: torch.Tensor | None):
        super().__init__()
        self.latents = as_parameter(latents)
        self.norms = as_parameter(norms) if norms is not None else None
        self.shared = decoder

    def _decode(self, codes: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        return self.shared(codes, norms)

    def _own(self) -> list[torch.Tensor]:
        return [t for t in (self.latents, self.norms, getattr(self, "bias", None)) if t is not None]


@register_module
class AELinear(_AERows):
    """``y = x Ŵᵀ + b`` with the rows of Ŵ (out × in) decoded from ``latents`` (out × x) by the
    shared decoder. Ŵ is reconstructed once and cached (rebuilt when a tensor changes; every call
    while training with gradients). MACs per token: ``in × out``, as the dense layer."""

    def __init__(self, latents: torch.Tensor, decoder: AEDecoder, norms: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None):
        super().__init__(latents, decoder, norms)
        self.bias = as_parameter(bias) if bias is not None else None
        self.out_features, self.in_features = latents.shape[0], decoder.n

    @property
    def rank_label(self) -> str:
        return f"latent {self.latents.shape[1]}"

    def weight_matrix(self) -> torch.Tensor:
        """The reconstructed weight (out × in)."""
        return self._decode(self.latents, self.norms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.cached_weight([*self.parameters(), *self.buffers()]), self.bias)

    def tcomp_footprint(self) -> Footprint:
        own = self._own()
        return Footprint(sum(t.numel() for t in own), sum(dense_bytes(t) for t in own), self.in_features * self.out_features)

    def tcomp_config(self) -> dict:
        return {"out": self.out_features, "latent": self.latents.shape[1], "norms": self.norms is not None,
                "bias": self.bias is not None}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: AEDecoder | None = None) -> "AELinear":
        norms = torch.empty(config["out"]) if config["norms"] else None
        bias = torch.empty(config["out"]) if config["bias"] else None
        return cls(torch.empty(config["out"], config["latent"]), shared, norms, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, latent={self.latents.shape[1]}, " \
               f"norms={self.norms is not None}, bias={self.bias is not None}"


@register_module
class AEEmbedding(_AERows):
    """An embedding table (vocab × dim) whose rows are decoded from ``latents`` (vocab × x); a
    look-up decodes only the distinct rows it needs. No MACs are counted (a look-up)."""

    def __init__(self, latents: torch.Tensor, decoder: AEDecoder, norms: torch.Tensor | None = None,
                 padding_idx: int | None = None):
        super().__init__(latents, decoder, norms)
        self.num_embeddings, self.embedding_dim, self.padding_idx = latents.shape[0], decoder.n, padding_idx

    @property
    def rank_label(self) -> str:
        return f"latent {self.latents.shape[1]}"

    def weight_matrix(self) -> torch.Tensor:
        return self._decode(self.latents, self.norms)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        unique, inverse = torch.unique(flat, return_inverse=True)
        rows = self._decode(self.latents[unique], self.norms[unique] if self.norms is not None else None)
        return rows[inverse].reshape(*input_ids.shape, self.embedding_dim)

    def tcomp_footprint(self) -> Footprint:
        own = self._own()
        return Footprint(sum(t.numel() for t in own), sum(dense_bytes(t) for t in own), 0)

    def tcomp_config(self) -> dict:
        return {"vocab": self.num_embeddings, "latent": self.latents.shape[1], "norms": self.norms is not None,
                "padding_idx": self.padding_idx}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: AEDecoder | None = None) -> "AEEmbedding":
        norms = torch.empty(config["vocab"]) if config["norms"] else None
        return cls(torch.empty(config["vocab"], config["latent"]), shared, norms, config["padding_idx"])

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, latent={self.latents.shape[1]}, norms={self.norms is not None}"


# --------------------------------------------------------------------------------------- config
@dataclass
class AEConfig(MethodConfig):
    """Autoencoder compression at ``ratio`` (stored numbers before / after, > 1) of each module
    (``separated``) or of one role stacked across layers (``concatenated``); the other fields are
    the autoencoder's knobs (see the module docstring). ``select="output_error"`` needs calibration
    batches (held-out inputs: never the test split)."""

    ratio: float = 10.0
    mode: str = "separated"
    encoder_widths: list[float] = field(default_factory=lambda: [8.0, 4.0])
    decoder_widths: list[float] = field(default_factory=lambda: [2.0, 4.0])
    enforce_norm: bool = True
    cosine_weight: float = 0.9091
    rmse_weight: float = 0.0909
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    lr_step: int = 10
    lr_gamma: float = 0.8
    select: str = "output_error"
    seed: int = 0

    MODES: ClassVar[tuple[str, ...]] = ("separated", "concatenated")

    def validate(self) -> None:
        super().validate()
        check_ratio(self.ratio)
        check_choice("mode", self.mode, self.MODES)
        check_choice("select", self.select, SELECTIONS)
        for name in ("encoder_widths", "decoder_widths"):
            widths = getattr(self, name)
            if isinstance(widths, (str, int, float)) or not all(
                    isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0 for a in widths):
                raise ConfigError(f"{name} must be a list of positive numbers (hidden widths as multiples of the "
                                  f"latent size; [] for none), got {widths!r}")
        if not isinstance(self.enforce_norm, bool):
            raise ConfigError(f"enforce_norm must be True or False, got {self.enforce_norm!r}")
        for name in ("cosine_weight", "rmse_weight"):
            w = getattr(self, name)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {w!r}")
        if self.cosine_weight == 0 and self.rmse_weight == 0:
            raise ConfigError("cosine_weight and rmse_weight are both 0: the loss would be 0")
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size)
        check_int("lr_step", self.lr_step)
        check_int("seed", self.seed, low=0)
        for name, high in (("lr", None), ("lr_gamma", 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or (high is not None and v > high):
                raise ConfigError(f"{name} must be a number > 0{f' and <= {high}' if high else ''}, got {v!r}")

    def calibration_needed(self) -> bool:
        return self.select == "output_error"


# --------------------------------------------------------------------------------------- training
@dataclass
class _Group:
    """Modules compressed by one autoencoder: their role modules, stacked rows, and held-out scorer."""

    rms: list[adapters.RoleModule]
    rows: torch.Tensor           # (N × n) the stacked rows of the modules' weights
    latent: int
    hidden: list[int]
    gram: list[torch.Tensor | None] = field(default_factory=list)  # per module: XᵀX (in × in) or token counts (vocab)
    norm_sq: float | None = None  # the held-out squared norm of the weights themselves (computed once)


def _loss(out: torch.Tensor, target: torch.Tensor, config: AEConfig) -> torch.Tensor:
    """The training loss of reconstructed rows ``out`` against ``target`` (… × B × n): one value
    per leading index (per seed when the seeds' batches are stacked)."""
    loss = out.new_zeros(out.shape[:-2])
    if config.cosine_weight:
        loss = loss + config.cosine_weight * (1 - nn.functional.cosine_similarity(out, target, dim=-1)).mean(-1)
    if config.rmse_weight:
        loss = loss + config.rmse_weight * (out - target).pow(2).mean((-2, -1)).clamp_min(1e-20).sqrt()
    return loss


def _held_out_sq(group: _Group, rows: torch.Tensor) -> float:
    """Σ over the group's modules of the squared held-out norm of ``rows`` (N × n; see ``select``)."""
    total, start = 0.0, 0
    for rm, g in zip(group.rms, group.gram):
        d = rows[start:start + _n_rows(rm)].double()
        start += _n_rows(rm)
        if g is None:                    # weight error
            total += d.pow(2).sum().item()
        elif g.dim() == 1:               # embedding: rows weighted by token frequency
            total += (g[:, None] * d.pow(2)).sum().item()
        else:                            # ‖X dᵀ‖² = tr(d XᵀX dᵀ)
            total += ((d @ g) * d).sum().item()
    return total


def _held_out_error(group: _Group, recon: torch.Tensor) -> float:
    """Relative error of the reconstruction on the held-out inputs (see ``select``)."""
    if group.norm_sq is None:  # the weights' own held-out norm, once per group
        group.norm_sq = _held_out_sq(group, group.rows)
    num = _held_out_sq(group, group.rows.double() - recon.double())
    return math.sqrt(num / group.norm_sq) if group.norm_sq > 0 else 0.0


def _stacked(mlps: list[nn.Sequential]) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """The Linear layers of S MLPs of the same sizes as (weight S × in × out, bias S × 1 × out)."""
    layers = [[m for m in mlp if isinstance(m, nn.Linear)] for mlp in mlps]
    return [(nn.Parameter(torch.stack([lay[i].weight.detach().T for lay in layers]).contiguous()),
             nn.Parameter(torch.stack([lay[i].bias.detach()[None] for lay in layers])))
            for i in range(len(layers[0]))]


def _run(layers: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    """S MLPs at once on their own inputs x (S × B × in): one batched matmul per layer, LeakyReLU
    between layers (as :func:`_mlp`)."""
    for i, (w, b) in enumerate(layers):
        x = torch.baddbmm(b, x, w)
        if i < len(layers) - 1:
            x = nn.functional.leaky_relu(x)
    return x


def train_autoencoders(group: _Group, configs: list[AEConfig], progress: bool = False) -> list[dict]:
    """Train one autoencoder per config on ``group.rows``, all at once: the configs may differ in
    their ``seed`` only. Each seed draws its own initial weights and its own batch order, and its
    loss, gradients, Adam state and model selection are its own, exactly as if it were trained alone
    (to float rounding); stacking the S networks into batched matmuls divides the number of operator
    calls, which is what a step of these small MLPs costs on a CPU, by S.

    Returns per config the kept ``decoder`` (:class:`AEDecoder`), ``latents`` (N × x), ``norms``
    (N, or None), the per-epoch ``history`` (loss, held-out error) and the kept ``epoch``."""
    config = configs[0]
    if any(dataclasses.replace(c, seed=config.seed) != config for c in configs):
        raise ValueError("autoencoders trained together must share every setting but the seed")
    rows = group.rows.float()
    n_rows, n = rows.shape
    scale = rows.abs().max().clamp_min(1e-12).item()
    target = rows / scale
    encoders, decoders = [], []
    for c in configs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            encoders.append(_mlp([n, *[max(1, round(a * group.latent)) for a in config.encoder_widths], group.latent]))
            decoders.append(AEDecoder(group.latent, group.hidden, n, scale))
    enc, dec = _stacked(encoders), _stacked([d.net for d in decoders])
    gens = [torch.Generator().manual_seed(c.seed) for c in configs]
    norms_scaled = target.norm(dim=-1) if config.enforce_norm else None
    # one fused kernel per tensor and step (the step of a small MLP is otherwise mostly optimizer calls)
    opt = torch.optim.Adam([p for layer in (*enc, *dec) for p in layer], lr=config.lr, fused=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=config.lr_step, gamma=config.lr_gamma)
    histories: list[list[dict]] = [[] for _ in configs]
    best: list[dict | None] = [None] * len(configs)
    for epoch in tqdm(range(config.epochs), desc=f"ae {group.rms[0].role} x{group.latent}", disable=not progress,
                      leave=False):
        total = torch.zeros(len(configs))
        order = torch.stack([torch.randperm(n_rows, generator=g) for g in gens])  # S × N
        for idx in order.split(config.batch_size, dim=1):
            t = target[idx]                                                        # S × B × n
            out = torch.tanh(_run(dec, _run(enc, t)))
            if norms_scaled is not None:
                out = out * (norms_scaled[idx] / out.norm(dim=-1).clamp_min(1e-12)).unsqueeze(-1)
            loss = _loss(out, t, config)                                           # S
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # each seed's parameters get the gradient of its own loss only
            opt.step()
            total += loss.detach() * idx.shape[1]
        sched.step()
        losses = (total / n_rows).tolist()
        if config.select == "last" and epoch < config.epochs - 1:
            for h, loss_ in zip(histories, losses):
                h.append(dict(epoch=epoch, loss=loss_, held_out_error=float("nan")))
            continue
        with torch.no_grad():
            latents = _run(enc, target.expand(len(configs), n_rows, n))
            recon = torch.tanh(_run(dec, latents))
            recon = (recon * (norms_scaled * scale / recon.norm(dim=-1).clamp_min(1e-12)).unsqueeze(-1)
                     if norms_scaled is not None else recon * scale)
        for s, (h, loss_) in enumerate(zip(histories, losses)):
            err = _held_out_error(group, recon[s])
            h.append(dict(epoch=epoch, loss=loss_, held_out_error=err))
            if best[s] is None or err < best[s]["error"] or config.select == "last":
                best[s] = dict(error=err, epoch=epoch, latents=latents[s].clone(),
                               layers=[(w[s].detach().clone(), b[s, 0].detach().clone()) for w, b in dec])
    norms = norms_scaled * scale if norms_scaled is not None else None
    fits = []
    for decoder, b, h in zip(decoders, best, histories):
        with torch.no_grad():
            for lin, (w, bias) in zip([m for m in decoder.net if isinstance(m, nn.Linear)], b["layers"]):
                lin.weight.copy_(w.T)
                lin.bias.copy_(bias)
        fits.append(dict(decoder=decoder, latents=b["latents"], norms=norms, history=h, epoch=b["epoch"],
                         held_out_error=b["error"]))
    return fits


def train_autoencoder(group: _Group, config: AEConfig, progress: bool = False) -> dict:
    """One autoencoder on ``group.rows`` (:func:`train_autoencoders` with one config)."""
    return train_autoencoders(group, [config], progress)[0]


def fit_modules(model: nn.Module, rms: list[adapters.RoleModule], config: AEConfig,
                calibration: list[dict] | None = None) -> dict:
    """Train one autoencoder on the stacked rows of ``rms`` (one module, or one role across layers)
    exactly as :func:`~tcomp_utils.registry.compress` would, without changing the model; returns
    :func:`train_autoencoder`'s dict (with the per-epoch ``history``) and the ``latent`` size."""
    rows = torch.cat([_matrix(rm) for rm in rms]).float()
    x = latent_size(rows.shape[0], rows.shape[1], config.ratio, config.decoder_widths, config.enforce_norm)
    group = _Group(rms, rows, x, decoder_widths_for(x, config.decoder_widths))
    if config.select == "output_error":
        if not calibration:
            raise ValueError("select='output_error' needs calibration batches (held-out inputs)")
        _held_out(model, [group], calibration)
    else:
        group.gram = [None] * len(rms)
    return train_autoencoder(group, config) | {"latent": x}


# --------------------------------------------------------------------------------------- handler
def _n_rows(rm: adapters.RoleModule) -> int:
    m = rm.module
    return m.num_embeddings if isinstance(m, nn.Embedding) else m.out_features


def _matrix(rm: adapters.RoleModule) -> torch.Tensor:
    return rm.module.weight.detach()


def _held_out(model: nn.Module, groups: list[_Group], calibration: list[dict]) -> None:
    """Fill each group's Gram matrices (linear layers) or token counts (tables) from calibration."""
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


_JOINT: dict | None = None  # while compress_seeds runs: its seeds and the fits trained together


def compress_seeds(model: nn.Module, config: AEConfig, seeds: int, calibration: list[dict] | None = None, *,
                   progress: bool = False) -> list[tuple[nn.Module, CompressionReport]]:
    """Autoencoder compression of ``seeds`` copies of ``model`` (left unchanged), copy s with
    ``config.seed = s``: what ``compress(copy.deepcopy(model), replace(config, seed=s))`` gives for
    s = 0 … seeds−1, but with the seeds' autoencoders trained together
    (:func:`train_autoencoders`) and the held-out inputs captured once. The training time is booked
    to the first copy's report (``phases["training"]``); the mean over the reports is the time per seed."""
    global _JOINT
    check_int("seeds", seeds)
    if _JOINT is not None:
        raise RuntimeError("compress_seeds is already running (it is not re-entrant)")
    _JOINT = {"seeds": list(range(seeds)), "fits": {}}
    try:
        runs = []
        for s in range(seeds):
            copy_ = copy.deepcopy(model)
            runs.append((copy_, compress(copy_, dataclasses.replace(config, seed=s), calibration, progress=progress)))
        return runs
    finally:
        _JOINT = None


@register_method("ae", AEConfig, family="autoencoder")
def _autoencoder(model, config: AEConfig, calibration, progress) -> list[dict]:
    """Autoencoder over the rows of each matrix (or of one role stacked across layers); latents and decoder stored."""
    groups = []
    found = targets(model, config.target_roles(model), config.layers)
    for rms in stacks_of(found, config.mode):  # every budget before any training
        rows = torch.cat([_matrix(rm) for rm in rms]).float()
        x = latent_size(rows.shape[0], rows.shape[1], config.ratio, config.decoder_widths, config.enforce_norm)
        groups.append(_Group(rms, rows, x, decoder_widths_for(x, config.decoder_widths)))
    shared = _JOINT.get("fits") if _JOINT and config.seed in _JOINT["seeds"] else None
    key = (repr(dataclasses.replace(config, seed=0)), tuple(rm.path for g in groups for rm in g.rms))
    if config.select != "output_error":
        for g in groups:
            g.gram = [None] * len(g.rms)
    elif shared is not None and ("gram", key) in shared:  # the same copy's held-out inputs, captured once
        for g, gram in zip(groups, shared["gram", key]):
            g.gram = gram
    else:
        with phase("capture"):
            _held_out(model, groups, calibration)
        if shared is not None:
            shared["gram", key] = [g.gram for g in groups]
    rows_out = []
    for i, g in enumerate(tqdm(groups, desc=f"ae {config.mode} x{config.ratio:g}", disable=not progress)):
        start_t = time.perf_counter()
        with phase("training"):
            if shared is None:
                fit = train_autoencoder(g, config)
            else:  # every seed of compress_seeds trained together on the first call, kept for the others
                if (key, i) not in shared:
                    fits = train_autoencoders(g, [dataclasses.replace(config, seed=s) for s in _JOINT["seeds"]])
                    shared[key, i] = dict(zip(_JOINT["seeds"], fits))
                fit = shared[key, i].pop(config.seed)
        seconds = time.perf_counter() - start_t
        new, start = {}, 0
        for rm in g.rms:
            k = _n_rows(rm)
            lat = fit["latents"][start:start + k]
            nrm = fit["norms"][start:start + k] if fit["norms"] is not None else None
            start += k
            m = rm.module
            new[rm.path] = (AEEmbedding(lat, fit["decoder"], nrm, m.padding_idx) if isinstance(m, nn.Embedding)
                            else AELinear(lat, fit["decoder"], nrm, m.bias))
        for rm in g.rms:
            rows_out.append(module_row(rm, rm.module, new[rm.path], sharing=len(g.rms), rank=new[rm.path].rank_label,
                                       rel_error=MEASURED, held_out_error=fit["held_out_error"], epoch_kept=fit["epoch"],
                                       train_seconds=seconds / len(g.rms)))
        for rm in g.rms:
            replace(model, rm, new[rm.path])
    return rows_out
