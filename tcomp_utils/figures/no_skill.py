"""The no-skill line of every accuracy or F1 axis (:mod:`tcomp_utils.majority` gives its level), so a
reader sees at once which points learnt nothing."""
from __future__ import annotations

NO_SKILL_GID = "no-skill"  # the gid of the line, by which a test finds it
LABEL = "majority class (no skill)"
LABELS = {"accuracy": LABEL, "macro_f1": "guess in class shares, 1/K (no skill)"}


def no_skill_line(ax, value: float, axis: str = "y", label: str = LABEL):
    """Draw the no-skill level ``value`` across ``ax`` (a horizontal line for a y axis, vertical for x);
    ``label`` says which level (:data:`LABELS` by headline metric)."""
    draw = ax.axhline if axis == "y" else ax.axvline
    line = draw(value, color="0.45", ls=":", lw=1.3, label=label, zorder=1)
    line.set_gid(NO_SKILL_GID)
    return line
