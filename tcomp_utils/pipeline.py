"""Methods applied one after another, written as one line: the atlas's points and combinations.

    steps = parse("structured(criterion='id', mu=0.6) + gptq(bits=4)")
    reports = apply(model, steps, calibration)

A pipeline is ``dense`` (nothing) or registered methods joined by ``+``, each ``name(field=value, ...)``
with literal values (numbers, strings, lists, True/False/None). Every step's config is built, and so
checked, by :func:`parse` before anything is applied; each later step sees (and calibrates on) the
model the earlier ones left. So is the order (:func:`check_order`): a step that would find layers an
earlier one compressed into modules it does not take (``tucker(ratio=2) + rtn(bits=8)``: RTN takes
dense layers and SVD's own-factor low-rank ones, not Tucker's) is refused before any step is applied.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from torch import nn

from .adapters import CROSS_ROLES, ROLE_GROUPS, expand_roles
from .registry import CompressionReport, MethodConfig, compress, method_config, method_family


class PipelineError(ValueError):
    """A pipeline line that cannot be read: the message quotes the bad part and the form allowed."""


FORM = "dense, or methods joined by '+', each name(field=value, ...) with literal values, e.g. svd(ratio=2) + gptq(bits=4)"


@dataclass(frozen=True)
class Step:
    """One method of a pipeline: its registered ``name``, the ``fields`` as written, the built ``config``."""

    name: str
    fields: dict[str, Any]
    config: MethodConfig

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"{self.name}({args})"


# What each of the package's methods leaves in the layers it targets, as the module check of a later
# step (the `accept` its handler gives targeting.targets) sees it: "dense" (whole units removed, the
# layers stay smaller nn.Linear ones), "low-rank" (SVD's LowRankLinear with its own factors: mode
# separated, not the embedding table) or "compressed" (any other compressed module).
LEAVES = {"structured": "dense", "fisher_pruning": "dense", "svd": "low-rank", "asvd": "low-rank", "fwsvd": "low-rank",
          **dict.fromkeys(("ae", "tucker", "kronecker", "falcon", "pruning", "signmag", "rtn", "gptq"), "compressed")}
# What each takes besides dense layers (every method takes dense nn.Linear and nn.Embedding layers).
TAKES = {"rtn": ("low-rank",), "gptq": ("low-rank",)}
EVERY_LINEAR_ROLE = (*ROLE_GROUPS["linear"], *CROSS_ROLES)  # roles=None: every linear role the model has
UNLAYERED = ("embeddings", "lm_head")  # the table and the output head: in no layer, whatever ``layers`` says


def _touched(config: MethodConfig) -> tuple[set[str], set[int] | None]:
    """The roles (``lm_head`` for a quantized output head) and layers (None: all) a step's config targets."""
    roles = set(EVERY_LINEAR_ROLE if config.roles is None else expand_roles(config.roles))
    if getattr(config, "lm_head", False):
        roles.add("lm_head")
    return roles, None if config.layers is None else set(config.layers)


def _leaves(step: Step, role: str) -> str:
    """What ``step`` leaves in the ``role`` layers it targets (see :data:`LEAVES`)."""
    left = LEAVES[step.name]
    if left == "low-rank" and (role == "embeddings" or getattr(step.config, "mode", "separated") != "separated"):
        return "compressed"  # a LowRankEmbedding, or a LowRankLinear sharing its right factor across layers
    return left


def check_order(steps: list[Step]) -> None:
    """Refuse a pipeline in which a step would find, in layers it targets, modules an earlier step
    left that it does not take (the module-type check of the later step's handler, made here before
    any step is applied): a :class:`PipelineError` naming both steps, the roles and layers, and what
    the later step takes. Steps of methods the package does not define are not checked."""
    for j, later in enumerate(steps):
        for i, earlier in enumerate(steps[:j]):
            if earlier.name not in LEAVES or later.name not in LEAVES:
                continue
            (roles, layers), (later_roles, later_layers) = _touched(earlier.config), _touched(later.config)
            if layers is None or later_layers is None:
                shared = later_layers if layers is None else layers  # None: every layer
            else:
                shared = layers & later_layers
            bad = [r for r in (*EVERY_LINEAR_ROLE, *UNLAYERED) if r in roles & later_roles
                   and _leaves(earlier, r) not in ("dense", *TAKES.get(later.name, ()))
                   and (r in UNLAYERED or shared is None or shared)]
            if not bad:
                continue
            layered = [r for r in bad if r not in UNLAYERED]
            named = [f"the {'linear' if set(EVERY_LINEAR_ROLE) <= set(bad) else ', '.join(layered)} layers"
                     + (f" of layers {sorted(shared)}" if shared else "")] if layered else []
            named += ["the embedding table"] * ("embeddings" in bad) + ["the output head"] * ("lm_head" in bad)
            takes = " or the low-rank layers of svd, asvd or fwsvd in mode 'separated' (not of the embedding table)" \
                if TAKES.get(later.name) else ""
            raise PipelineError(
                f"step {j + 1}, {later.describe()}, cannot follow step {i + 1}, {earlier.describe()}: {earlier.name} "
                f"leaves {' and '.join(named)} as its compressed modules, and {later.name} takes only dense layers "
                f"(untouched, or pruned by structured or fisher_pruning){takes}. Give the two steps disjoint roles or "
                "layers, or drop one; nothing was changed")


def _step(node: ast.expr, text: str) -> Step:
    if isinstance(node, ast.Name):  # a method with its defaults: svd
        node = ast.Call(func=node, args=[], keywords=[])
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
        raise PipelineError(f"cannot read {ast.get_source_segment(text, node)!r} as a step; a pipeline is {FORM}")
    fields = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise PipelineError(f"**kwargs are not allowed in {text!r}; a pipeline is {FORM}")
        try:
            fields[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            raise PipelineError(f"{kw.arg}={ast.get_source_segment(text, kw.value)} in {text!r} is not a literal value; "
                                f"a pipeline is {FORM}") from None
    return Step(node.func.id, fields, method_config(node.func.id, **fields))


def parse(text: str) -> list[Step]:
    """The steps of ``text`` (``"dense"`` or ``""``: none), every config built and checked, and
    their order (:func:`check_order`). An unreadable line or a step that cannot follow an earlier one
    raises :class:`PipelineError`; an unknown method or field, or a bad value, the registry's own
    error naming it."""
    text = text.strip()
    if text in ("", "dense"):
        return []
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise PipelineError(f"cannot parse {text!r}; a pipeline is {FORM}") from None
    nodes = []
    while isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Add):  # a + b + c parses as (a + b) + c
        nodes.insert(0, tree.right)
        tree = tree.left
    steps = [_step(node, text) for node in [tree, *nodes]]
    check_order(steps)
    return steps


def family(steps: list[Step]) -> str:
    """The registered families of the steps, in order, joined by `` → `` (``dense`` for none);
    RTN and GPTQ are named, since the atlas compares them."""
    if not steps:
        return "dense"
    names = [s.name.upper() if s.name in ("rtn", "gptq") else method_family(s.name) for s in steps]
    return " → ".join(names)


def apply(model: nn.Module, steps: list[Step], calibration: list[dict] | None = None,
          progress: bool = False) -> list[CompressionReport]:
    """Compress ``model`` in place by each step in turn (calibration batches given to the steps
    that need them); one report per step. The order is checked first (:func:`check_order`)."""
    check_order(steps)
    return [compress(model, s.config, calibration if s.config.calibration_needed() else None, progress=progress)
            for s in steps]
