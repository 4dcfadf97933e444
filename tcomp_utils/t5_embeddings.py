"""A T5 (pre-norm blocks, relative position bias) with the vanilla Transformer's embeddings.

Trained from scratch on the LibreOffice help, T5 with its own embeddings (one table tied across the
encoder's input, the decoder's input and the output layer, unscaled, positions only in the attention bias)
hardly learns to translate in the Transformer's budget; the pilots in
``benchmarks/results/translation_pilots.md`` found that it does once all three of the Transformer's
embedding choices are made together:

* three tables: the encoder's input (``shared``, as T5 names it), the decoder's input and the output layer;
* the looked-up vectors multiplied by √d_model;
* sinusoidal absolute positions added to them (sin over the first half of the features, cos over the second).

The blocks, the relative position bias and everything that reads them (head pruning, quantization,
factorization) are T5's own. Decoding with the key/value cache reads the position offset from the cache.
"""
from __future__ import annotations

import math

import torch
from transformers import T5ForConditionalGeneration


def sinusoidal_positions(start: int, length: int, d_model: int) -> torch.Tensor:
    """Positions ``start … start + length − 1`` as (length, d_model) float32 vectors: sin of
    position / 10000^(2i/d_model) in feature i, cos of the same angle in feature d_model/2 + i."""
    if d_model % 2:
        raise ValueError(f"sinusoidal positions need an even d_model, got {d_model}")
    pos = torch.arange(start, start + length, dtype=torch.float32)[:, None]
    angle = pos / 10000 ** (torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class T5WithTransformerEmbeddings(T5ForConditionalGeneration):
    """``T5ForConditionalGeneration`` whose stacks embed ids as the Transformer does: its own table per
    stack (the encoder's is ``shared``) and an output layer of its own, × √d_model, plus sinusoidal
    positions. Saved and loaded like any transformers model (``from_pretrained`` of this class)."""

    # only the encoder's table is T5's `shared` one; the decoder's table and the output layer are their own
    _tied_weights_keys = {"encoder.embed_tokens.weight": "shared.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.embed_scale = math.sqrt(config.d_model)
        for stack in (self.encoder, self.decoder):
            stack.register_forward_pre_hook(self._embed, with_kwargs=True)

    def _embed(self, stack, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Before a stack runs: its ``input_ids`` (batch, length) become ``inputs_embeds``
        (batch, length, d_model), the positions counted on from what the decoder's cache holds."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or kwargs.get("inputs_embeds") is not None:
            return args, kwargs
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        start = cache.get_seq_length() if cache is not None and stack.is_decoder else 0
        x = stack.embed_tokens(ids) * self.embed_scale
        x = x + sinusoidal_positions(start, ids.shape[-1], x.shape[-1]).to(x.device, x.dtype)
        if args:  # ids passed by position: their place stays, empty
            return (None, *args[1:]), {**kwargs, "inputs_embeds": x}
        return args, {**kwargs, "input_ids": None, "inputs_embeds": x}
