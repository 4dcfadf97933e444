"""A sweep spec: a YAML file under ``papermill_runs/`` naming a notebook, a grid of its parameters, the
subset ``make run`` computes and how close a recomputed point must come to its committed row; parsed
and checked against the notebook's parameters cell before anything runs (the format: see ``sweep``)."""
from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .runner import PROFILES, REPO_ROOT, NotebookError, notebook_parameters


SPEC_KEYS = {"name", "notebook", "profile", "parameters", "grid", "points", "reduced", "output", "reproduce"}
REPRODUCE_KEYS = {"rtol", "atol", "ignore", "known_difference"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SweepSpecError(NotebookError):
    pass


def _known_differences_ok(known: Any) -> bool:
    return isinstance(known, dict) and set(known) <= set(PROFILES) and all(
        isinstance(v, dict) and set(v) <= {"reason", "where"} and isinstance(v.get("reason"), str)
        and v["reason"].strip() and isinstance(v.get("where", {}), dict) for v in known.values())


def read_notebook(path: Path) -> dict:
    """A notebook's JSON; a file that is not a notebook raises :class:`SweepSpecError` saying so."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SweepSpecError(f"notebook {path} is not a readable notebook (JSON): {err}") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise SweepSpecError(f"notebook {path} has no list of cells: not a Jupyter notebook")
    return nb


def _expand(raw: dict, path: Path, where: str = "") -> list[dict[str, Any]]:
    """The points of a spec section: the product of each ``grid`` (a map or a list of maps), then ``points``."""
    grid = raw.get("grid") or []
    grids = grid if isinstance(grid, list) else [grid]
    if not all(isinstance(g, dict) and g and all(isinstance(v, list) and v for v in g.values()) for g in grids):
        raise SweepSpecError(f"{path}: {where}'grid' must map each parameter to a non-empty list of values "
                             "(or be a list of such maps)")
    listed = raw.get("points") or []
    if not isinstance(listed, list) or not all(isinstance(p, dict) for p in listed):
        raise SweepSpecError(f"{path}: {where}'points' must be a list of mappings (parameter: value), got {listed!r:.80}")
    return [dict(zip(g, combo)) for g in grids for combo in itertools.product(*g.values())] + listed


def _check_type(name: str, value: Any, default: Any, where: str) -> None:
    """A parameter's value must have the type of the notebook's default (numbers: int for int,
    int or float for float; None and non-literal defaults accept anything)."""
    if default is None or default is ...:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise SweepSpecError(f"{where}: parameter {name}={value!r} is a {type(value).__name__}, but the notebook's "
                             f"default {default!r} is a {type(default).__name__}")


@dataclass
class SweepSpec:
    """A parsed sweep spec (paths resolved against the repository root)."""

    name: str
    notebook: Path
    profile: str
    output: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    reduced: list[dict[str, Any]] | None = None  # the subset `make run` computes (None: every point)
    reproduce: dict[str, Any] = field(default_factory=dict)  # make run's tolerance: rtol, atol, ignore (columns),
    # known_difference ({profile: {reason, where}}: why the committed rows of the points matching
    # ``where`` (every point when absent) cannot be recomputed exactly)
    duplicates: int = 0  # points listed more than once (run once)
    parameter_names: tuple[str, ...] = ()  # what the notebook's parameters cell defines

    @classmethod
    def load(cls, path: str | Path, profile: str | None = None, output: str | Path | None = None) -> "SweepSpec":
        """Read and check a spec; ``profile``/``output`` override the spec's."""
        path = Path(path)
        if not path.is_file():
            raise SweepSpecError(f"sweep spec {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as err:
            raise SweepSpecError(f"sweep spec {path} is not a text file (byte {err.start} is not UTF-8): a spec is "
                                 "YAML text") from None
        except yaml.YAMLError as err:
            raise SweepSpecError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise SweepSpecError(f"{path}: a sweep spec is a mapping of {sorted(SPEC_KEYS)}, got a {type(raw).__name__}")
        unknown = set(raw) - SPEC_KEYS
        if unknown:
            raise SweepSpecError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
        for key in ("name", "notebook"):
            if key not in raw:
                raise SweepSpecError(f"{path}: missing required key {key!r}")
        name = raw["name"]
        if not isinstance(name, str) or not NAME.match(name) or ".." in name:
            raise SweepSpecError(f"{path}: name {name!r} must be letters, digits, '_', '-' or '.' (it names a folder "
                                 "under papermill_runs/; no '/' or '..')")
        profile = profile or raw.get("profile", "default")
        if profile not in PROFILES:
            raise SweepSpecError(f"{path}: unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
        for key in ("notebook", "output"):  # output may be absent or null: papermill_runs/<name>
            value = raw.get(key)
            if (key == "notebook" or value is not None) and (not isinstance(value, str) or not value.strip()):
                raise SweepSpecError(f"{path}: {key!r} must be a path (text: absolute, or relative to the repository), "
                                     f"got {value!r} (a {type(value).__name__})")
        notebook = (REPO_ROOT / raw["notebook"]).resolve()
        if notebook.is_dir():
            raise SweepSpecError(f"{path}: notebook {raw['notebook']} is a folder, not a notebook file: 'notebook' "
                                 "names one .ipynb file")
        if not notebook.is_file():
            raise SweepSpecError(f"{path}: notebook {raw['notebook']} does not exist")
        try:
            allowed = notebook_parameters(read_notebook(notebook), raw["notebook"])
        except NotebookError as err:
            raise SweepSpecError(str(err)) from None
        points = _expand(raw, path)
        if not points:
            raise SweepSpecError(f"{path}: no points: give a 'grid' or a list of 'points'")
        reduced = raw.get("reduced")
        if reduced is not None:
            if not isinstance(reduced, dict) or not set(reduced) <= {"grid", "points"} or not reduced:
                raise SweepSpecError(f"{path}: 'reduced' must be a mapping with a 'grid' and/or 'points' (the subset "
                                     "that `make run` computes)")
            reduced = _expand(reduced, path, "reduced: ")
        reproduce = raw.get("reproduce") or {}
        if not isinstance(reproduce, dict) or not set(reproduce) <= REPRODUCE_KEYS or not all(
                isinstance(reproduce.get(k, 0.0), (int, float)) and reproduce.get(k, 0.0) >= 0 for k in ("rtol", "atol")) \
                or not isinstance(reproduce.get("ignore", []), list) \
                or not _known_differences_ok(reproduce.get("known_difference", {})):
            raise SweepSpecError(f"{path}: 'reproduce' must map rtol and atol to numbers >= 0, ignore to a list of "
                                 "columns and known_difference to {profile: {reason: text, where: {parameter: value}}} "
                                 f"with profiles in {sorted(PROFILES)} (allowed keys: {sorted(REPRODUCE_KEYS)}), "
                                 f"got {reproduce!r:.160}")
        fixed = raw.get("parameters") or {}
        if not isinstance(fixed, dict):
            raise SweepSpecError(f"{path}: 'parameters' must be a mapping, got {fixed!r:.80}")
        if "profile" in fixed or any("profile" in p for p in points):
            raise SweepSpecError(f"{path}: set the profile with the top-level 'profile' key, not as a parameter")
        points = [{**fixed, **p} for p in points]
        reduced = [{**fixed, **p} for p in reduced] if reduced is not None else None
        for point in points + (reduced or []):
            for key, value in point.items():
                if key not in allowed:
                    close = difflib.get_close_matches(key, list(allowed), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise SweepSpecError(f"{path}: unknown parameter {key!r}{hint}; {raw['notebook']} has parameters "
                                         f"{', '.join(k for k in allowed if k != 'profile')}")
                _check_type(key, value, allowed[key], str(path))
        ident = lambda p: json.dumps(p, sort_keys=True, default=str)  # noqa: E731
        unique = list({ident(p): p for p in points}.values())
        if reduced is not None:
            outside = [p for p in reduced if ident(p) not in {ident(q) for q in unique}]
            if outside:
                raise SweepSpecError(f"{path}: reduced point {outside[0]} is not a point of the complete grid")
            reduced = list({ident(p): p for p in reduced}.values())
        out = Path(output or raw.get("output") or f"papermill_runs/{name}")
        out = out if out.is_absolute() else REPO_ROOT / out
        if out.exists() and not out.is_dir():
            raise SweepSpecError(f"{path}: output {out} is a file, not a folder: 'output' (or --output) names the "
                                 "folder that receives the points and the results table")
        spec = cls(name=name, notebook=notebook, profile=profile, output=out,
                   parameters=fixed, points=unique, reduced=reduced, reproduce=reproduce)
        spec.duplicates, spec.parameter_names = len(points) - len(unique), tuple(allowed)
        return spec

    def point_parameters(self, point: dict[str, Any]) -> dict[str, Any]:
        return {"profile": self.profile, **point}

    def point_key(self, point: dict[str, Any]) -> str:
        """Stable hash of what determines a point's result: the notebook's code cells, the profile
        and the parameters (editing prose does not invalidate results; editing code does)."""
        blob = json.dumps([self.code_digest(), self.point_parameters(point)], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def code_digest(self) -> str:
        nb = json.loads(self.notebook.read_text(encoding="utf-8"))
        code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
        return hashlib.sha256(json.dumps(code).encode()).hexdigest()
