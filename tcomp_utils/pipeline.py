"""Methods applied one after another, written as one line: the atlas's points and combinations.

    steps = parse("structured(criterion='id', mu=0.6) + gptq(bits=4)")
    reports = apply(model, steps, calibration)

A pipeline is ``dense`` (nothing) or registered methods joined by ``+``, each ``name(field=value, ...)``
with literal values (numbers, strings, lists, True/False/None). Every step's config is built, and so
checked, by :func:`parse` before anything is applied; each later step sees (and calibrates on) the
model the earlier ones left.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from torch import nn

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
    """The steps of ``text`` (``"dense"`` or ``""``: none), every config built and checked.
    An unreadable line raises :class:`PipelineError`; an unknown method or field, or a bad value,
    the registry's own error naming it."""
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
    return [_step(node, text) for node in [tree, *nodes]]


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
    that need them); one report per step."""
    return [compress(model, s.config, calibration if s.config.calibration_needed() else None, progress=progress)
            for s in steps]
