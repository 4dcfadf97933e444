"""What an autoencoder-compressed weight stores, and the layers that run it (the autoencoder
method is :mod:`tcomp_utils.methods.autoencoder`; its training :mod:`~tcomp_utils.methods.autoencoder_training`).

The rows of a weight matrix (out × in; for an embedding table, one row per token) are stored as
latent codes (rows × x) and one decoder MLP ``x → hidden… → in`` (LeakyReLU between layers, tanh at
its output) that maps a code back to a row, times the row scale ``s`` or, with ``enforce_norm``,
re-scaled to the row's stored norm. One :class:`AEDecoder` may serve several modules (the rows of
one role stacked across layers): each :class:`AELinear` / :class:`AEEmbedding` holds its codes,
norms (and bias) and the shared decoder, and a saved model names these classes (registered with
:func:`tcomp_utils.registry.register_module`) with the configs that rebuild them empty.

**Budget.** For N rows of n numbers at ratio c the stored numbers are ``N·n / c`` at most:

    N·x  +  [x·d₁x + d₁x + Σ dᵢx·dᵢ₊₁x + dᵢ₊₁x + d_k x·n + n]  +  N·[enforce_norm]  +  1
    latents  decoder weights and biases                         row norms            scale

a quadratic in x whose largest integer root is the latent size (:func:`latent_size`: widths
rounded, then x lowered until the exact count :func:`stored_numbers` fits). The layer's bias is
kept as is and, as for every factorization here, not part of the ratio. The footprints of the
modules count exactly these tensors.

**At run time** an :class:`AELinear` reconstructs its weight once and caches it (the decoder MLP
over all rows costs more than the layer's matmul on a short input), re-building it when its tensors
change; while training with gradients it reconstructs on every call so that fine-tuning trains the
codes and the decoder. So an autoencoder saves **storage, not compute**: the MACs per token are
those of the dense layer. :class:`AEEmbedding` decodes, per call, only the rows looked up.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..budget import BudgetError, CompressedLinear, Footprint, as_parameter, check_ratio, dense_bytes
from ..registry import register_module


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
def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers ``sizes[0] → … → sizes[-1]`` with LeakyReLU between them (an encoder, or a
    decoder's network before its tanh)."""
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
        self.net = mlp([latent, *self.hidden, n])
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

    @property
    def rank_label(self) -> str:
        return f"latent {self.latents.shape[1]}"

    def weight_matrix(self) -> torch.Tensor:
        """The reconstructed weight (out × in; for a table, vocab × dim)."""
        return self._decode(self.latents, self.norms)

    def _decode(self, codes: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        return self.shared(codes, norms)

    def _own_footprint(self, macs: int) -> Footprint:
        own = [t for t in (self.latents, self.norms, getattr(self, "bias", None)) if t is not None]
        return Footprint(sum(t.numel() for t in own), sum(dense_bytes(t) for t in own), macs)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.cached_weight([*self.parameters(), *self.buffers()]), self.bias)

    def tcomp_footprint(self) -> Footprint:
        return self._own_footprint(self.in_features * self.out_features)

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

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        unique, inverse = torch.unique(flat, return_inverse=True)
        rows = self._decode(self.latents[unique], self.norms[unique] if self.norms is not None else None)
        return rows[inverse].reshape(*input_ids.shape, self.embedding_dim)

    def tcomp_footprint(self) -> Footprint:
        return self._own_footprint(0)

    def tcomp_config(self) -> dict:
        return {"vocab": self.num_embeddings, "latent": self.latents.shape[1], "norms": self.norms is not None,
                "padding_idx": self.padding_idx}

    @classmethod
    def tcomp_empty(cls, config: dict, shared: AEDecoder | None = None) -> "AEEmbedding":
        norms = torch.empty(config["vocab"]) if config["norms"] else None
        return cls(torch.empty(config["vocab"], config["latent"]), shared, norms, config["padding_idx"])

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, latent={self.latents.shape[1]}, norms={self.norms is not None}"

