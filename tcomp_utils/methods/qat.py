"""Quantization-aware training (seed 003: Compressed-Transformers) and its packed result.

**The seed's quantizer** (per tensor, b bits): the scale is ``s = max|W| / (2^b − 1)``; each weight
keeps its sign and a magnitude ``m = |w| / s`` rounded to an integer in ``[0, 2^b − 1]``, so
``ŵ = sign(w) · m · s``. While training the rounding is **stochastic** (up with probability equal
to the fractional part: unbiased, ``E[ŵ] = w``), at evaluation it is to the nearest level; the
gradient passes **straight through** (``∂L/∂w = ∂L/∂ŵ``). A sign and b magnitude bits make
**b + 1 stored bits** a weight: the seed's "1-bit" is ternary {−s, 0, s} (2 bits stored) and its
"8-bit" has 511 levels (9 bits stored). The scale is rounded to float16 first (what is stored).

**Binary weights**: ``ŵ = sign(w)`` (the seed's variant: no scale, the gradient masked to 0 where
``|w| > 1``), and ``binary_scaled``, ``ŵ = α_r · sign(w)`` with ``α_r`` the mean ``|w|`` of the
output row (XNOR-Net's scale, an improvement to compare), the same masked straight-through
gradient (the scale taken as a constant). One stored bit a weight plus the scales.

**Training**: :func:`prepare` puts a fake quantizer on the ``weight`` of every targeted
``nn.Linear`` / ``nn.Embedding`` (a ``torch.nn.utils.parametrize`` parametrization: the model's
structure, and every library check of ``layer.weight``, stay as they were; the trained float
weight is ``parametrizations.weight.original``). **Storing**: ``compress(model, SignMagConfig(...))``
packs each target (trained or not: without QAT it is post-training quantization with the seed's
quantizer) into a :class:`~tcomp_utils.methods.quantized.SignMagLinear` /
:class:`~tcomp_utils.methods.quantized.SignMagEmbedding` whose weight equals the fake quantizer's
evaluation-mode output bit for bit, so the packed model computes what the QAT model evaluated.
With ``rounding="stochastic"`` the packed magnitudes are drawn as in training instead (seeded by
``rounding_seed``): the seed re-quantizes stochastically at evaluation too, so its rows are one such
draw each; a stored model can only hold one, and several seeds give their spread.

Targets as in the seed (:data:`TARGETS`): ``attention`` = the Q/K/V projections of every attention
(self and cross), ``linear`` = every linear layer of the blocks (not the LM head: the seed keeps
its generator in float), ``attention+embeddings`` = ``attention`` and the token embedding table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import adapters
from ..registry import ConfigError, MethodConfig, check_choice, register_method
from ..targeting import MEASURED, check_finite, module_row, replace, targets
from .quant_grid import FP16_TINY
from .quantized import PLAIN_LAYER, SignMagEmbedding, SignMagLinear, plain_layer, signmag_value

QUANTIZERS = ("seed", "binary", "binary_scaled")
ROUNDINGS = ("nearest", "stochastic")
TARGETS = {
    "attention": ["query", "key", "value", "cross_query", "cross_key", "cross_value"],
    "linear": [*adapters.ROLE_GROUPS["linear"], *adapters.CROSS_ROLES],
    "attention+embeddings": ["query", "key", "value", "cross_query", "cross_key", "cross_value", "embeddings"],
}


def target_roles(name: str, model: nn.Module | None = None) -> list[str]:
    """The roles of a seed target of :data:`TARGETS` (or of a role / role group name), keeping
    only the roles ``model``'s architecture has when it is given (an encoder has no cross roles)."""
    roles = list(TARGETS[name]) if name in TARGETS else adapters.expand_roles(name)
    if model is not None:
        have = set(adapters.get_adapter(model).roles())
        roles = [r for r in roles if r in have]
    return roles


# --------------------------------------------------------------------------------------- quantizers
def seed_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """The seed's per-tensor scale ``max|w| / (2^b − 1)``, rounded to float16 precision (a 0-d float32)."""
    return (w.detach().abs().max().float() / (2**bits - 1)).clamp_min(FP16_TINY).half().float()


def seed_codes(w: torch.Tensor, bits: int, stochastic: bool = False,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(negative, magnitude, scale)`` of ``w`` on the seed's grid: bool and float tensors of
    ``w``'s shape (magnitudes integers in [0, 2^b − 1]) and the 0-d scale. ``stochastic``: round
    up with probability equal to the fractional part (unbiased), else to the nearest level."""
    scale = seed_scale(w, bits)
    level = (w.detach().abs().float() / scale).clamp(max=2**bits - 1)
    if stochastic:
        low = level.floor()
        magnitude = (low + torch.bernoulli(level - low, generator=generator)).clamp(max=2**bits - 1)
    else:
        magnitude = level.round()
    return w.detach() < 0, magnitude, scale


def binary_codes(w: torch.Tensor, scaled: bool) -> tuple[torch.Tensor, None, torch.Tensor]:
    """``(negative, None, scales)`` of binary weights: the sign (0 counts as +) and the scale, 1
    (the seed) or the mean ``|w|`` of each row (rows × 1) rounded to float16 precision."""
    w2 = w.detach().float().reshape(w.shape[0], -1)
    scales = (w2.abs().mean(dim=1, keepdim=True).clamp_min(FP16_TINY).half().float() if scaled
              else torch.ones((), dtype=torch.float32))
    return w.detach() < 0, None, scales


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized weight (given); backward: the gradient unchanged, or zeroed where
    ``mask`` is set (binary weights with |w| > 1)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, quantized: torch.Tensor, mask: torch.Tensor | None):
        ctx.save_for_backward(mask if mask is not None else torch.empty(0))
        ctx.has_mask = mask is not None
        return quantized.to(w.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return (grad.masked_fill(mask, 0.0) if ctx.has_mask else grad), None, None


class FakeQuant(nn.Module):
    """The parametrization :func:`prepare` puts on a weight: ``weight = FakeQuant(original)``,
    stochastic while the model trains, nearest in evaluation."""

    def __init__(self, quantizer: str, bits: int | None):
        super().__init__()
        self.quantizer, self.bits = quantizer, bits

    def codes(self, w: torch.Tensor, stochastic: bool, generator: torch.Generator | None = None):
        if self.quantizer == "seed":
            return seed_codes(w, self.bits, stochastic, generator)
        return binary_codes(w, self.quantizer == "binary_scaled")

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        negative, magnitude, scales = self.codes(w, stochastic=self.training)
        quantized = signmag_value(negative, magnitude if magnitude is not None else torch.ones(()), scales)
        mask = (w.detach().abs() > 1) if self.quantizer != "seed" else None
        return _StraightThrough.apply(w, quantized, mask)

    def extra_repr(self) -> str:
        return self.quantizer + (f", bits={self.bits}" if self.bits is not None else "")


# --------------------------------------------------------------------------------------- config
@dataclass
class SignMagConfig(MethodConfig):
    """The seed's quantizer (``quantizer="seed"``, ``bits`` magnitude bits in [1, 8]: b + 1 stored
    bits a weight) or binary weights (``"binary"``, ``"binary_scaled"``; ``bits`` None or 1) on
    ``roles`` (a role, group or list: :func:`target_roles` gives the seed's targets; None: every
    linear role). ``rounding`` of the stored magnitudes: ``"nearest"`` (what the QAT model evaluates)
    or ``"stochastic"`` (the seed's re-quantization at evaluation: one draw, seeded by ``rounding_seed``).
    ``prepare(model, config)`` trains with it; ``compress(model, config)`` stores it packed."""

    quantizer: str = "seed"
    bits: int | None = 8
    rounding: str = "nearest"
    rounding_seed: int = 0

    MAX_BITS: ClassVar[int] = 8

    def validate(self) -> None:
        super().validate()
        check_choice("quantizer", self.quantizer, QUANTIZERS)
        check_choice("rounding", self.rounding, ROUNDINGS)
        if self.rounding == "stochastic" and self.quantizer != "seed":
            raise ConfigError(f"rounding='stochastic' with quantizer={self.quantizer!r}: binary weights have no "
                              "rounding (only the seed's quantizer rounds magnitudes)")
        if self.quantizer == "seed":
            if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= self.MAX_BITS:
                raise ConfigError(f"bits must be an integer in [1, {self.MAX_BITS}] for the seed's quantizer "
                                  f"(magnitude bits; a sign bit is stored besides), got {self.bits!r}")
        elif self.bits not in (None, 1):
            raise ConfigError(f"bits={self.bits!r} with quantizer={self.quantizer!r}: binary weights have 1 bit "
                              "(give bits=None or 1)")

    @property
    def mag_bits(self) -> int:
        """Magnitude bits stored per weight (0 for binary weights)."""
        return self.bits if self.quantizer == "seed" else 0

    def fake_quant(self) -> FakeQuant:
        return FakeQuant(self.quantizer, self.bits if self.quantizer == "seed" else None)


def _selected(model: nn.Module, config: SignMagConfig) -> list[adapters.RoleModule]:
    """The core's :func:`~tcomp_utils.targeting.targets` of ``config`` (each module once; weights
    being trained may be fake-quantized, so finiteness is checked by the callers)."""
    return targets(model, config.target_roles(model), config.layers, accept=plain_layer, wants=PLAIN_LAYER,
                   action="quantize", unique=True, finite=False)


def _original(module: nn.Module) -> torch.Tensor:
    """The float weight: the parametrization's original when the module is being trained with QAT."""
    return module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight") else module.weight


# --------------------------------------------------------------------------------------- training
def float_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict with every fake-quantized weight under its plain name (the trained float
    weight, ``<module>.weight``), so that a fresh model of the same architecture loads it: a copy to
    pack again (e.g. another stochastic draw) without touching ``model``."""
    marker = ".parametrizations.weight.original"
    return {k.replace(marker, ".weight"): v.detach().clone() for k, v in model.state_dict().items()}


def prepare(model: nn.Module, config: SignMagConfig) -> list[adapters.RoleModule]:
    """Put ``config``'s fake quantizer on the weight of every target of ``model`` (in place) and
    return the targets. Every check (architecture, roles, module types, finite weights) comes
    first; a target already fake-quantized is an error."""
    if not isinstance(config, SignMagConfig):
        raise TypeError(f"prepare needs a SignMagConfig, got {type(config).__name__}")
    adapters.prepare(model)
    found = _selected(model, config)
    for rm in found:
        if parametrize.is_parametrized(rm.module, "weight"):
            raise ValueError(f"{rm.path} already has a fake quantizer; prepare a model once")
    check_finite(found)
    for rm in found:
        parametrize.register_parametrization(rm.module, "weight", config.fake_quant())
    return found


# --------------------------------------------------------------------------------------- packing
@register_method("signmag", SignMagConfig, family="quantization",
                 description="seed 003's sign-magnitude quantizer or binary weights, packed (after QAT or as PTQ)")
def _signmag(model: nn.Module, config: SignMagConfig, calibration, progress) -> list[dict]:
    """Pack every target at its nearest levels (what the fake quantizer gives in evaluation), or at
    levels drawn stochastically (``rounding="stochastic"``, one seeded draw over the targets in order)."""
    found = _selected(model, config)
    for rm in found:
        fq = rm.module.parametrizations.weight[0] if parametrize.is_parametrized(rm.module, "weight") else None
        if fq is not None and (fq.quantizer, fq.bits) != (config.quantizer, config.fake_quant().bits):
            raise ValueError(f"{rm.path} was trained with quantizer {fq.quantizer!r} bits {fq.bits}, but is to be "
                             f"stored with {config.quantizer!r} bits {config.bits}")
        if not torch.isfinite(_original(rm.module)).all():
            raise ValueError(f"{rm.path} ({rm.role}) has non-finite weights")
    rows = []
    draw = torch.Generator().manual_seed(config.rounding_seed)
    for rm in found:
        m, w = rm.module, _original(rm.module).detach()
        negative, magnitude, scales = config.fake_quant().codes(w, config.rounding == "stochastic", draw)
        if isinstance(m, nn.Embedding):
            new = SignMagEmbedding.from_codes(negative, magnitude, scales, config.mag_bits, m.padding_idx)
        else:
            new = SignMagLinear.from_codes(negative, magnitude, scales, config.mag_bits, m.bias)
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        rows.append(module_row(rm, m, new, weight=w.float(), bits=1 + config.mag_bits, quantizer=config.quantizer,
                               rel_error=MEASURED))
        replace(model, rm, new)
    return rows
