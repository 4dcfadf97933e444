"""Per-phase wall time of a compression run: ``with phase("hessians"): ...`` adds the seconds of the
block to the phase table of the :func:`~tcomp_utils.registry.compress` call that is running (and
does nothing outside one), so a method can say where its time goes without passing a timer around.
Also :func:`torch_threads`, the thread count that a measurement or a training run fixes."""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch

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


# the one-time models train on this many threads wherever they are made: a float reduction split over
# another number of threads sums in another order, and bf16 training turns that into another model
TRAINING_THREADS = 1


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the ``with`` block on ``n`` torch intra-op threads (restored afterwards); yields ``n``."""
    if n < 1:
        raise ValueError(f"a thread count is at least 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
