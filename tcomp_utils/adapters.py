"""Architecture adapters: the shared role vocabulary mapped to module paths per model family.

Every method names what it compresses by *role*:

========== =====================================================
role        what it is
========== =====================================================
query       attention query projection (H → heads·d)
key         key projection (H → kv_heads·d; fewer with GQA)
value       value projection
attn_out    attention output projection (heads·d → H)
ffn_in      first FFN projection(s) (H → F); gated FFNs have two
ffn_out     second FFN projection (F → H)
embeddings  the token embedding table
cross_*     query/key/value/attn_out of a seq2seq decoder's cross-attention
========== =====================================================

An adapter lists, for one family, where the layer stacks are (relative to the HF *base model*)
and, inside one layer, where each role's modules are. Adding an architecture is one
``register_adapter(Adapter(...))`` call.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

ROLES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out", "embeddings")
CROSS_ROLES = ("cross_query", "cross_key", "cross_value", "cross_attn_out")


class UnknownRoleError(ValueError):
    pass


class UnsupportedArchitectureError(ValueError):
    pass


@dataclass(frozen=True)
class HeadStructure:
    """Attention head structure: ``n_heads`` query heads of ``head_dim`` each, ``n_kv_heads``
    key/value heads (``n_heads`` without grouped-query attention)."""

    n_heads: int
    head_dim: int
    n_kv_heads: int

    @property
    def kv_groups(self) -> int:
        """Query heads sharing one key/value head."""
        return self.n_heads // self.n_kv_heads


@dataclass(frozen=True)
class Stack:
    """One stack of identical layers: ``path`` to its ``nn.ModuleList`` (relative to the base
    model), each role's module paths inside a layer (alternatives that are absent are skipped,
    e.g. a T5 gated FFN's ``wi_0``/``wi_1`` instead of ``wi``), and the query roles of its
    attention blocks (used to count attention's s² MACs)."""

    path: str
    roles: dict[str, tuple[str, ...]]
    attention_queries: tuple[str, ...] = ("query",)


@dataclass(frozen=True)
class Adapter:
    """Role → module mapping for one architecture family.

    ``heads`` reads the head structure from a HF config. ``per_sequence`` names modules applied
    once per sequence rather than per token (a pooler, a classification head): their MACs are
    spread over the sequence length.
    """

    family: str  # "encoder", "decoder" or "seq2seq"
    model_types: tuple[str, ...]
    stacks: dict[str, Stack]
    embeddings: tuple[str, ...]
    heads: object  # Callable[[config], HeadStructure]
    per_sequence: tuple[str, ...] = field(default=())

    def roles(self) -> tuple[str, ...]:
        """Every role this architecture has."""
        names = {r for s in self.stacks.values() for r in s.roles} | {"embeddings"}
        return tuple(r for r in ROLES + CROSS_ROLES if r in names)


@dataclass(frozen=True)
class RoleModule:
    """One module found for a role: its full path in the model, stack, layer index and module."""

    path: str
    role: str
    stack: str | None
    layer: int | None
    module: nn.Module


def _bert_heads(c) -> HeadStructure:
    d = c.hidden_size // c.num_attention_heads
    return HeadStructure(c.num_attention_heads, d, c.num_attention_heads)


def _llama_heads(c) -> HeadStructure:
    d = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return HeadStructure(c.num_attention_heads, d, getattr(c, "num_key_value_heads", None) or c.num_attention_heads)


def _t5_heads(c) -> HeadStructure:
    return HeadStructure(c.num_heads, c.d_kv, c.num_heads)


def _distilbert_heads(c) -> HeadStructure:
    return HeadStructure(c.n_heads, c.dim // c.n_heads, c.n_heads)


def _attn(prefix: str, q: str, k: str, v: str, o: str, roles=("query", "key", "value", "attn_out")) -> dict:
    return {r: (f"{prefix}.{name}",) for r, name in zip(roles, (q, k, v, o))}


def _t5_ffn(prefix: str) -> dict:
    return {
        "ffn_in": (f"{prefix}.DenseReluDense.wi", f"{prefix}.DenseReluDense.wi_0", f"{prefix}.DenseReluDense.wi_1"),
        "ffn_out": (f"{prefix}.DenseReluDense.wo",),
    }


ADAPTERS: list[Adapter] = [
    Adapter(
        family="encoder",
        model_types=("bert", "roberta", "xlm-roberta", "electra", "camembert"),
        stacks={"encoder": Stack("encoder.layer", {
            **_attn("attention", "self.query", "self.key", "self.value", "output.dense"),
            "ffn_in": ("intermediate.dense",), "ffn_out": ("output.dense",)})},
        embeddings=("embeddings.word_embeddings",),
        heads=_bert_heads,
        per_sequence=("pooler", "classifier"),
    ),
    Adapter(
        family="encoder",
        model_types=("distilbert",),
        stacks={"encoder": Stack("transformer.layer", {
            **_attn("attention", "q_lin", "k_lin", "v_lin", "out_lin"),
            "ffn_in": ("ffn.lin1",), "ffn_out": ("ffn.lin2",)})},
        embeddings=("embeddings.word_embeddings",),
        heads=_distilbert_heads,
        per_sequence=("pre_classifier", "classifier"),
    ),
    Adapter(
        family="decoder",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        stacks={"decoder": Stack("layers", {
            **_attn("self_attn", "q_proj", "k_proj", "v_proj", "o_proj"),
            "ffn_in": ("mlp.gate_proj", "mlp.up_proj"), "ffn_out": ("mlp.down_proj",)})},
        embeddings=("embed_tokens",),
        heads=_llama_heads,
    ),
    Adapter(
        family="decoder",
        model_types=("opt",),
        stacks={"decoder": Stack("decoder.layers", {
            **_attn("self_attn", "q_proj", "k_proj", "v_proj", "out_proj"),
            "ffn_in": ("fc1",), "ffn_out": ("fc2",)})},
        embeddings=("decoder.embed_tokens",),
        heads=_bert_heads,
    ),
    Adapter(
        family="seq2seq",
        model_types=("t5", "mt5"),
        stacks={
            "encoder": Stack("encoder.block", {
                **_attn("layer.0.SelfAttention", "q", "k", "v", "o"), **_t5_ffn("layer.1")}),
            "decoder": Stack("decoder.block", {
                **_attn("layer.0.SelfAttention", "q", "k", "v", "o"),
                **_attn("layer.1.EncDecAttention", "q", "k", "v", "o", roles=CROSS_ROLES),
                **_t5_ffn("layer.2")}, attention_queries=("query", "cross_query")),
        },
        embeddings=("shared",),
        heads=_t5_heads,
    ),
]


def register_adapter(adapter: Adapter) -> None:
    """Add (or replace, for the same model types) an adapter."""
    ADAPTERS[:] = [a for a in ADAPTERS if not set(a.model_types) & set(adapter.model_types)]
    ADAPTERS.append(adapter)


def _model_type(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", type(model_or_config).__name__)


def get_adapter(model_or_config) -> Adapter:
    """The adapter for a HF model or config; an unknown architecture raises with how to add one."""
    model_type = _model_type(model_or_config)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    known = sorted(t for a in ADAPTERS for t in a.model_types)
    raise UnsupportedArchitectureError(
        f"no architecture adapter for model_type {model_type!r}; supported: {', '.join(known)}. "
        "Add one with tcomp_utils.adapters.register_adapter(Adapter(family=..., model_types=(...), "
        "stacks={...}, embeddings=(...), heads=...)) mapping the roles "
        f"{', '.join(ROLES)} to module paths (see the existing adapters in tcomp_utils/adapters.py)."
    )


def head_structure(model) -> HeadStructure:
    """Head structure declared by the model's config (before any pruning)."""
    return get_adapter(model).heads(model.config)


def base_prefix(model: nn.Module) -> str:
    """Path prefix of the HF base model inside ``model`` ("" when ``model`` is the base model)."""
    prefix = getattr(model, "base_model_prefix", "")
    return f"{prefix}." if prefix and isinstance(getattr(model, prefix, None), nn.Module) else ""


def layer_stacks(model: nn.Module) -> dict[str, tuple[str, nn.ModuleList]]:
    """Each stack's full path and its ``nn.ModuleList`` of layers."""
    adapter, prefix = get_adapter(model), base_prefix(model)
    return {name: (prefix + s.path, model.get_submodule(prefix + s.path)) for name, s in adapter.stacks.items()}


def find_modules(model: nn.Module, role: str, layers: list[int] | None = None) -> list[RoleModule]:
    """All modules of ``role`` in ``model``, in layer order (optionally only ``layers``)."""
    adapter = get_adapter(model)
    if role not in adapter.roles():
        raise UnknownRoleError(
            f"unknown module role {role!r} for {adapter.family} model_type {_model_type(model)!r}; "
            f"allowed roles: {', '.join(adapter.roles())}"
        )
    prefix = base_prefix(model)
    if role == "embeddings":
        return [RoleModule(prefix + p, role, None, None, model.get_submodule(prefix + p)) for p in adapter.embeddings]
    found = []
    for stack_name, (stack_path, blocks) in layer_stacks(model).items():
        paths = adapter.stacks[stack_name].roles.get(role, ())
        for i, block in enumerate(blocks):
            if not paths or (layers is not None and i not in layers):
                continue
            mods = [(p, _get(block, p)) for p in paths]
            mods = [(p, m) for p, m in mods if m is not None]
            if not mods:
                raise UnsupportedArchitectureError(
                    f"layer {i} of {stack_path} has none of {paths} for role {role!r}"
                )
            found += [RoleModule(f"{stack_path}.{i}.{p}", role, stack_name, i, m) for p, m in mods]
    return found


def role_index(model: nn.Module) -> dict[str, RoleModule]:
    """Map every role module's full path to its ``RoleModule`` (for labelling tables)."""
    return {rm.path: rm for role in get_adapter(model).roles() for rm in find_modules(model, role)}


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at ``path`` (dotted) by ``new``."""
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def _get(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None
