"""Head removal on T5-like attention, whose heads share one position bias across a stack.

In HF T5 (and mT5) the first layer of each stack computes a ``position_bias`` of shape
``(batch or 1, heads, q, k)``: the relative attention bias (an ``nn.Embedding(buckets, heads)``
owned by that layer) for self-attention, zeros for cross-attention. Every later layer of the stack
receives it and adds it to its scores unchanged, so a layer with fewer heads cannot use it as it is,
and a first layer with fewer heads would hand the others a bias too narrow for them.

:class:`HeadPrunedT5Attention` (and its mT5 twin) keeps the indices of its heads in the original
numbering (``kept_heads``) and, in ``forward``, adds ``position_bias[:, kept_heads]`` to its scores
while passing the *full-head* bias on: the bias every later layer sees is the one the unpruned
model computes, whichever heads any layer lost. :func:`keep_heads` turns an attention module into
one in place; the narrowing of Q/K/V/O itself is :func:`tcomp_utils.methods.heads.apply_plans`'s.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from transformers.models.mt5.modeling_mt5 import MT5Attention
from transformers.models.t5.modeling_t5 import T5Attention


class _KeptHeadsBias:
    """The bias-aware forward shared by the T5 and mT5 attention subclasses below (a mixin placed
    before the HF class, so ``super()`` is the HF attention)."""

    kept_heads: torch.Tensor   # (kept,) long: the original indices of the heads this layer computes
    full_heads: int            # the stack's head count: the width of the bias passed between layers

    def compute_bias(self, query_length: int, key_length: int, device=None, past_seen_tokens=0) -> torch.Tensor:
        """The relative position bias of this layer's kept heads, shape (1, kept, q, k): what the HF
        forward adds to its scores (the embedding keeps all original heads' columns)."""
        return self.full_bias(query_length, key_length, device, past_seen_tokens)[:, self.kept_heads]

    def full_bias(self, query_length: int, key_length: int, device=None, past_seen_tokens=0) -> torch.Tensor:
        """The relative position bias of every original head, shape (1, full_heads, q, k): the one
        the unpruned layer computes and hands to the rest of the stack."""
        return super().compute_bias(query_length, key_length, device=device, past_seen_tokens=past_seen_tokens)

    def forward(self, hidden_states: torch.Tensor, mask=None, key_value_states=None, position_bias=None, cache=None,
                **kwargs):
        """The HF attention on the kept heads. ``position_bias`` (batch or 1, full_heads, q, k) from
        an earlier layer is narrowed to the kept heads; when this layer computes it (None), the
        full-head bias is returned as the second output, so later layers get every head's column.
        Returns (output (batch, q, d_model), bias (., full_heads, q, k), weights (batch, kept, q, k))."""
        if cache is None:  # the deprecated name, renamed by the HF forward's decorator
            cache = kwargs.pop("past_key_values", None)
        if position_bias is not None:
            out, _, weights = super().forward(hidden_states, mask=mask, key_value_states=key_value_states,
                                              position_bias=position_bias[:, self.kept_heads], cache=cache, **kwargs)
            return out, position_bias, weights
        # read before the HF forward appends this step's keys to the cache, as it does itself
        past = cache.get_seq_length(self.layer_idx) if cache is not None else 0
        past = past.clone() if isinstance(past, torch.Tensor) else past
        out, bias, weights = super().forward(hidden_states, mask=mask, key_value_states=key_value_states,
                                             position_bias=None, cache=cache, **kwargs)
        q, k = bias.shape[-2:]
        if self.has_relative_attention_bias:  # the embedding again, all heads (cheap: one lookup)
            full = self.full_bias(q, k, device=bias.device, past_seen_tokens=past)
        else:  # cross-attention's zero bias, at the stack's head count
            full = bias.new_zeros((bias.shape[0], self.full_heads, q, k)).requires_grad_(bias.requires_grad)
        return out, full, weights


class HeadPrunedT5Attention(_KeptHeadsBias, T5Attention):
    """A T5 attention with some heads removed that still shares the stack's full-head position
    bias (see the module docstring); made from a ``T5Attention`` by :func:`keep_heads`."""


class HeadPrunedMT5Attention(_KeptHeadsBias, MT5Attention):
    """The mT5 twin of :class:`HeadPrunedT5Attention` (mT5's attention is a copy of T5's)."""


_PRUNED = {T5Attention: HeadPrunedT5Attention, MT5Attention: HeadPrunedMT5Attention}


def shares_position_bias(attention: nn.Module) -> bool:
    """Whether ``attention`` takes part in a T5-style position bias shared across its stack (it owns
    the relative bias table, or is a layer of such a stack)."""
    return hasattr(attention, "has_relative_attention_bias") or hasattr(attention, "relative_attention_bias")


def supported(attention: nn.Module) -> bool:
    """Whether :func:`keep_heads` can remove heads of ``attention`` (HF T5 or mT5 attention, pruned or not)."""
    # exact classes only: swapping a user's subclass for ours would drop its own behaviour
    return type(attention) in _PRUNED or isinstance(attention, _KeptHeadsBias)


def keep_heads(attention: nn.Module, kept: Sequence[int] | np.ndarray | torch.Tensor) -> nn.Module:
    """Make ``attention`` (a T5/mT5 attention, in place: same object, children and hooks) compute
    only its heads ``kept`` (indices among its *current* heads, ascending) with their columns of the
    shared position bias; an already pruned one composes the choice with its earlier one. Its Q/K/V/O
    and head-count attributes are left to :func:`tcomp_utils.methods.heads.apply_plans`, to be
    narrowed to the same heads right after. Returns ``attention``."""
    if not supported(attention):
        raise TypeError(f"{type(attention).__name__} is not a T5 or mT5 attention")
    kept = torch.as_tensor(np.asarray(kept, dtype=np.int64).reshape(-1))
    current = attention.n_heads
    if len(kept) == 0 or int(kept.min()) < 0 or int(kept.max()) >= current or not bool((kept.diff() > 0).all()):
        raise ValueError(f"kept heads must be distinct ascending indices in [0, {current}) and at least one, "
                         f"got {kept.tolist()}")
    device = attention.q.weight.device
    if isinstance(attention, _KeptHeadsBias):  # the earlier choice, in the original numbering
        original = attention.kept_heads[kept.to(attention.kept_heads.device)]
    else:
        attention.full_heads = current
        # the class swap keeps the module's identity (parents, hooks, optimiser references); the
        # subclass adds no state besides the two attributes set here
        attention.__class__ = _PRUNED[type(attention)]
        original = kept
    # not persistent: the state dict keeps the HF keys (the kept heads are structure, not weights)
    attention.register_buffer("kept_heads", original.to(device), persistent=False)
    return attention
