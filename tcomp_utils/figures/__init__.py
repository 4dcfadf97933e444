"""Figures and the tables of RESULTS.md from results tables only: no model is loaded, so ``make figures``
takes seconds.

Each figure reads a results CSV that a sweep wrote under ``papermill_runs/``, draws it in the
project's one style and writes ``figures/<name>.png`` with ``figures/<name>.csv`` (the exact
data plotted) beside it. Each results table (``README_TABLES``, named for where they lived first) is
rendered from its results CSV into ``RESULTS.md`` between ``<!-- table: NAME -->`` and ``<!-- /table -->``
with a line naming its source, profile, cells and package code, so the document cannot drift from the
results (a test checks it is in step).

    python -m tcomp_utils.figures [--out figures] [--results RESULTS.md] [NAME ...]

Modules: ``style`` (the one style), ``markdown`` (table formatting), one module per table family
holding its figures and its README table (``budget_axis``, ``baselines``, ``offline``, ``gptq``,
``pruning``, ``qat``, ``composable``, ``students``, ``atlas``), ``registry`` (``FIGURES``,
``README_TABLES``, ``build``), ``readme`` (writing the tables into the README) and ``cli``.
Every name below is re-exported here, as it was before the package was split.
"""
from . import style as _style  # first: selects matplotlib's Agg backend before any module imports pyplot
from .atlas import ATLAS_BUDGETS, ATLAS_QUESTIONS, _atlas_readme, atlas_figure
from .baselines import _baselines_by_role, _baselines_table, _footprints_table
from .budget_axis import _budget_axis
from .cli import main
from .composable import (COMPOSABLE_ARMS, _composable_readme, _composable_set_readme, composable_bleu,
                         composable_gaps, composable_saving, composable_curves, composable_time,
                         composable_units)
from .gptq import GPTQ_METRICS, GPTQ_VARIANTS, _bits, _gptq_long, _gptq_readme, _gptq_table, _gptq_variant
from .markdown import _bold_best, _markdown
from .offline import (METHOD_ORDER, MODE_ORDER, ROLE_ORDER, _finetune_steps, _label, _offline_accuracy,
                      _offline_finetune, _offline_table, offline_headline, offline_paired, offline_twin_accuracy)
from .pruning import (DECODER_TEXTS, PRUNING_LABELS, PRUNING_ORDER, _pruning_decoder, _pruning_decoder_table,
                      _pruning_encoder, _pruning_encoder_table)
from .qat import QAT_FLOAT, QAT_PROTOCOLS, QAT_TARGETS, _qat_cells, _qat_readme, _qat_table
from .readme import _BLOCK, _provenance, readme_tables, update_readme
from .errors import NothingToDraw
from .registry import FIGURES, README_TABLES, REPO_ROOT, Figure, ReadmeTable, build, computed_cells
from .students import (STUDENT_OBJECTIVES, _student_betas_readme, _student_readme, _student_table, student_beta_grid,
                       student_cells, student_headline, student_verdicts)
