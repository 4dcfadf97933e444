"""The method core: a method added from outside the package (config + handler + module, all in
this file, no package file edited) compresses, counts, saves and loads; configs refuse bad values
by name; the core never imports a method module."""
import ast
import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from tcomp_utils import adapters, budget, serialize
from tcomp_utils.budget import BudgetError, CompressedLinear, Footprint, dense_bytes
from tcomp_utils.methods.factorization import SVDConfig, TuckerConfig
from tcomp_utils.methods.quantization import GPTQConfig, RTNConfig
from tcomp_utils.registry import (ConfigError, MethodConfig, UnknownMethodError, compress, method_config, methods,
                                  module_row, register_method, register_module)
from conftest import tiny_bert, tiny_llama

PACKAGE = Path(__file__).resolve().parents[1] / "tcomp_utils"


# ---------------------------------------------------------------- a toy method, defined here only
@register_module
class HalfLinear(CompressedLinear):
    """A linear layer stored in float16 (computes in float32)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("half_weight", weight.detach().half().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.out_features, self.in_features = weight.shape

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "HalfLinear":
        return cls(linear.weight, linear.bias)

    def weight_matrix(self) -> torch.Tensor:
        return self.half_weight.float()

    def forward(self, x):
        return nn.functional.linear(x, self.weight_matrix(), self.bias)

    def tcomp_footprint(self) -> Footprint:
        own = [self.half_weight] + ([self.bias] if self.bias is not None else [])
        return Footprint(sum(t.numel() for t in own), sum(dense_bytes(t) for t in own), self.in_features * self.out_features)

    def tcomp_config(self) -> dict:
        return {"in": self.in_features, "out": self.out_features, "bias": self.bias is not None}

    @classmethod
    def tcomp_empty(cls, config: dict, shared=None) -> "HalfLinear":
        return cls(torch.empty(config["out"], config["in"]), torch.empty(config["out"]) if config["bias"] else None)


@dataclass
class HalfConfig(MethodConfig):
    scale: float = 1.0  # a knob, validated below

    def validate(self):
        super().validate()
        if not self.scale > 0:
            raise ConfigError(f"scale must be > 0, got {self.scale!r}")


@register_method("toy-half", HalfConfig, family="test", description="float16 weights")
def _half(model, config, calibration, progress):
    targets = [rm for role in config.target_roles(model) for rm in adapters.find_modules(model, role, config.layers)]
    rows = []
    for rm in targets:
        new = HalfLinear.from_linear(rm.module)
        err = ((rm.module.weight - new.weight_matrix()).norm() / rm.module.weight.norm()).item()
        rows.append(module_row(rm, rm.module, new, rel_error=err))
        adapters.set_module(model, rm.path, new)
    return rows


def test_a_method_added_outside_the_package_compresses_counts_saves_and_loads(tmp_path):
    model = tiny_bert()
    x = {"input_ids": torch.randint(0, 100, (2, 6))}
    report = compress(model, method_config("toy-half", roles="ffn", layers=[1]))
    assert report.method == "toy-half" and list(report.modules.path) == [
        "bert.encoder.layer.1.intermediate.dense", "bert.encoder.layer.1.output.dense"]
    # float16 weights: the replaced weights take exactly half the bytes, parameters unchanged
    weights = 2 * 32 * 64
    assert report.before.bytes - report.after.bytes == 2 * weights
    assert report.after.params == report.before.params and report.modules.rel_error.max() < 1e-3
    table = budget.module_table(model)
    half = table[table.kind == "HalfLinear"]
    assert list(half.role) == ["ffn_in", "ffn_out"] and list(half.layer) == [1, 1]
    serialize.save_compressed(model, tmp_path / "toy")
    loaded = serialize.load_compressed(tmp_path / "toy")
    assert isinstance(loaded.get_submodule(report.modules.path[0]), HalfLinear)
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, model(**x).logits)
    assert "toy-half" in set(methods().method)


def test_registering_another_config_under_a_taken_name_is_refused():
    @dataclass
    class Other(MethodConfig):
        pass

    with pytest.raises(ValueError, match="method name 'svd' is already registered"):
        register_method("svd", Other, family="factorization")(lambda *a: [])
    with pytest.raises(TypeError, match="lacks tcomp_footprint"):
        register_module(type("Bare", (nn.Module,), {}))


@pytest.mark.parametrize("make, error, message", [
    (lambda: SVDConfig(ratio=0.5), BudgetError, r"must be a number > 1.*got 0.5"),
    (lambda: SVDConfig(ratio=2, rank=3), BudgetError, "exactly one budget"),
    (lambda: SVDConfig(rank=0), BudgetError, "rank must be an integer >= 1, got 0"),
    (lambda: SVDConfig(ratio=2, mode="stacked"), ConfigError, r"mode='stacked' is not allowed; allowed: separated, concatenated"),
    (lambda: SVDConfig(ratio=2, roles="queries"), adapters.UnknownRoleError, "unknown module role 'queries'"),
    (lambda: SVDConfig(ratio=2, layers=0), ConfigError, "layers must be a non-empty list"),
    (lambda: TuckerConfig(rank=4), BudgetError, "rank must be a list"),
    (lambda: GPTQConfig(bits=9), ConfigError, r"bits must be an integer in \[2, 8\], got 9"),
    (lambda: GPTQConfig(group_size=0), ConfigError, "group_size must be None"),
    (lambda: GPTQConfig(damp=0), ConfigError, "damp must be > 0"),
    (lambda: method_config("gptq", bitz=4), ConfigError, r"unknown option 'bitz' for method 'gptq' \(did you mean 'bits'\?\)"),
    (lambda: method_config("gtpq", bits=4), UnknownMethodError, r"unknown method 'gtpq' \(did you mean 'gptq'\?\)"),
    (lambda: method_config("rtn", bits=4, mode="x"), ConfigError, "unknown option 'mode'"),
])
def test_bad_configs_name_the_value_and_what_is_allowed(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_compress_checks_before_it_changes_anything():
    model = tiny_llama()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="method 'gptq' needs calibration batches"):
        compress(model, GPTQConfig(bits=4))
    with pytest.raises(ValueError, match="calibration batch 0 is a Tensor, not a dict with 'input_ids'"):
        compress(model, RTNConfig(bits=4), calibration=[torch.zeros(2, 3)])
    with pytest.raises(UnknownMethodError, match="not a registered method config"):
        compress(model, MethodConfig())
    with pytest.raises(BudgetError, match="at or above full rank"):  # rank 48 of a 48-wide layer, checked first
        compress(model, SVDConfig(roles="linear", rank=48))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_report_summary_is_one_flat_record():
    report = compress(tiny_bert(), SVDConfig(roles="ffn", ratio=2), progress=False)
    summary = report.summary()
    assert summary["method"] == "svd" and summary["ratio"] == 2 and summary["mode"] == "separated"
    assert summary["modules"] == 4 and summary["module_param_ratio"] == pytest.approx(report.param_ratio)
    assert summary["params_after"] < summary["params_before"] and summary["seconds"] >= 0


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by a file of the package."""
    module = "tcomp_utils." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out += [base] + [f"{base}.{a.name}" for a in node.names]
    return out


def test_the_core_imports_no_method_module():
    core = [p for p in PACKAGE.glob("*.py")]
    assert len(core) > 10
    for path in core:
        edges = [m for m in _imports(path) if m == "tcomp_utils.methods" or m.startswith("tcomp_utils.methods.")]
        assert not edges, f"{path.name} imports method modules {edges}"
    method_files = list((PACKAGE / "methods").glob("*.py"))
    imported = {m for p in method_files for m in _imports(p) if m.startswith("tcomp_utils.")}
    assert "tcomp_utils.registry" in imported and "tcomp_utils.budget" in imported  # methods build on the core


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("tcomp_utils",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def _package_imports(path: Path) -> list[tuple[str, tuple[str, ...], ast.AST]]:
    """``(module, names, node)`` for every import of a package module by the file at ``path``, at
    any depth (imports inside functions too); relative imports resolved; ``from pkg import mod``
    names the module ``pkg.mod`` with no names."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, (), node) for a in node.names if a.name in modules]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base not in modules:
                continue
            names = tuple(a.name for a in node.names if f"{base}.{a.name}" not in modules)
            out += [(f"{base}.{a.name}", (), node) for a in node.names if f"{base}.{a.name}" in modules]
            if names:
                out.append((base, names, node))
    return out


def test_the_package_has_no_import_cycle():
    graph = {_module_name(p): {m for m, _, _ in _package_imports(p)} - {_module_name(p)} for p in PACKAGE.rglob("*.py")}
    assert len(graph) > 20 and "tcomp_utils.budget" in graph["tcomp_utils.registry"]
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_methods_share_code_only_through_public_names():
    """A method module imports no private name (leading underscore) from another module of the
    package, nor reaches one through a package module it imported (``structured._Layer``)."""
    found = []
    for path in sorted((PACKAGE / "methods").glob("*.py")):
        own = _module_name(path)
        imported = _package_imports(path)
        found += [f"{path.name}: from {m} import {n}" for m, names, _ in imported if m != own
                  for n in names if n.startswith("_")]
        bound = {}  # local name -> package module, for `from . import structured` / `import tcomp_utils.x as y`
        for m, names, node in imported:
            if not names:
                for a in node.names:
                    if m.endswith("." + a.name) or m == a.name:
                        bound[a.asname or a.name.split(".")[-1]] = m
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and bound[node.value.id] != own and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, "methods use private names of other modules:\n" + "\n".join(found)


def test_the_source_index_names_every_built_in_method_and_module_class():
    from tcomp_utils import registry
    registry.discover()
    index_methods, index_classes = registry.source_index()
    built_in = {n: e for n, e in registry._METHODS.items() if e.handler.__module__.startswith("tcomp_utils.methods.")}
    assert built_in and {n: e.handler.__module__ for n, e in built_in.items()} == {n: index_methods[n] for n in built_in}
    classes = {n: c.__module__ for n, c in registry._MODULES.items() if c.__module__.startswith("tcomp_utils.methods.")}
    assert classes and classes == {n: index_classes[n] for n in classes}


def test_a_method_asked_for_by_name_imports_only_its_module():
    import subprocess
    import sys
    code = ("import sys; from tcomp_utils import registry; registry.method_config('svd', roles='ffn', ratio=2); "
            "registry.module_class('LowRankLinear'); "
            "loaded = sorted(m for m in sys.modules if m.startswith('tcomp_utils.methods.')); print(loaded); "
            "assert 'tcomp_utils.methods.gptq' not in loaded and 'tcomp_utils.methods.factorization' in loaded")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
