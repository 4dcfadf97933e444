"""The command line of ``python -m tcomp_utils.figures``: draw the figures and rewrite the tables of RESULTS.md."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .readme import update_readme
from .registry import FIGURES, REPO_ROOT, build


def main(argv: list[str] | None = None) -> int:
    summary = sys.modules[__package__].__doc__.splitlines()[0]  # the package docstring's first line
    parser = argparse.ArgumentParser(prog="python -m tcomp_utils.figures", description=summary)
    parser.add_argument("names", nargs="*", help=f"figures to build (default all: {', '.join(FIGURES)})")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default figures/)")
    parser.add_argument("--results", "--readme", dest="readme", type=Path, default=REPO_ROOT / "RESULTS.md",
                        help="document whose marked tables are rewritten from the results (default RESULTS.md)")
    args = parser.parse_args(argv)
    for path in build(args.names or None, args.out):
        print(path)
    if not args.names:
        for name in update_readme(args.readme):
            print(f"{args.readme}: table {name} updated")
    return 0
