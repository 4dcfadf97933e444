"""Per-phase wall time of a compression run: ``with phase("hessians"): ...`` adds the seconds of the
block to the phase table of the :func:`~tcomp_utils.registry.compress` call that is running (and
does nothing outside one), so a method can say where its time goes without passing a timer around."""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_PHASES: ContextVar[dict[str, float] | None] = ContextVar("tcomp_phases", default=None)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the wall seconds spent in the ``with`` block to phase ``name`` of the current record."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        table = _PHASES.get()
        if table is not None:
            table[name] = table.get(name, 0.0) + time.perf_counter() - t0


@contextmanager
def recording() -> Iterator[dict[str, float]]:
    """Collect the phases timed inside the ``with`` block: yields the {phase: seconds} table."""
    table: dict[str, float] = {}
    token = _PHASES.set(table)
    try:
        yield table
    finally:
        _PHASES.reset(token)
