"""The conda environment and the pip project declare the same packages; notebooks are stripped."""
import json
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def names(requirements):
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_environment_yaml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = names(project["dependencies"]) | {n for extra in project["optional-dependencies"].values() for n in names(extra)}
    env = yaml.safe_load((ROOT / "environment.yaml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = names(pip) | (names(conda) - {"python", "pip"})
    assert listed == declared, f"only in environment.yaml: {listed - declared}; only in pyproject: {declared - listed}"
    assert any(p.startswith("torch==2.13.0") for p in pip)


def test_notebooks_are_committed_without_outputs():
    paths = [*(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "tests" / "notebooks").glob("*.ipynb")]
    assert paths
    for path in paths:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell["outputs"] and cell["execution_count"] is None, f"{path.name} has outputs: strip them"
