"""The one registry of figures and README tables: the ``Figure`` and ``ReadmeTable`` records,
``FIGURES`` and ``README_TABLES`` (listed together, by the sweep whose results they read),
``computed_cells`` and ``build``, which draws figures into ``figures/``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import pandas as pd

from ..files import REPO_ROOT, write_csv_atomic
from .atlas import ATLAS_QUESTIONS, _atlas_paired_readme, _atlas_readme, atlas_figure
from .baselines import _baselines_by_role, _baselines_table, _footprints_table
from .budget_axis import _budget_axis
from .errors import NothingToDraw
from .composable import _composable_readme, _composable_set_readme, composable_bleu, composable_curves, composable_time, composable_units
from .gptq import _gptq_readme, _gptq_table
from .offline import _offline_accuracy, _offline_finetune, _offline_paired_readme, _offline_table
from .pruning import _pruning_decoder, _pruning_decoder_table, _pruning_encoder, _pruning_encoder_table
from .qat import _qat_readme, _qat_table
from .students import _student_betas_readme, _student_readme, _student_table
from .style import style



@dataclass(frozen=True)
class Figure:
    """A figure: its source table (relative to the repo), the sweep that makes it, and how to draw it.

    ``draw(table) -> (fig, data)`` returns the matplotlib figure and the tidy data it plots.
    """

    name: str
    source: str
    sweep: str
    draw: Callable[[pd.DataFrame], tuple[plt.Figure, pd.DataFrame]]


@dataclass(frozen=True)
class ReadmeTable:
    """A README table rendered from one results CSV (relative to the repo)."""

    name: str
    source: str
    render: Callable[[pd.DataFrame], str]


def _composable(prefix: str) -> tuple[list, list]:
    """Notebook 13's figures and tables, named ``{prefix}_bleu`` … and ``{prefix}_table``, ``{prefix}_set``."""
    figs = [(f"{prefix}_bleu", "summary.csv", composable_bleu), (f"{prefix}_time", "time_parts.csv", composable_time),
            (f"{prefix}_curves", "model_log.csv", composable_curves),
            (f"{prefix}_units", "unit_log.csv", composable_units)]
    return figs, [(f"{prefix}_table", "summary.csv", _composable_readme),
                  (f"{prefix}_set", "results.csv", _composable_set_readme)]


# The one registry: per sweep (``papermill_runs/<sweep>.yaml``, writing ``papermill_runs/<sweep>/``), its
# figures as (name, table, draw) and its README tables as (name, table, render), in the order they are built.
_SWEEPS = {
    "budget_axis": ([("budget_axis_macs", "results.csv", _budget_axis)], []),
    "baselines": ([("baselines_by_role", "by_role.csv", _baselines_by_role)],
                  [("baselines", "results.csv", _baselines_table), ("footprints", "footprints.csv", _footprints_table)]),
    "offline_compression": ([("offline_compression_accuracy", "results.csv", _offline_accuracy),
                             ("offline_compression_finetune", "results.csv", _offline_finetune)],
                            [("offline_compression", "results.csv", _offline_table),
                             ("offline_paired", "results.csv", _offline_paired_readme)]),
    "gptq_table": ([("gptq_table", "results.csv", _gptq_table)], [("gptq_table", "results.csv", _gptq_readme)]),
    "structured_pruning_encoder": ([("structured_pruning_encoder", "results.csv", _pruning_encoder)],
                                   [("structured_pruning_encoder", "results.csv", _pruning_encoder_table)]),
    "structured_pruning_decoder": ([("structured_pruning_decoder", "results.csv", _pruning_decoder)],
                                   [("structured_pruning_decoder", "results.csv", _pruning_decoder_table)]),
    "qat_table": ([("qat_table", "results.csv", _qat_table)], [("qat_table", "results.csv", _qat_readme)]),
    "composable_table": _composable("composable"),
    "composable_t5": _composable("composable_t5"),  # seed 002 on seed 002's architecture, the T5 (issue 36)
    "composable_t5_grid": _composable("composable_t5_grid"),  # and the generator's six configurations on it
    "student_table": ([("student_table", "results.csv", _student_table)],
                      [("student_table", "results.csv", _student_readme),
                       ("student_betas", "results.csv", _student_betas_readme)]),
    "atlas": ([(f"atlas_{axis}", "results.csv", atlas_figure(axis)) for axis in ATLAS_QUESTIONS],
              [("atlas", "results.csv", _atlas_readme), ("atlas_paired", "results.csv", _atlas_paired_readme)]),
}
FIGURES = {name: Figure(name, f"papermill_runs/{sweep}/{table}", f"papermill_runs/{sweep}.yaml", draw)
           for sweep, (figs, _) in _SWEEPS.items() for name, table, draw in figs}
README_TABLES = {name: ReadmeTable(name, f"papermill_runs/{sweep}/{table}", render)
                 for sweep, (_, tables) in _SWEEPS.items() for name, table, render in tables}


def computed_cells(source: str, root: Path = REPO_ROOT) -> int:
    """How many ``ok`` cells the results table beside ``source`` holds (a figure or README table
    with none is skipped, not drawn from an empty frame)."""
    results = root / source.rsplit("/", 1)[0] / "results.csv"
    if not results.is_file():
        raise FileNotFoundError(f"missing results table {results.relative_to(root)}: run its sweep first (make run)")
    table = pd.read_csv(results)
    return int((table.status == "ok").sum()) if "status" in table and (root / source).is_file() else 0


def build(names: list[str] | None = None, out: Path | None = None, root: Path = REPO_ROOT) -> list[Path]:
    """Draw the named figures (all by default) from their results tables into ``out``; a figure
    whose sweep has no computed cell yet is skipped with a line saying which sweep makes it."""
    out = Path(out or root / "figures")
    unknown = [n for n in names or [] if n not in FIGURES]
    if unknown:
        raise KeyError(f"unknown figure(s) {unknown}; known: {', '.join(FIGURES)}")
    chosen = [FIGURES[n] for n in (names or FIGURES)]
    missing = sorted({f.source.rsplit("/", 1)[0] + "/results.csv" for f in chosen
                      if not (root / f.source.rsplit("/", 1)[0] / "results.csv").is_file()})
    if missing:
        raise FileNotFoundError(f"missing results table(s) {missing}: run their sweeps first (make run)")
    style()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fig_spec in chosen:
        if not computed_cells(fig_spec.source, root):
            print(f"{fig_spec.name}: skipped, no computed cell in {fig_spec.source} yet "
                  f"(make sweep SPEC={fig_spec.sweep})")
            continue
        try:
            fig, data = fig_spec.draw(pd.read_csv(root / fig_spec.source))
        except NothingToDraw as why:
            print(f"{fig_spec.name}: skipped, {why} in {fig_spec.source} yet (make sweep SPEC={fig_spec.sweep})")
            continue
        png, csv = out / f"{fig_spec.name}.png", out / f"{fig_spec.name}.csv"
        fig.savefig(png.with_name(f".{png.name}.tmp.png"))
        png.with_name(f".{png.name}.tmp.png").replace(png)
        write_csv_atomic(data, csv, float_format="%.6g")
        plt.close(fig)
        written += [png, csv]
    return written
