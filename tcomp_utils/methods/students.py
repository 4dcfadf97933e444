"""Low-rank students (seed 004, LoBERT): a fine-tuned teacher's attention or FFN weights factorized,
by name, each one call of :func:`tcomp_utils.methods.factorization.factorize` (no factorization is
implemented here).

=======================  =====================================  ====================================
mode                     what is factorized                      the seed's BERT-base ranks
=======================  =====================================  ====================================
``self_svd``             Q, K, V of every layer, truncated SVD   192 of 768
``ffn_svd``              both FFN matrices of every layer, SVD   306 (of 768 × 3072)
``self_tuckerlayer``     [Q; K; V] of a layer stacked [3,o,i]    [2, 384, 384]
``self_tuckervertical``  one of Q/K/V across layers [L,o,i]      [8, 576, 576] (L = 12)
``self_tucker_4d``       Q/K/V across layers [3,L,o,i]           [2, 8, 576, 576]
``ffn_tuckervertical``   one FFN matrix across layers [L,o,i]    not given: [8 of 12, half, half]
``self_falcon``          Q, K, V: depthwise × pointwise          not given: self_svd's stored numbers
``self_falconlayer``     [Q; K; V] of a layer, one pointwise     not given: self_svd's stored numbers
``self_falconvertical``  one of Q/K/V across layers, one         not given: self_svd's stored numbers
                         pointwise per role
``self_falcon_4d``       Q/K/V across layers, one pointwise      not given: self_svd's stored numbers
=======================  =====================================  ====================================

Other sizes get the **same fractions** of each dimension (a rank of 192 of 768 is a quarter of the
smaller side; the leading modes' ranks a fraction of 3 or of the depth), rounded, at least 1;
``ranks=`` gives explicit ranks instead (an int for SVD and FALCON's depth, a list for Tucker).
The FALCON modes store what ``self_svd`` stores (half the dense numbers of each matrix or stack);
a stack shares its pointwise factor (see :mod:`tcomp_utils.methods.tensor_factors`), and a layer
whose factored path would cost more MACs than its matrix computes with the matrix, as the seed's
FALCON students do (BERT-base's stacks do). They are fitted by SVD unless ``fit="sgd"`` is given
(the seed fits them by SGD).

``reconstruct=True`` makes a Tucker student compute with its matrices rebuilt from the factors, as
the seed's Tucker students do: the stored numbers stay the factors', the MACs are the dense ones.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import pandas as pd
from torch import nn

from .. import adapters
from ..registry import ConfigError
from .factorization import factorize

QKV = ("query", "key", "value")


@dataclass(frozen=True)
class StudentMode:
    """A student mode: the factorization ``method`` with its ``mode``, applied once per group of
    roles in ``groups``; the seed's ranks as fractions: ``fraction`` of min(out, in) for SVD,
    ``lead`` (of the 3 stacked Q/K/V, of the depth) and ``side`` (of out and of in) for Tucker;
    FALCON by stored-number ``ratio``."""

    method: str
    groups: tuple[tuple[str, ...], ...]
    mode: str
    fraction: float | None = None
    lead: tuple[str, ...] = ()
    side: float | None = None
    ratio: float | None = None


MODES = {
    "self_svd": StudentMode("svd", (QKV,), "separated", fraction=192 / 768),
    "ffn_svd": StudentMode("svd", (("ffn_in", "ffn_out"),), "separated", fraction=306 / 768),
    "self_tuckerlayer": StudentMode("tucker", (QKV,), "qkv", lead=("qkv",), side=384 / 768),
    "self_tuckervertical": StudentMode("tucker", (QKV,), "concatenated", lead=("depth",), side=576 / 768),
    "self_tucker_4d": StudentMode("tucker", (QKV,), "qkv-concatenated", lead=("qkv", "depth"), side=576 / 768),
    "ffn_tuckervertical": StudentMode("tucker", (("ffn_in",), ("ffn_out",)), "concatenated", lead=("depth",),
                                      side=1 / 2),  # not given by the seed: about ffn_svd's 2x fewer numbers
    "self_falcon": StudentMode("falcon", (QKV,), "separated", ratio=768 / (2 * 192)),
    "self_falconlayer": StudentMode("falcon", (QKV,), "qkv", ratio=768 / (2 * 192)),
    "self_falconvertical": StudentMode("falcon", (QKV,), "concatenated", ratio=768 / (2 * 192)),
    "self_falcon_4d": StudentMode("falcon", (QKV,), "qkv-concatenated", ratio=768 / (2 * 192)),
}
LEAD = {"qkv": 2 / 3, "depth": 8 / 12}  # the seed's 2 of 3 stacked Q/K/V and 8 of 12 layers


def _mode(mode: str) -> StudentMode:
    if mode not in MODES:
        raise ConfigError(f"unknown student mode {mode!r}; modes: {', '.join(MODES)}")
    return MODES[mode]


def seed_ranks(mode: str, model: nn.Module) -> list[int | list[int] | None]:
    """The seed's BERT-base ranks carried to ``model`` as the same fractions, one per group of
    roles (None: FALCON, budgeted by ratio)."""
    spec = _mode(mode)
    out = []
    for group in spec.groups:
        lin = adapters.find_modules(model, group[0])[0].module
        if spec.method == "svd":
            out.append(max(1, round(spec.fraction * min(lin.in_features, lin.out_features))))
        elif spec.method == "tucker":
            sizes = {"qkv": 3, "depth": len(adapters.find_modules(model, group[0]))}
            out.append([max(1, round(LEAD[n] * sizes[n])) for n in spec.lead]
                       + [max(1, round(spec.side * lin.out_features)), max(1, round(spec.side * lin.in_features))])
        else:
            out.append(None)
    return out


def make_student(teacher: nn.Module, mode: str, ranks: int | list[int] | None = None, progress: bool = False,
                 reconstruct: bool = False, **options) -> tuple[nn.Module, pd.DataFrame]:
    """A copy of ``teacher`` compressed by ``mode`` with the seed's ranks as fractions, or with
    ``ranks`` (the same for every group); returns ``(student, modules)``, the factorization
    report's rows (path, role, rank, params and bytes before/after, relative error, and
    ``reconstructed``). ``reconstruct`` (Tucker modes): the student's Tucker layers compute with
    their rebuilt matrices (:attr:`~tcomp_utils.methods.tensor_factors.TuckerLinear.runs_dense`:
    dense MACs; stored numbers and ``params_after`` those of the factors). ``options``: the
    method's own fields (e.g. ``fit="sgd"`` for the FALCON modes). The teacher is not changed; an
    impossible rank or a bad option is an error before the copy is changed."""
    spec = _mode(mode)
    if reconstruct and spec.method != "tucker":
        tucker = [name for name, m in MODES.items() if m.method == "tucker"]
        raise ConfigError(f"reconstruct=True rebuilds Tucker students' matrices; mode {mode!r} is {spec.method}: "
                          f"give one of {', '.join(tucker)}")
    student = copy.deepcopy(teacher)
    per_group = seed_ranks(mode, teacher) if ranks is None else [ranks] * len(spec.groups)
    rows = []
    for group, rank in zip(spec.groups, per_group):
        budget = {"rank": rank} if rank is not None else {"ratio": spec.ratio}
        rows.append(factorize(student, spec.method, list(group), mode=spec.mode, progress=progress, **budget,
                              **options).modules)
    rows = pd.concat(rows, ignore_index=True).assign(mode=mode, reconstructed=reconstruct)
    if reconstruct:
        for path in rows.path:
            student.get_submodule(path).runs_dense = True
    return student, rows


def layer_student(teacher: nn.Module, keep: int) -> nn.Module:
    """PKD's classic student: a copy of ``teacher`` with only its first ``keep`` layers (the
    embeddings, pooler and classifier kept), as the PKD authors initialise their 3- and 6-layer
    students from BERT-base's first layers."""
    student = copy.deepcopy(teacher)
    stacks = adapters.layer_stacks(student)
    if len(stacks) != 1:
        raise ConfigError(f"a layer student needs a single-stack encoder; this model has stacks {', '.join(stacks)}")
    (path, blocks), = stacks.values()
    if not 1 <= keep <= len(blocks):
        raise ConfigError(f"keep={keep!r}: the teacher has {len(blocks)} layers (keep 1 to {len(blocks)})")
    adapters.set_module(student, path, nn.ModuleList(list(blocks)[:keep]))
    student.config.num_hidden_layers = keep
    return student
