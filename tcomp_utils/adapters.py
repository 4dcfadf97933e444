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
and, inside one layer, where each role's modules are. Two ways to get one:

* **inferred** from the module tree of any HF model that follows the common layouts (Llama-,
  Gemma-, Qwen-, Mistral-, Phi-3-like decoders, BERT-like encoders, T5/BART-like seq2seq, GPT-2):
  the layer stacks are the ``nn.ModuleList`` of identical blocks, and the roles are read from the
  linear layers' names and whether they sit inside an attention block or an FFN;
* the **explicit table** :data:`ADAPTERS` (by ``model_type``), which overrides inference; add to
  it with ``register_adapter(Adapter(...))``.

Fused projections (GPT-2's ``c_attn``, Phi-3's ``qkv_proj`` and ``gate_up_proj``, GPT-NeoX's and
Falcon's ``query_key_value``, whose rows interleave the roles per head or per key/value group) and
the linear layers that are not ``nn.Linear`` (GPT-2's ``Conv1D``, ``FalconLinear``) are made
ordinary per-role ``nn.Linear`` layers by :func:`prepare` (exact: the same numbers, split by rows),
so every method sees one module per role.

Why one module of ~620 lines: the explicit table, layout inference and :func:`prepare` build and
read the same :class:`Adapter`/:class:`Stack` types and call one another (inference makes an
adapter, :func:`prepare` asks :func:`get_adapter` what to split); split apart they would import
each other in a cycle. What a compressed module promises (read by inference) is in
:mod:`tcomp_utils.contract`; choosing and replacing modules is :mod:`tcomp_utils.targeting`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .contract import CompressedModule, linear_shape

ROLES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out", "embeddings")
CROSS_ROLES = ("cross_query", "cross_key", "cross_value", "cross_attn_out")
ROLE_GROUPS = {
    "qkv": ("query", "key", "value"),
    "attention": ("query", "key", "value", "attn_out"),
    "ffn": ("ffn_in", "ffn_out"),
    "linear": ("query", "key", "value", "attn_out", "ffn_in", "ffn_out"),
}


class UnknownRoleError(ValueError):
    pass


class UnsupportedArchitectureError(ValueError):
    pass


def expand_roles(roles: list[str] | tuple[str, ...] | str) -> list[str]:
    """A role, a list of roles, or a group name of :data:`ROLE_GROUPS` (``"qkv"``, ``"ffn"``, ...),
    as a list of roles; an unknown name raises :class:`UnknownRoleError` naming what is allowed."""
    names = [roles] if isinstance(roles, str) else list(roles)
    out = []
    for name in names:
        if name in ROLE_GROUPS:
            out += ROLE_GROUPS[name]
        elif name in ROLES + CROSS_ROLES:
            out.append(name)
        else:
            raise UnknownRoleError(f"unknown module role {name!r}; allowed roles: {', '.join(ROLES + CROSS_ROLES)}; "
                                   f"groups: {', '.join(ROLE_GROUPS)}")
    return list(dict.fromkeys(out))


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


def config_heads(config) -> HeadStructure:
    """The head structure a HF config declares (names differ by family: ``num_attention_heads``,
    ``n_head``, ``num_heads``; ``head_dim``, T5's ``d_kv``, else hidden size / heads)."""
    n_heads = _first_attr(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
    hidden = _first_attr(config, "hidden_size", "n_embd", "d_model", "dim")
    if n_heads is None or hidden is None:
        raise UnsupportedArchitectureError(f"cannot read the number of attention heads and the hidden size from "
                                           f"{type(config).__name__}")
    head_dim = _first_attr(config, "head_dim", "d_kv") or hidden // n_heads
    return HeadStructure(n_heads, head_dim, _first_attr(config, "num_key_value_heads") or n_heads)


def _first_attr(obj, *names):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class FusedLayout:
    """The rows of a fused projection: ``groups`` repetitions of ``parts`` in order, each part
    ``(name, role, rows per group)``. One group: the parts one after another (GPT-2's ``c_attn``:
    all queries, all keys, all values); GPT-NeoX's ``query_key_value``: one group per head,
    ``[q_h, k_h, v_h]``; Falcon's (new architecture): one per key/value head, its query heads then
    its key and value. Pruning removes whole groups, so the rows per group never change."""

    parts: tuple[tuple[str, str, int], ...]
    groups: int = 1

    @property
    def rows(self) -> int:
        return self.groups * sum(rows for _, _, rows in self.parts)


@dataclass(frozen=True)
class Stack:
    """One stack of identical layers: ``path`` to its ``nn.ModuleList`` (relative to the base
    model), each role's module paths inside a layer (alternatives that are absent are skipped,
    e.g. a T5 gated FFN's ``wi_0``/``wi_1`` instead of ``wi``), the query roles of its
    attention blocks (used to count attention's s² MACs), what :func:`prepare` converts:
    ``fused`` (path in a layer → its :class:`FusedLayout`) and ``conv1d`` (paths of linear layers
    that are not ``nn.Linear``: HF ``Conv1D``, ``FalconLinear``; made ``nn.Linear``), and
    ``post_norms``: role (``attn_out``, ``ffn_out``) → path of the norm its sublayer's output
    passes through before it is added to the residual stream (Gemma's sandwich norms; none in
    most architectures)."""

    path: str
    roles: dict[str, tuple[str, ...]]
    attention_queries: tuple[str, ...] = ("query",)
    fused: dict[str, FusedLayout] = field(default_factory=dict)
    conv1d: tuple[str, ...] = ()
    post_norms: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Adapter:
    """Role → module mapping for one architecture family.

    ``heads`` reads the head structure from a HF config. ``per_sequence`` names modules applied
    once per sequence rather than per token (a pooler, a classification head): their MACs are
    spread over the sequence length. ``inferred``: made by :func:`infer_adapter`, not the table.
    """

    family: str  # "encoder", "decoder" or "seq2seq"
    model_types: tuple[str, ...]
    stacks: dict[str, Stack]
    embeddings: tuple[str, ...]
    heads: object = config_heads  # Callable[[config], HeadStructure]
    per_sequence: tuple[str, ...] = field(default=())
    inferred: bool = False

    def roles(self) -> tuple[str, ...]:
        """Every role this architecture has."""
        names = {r for s in self.stacks.values() for r in s.roles} | {"embeddings"}
        return tuple(r for r in ROLES + CROSS_ROLES if r in names)

    def needs_prepare(self) -> bool:
        """Whether fused projections or ``Conv1D``-like layers must first be split by :func:`prepare`."""
        return any(s.fused or s.conv1d for s in self.stacks.values())


@dataclass(frozen=True)
class RoleModule:
    """One module found for a role: its full path in the model, stack, layer index and module."""

    path: str
    role: str
    stack: str | None
    layer: int | None
    module: nn.Module


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
        per_sequence=("pooler", "classifier"),
    ),
    Adapter(
        family="encoder",
        model_types=("distilbert",),
        stacks={"encoder": Stack("transformer.layer", {
            **_attn("attention", "q_lin", "k_lin", "v_lin", "out_lin"),
            "ffn_in": ("ffn.lin1",), "ffn_out": ("ffn.lin2",)})},
        embeddings=("embeddings.word_embeddings",),
        per_sequence=("pre_classifier", "classifier"),
    ),
    Adapter(
        family="decoder",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        stacks={"decoder": Stack("layers", {
            **_attn("self_attn", "q_proj", "k_proj", "v_proj", "o_proj"),
            "ffn_in": ("mlp.gate_proj", "mlp.up_proj"), "ffn_out": ("mlp.down_proj",)})},
        embeddings=("embed_tokens",),
    ),
    Adapter(
        family="decoder",
        model_types=("opt",),
        stacks={"decoder": Stack("decoder.layers", {
            **_attn("self_attn", "q_proj", "k_proj", "v_proj", "out_proj"),
            "ffn_in": ("fc1",), "ffn_out": ("fc2",)})},
        embeddings=("decoder.embed_tokens",),
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
    ),
]


def register_adapter(adapter: Adapter) -> None:
    """Add (or replace, for the same model types) an adapter of the explicit table."""
    ADAPTERS[:] = [a for a in ADAPTERS if not set(a.model_types) & set(adapter.model_types)]
    ADAPTERS.append(adapter)


def _model_type(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", type(model_or_config).__name__)


def get_adapter(model_or_config) -> Adapter:
    """The adapter for a HF model or config: the explicit table's entry for its ``model_type``, else
    one inferred from the module tree (a config alone is built on the ``meta`` device first)."""
    model_type = _model_type(model_or_config)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    model = model_or_config
    if not isinstance(model, nn.Module):
        if not hasattr(model, "to_dict"):
            raise UnsupportedArchitectureError(f"expected a HF model or config, got {type(model).__name__}")
        import transformers

        with torch.device("meta"):
            model = transformers.AutoModel.from_config(model_or_config)
    return infer_adapter(model)


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
    if adapter.needs_prepare():
        fused = sorted({p for s in adapter.stacks.values() for p in (*s.fused, *s.conv1d)})
        raise UnsupportedArchitectureError(
            f"model_type {_model_type(model)!r} keeps fused projections or linear layers that are not nn.Linear "
            f"({', '.join(fused)}): call "
            "tcomp_utils.adapters.prepare(model) first (it splits them into one nn.Linear per role, exactly; "
            "compress() and load_model() do it for you)")
    prefix = base_prefix(model)
    if role == "embeddings":
        return [RoleModule(prefix + p, role, None, None, model.get_submodule(prefix + p)) for p in adapter.embeddings]
    stacks = layer_stacks(model)
    if layers is not None:
        depth = max(len(blocks) for _, blocks in stacks.values())
        bad = [i for i in layers if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < depth]
        if bad or not list(layers):
            sizes = ", ".join(f"{name}: {len(blocks)}" for name, (_, blocks) in stacks.items())
            raise ValueError(f"layers={list(layers)!r}: {'no layer given' if not bad else f'no layer {bad[0]!r}'}; "
                             f"layer indices run from 0 ({sizes} layers)")
    found = []
    for stack_name, (stack_path, blocks) in stacks.items():
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


# ------------------------------------------------------------------------------ layout inference
# A linear layer's role from its own name; attention roles only inside an attention block, FFN
# roles only outside one. Names that mean different things in different places are resolved by
# where they sit (BERT's attention.output.dense / intermediate.dense / output.dense; T5's wo).
_ATTENTION_NAMES = {
    "query": ("q_proj", "query", "q_lin", "q", "wq", "query_proj"),
    "key": ("k_proj", "key", "k_lin", "k", "wk", "key_proj"),
    "value": ("v_proj", "value", "v_lin", "v", "wv", "value_proj"),
    "attn_out": ("o_proj", "out_proj", "o", "out_lin", "wo", "dense", "c_proj"),
}
_FFN_NAMES = {
    "ffn_in": ("gate_proj", "up_proj", "fc1", "wi", "wi_0", "wi_1", "lin1", "c_fc", "w1", "w3", "dense_h_to_4h",
               "gate", "up"),  # gate/up: the parts of a split gate_up_proj
    "ffn_out": ("down_proj", "fc2", "wo", "lin2", "c_proj", "w2", "dense_4h_to_h"),
}
# fused projections: name -> the parts it is split into, in row order
_FUSED_ATTENTION = ("qkv_proj", "c_attn")
_FUSED_FFN = ("gate_up_proj",)
# fused query/key/value projections whose row layout depends on the model type (see _qkv_layout)
_FUSED_BY_TYPE = {"query_key_value": ("gpt_neox", "falcon")}
# linear layers that are not nn.Linear: made nn.Linear by prepare()
_TO_LINEAR = ("Conv1D", "FalconLinear")
# the norm a layer applies to each sublayer's output before the residual add (sandwich norms);
# only when the layer has a post-FFN norm: elsewhere (Llama) post_attention_layernorm is the pre-FFN norm
_POST_NORMS = {"attn_out": "post_attention_layernorm", "ffn_out": "post_feedforward_layernorm"}
_CROSS_MARKERS = ("cross", "encdec", "encoder_attn")
_PER_SEQUENCE = ("pooler", "pre_classifier", "classifier")


def _is_linear_like(module: nn.Module) -> bool:
    return linear_shape(module) is not None or (isinstance(module, CompressedModule) and hasattr(module, "in_features"))


def _linear_leaves(module: nn.Module, prefix: str = ""):
    """(path, module) of every linear-like module under ``module``, not descending into them."""
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if _is_linear_like(child):
            yield path, child
        else:
            yield from _linear_leaves(child, path + ".")


def _in_attention(parents: list[str]) -> bool:
    return any("attn" in p or "attention" in p for p in parents)


def _leaf_role(path: str) -> str | None:
    *parents, name = path.split(".")
    parents = [p.lower() for p in parents]
    if _in_attention(parents):
        role = next((r for r, names in _ATTENTION_NAMES.items() if name in names), None)
        if role and any(m in p for p in parents for m in _CROSS_MARKERS):
            role = f"cross_{role}"
        return role
    if name == "dense":  # BERT-like: intermediate.dense is the FFN input, output.dense its output
        return "ffn_in" if "intermediate" in parents else "ffn_out" if "output" in parents else None
    return next((r for r, names in _FFN_NAMES.items() if name in names), None)


def _infer_family(model: nn.Module) -> str:
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return "encoder" if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "decoder"


def _fused_attention(model_type: str) -> tuple[str, ...]:
    """Names of the fused query/key/value projections :func:`prepare` splits for ``model_type``."""
    return _FUSED_ATTENTION + tuple(n for n, types in _FUSED_BY_TYPE.items() if model_type in types)


def _unknown_fused(base: nn.Module, prefix: str) -> str:
    """A clause naming the first fused attention projection of ``base`` (what a refusal found), or ""."""
    for path, module in _linear_leaves(base):
        name = path.rsplit(".", 1)[-1]
        if name in (*_FUSED_ATTENTION, *_FUSED_BY_TYPE, "W_pack") or "qkv" in name.lower():
            shape = linear_shape(module)
            size = f"{shape[0]} in, {shape[1]} out" if shape else f"weight {tuple(module.weight.shape)}"
            by_type = "; ".join(f"{n} of {', '.join(t)}" for n, t in _FUSED_BY_TYPE.items())
            return (f" (it has {prefix}{path}, a {type(module).__name__} ({size}): a fused query/key/value "
                    f"projection whose row layout is not known for this model type; split: "
                    f"{', '.join(_FUSED_ATTENTION)} of any model, {by_type})")
    return ""


def _layer_lists(base: nn.Module, model_type: str = "") -> list[tuple[str, nn.ModuleList]]:
    """The outermost ``nn.ModuleList`` of identical blocks that hold an attention query projection."""
    fused = _fused_attention(model_type)
    found: list[tuple[str, nn.ModuleList]] = []
    for path, module in base.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0 or any(path.startswith(p + ".") for p, _ in found):
            continue
        if len({type(m) for m in module}) != 1:
            continue
        names = [p for p, _ in _linear_leaves(module[0])]
        if any(_leaf_role(p) in ("query",) or p.rsplit(".", 1)[-1] in fused for p in names):
            found.append((path, module))
    return found


def infer_adapter(model: nn.Module) -> Adapter:
    """An adapter read off ``model``'s module tree (see the module docstring); raises
    :class:`UnsupportedArchitectureError` saying what was missing when the layout is not a common one."""
    model_type = _model_type(model)
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedArchitectureError(f"{type(model).__name__} has no HF config: cannot infer an adapter")
    prefix = base_prefix(model)
    base = model.get_submodule(prefix[:-1]) if prefix else model
    family = _infer_family(model)
    lists = _layer_lists(base, model_type)
    how_to = ("register one with tcomp_utils.adapters.register_adapter(Adapter(family=..., model_types=(...), "
              "stacks={...}, embeddings=(...))) mapping the roles to module paths (see tcomp_utils/adapters.py)")
    if not lists:
        raise UnsupportedArchitectureError(
            f"no architecture adapter for model_type {model_type!r}: found no list of transformer layers with an "
            f"attention query projection (q_proj, query, q, qkv_proj, c_attn, ...) in {type(model).__name__}"
            f"{_unknown_fused(base, prefix)}; {how_to}")
    heads = config_heads(config)
    stacks = {}
    for path, blocks in lists:
        name = ("decoder" if "decoder" in path else "encoder") if family == "seq2seq" else family
        if name in stacks:
            raise UnsupportedArchitectureError(f"model_type {model_type!r}: two layer stacks ({stacks[name].path}, "
                                               f"{path}) would both be the {name}; {how_to}")
        stacks[name] = _infer_stack(path, blocks[0], config, heads, model_type, how_to)
    embeddings = model.get_input_embeddings()
    emb_path = next((p for p, m in base.named_modules() if m is embeddings), None)
    if emb_path is None:
        raise UnsupportedArchitectureError(f"model_type {model_type!r}: its input embeddings are not in the base model")
    per_sequence = tuple(n for n in _PER_SEQUENCE if any(p.split(".")[-1] == n for p, _ in model.named_modules()))
    return Adapter(family=family, model_types=(model_type,), stacks=stacks, embeddings=(emb_path,),
                   per_sequence=per_sequence, inferred=True)


def _qkv_layout(name: str, config, heads: HeadStructure, model_type: str) -> FusedLayout:
    """The row layout of a fused query/key/value projection called ``name``: GPT-2's ``c_attn``
    and Phi-3's ``qkv_proj`` stack all queries, then keys, then values; GPT-NeoX's and Falcon's
    ``query_key_value`` hold, per key/value head, its query heads then its key and value (one
    query head per group without grouped-query attention: ``[q_h, k_h, v_h]``), except Falcon's
    multi-query layout (not ``new_decoder_architecture``), which stacks them like ``c_attn``."""
    d, n, n_kv = heads.head_dim, heads.n_heads, heads.n_kv_heads
    if name in _FUSED_BY_TYPE and not (model_type == "falcon" and config.multi_query
                                       and not config.new_decoder_architecture):
        return FusedLayout((("query", "query", n // n_kv * d), ("key", "key", d), ("value", "value", d)), n_kv)
    return FusedLayout((("query", "query", n * d), ("key", "key", n_kv * d), ("value", "value", n_kv * d)))


def _infer_stack(path: str, block: nn.Module, config, heads: HeadStructure, model_type: str, how_to: str) -> Stack:
    roles: dict[str, list[str]] = {}
    fused: dict[str, FusedLayout] = {}
    conv1d = []
    for leaf, module in _linear_leaves(block):
        *parents, name = leaf.split(".")
        if type(module).__name__ in _TO_LINEAR:
            conv1d.append(leaf)
        if name in _fused_attention(model_type) and _in_attention([p.lower() for p in parents]):
            out = module.weight.shape[1] if type(module).__name__ == "Conv1D" else module.out_features
            layout = _qkv_layout(name, config, heads, model_type)
            if out != layout.rows:
                sizes = " + ".join(f"{layout.groups} × {rows}" if layout.groups > 1 else str(rows)
                                   for _, _, rows in layout.parts)
                raise UnsupportedArchitectureError(
                    f"model_type {model_type!r}: fused projection {leaf} has {out} outputs, not query + key + value "
                    f"= {sizes} (cross-attention or another layout); {how_to}")
            fused[leaf] = layout
            for part in ("query", "key", "value"):
                roles.setdefault(part, []).append(f"{leaf}.{part}")
            continue
        if name in _FUSED_FFN:
            half = module.out_features // 2
            fused[leaf] = FusedLayout((("gate", "ffn_in", half), ("up", "ffn_in", half)))
            roles.setdefault("ffn_in", []).extend([f"{leaf}.gate", f"{leaf}.up"])
            continue
        role = _leaf_role(leaf)
        if role is not None:
            roles.setdefault(role, []).append(leaf)
    missing = [r for r in ("query", "key", "value", "attn_out", "ffn_in", "ffn_out") if r not in roles]
    if missing:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r}: a layer of {path} has no linear layer for role(s) {', '.join(missing)} "
            f"(its linear layers: {', '.join(p for p, _ in _linear_leaves(block))}); {how_to}")
    queries = ("query", "cross_query") if "cross_query" in roles else ("query",)
    children = dict(block.named_children())
    post_norms = {r: n for r, n in _POST_NORMS.items() if n in children} if _POST_NORMS["ffn_out"] in children else {}
    return Stack(path, {r: tuple(p) for r, p in roles.items()}, queries, fused,
                 tuple(c for c in conv1d if c not in fused), post_norms)


# ------------------------------------------------------------------------- fused projections
class FusedProjection(nn.Module):
    """Several linear layers applied to the same input, their outputs concatenated: what a fused
    projection (GPT-2's ``c_attn``, Phi-3's ``qkv_proj``) computes, with one child per role.
    ``widths``: for a projection whose roles are interleaved by group (GPT-NeoX's heads), each
    part's outputs per group; the outputs are then interleaved back, group by group (as many groups
    as the parts hold: after pruning whole groups, fewer)."""

    def __init__(self, parts: dict[str, nn.Module], widths: tuple[int, ...] | None = None):
        super().__init__()
        for name, module in parts.items():
            self.add_module(name, module)
        first = next(iter(parts.values()))
        self.in_features = first.in_features
        self.out_features = sum(m.out_features for m in parts.values())
        self.widths = widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.children()]
        if self.widths is None:
            return torch.cat(outs, dim=-1)
        return torch.cat([o.unflatten(-1, (-1, w)) for o, w in zip(outs, self.widths)], dim=-1).flatten(-2)


def _as_linear(module: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` computing what a ``Conv1D`` (weight in × out), a ``FalconLinear`` (an
    ``nn.Linear`` with its own forward) or an ``nn.Linear`` computes."""
    if type(module) is nn.Linear:
        return module
    weight = module.weight.detach().T if type(module).__name__ == "Conv1D" else module.weight.detach()
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    return linear


def _split(module: nn.Module, layout: FusedLayout) -> FusedProjection:
    linear = _as_linear(module)
    per_group = sum(rows for _, _, rows in layout.parts)
    children, start = {}, 0
    for name, _, rows in layout.parts:
        idx = torch.cat([torch.arange(g * per_group + start, g * per_group + start + rows)
                         for g in range(layout.groups)])
        part = nn.Linear(linear.in_features, len(idx), bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            part.weight.copy_(linear.weight[idx])
            if linear.bias is not None:
                part.bias.copy_(linear.bias[idx])
        children[name], start = part, start + rows
    return FusedProjection(children, tuple(rows for _, _, rows in layout.parts) if layout.groups > 1 else None)


def prepare(model: nn.Module) -> nn.Module:
    """Split fused projections into one ``nn.Linear`` per role and turn ``Conv1D`` and
    ``FalconLinear`` layers into ``nn.Linear`` (in place; the same outputs up to float rounding; a
    no-op for most models)."""
    adapter = get_adapter(model)
    if not adapter.needs_prepare():
        return model
    prefix = base_prefix(model)
    for stack in adapter.stacks.values():
        for block in model.get_submodule(prefix + stack.path):
            for path in stack.conv1d:
                set_module(block, path, _as_linear(block.get_submodule(path)))
            for path, layout in stack.fused.items():
                set_module(block, path, _split(block.get_submodule(path), layout))
    return model
