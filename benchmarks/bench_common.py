"""What the benchmark scripts share: their common options and set-up, and printing/saving tables."""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import pandas as pd
import torch


def setup(doc: str, title: str, **extra: int) -> tuple[argparse.Namespace, Path]:
    """Parse ``--threads``, ``--runs``, ``--out`` and the integer options ``extra`` (name=default);
    seed torch, fix its threads, create the output folder and print a header naming the machine."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results")
    for name, default in extra.items():
        ap.add_argument(f"--{name}", type=int, default=default)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# {title} ({platform.processor() or platform.machine()}, {args.threads} torch threads, "
          f"torch {torch.__version__})\n")
    return args, out


def show(name: str, table: pd.DataFrame, out: Path, title: str) -> None:
    """Write ``table`` to ``out/<name>.csv`` and print it under ``title``."""
    table.to_csv(out / f"{name}.csv", index=False)
    print(f"## {title}\n\n{table.to_string(index=False)}\n", flush=True)
