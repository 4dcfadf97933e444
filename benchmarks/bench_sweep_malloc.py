"""One training step of PKD's 3-layer MiniLM student (the student table's ``layers3``: batches of 32
tweets of 40 tokens, bf16 autocast, fused AdamW) in two processes at once on one thread each, as a
sweep on 2 workers runs its points: with glibc's default memory allocator settings, and with
``MALLOC_TRIM_THRESHOLD_=65536``, which Dask's nanny gives the workers of a local cluster (and so
gave every point a ``--workers N`` sweep or ``make run`` ran until ``tcomp_utils.sweep`` unset it).
A trim threshold that is set also fixes glibc's mmap threshold, so every large tensor a step frees
goes back to the system and is faulted in again on the next step.

    python benchmarks/bench_sweep_malloc.py [--runs 20] [--out benchmarks/results]

Prints and writes ``sweep_malloc.csv``: setting, process, the median milliseconds of the forward and
backward pass and of the whole step, and the minor page faults per step. Run it on an idle machine.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pandas as pd

from bench_common import setup, show

SETTINGS = {"glibc default": None, "MALLOC_TRIM_THRESHOLD_=65536 (Dask's nanny)": "65536"}


def child(runs: int) -> None:
    """Time the steps in this process and print one JSON line."""
    from bench_training import cases, time_steps
    model, batch = cases()["minilm-l6 layers3 student"]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    parts = time_steps(model, batch, fused=True, runs=runs)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"forward_backward_ms": parts["forward_backward_ms"], "step_ms": parts["step_ms"],
                      "page_faults_per_step": round(faults / (runs + 3))}), flush=True)


def main() -> None:
    args, out = setup(__doc__, "A training step beside another: glibc's malloc defaults vs Dask's trim threshold",
                      child=0)
    if args.child:
        return child(args.runs)
    rows = []
    for name, value in SETTINGS.items():
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
        env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        if value is not None:
            env["MALLOC_TRIM_THRESHOLD_"] = value
        cmd = [sys.executable, __file__, "--threads", "1", "--runs", str(args.runs), "--child", "1", "--out", str(out)]
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for _ in range(2)]
        for i, p in enumerate(procs):
            stdout, _ = p.communicate()
            if p.returncode:
                raise RuntimeError(f"the {name!r} child process failed with exit code {p.returncode}")
            rows.append({"setting": name, "process": i, **json.loads(stdout.strip().splitlines()[-1])})
    table = pd.DataFrame(rows)
    base = table[table.setting == "glibc default"].step_ms.mean()
    table["slowdown"] = (table.step_ms / base).round(2)
    show("sweep_malloc", table, out, f"layers3 training step, two processes at once, median of {args.runs}")


if __name__ == "__main__":
    main()
