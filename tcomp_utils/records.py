"""Records: named results that a notebook writes and a sweep or figure reads back.

Inside a notebook, ``record("test_accuracy", 0.91)`` displays the value and stores it in the
cell's outputs under the MIME type :data:`MIME`, so an executed notebook carries its own
results. :func:`read_records` reads them back from an executed ``.ipynb`` or from the JSON
record file the runner writes beside it. Values are plain JSON: numbers, strings, lists,
dicts, or a pandas DataFrame (stored as a list of row dicts).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

MIME = "application/vnd.tcomp.record+json"
# columns a sweep's results table already has: a record may not take these names
RESERVED = ("key", "status", "error", "code_hash", "code_modules", "stale", "profile", "elapsed_s")


def to_json(value: Any) -> Any:
    """Convert ``value`` to plain JSON (DataFrames to row lists, numpy scalars to Python)."""
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a DataFrame
        return [{k: to_json(v) for k, v in row.items()} for row in value.to_dict(orient="records")]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0:  # numpy array / torch tensor
        return to_json(value.tolist())
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot record a value of type {type(value).__name__}; record numbers, strings, "
                    "lists, dicts or DataFrames")


def record(name: str, value: Any) -> None:
    """Record ``value`` under ``name`` in the running notebook (shown as ``name = value``).
    Names of results columns (:data:`RESERVED`) are refused; so, by the sweep, are parameter names."""
    from IPython.display import display

    if not isinstance(name, str) or not name or name in RESERVED:
        raise ValueError(f"record name {name!r} is not allowed: give a non-empty string other than "
                         f"{', '.join(RESERVED)} (and other than the notebook's parameters)")
    payload = {"name": name, "value": to_json(value)}
    text = f"{name} = {value!r}" if not isinstance(payload["value"], list) else f"{name}: {len(value)} rows"
    display({MIME: payload, "text/plain": text}, raw=True)


def records_from_notebook(nb: dict) -> dict[str, Any]:
    """All records in an executed notebook (a later record of the same name wins)."""
    out = {}
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            payload = output.get("data", {}).get(MIME)
            if payload is not None:
                out[payload["name"]] = payload["value"]
    return out


def read_records(path: str | os.PathLike) -> dict[str, Any]:
    """Records of an executed notebook (``.ipynb``) or of its record file (``.json``)."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if path.suffix == ".ipynb":
        return records_from_notebook(data)
    return data["records"] if "records" in data else data


