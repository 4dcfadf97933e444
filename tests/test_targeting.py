"""The core's module targeting and replacement (:mod:`tcomp_utils.targeting`): every handler
selects modules with ``targets`` and puts new ones in place with ``replace``."""
import pytest
import torch
from torch import nn

from tcomp_utils import adapters
from tcomp_utils.targeting import MEASURED, module_row, relative_error, replace, stacks_of, targets
from conftest import tiny_bert, tiny_t5


def test_targets_lists_the_roles_modules_in_role_then_layer_order():
    model = tiny_bert()
    found = targets(model, ["ffn_out", "query"], layers=[1])
    assert [(rm.role, rm.layer) for rm in found] == [("ffn_out", 1), ("query", 1)]
    assert [rm.path for rm in targets(model, "ffn")] == [
        f"bert.encoder.layer.{i}.{p}" for p in ("intermediate.dense", "output.dense") for i in range(2)]


def test_an_unknown_role_names_the_role_and_the_allowed_ones():
    with pytest.raises(adapters.UnknownRoleError, match=r"unknown module role 'querys'.*allowed roles: query, key"):
        targets(tiny_bert(), ["ffn", "querys"])
    with pytest.raises(adapters.UnknownRoleError, match=r"'cross_query'.*allowed roles: query, key, value"):
        targets(tiny_bert(), "cross_query")  # a role of the vocabulary this model does not have


def test_targets_checks_every_module_before_anything_changes():
    model = tiny_bert()
    with pytest.raises(ValueError, match=r"no layer 9"):
        targets(model, "query", layers=[9])
    model.bert.encoder.layer[1].output.dense = nn.Identity()
    with pytest.raises(TypeError, match=r"layer\.1\.output\.dense \(ffn_out\) is a Identity, not an nn\.Linear or "
                                        r"nn\.Embedding"):
        targets(model, "ffn_out")
    assert [rm.layer for rm in targets(model, "ffn_out", accept=lambda m: True)] == [0, 1]
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.key.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer\.0\.attention\.self\.key\.weight holds NaN"):
        targets(model, "qkv")
    assert len(targets(model, "qkv", finite=False)) == 6


def test_a_module_reachable_at_two_paths_is_listed_once_when_unique_and_replaced_at_both():
    model = tiny_bert()
    shared = model.bert.encoder.layer[0].intermediate.dense
    model.bert.encoder.layer[1].intermediate.dense = shared  # one module, two paths
    found = targets(model, "ffn_in")
    assert len(found) == 2 and found[0].module is found[1].module
    assert len(targets(model, "ffn_in", unique=True)) == 1
    new = nn.Linear(32, 64)
    paths = replace(model, found[0], new)
    assert paths == ["bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.1.intermediate.dense"]
    assert all(model.get_submodule(p) is new for p in paths)
    other = nn.Linear(32, 64)
    assert replace(model, "bert.encoder.layer.1.intermediate.dense", other) == paths  # by path: the same
    assert all(model.get_submodule(p) is other for p in paths)


def test_replace_reaches_embeddings_tied_to_one_table_only_when_asked():
    model = tiny_t5()
    table = model.shared
    tied = [p for p, m in model.named_modules(remove_duplicate=False)
            if isinstance(m, nn.Embedding) and m.weight is table.weight]
    new = nn.Embedding(100, 32)
    assert replace(model, table, new, tied_weights=True) == tied and len(tied) >= 2
    assert all(model.get_submodule(p) is new for p in tied)
    assert model.lm_head is not new  # an output head tied to the table is no embedding: left alone


def test_module_row_measures_sizes_and_the_relative_error():
    model = tiny_bert()
    (rm,) = targets(model, "query", layers=[0])
    row = module_row(rm, rm.module, nn.Linear(32, 32), approx=rm.module.weight.detach() / 2, rank=3)
    assert row["rel_error"] == pytest.approx(0.5) and row["rank"] == 3
    assert (row["in"], row["out"], row["params_before"], row["bytes_before"]) == (32, 32, 32 * 32 + 32, 4 * (32 * 32 + 32))
    assert list(row)[:11] == ["path", "role", "stack", "layer", "in", "out", "params_before", "params_after",
                              "bytes_before", "bytes_after", "rel_error"]
    assert module_row(rm, rm.module, nn.Linear(32, 32), rel_error=0.25)["rel_error"] == 0.25  # a method's own measure
    placed = module_row(rm, rm.module, nn.Linear(32, 32), approx=rm.module.weight.detach() * 0, rank=3,
                        rel_error=MEASURED, nnz=0)
    assert list(placed)[10:] == ["rank", "rel_error", "nnz"] and placed["rel_error"] == 1.0
    assert relative_error(torch.ones(2, 2), torch.zeros(2, 2)) == 1.0


def test_stacks_of_groups_one_role_of_a_stack_across_layers():
    found = targets(tiny_bert(), ["query", "ffn_in", "embeddings"])
    assert [len(g) for g in stacks_of(found, "separated")] == [1] * 5
    assert [[rm.path.rsplit(".", 1)[-1] for rm in g] for g in stacks_of(found, "concatenated")] == [
        ["query", "query"], ["dense", "dense"], ["word_embeddings"]]
