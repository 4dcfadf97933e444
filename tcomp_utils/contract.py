"""The ground floor every other module builds on: what a compressed module promises.

* :class:`Footprint`: the counts of one module (stored numbers, stored bytes, MACs per token);
* :class:`CompressedModule`: the protocol a compressed module implements (``tcomp_footprint()``)
  so the budget counter can count it and the adapters can treat it as a linear-like layer;
* :func:`linear_shape`: ``(in, out)`` of a dense linear map.

It imports nothing from the package, so :mod:`tcomp_utils.adapters` and
:mod:`tcomp_utils.budget` can both use it without importing each other in a cycle (``budget``
re-exports these names, where they were defined before).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn


@dataclass(frozen=True)
class Footprint:
    """Counts of one module: ``params`` (numbers), ``bytes`` (stored), ``macs`` (per token)."""

    params: int
    bytes: int
    macs: float

    def __add__(self, other: "Footprint") -> "Footprint":
        return Footprint(self.params + other.params, self.bytes + other.bytes, self.macs + other.macs)

    @property
    def megabytes(self) -> float:
        return self.bytes / 1e6


@runtime_checkable
class CompressedModule(Protocol):
    """What a compressed module implements so the budget counter can count it.

    ``tcomp_footprint`` returns its stored parameters, stored bytes (codes, scales, zero
    points, indices included) and MACs for one token. Such modules also expose ``in_features``
    and ``out_features`` like ``nn.Linear`` so attention head counts can be read from them.
    """

    def tcomp_footprint(self) -> Footprint: ...


def linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """``(in, out)`` of a dense linear map: ``nn.Linear``, or HF's ``Conv1D`` (GPT-2; weight in × out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        return tuple(module.weight.shape)
    return None
