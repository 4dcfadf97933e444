"""Autoencoder compression of weight matrices (seed 000: Banaei et al., EACL 2023): the config and
the handler.

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
step decay of the learning rate; a fixed seed. The latent size is the largest whose stored numbers
(latents, decoder, norms, scale) fit the ratio.

**Model selection** on held-out data, never the test split: after each epoch the reconstruction is
scored on calibration inputs (``select="output_error"``: the relative output error of the module(s)
on the calibration tokens; for an embedding table the error of the rows looked up, weighted by
token frequency), and the best epoch is kept; ``"weight_error"`` scores ‖W − Ŵ‖_F (no data),
``"last"`` keeps the last epoch.

The method's parts, each in its module: the budget and the compressed modules
(:mod:`~tcomp_utils.methods.autoencoder_modules`: :class:`AELinear`, :class:`AEEmbedding`,
:class:`AEDecoder`, :func:`latent_size`, …), the training (:mod:`~tcomp_utils.methods.autoencoder_training`:
:func:`train_autoencoders`, the seeds of one cell trained together by ``torch.vmap``; :func:`fit_modules`),
and here the config, the handler and :func:`compress_seeds`. Every public name of those modules is
importable from here. Module selection, replacement and the report row are the core's
(:mod:`tcomp_utils.targeting`).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn
from tqdm.auto import tqdm

from ..budget import check_ratio
from ..registry import (CompressionReport, ConfigError, MethodConfig, check_choice, check_int, compress,
                        register_method)
from ..targeting import MEASURED, module_row, replace, stacks_of, targets
from ..timing import phase
from .autoencoder_modules import (AEDecoder, AEEmbedding, AELinear, decoder_params, decoder_widths_for, latent_size,
                                  mlp, stored_numbers)
from .autoencoder_training import (RowGroup, SeedsTogether, capture_held_out, fit_modules, group_for, n_rows,
                                   train_autoencoder, train_autoencoders)

__all__ = ["AEConfig", "AEDecoder", "AEEmbedding", "AELinear", "RowGroup", "SELECTIONS", "SeedsTogether",
           "capture_held_out", "compress_seeds", "decoder_params", "decoder_widths_for", "fit_modules", "group_for",
           "latent_size", "mlp", "n_rows", "stored_numbers", "train_autoencoder", "train_autoencoders"]

SELECTIONS = ("output_error", "weight_error", "last")


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
    patience: int = 0  # early stopping: stop after this many held-out scorings without a new best (0: never)
    min_improvement: float = 1e-3  # ... a new best by at least this fraction of the best error
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
        check_int("patience", self.patience, low=0)
        if self.patience and self.select == "last":
            raise ConfigError(f"patience={self.patience} needs a held-out selection (select='output_error' or "
                              "'weight_error'); select='last' scores nothing to stop on")
        if isinstance(self.min_improvement, bool) or not isinstance(self.min_improvement, (int, float)) \
                or not 0 <= self.min_improvement < 1:
            raise ConfigError(f"min_improvement must be a fraction in [0, 1), got {self.min_improvement!r}")
        for name, high in (("lr", None), ("lr_gamma", 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or (high is not None and v > high):
                raise ConfigError(f"{name} must be a number > 0{f' and <= {high}' if high else ''}, got {v!r}")

    def calibration_needed(self) -> bool:
        return self.select == "output_error"



# --------------------------------------------------------------------------------------- handler
def compress_seeds(model: nn.Module, config: AEConfig, seeds: int, calibration: list[dict] | None = None, *,
                   progress: bool = False) -> list[tuple[nn.Module, CompressionReport]]:
    """Autoencoder compression of ``seeds`` copies of ``model`` (left unchanged), copy s with
    ``config.seed = s``: what ``compress(copy.deepcopy(model), replace(config, seed=s))`` gives for
    s = 0 … seeds−1, but with the seeds' autoencoders trained together
    (:func:`train_autoencoders`) and the held-out inputs captured once: each copy's compression
    is given the call's :class:`SeedsTogether`. The training time is booked to the first copy's
    report (``phases["training"]``); the mean over the reports is the time per seed."""
    check_int("seeds", seeds)
    together = SeedsTogether(list(range(seeds)))
    handler = functools.partial(_autoencoder, together=together)
    runs = []
    for s in range(seeds):
        copy_ = copy.deepcopy(model)
        runs.append((copy_, compress(copy_, dataclasses.replace(config, seed=s), calibration, progress=progress,
                                     handler=handler)))
    return runs


@register_method("ae", AEConfig, family="autoencoder")
def _autoencoder(model, config: AEConfig, calibration, progress, together: SeedsTogether | None = None) -> list[dict]:
    """Autoencoder over the rows of each matrix (or of one role stacked across layers); latents and decoder stored."""
    together = together or SeedsTogether([config.seed])  # alone: one seed, nothing shared
    found = targets(model, config.target_roles(model), config.layers)
    groups = [group_for(rms, config) for rms in stacks_of(found, config.mode)]  # every budget before any training
    key = (repr(dataclasses.replace(config, seed=0)), tuple(rm.path for g in groups for rm in g.rms))
    if config.select != "output_error":
        for g in groups:
            g.gram = [None] * len(g.rms)
    elif key in together.grams:  # the same copy's held-out inputs, captured once
        for g, gram in zip(groups, together.grams[key]):
            g.gram = gram
    else:
        with phase("capture"):
            capture_held_out(model, groups, calibration)
        together.grams[key] = [g.gram for g in groups]
    rows_out = []
    for i, g in enumerate(tqdm(groups, desc=f"ae {config.mode} x{config.ratio:g}", disable=not progress)):
        start_t = time.perf_counter()
        with phase("training"):
            fit = together.fit((key, i), g, config)
        seconds = time.perf_counter() - start_t
        new, start = {}, 0
        for rm in g.rms:
            k = n_rows(rm)
            lat = fit["latents"][start:start + k]
            nrm = fit["norms"][start:start + k] if fit["norms"] is not None else None
            start += k
            m = rm.module
            new[rm.path] = (AEEmbedding(lat, fit["decoder"], nrm, m.padding_idx) if isinstance(m, nn.Embedding)
                            else AELinear(lat, fit["decoder"], nrm, m.bias))
        for rm in g.rms:
            rows_out.append(module_row(rm, rm.module, new[rm.path], sharing=len(g.rms), rank=new[rm.path].rank_label,
                                       rel_error=MEASURED, held_out_error=fit["held_out_error"], epoch_kept=fit["epoch"],
                                       train_seconds=seconds / len(g.rms),
                                       **({"epochs_run": fit["epochs_run"]} if config.patience else {})))
        for rm in g.rms:
            replace(model, rm, new[rm.path])
    return rows_out
