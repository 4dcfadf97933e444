"""Every number and ordering the README and the notebooks' "What we see" state, checked against
the committed results: each test computes the values from the results tables, asserts the
orderings the text relies on, and asserts that the text prints exactly those values (so a rerun
that moves a number fails here until the prose says what the results say)."""
import gzip
import json
import math
import re
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = "README.md"
RESULTS = "RESULTS.md"
REPRODUCTION = "docs/reproduction.md"
SWEEPS = "docs/sweeps.md"


@cache
def _text(doc: str) -> str:
    """The prose of the README, or of a notebook's markdown cells, with whitespace normalised."""
    path = ROOT / doc
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        text = path.read_text(encoding="utf-8")
    return " ".join(text.split())


def says(doc: str, *phrases: str) -> None:
    for phrase in phrases:
        phrase = " ".join(phrase.split())
        assert phrase in _text(doc), f"{doc} should say {phrase!r}, which is what the committed results give"


@cache
def table(sweep: str, name: str = "results") -> pd.DataFrame:
    frame = pd.read_csv(ROOT / "papermill_runs" / sweep / f"{name}.csv")
    return frame[frame.status == "ok"] if "status" in frame else frame


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def span(values, fmt: str = "{:.0f}", scale: float = 100) -> str:
    """'lo–hi' of ``values`` (scaled, formatted)."""
    return f"{fmt.format(scale * min(values))}–{fmt.format(scale * max(values))}"


# ---- offline compression: seed 000's table on the three-class task (RESULTS, notebook 04) -------

OFFLINE_NB = "notebooks/04_offline_compression.ipynb"
RATIOS = (2, 3, 10, 25)  # the SVD and tensor notebooks' ratios


@cache
def offline_table() -> pd.DataFrame:
    """The offline table's ok rows, values-only pruning in a mode of its own."""
    from tcomp_utils.figures.offline import _with_modes
    return _with_modes(table("offline_compression"))


def offline_row(method: str, mode: str, roles: str, ratio: float, tuned: bool = False) -> pd.Series:
    r = offline_table()
    row = r[(r.method == method) & (r["mode"] == mode) & (r.roles == roles) & (r.ratio == ratio)
            & ((r.finetune_steps.fillna(0) > 0) == tuned)]
    assert len(row) == 1, (method, mode, roles, ratio, tuned)
    return row.iloc[0]


@cache
def offline_pairs() -> pd.DataFrame:
    from tcomp_utils import figures
    from tcomp_utils.majority import committed_dense_predictions
    pairs = figures.offline_paired(table("offline_compression"), committed_dense_predictions("tweets3"))
    return pairs.set_index(["stage", "roles", "ratio", "comparison", "a"]).sort_index()


def f1_with_interval(row: pd.Series) -> str:
    return f"{pct(row.test_macro_f1)} % ({pct(row.test_macro_f1_lo)}–{pct(row.test_macro_f1_hi)})"


def verdict_counts(verdicts) -> str:
    """'3 below, 1 not distinguishable, 0 above' of a list of paired verdicts."""
    v = list(verdicts)
    return f"{v.count('below')} below, {v.count('≈')} not distinguishable, {v.count('above')} above"


def test_offline_table_is_the_three_class_models():
    r = offline_table()
    assert (r.model_name == "minilm-l6-tweets3").all() and (r.ratio.isin([3, 10])).all()
    base = r.baseline_test_macro_f1.iloc[0]
    from tcomp_utils import metrics
    from tcomp_utils.majority import committed_dense_predictions, committed_test_labels
    # the dense reference the fine-tuned cells are paired against is the model the table compresses
    assert metrics.macro_f1(committed_test_labels("tweets3"), committed_dense_predictions("tweets3")) == pytest.approx(base, abs=1e-6)
    says(RESULTS, f"(uncompressed **{pct(base)}**, no skill 33.3)")
    says(OFFLINE_NB, f"({len(r)} cells, uncompressed macro-F1 {pct(base)} %")


def test_offline_seed_claim_without_fine_tuning():
    p = offline_pairs().xs("offline", level="stage")
    ae = p.xs("ae − svd", level="comparison")
    assert len(ae) == 6  # Q/K/V, FFN and the embedding table at x3 and x10
    ffn3, emb10 = offline_row("ae", "separated", "ffn", 3), offline_row("ae", "separated", "embeddings", 10)
    says(RESULTS, f"the autoencoder against SVD, per module, offline: {verdict_counts(ae.verdict)} of 6",
         f"FFN ×3: {f1_with_interval(ffn3)} against SVD's {f1_with_interval(offline_row('svd', 'separated', 'ffn', 3))} "
         f"({_paired_text(ae.loc[('ffn', 3)].iloc[0])} points)",
         f"embedding table ×10: {f1_with_interval(emb10)} against {f1_with_interval(offline_row('svd', 'separated', 'embeddings', 10))} "
         f"({_paired_text(ae.loc[('embeddings', 10)].iloc[0])})")
    v = list(ae.verdict)
    says(OFFLINE_NB, f"it is below SVD in {v.count('below')} of 6 role-and-ratio cells, not distinguishable in "
                     f"{v.count('≈')} and above in {v.count('above')}")


def test_offline_seed_claim_after_fine_tuning():
    p = offline_pairs().xs("fine-tuned", level="stage")
    for ratio in (3, 10):
        rivals = p.loc[("ffn", ratio)]
        rivals = rivals[rivals.index.get_level_values("comparison").str.startswith("ae − ")]
        assert len(rivals) == 4, ratio  # the seed's other methods: svd, kronecker, tucker, pruning
        says(RESULTS, f"at ×{ratio} the fine-tuned autoencoder against the four others: {verdict_counts(rivals.verdict)}")
    below = {ratio: int((p.loc[("ffn", ratio)].verdict[lambda v: v.index.get_level_values("comparison").str.startswith("ae − ")]
                         == "below").sum()) for ratio in (3, 10)}
    says(OFFLINE_NB, f"autoencoder is below {below[3]} of the four others at ×3 and {below[10]} at ×10, above none")
    assert not (p.verdict[p.index.get_level_values("comparison").str.startswith("ae − ")] == "above").any()


def test_offline_fine_tuning_recovers_and_against_dense():
    p = offline_pairs().xs("fine-tuned", level="stage")
    back = p.xs("fine-tuned − offline", level="comparison")
    dense = p.xs("fine-tuned − dense", level="comparison")
    assert len(back) == len(dense) == 10  # 5 methods at x3 and x10
    tuned = offline_table()[offline_table().finetune_steps.fillna(0) > 0]
    says(RESULTS, f"fine-tuning against the same model offline: {verdict_counts(back.verdict)} of 10",
         f"against the uncompressed model: {verdict_counts(dense.verdict)}",
         f"every fine-tuned cell scores {span(tuned.finetuned_test_macro_f1, '{:.1f}')} %")


def test_offline_data_aware_and_stacked_svd():
    p = offline_pairs()
    off = {c: p.xs(("offline", c), level=["stage", "comparison"]).verdict
           for c in ("asvd − svd", "fwsvd − svd", "stacked − per-module svd")}
    assert all(len(v) == 4 for v in off.values())
    r = offline_table()
    assert not (r.method.isin(["asvd", "fwsvd"]) & (r.finetune_steps.fillna(0) > 0)).any()  # cut from the fine-tuned column
    assert set(off["asvd − svd"]) >= {"above", "below"} and set(off["fwsvd − svd"]) >= {"above", "below"}
    assert (off["stacked − per-module svd"] == "below").all()
    cell = lambda c: dict(zip(zip(off[c].index.get_level_values("roles"), off[c].index.get_level_values("ratio")),  # noqa: E731
                              off[c]))
    assert cell("asvd − svd") == {("ffn", 3): "≈", ("ffn", 10): "below", ("qkv", 3): "above", ("qkv", 10): "above"}
    assert cell("fwsvd − svd") == {("ffn", 3): "above", ("ffn", 10): "below", ("qkv", 3): "below", ("qkv", 10): "above"}
    says(OFFLINE_NB, "activation-aware SVD is ahead on Q/K/V and not on the FFN",
         "Fisher-weighted SVD ahead on the FFN at ×3 and on Q/K/V at ×10, behind in the other two cells",
         "Stacking a role across the six layers loses** for SVD in all four cells")
    says(RESULTS, f"offline, asvd − svd: {verdict_counts(off['asvd − svd'])} and fwsvd − svd: "
                  f"{verdict_counts(off['fwsvd − svd'])} of 4 (Q/K/V and the FFN at ×3 and ×10)",
         f"stacked − per-module svd: {verdict_counts(off['stacked − per-module svd'])} of 4")


def test_offline_data_aware_svds_have_a_higher_weight_error_than_plain_svd():
    r = offline_table()
    err = r[(r["mode"] == "separated") & (r.finetune_steps.fillna(0) == 0)].groupby(["method", "roles", "ratio"]).mean_rel_error.first()
    for method in ("asvd", "fwsvd"):
        for roles in ("qkv", "ffn"):
            assert all(err[method, roles, c] > err["svd", roles, c] for c in (3, 10)), (method, roles)


def test_offline_values_only_pruning():
    v = offline_pairs().xs(("offline", "values-only − CSR pruning"), level=["stage", "comparison"])
    assert len(v) == 6
    says(RESULTS, f"values-only pruning against the CSR count: {verdict_counts(v.verdict)}")
    says(OFFLINE_NB, f"scores more in {(v.verdict == 'above').sum()} of {len(v)} cells")


def test_offline_cells_at_or_below_no_skill():
    r = offline_table()
    off = r[r.finetune_steps.fillna(0) == 0]
    floor = off[100 * off.test_macro_f1 <= 100 / 3]
    assert (r[r.finetune_steps.fillna(0) > 0].finetuned_test_macro_f1 > 1 / 3).all()  # fine-tuning lifts every one
    qkv10 = off[(off.roles == "qkv") & (off.ratio == 10)]
    above = qkv10[100 * qkv10.test_macro_f1 > 100 / 3]
    # only the data-aware SVDs and values-only pruning (not the same budget) stay above it on Q/K/V at x10 ...
    assert sorted(above.method + " " + above["mode"]) == ["asvd separated", "fwsvd separated", "pruning values-only"]
    # ... and the two other cells at or below it are the FFN at x10 under stacked SVD and the autoencoder
    others = floor[~floor.index.isin(qkv10.index)]
    assert sorted(tuple(x) for x in others[["method", "mode", "roles", "ratio"]].to_numpy()) == [
        ("ae", "separated", "ffn", 10), ("svd", "concatenated", "ffn", 10)]
    says(RESULTS, f"{len(floor)} offline cells are at or below no skill (‡): the FFN at ×10 under stacked SVD and the "
                  f"autoencoder, and {len(qkv10) - len(above)} of the {len(qkv10)} Q/K/V variants at ×10")
    names = {("svd", "separated"): "SVD", ("svd", "concatenated"): "stacked SVD", ("tucker", "qkv"): "Tucker",
             ("kronecker", "separated"): "Kronecker", ("pruning", "separated"): "CSR pruning",
             ("ae", "separated"): "the autoencoder"}
    low = [names[k] for k in names if k in set(zip(qkv10.method, qkv10["mode"])) - set(zip(above.method, above["mode"]))]
    says(OFFLINE_NB, "Q/K/V at ×10 is at or below no skill for most methods (‡ in the table): "
                     + ", ".join(low[:-1]) + " and " + low[-1])


def test_offline_autoencoder_stops_on_its_plateau():
    ae = offline_table()[offline_table().method == "ae"]
    assert (ae.ae_epochs_run < ae.ae_epochs).all()  # every cell's mean stop before the cap ...
    says(RESULTS, f"the autoencoder's modules stop after {span(ae.ae_epochs_run, '{:.0f}', 1)} epochs on average per cell "
                  f"(kept epoch {span(ae.ae_epoch_kept, '{:.0f}', 1)})")


def test_offline_stored_numbers_are_not_macs():
    r = offline_table()
    kron = [offline_row("kronecker", "separated", "ffn", c) for c in (3, 10)]
    assert all(k.macs_after == k.macs_before for k in kron)  # a Kronecker sum runs as its matrix: dense MACs


def test_the_offline_grid_time():
    from tcomp_utils.sweep import SweepSpec, longest_first_wall, row_is_point
    r = table("offline_compression")
    r = r[r.status == "ok"]
    spec = SweepSpec.load(ROOT / "papermill_runs" / "offline_compression.yaml")
    reduced = {row["key"] for row in r.to_dict("records") if any(row_is_point(row, p, spec) for p in spec.reduced)}
    assert len(reduced) == len(spec.reduced) == 3
    # the grid was computed with 6 more cells (cut after it ran): its sittings' wall is that of the larger grid,
    # and the cut grid is priced from its cells' measured times, packed as a sweep runs them
    runs = pd.read_csv(ROOT / "papermill_runs" / "offline_compression" / "runs.csv")
    full = runs[~runs.reduced.astype(bool)].tail(2)
    assert full.points_run.sum() == len(r) + 6 and (full.workers.astype(int) == 2).all()
    cell_min, packed = r.elapsed_s.sum() / 60, longest_first_wall(list(r.elapsed_s), workers=2) / 60
    assert packed <= 120  # the issue's 2-hour target
    students = table("student_table")
    students = students[students.status == "ok"]
    sitting = pd.read_csv(ROOT / "papermill_runs" / "student_table" / "runs.csv").iloc[-1]
    gap = sitting.wall_s / 60 - longest_first_wall(list(students.elapsed_s), workers=2) / 60
    assert 0 < gap < 120 - packed  # the gaps a sitting adds, measured on the student grid, still fit
    says(RESULTS, f"measured those gaps: {sitting.wall_s / 60:.1f} minutes against "
                  f"{longest_first_wall(list(students.elapsed_s), workers=2) / 60:.1f} packed from its own cells")
    minutes = lambda rows: rows.elapsed_s.sum() / 60  # noqa: E731
    ae, tuned = r[r.method == "ae"], r[r.finetune_steps.fillna(0) > 0]
    says(RESULTS, f"`make sweep SPEC=papermill_runs/offline_compression.yaml` ({len(r)} cells: {cell_min:.0f} minutes "
                  f"of cell time, {packed:.0f} minutes on 2 cores run longest first",
         f"{full.wall_s.sum() / 60:.0f} minutes on 2 cores in two sittings",
         f"The autoencoder cells take {minutes(ae):.0f} of the {cell_min:.0f} minutes of cell time, the fine-tuned "
         f"cells {minutes(tuned):.0f}; the {len(reduced)} cells of its `make run` share took "
         f"{minutes(r[r.key.isin(reduced)]):.0f} minutes")


@pytest.mark.parametrize("sweep", ["offline_compression", "gptq_table", "qat_table"])
def test_the_regenerate_lines_count_the_cells(sweep):
    rows = pd.read_csv(ROOT / "papermill_runs" / sweep / "results.csv")
    cells = int((rows.status != "retired").sum())  # the spec's cells: rows of a replaced grid are kept as history
    line = re.search(rf"`make sweep SPEC=papermill_runs/{sweep}\.yaml[^`]*` \((\d+) cells", _text(RESULTS))
    assert line and int(line.group(1)) == cells, f"README should count {cells} cells in its line to regenerate {sweep}"


# ---- post-training quantization (README, notebooks 05 and 06) ---------------------------------

GPTQ_NB = "notebooks/06_gptq_table.ipynb"


VARIANTS = {"RTN": ("rtn", None), "GPTQ": ("gptq", False), "GPTQ + act-order": ("gptq", True)}
TEXTS = {"novel": "perplexity", "jargon": "perplexity_jargon"}


def cell(model: str, variant: str, bits: int = 0, group: int = 0) -> pd.Series:
    r = table("gptq_table")
    if variant == "fp32":
        return r[(r.model_name == model) & (r.method == "fp32")].iloc[0]
    method, order = VARIANTS[variant]
    rows = r[(r.model_name == model) & (r.method == method) & (r.bits == bits) & (r.group_size == group)]
    if order is not None:
        rows = rows[rows.act_order.astype(bool) == order]
    assert len(rows) == 1, (model, variant, bits, group)
    return rows.iloc[0]


def ppl(variant: str, bits: int = 0, group: int = 0, text: str = "novel") -> float:
    return float(cell("smollm2-135m", variant, bits, group)[TEXTS[text]])


def removed(variant: str, bits: int, group: int, text: str) -> float:
    """The share of RTN's perplexity increase over fp32 that ``variant`` removes."""
    fp32 = ppl("fp32", text=text)
    return 1 - (ppl(variant, bits, group, text) - fp32) / (ppl("RTN", bits, group, text) - fp32)


def test_act_order_wins_below_8_bits_on_both_texts():
    losses = []
    for text in TEXTS:
        for bits in (4, 3):
            for group in (0, 128):
                ao, plain, rtn = (ppl(v, bits, group, text) for v in ("GPTQ + act-order", "GPTQ", "RTN"))
                assert ao < plain and ao < rtn, (text, bits, group)
                if plain >= rtn:
                    losses.append((text, bits, group))
        fp32 = ppl("fp32", text=text)
        assert all(abs(ppl(v, 8, g, text) / fp32 - 1) < 0.005 for v in VARIANTS for g in (0, 128)), text
    assert losses == [("novel", 4, 128), ("jargon", 4, 128)]
    says(GPTQ_NB, "Act-order wins every cell below 8 bits on both texts",
         f"In the original column order GPTQ is *worse* than RTN at 4 bits with g128 on both texts "
         f"({ppl('GPTQ', 4, 128):.2f} against {ppl('RTN', 4, 128):.2f} on the novel, "
         f"{ppl('GPTQ', 4, 128, 'jargon'):.2f} against {ppl('RTN', 4, 128, 'jargon'):.2f} on the Jargon File)")


def test_the_gptq_notebook_states_the_decoder_cells():
    f = lambda v, b, g=0, t="novel": f"{ppl(v, b, g, t):.1f}"  # noqa: E731
    for text, name in (("novel", "the novel"), ("jargon", "the Jargon File")):
        says(GPTQ_NB, f"On {name} (fp32 {ppl('fp32', text=text):.2f}), 4 bits per channel: RTN {f('RTN', 4, 0, text)}, "
                      f"GPTQ {f('GPTQ', 4, 0, text)}, with act-order {f('GPTQ + act-order', 4, 0, text)}; 3 bits: "
                      f"{f('RTN', 3, 0, text)}, {f('GPTQ', 3, 0, text)}, {f('GPTQ + act-order', 3, 0, text)}; "
                      f"g128 at 4 bits: {f('RTN', 4, 128, text)}, {f('GPTQ', 4, 128, text)}, "
                      f"{f('GPTQ + act-order', 4, 128, text)}; at 3 bits: {f('RTN', 3, 128, text)}, "
                      f"{f('GPTQ', 3, 128, text)}, {f('GPTQ + act-order', 3, 128, text)}")
    worst8 = max(abs(ppl(v, 8, g, t) / ppl("fp32", text=t) - 1) for v in VARIANTS for g in (0, 128) for t in TEXTS)
    says(GPTQ_NB, f"At 8 bits every method is within {100 * worst8 + 0.05:.1f} % of fp32 on both texts")


def test_share_of_rtn_damage_that_gptq_removes():
    shares = {(v, g, t): removed(v, 4, g, t) for v in ("GPTQ", "GPTQ + act-order") for g in (0, 128) for t in TEXTS}
    assert all(removed(v, 3, 0, t) > 0.5 for v in ("GPTQ", "GPTQ + act-order") for t in TEXTS)  # "most of the collapse"
    fmt = lambda v, g: f"{100 * shares[v, g, 'novel']:.0f} % / {100 * shares[v, g, 'jargon']:.0f} %"  # noqa: E731
    says(RESULTS, f"GPTQ with act-order removes {fmt('GPTQ + act-order', 0)} of RTN's 4-bit per-channel perplexity "
                 f"increase (novel / Jargon File; without act-order {fmt('GPTQ', 0)}; ANCHORS: about 60 % on OPT-125M)",
         "and most of its 3-bit collapse")
    says(GPTQ_NB, f"removes {fmt('GPTQ + act-order', 0)} of RTN's perplexity increase per channel at 4 bits "
                  f"(novel / Jargon File) and {fmt('GPTQ + act-order', 128)} with g128")


def test_quantized_bytes():
    c = cell("smollm2-135m", "GPTQ + act-order", 4, 0)
    g = cell("smollm2-135m", "GPTQ + act-order", 4, 128)
    before, after, grouped = c.linear_bytes_before / 1e6, c.linear_bytes_after / 1e6, g.linear_bytes_after / 1e6
    params = c.linear_bytes_before / 4
    extra_bits = 8 * (g.linear_bytes_after - c.linear_bytes_after) / params
    plain = cell("smollm2-135m", "GPTQ", 4, 128)
    assert plain.linear_bytes_after == g.linear_bytes_after  # static groups: act-order stores no column map
    says(RESULTS, f"the quantized layers take {after:.1f} MB instead of {before:.1f} MB")
    says(GPTQ_NB, f"shrink from {before:.1f} MB to {after:.1f} MB at 4 bits per channel ({before / after:.1f}×; "
                  f"{grouped:.1f} MB with g128, whose float16 scales and packed zeros cost {extra_bits:.2f} bit per weight)",
         f"the model from {c.bytes_before / 1e6:.0f} MB to {c.bytes_after / 1e6:.0f} MB")


def test_the_task_model_barely_moves_under_quantization():
    r = table("gptq_table")
    q = r[(r.model_name == "minilm-l6-tweets") & (r.method != "fp32")]
    base = float(cell("minilm-l6-tweets", "fp32").test_accuracy)
    se = (base * (1 - base) / int(q.eval_examples.iloc[0])) ** 0.5
    outside = q[(q.test_accuracy - base).abs() > se]
    says(GPTQ_NB, f"{span(q.test_accuracy, '{:.1f}')} % against {100 * base:.2f} % at every setting",
         f"±{100 * se:.1f} % standard error of 2,000 test tweets")
    for row in outside.itertuples():  # every setting outside one standard error is named
        grid = "per-channel" if row.group_size == 0 else f"g{row.group_size}"
        name = row.method.upper() + (" with act-order" if row.method == "gptq" and row.act_order else "")
        says(GPTQ_NB, f"{grid} {int(row.bits)}-bit {name} ({pct(row.test_accuracy)} %)")
    assert len(outside) <= 2
    says(RESULTS, f"The task model's accuracy stays within {100 * (q.test_accuracy - base).abs().max():.2f} points of fp32 "
                 f"at every setting (standard error of 2,000 tweets: ±{100 * se:.1f} %)")


def test_whole_decoder_gptq_time():
    r = table("gptq_table")
    gptq = r[(r.model_name == "smollm2-135m") & (r.method == "gptq")]
    rtn = r[(r.model_name == "smollm2-135m") & (r.method == "rtn")].seconds
    assert rtn.max() < 0.05 * gptq.seconds.min()
    phases = gptq[[f"seconds_{p}" for p in ("capture", "hessians", "solves", "packing", "rerun")]].mean()
    says(GPTQ_NB, f"GPTQ takes {span(gptq.seconds, '{:.0f}', 1)} s for the whole decoder on one CPU thread",
         f"RTN {span(rtn, '{:.0f}', 1)} s",
         "of which, on average, " + ", ".join(f"{p.removeprefix('seconds_')} {v:.0f} s" for p, v in phases.items()))


def test_one_layer_errors():
    t = table("quantization", "one_layer_errors").set_index(["bits", "grid", "method"]).output_error
    nb = "notebooks/05_quantization.ipynb"
    for bits in (8, 4, 3):
        grids = [g for g in t.index.get_level_values(1).unique() if g.startswith(f"{bits}-bit")]
        pc, g128 = sorted(grids, key=lambda g: "g128" in g)
        assert t[bits, g128, "RTN"] < t[bits, pc, "RTN"]
        for grid in (pc, g128):
            assert t[bits, grid, "GPTQ + act-order"] < t[bits, grid, "GPTQ"] < t[bits, grid, "RTN"]
    ratios = [t[b, g, "GPTQ"] / t[b, g, "RTN"] for b, g, m in t.index if m == "RTN"]
    assert max(ratios) - min(ratios) < 0.1
    gains = [1 - t[b, g, "GPTQ + act-order"] / t[b, g, "GPTQ"] for b, g, m in t.index if m == "RTN"]
    says(nb, f"(block 0 `gate_proj`, held-out output error {t[4, '4-bit asym g128', 'RTN']:.3f} against "
             f"{t[4, '4-bit asym per-channel', 'RTN']:.3f} at 4 bits)",
         f"GPTQ has about {100 * sum(ratios) / len(ratios):.0f} % of RTN's output error on that layer at every setting "
         f"(4-bit per channel: {t[4, '4-bit asym per-channel', 'GPTQ']:.3f} against {t[4, '4-bit asym per-channel', 'RTN']:.3f}; "
         f"3-bit: {t[3, '3-bit asym per-channel', 'GPTQ']:.3f} against {t[3, '3-bit asym per-channel', 'RTN']:.3f})",
         f"act-order lowers it a further {span(gains)} %")


def test_whole_model_gptq_against_rtn():
    nb = "notebooks/05_quantization.ipynb"
    layers = table("quantization", "layer_errors")
    wide = layers.pivot_table(index="path", columns="method", values="output_error")
    assert (wide.gptq < wide.rtn).all() and len(wide) == 210
    share = float(table("quantization").share_layers_gptq_better.iloc[0])
    assert share == 1.0
    v = layers[layers.type == "v_proj"].groupby("method").output_error.mean()
    w = table("quantization", "whole_model").set_index("method")
    assert w.perplexity.gptq < w.perplexity.rtn and w.bytes.gptq == w.bytes.rtn
    says(nb, f"every one of the {len(wide)} layers (per layer type, e.g. `v_proj` {v.gptq:.3f} against {v.rtn:.3f}) "
             f"and perplexity {w.perplexity.gptq:.2f} against RTN's {w.perplexity.rtn:.2f} (fp32 {w.perplexity.fp32:.2f}, "
             f"first 4,096 held-out tokens), at the same {w.bytes.gptq / 1e6:.0f} MB")


def test_calibration_domain_verdict():
    nb = "notebooks/05_quantization.ipynb"
    d = table("quantization", "calibration_domain").pivot(index="calibration", columns="test", values="perplexity")
    rem = 1 - (d - d.loc["fp32"]) / (d.loc["RTN"] - d.loc["fp32"])
    a, j, m = (rem.loc[f"GPTQ on {s}"] for s in ("austen", "jargon", "mix"))
    assert a.novel > m.novel > j.novel > 0 and j.jargon > m.jargon > a.jargon > 0  # in-domain best, mix between
    assert (d.drop(index=["fp32", "RTN"]) < d.loc["RTN"]).all().all()
    p = lambda x: f"{100 * x:.0f} %"  # noqa: E731
    says(nb, f"GPTQ removes {p(a.novel)} of RTN's perplexity increase on the novel when calibrated on the novels, "
             f"{p(j.novel)} when calibrated on the Jargon File; on the Jargon File {p(j.jargon)} when calibrated on it, "
             f"{p(a.jargon)} when calibrated on the novels",
         f"The mix (half of the segments from each) removes {p(m.novel)} / {p(m.jargon)} (novel / Jargon File), "
         f"within {round(100 * a.novel) - round(100 * m.novel)} and {round(100 * j.jargon) - round(100 * m.jargon)} "
         f"points of calibrating on the "
         f"test text's own kind")
    assert max(j.novel / a.novel, a.jargon / j.jargon) < 0.6  # "little more than half of its gain"
    assert min(j.novel / a.novel, a.jargon / j.jargon) > 0.5


def parity_table() -> pd.DataFrame:
    """Per setting: draws, mean and std of perplexity and mean CPU seconds of tcomp and the reference."""
    runs = pd.read_csv(ROOT / "benchmarks" / "results" / "gptq_parity.csv")
    runs = runs[runs.impl.isin(["tcomp", "reference"])]
    return runs.groupby(["setting", "impl"], sort=False).agg(
        draws=("perplexity", "size"), mean=("perplexity", "mean"), std=("perplexity", "std"),
        cpu=("cpu_seconds", "mean")).unstack("impl")


def test_parity_with_the_reference_implementation():
    nb = "notebooks/05_quantization.ipynb"
    t = parity_table()
    assert len(t) == 5 and (t["draws"] == 3).all().all()
    rel = 100 * (t["mean", "tcomp"] / t["mean", "reference"] - 1)
    cells = "; ".join(f"{setting} {t.loc[setting, ('mean', 'tcomp')]:.2f} ± {t.loc[setting, ('std', 'tcomp')]:.2f} "
                      f"against {t.loc[setting, ('mean', 'reference')]:.2f} ± {t.loc[setting, ('std', 'reference')]:.2f} "
                      f"({rel[setting]:+.1f} %)" for setting in t.index)
    runs = pd.read_csv(ROOT / "benchmarks" / "results" / "gptq_parity.csv")
    cpu = runs[runs.impl.isin(["tcomp", "reference"])].groupby("impl").cpu_seconds.mean()
    says(nb, cells, f"{cpu.tcomp:.0f} CPU seconds against {cpu.reference:.0f} (mean of the 15 runs of each, "
                    f"{cpu.tcomp / cpu.reference:.2f}×)")
    assert cpu.tcomp < cpu.reference
    bench = pd.read_csv(ROOT / "benchmarks" / "results" / "gptq_time.csv")
    two = bench[(bench.method == "gptq") & (bench.grid == "4-bit asym per-channel") & (bench.act_order.astype(str) == "True")]
    says(GPTQ_NB, f"about {cpu.tcomp:.0f} CPU seconds on one thread (the parity runs of `05_quantization`, where the "
                  f"authors' implementation takes {cpu.reference:.0f}) and {two.seconds.iloc[0]:.0f} s on two (`make bench`)")
    says(RESULTS, f"our mean perplexity is {rel.min():+.1f} % to {rel.max():+.1f} % of theirs (above it with groups of "
                 f"128), in {cpu.tcomp / cpu.reference:.2f}× their CPU time")
    assert rel["4-bit per channel act-order"] < 0 and rel["3-bit per channel"] < 0 and round(rel["4-bit per channel"], 1) == 0.5
    gap = (t["mean", "tcomp"] - t["mean", "reference"]) / t["std"].max(axis=1)  # in standard deviations of the draws
    assert rel["4-bit g128"] > 0.5 and rel["3-bit g128"] > 0.5 and gap["3-bit g128"] < 1 and 1 < gap["4-bit g128"] < 2


# ---- baselines and the factorization notebooks ------------------------------------------------

def test_baselines_ordering_and_embedding_share():
    b = table("baselines").iloc[0]
    assert b.task_model_test_accuracy > b.frozen_probe_test_accuracy > b.majority_test_accuracy
    by_role = table("baselines", "by_role")
    emb = by_role[(by_role.model == "minilm-l6 (base)") & (by_role.role == "embeddings")]["params_%"].iloc[0]
    says("notebooks/00_baselines.ipynb", f"the word embeddings hold about {emb:.0f} % of the parameters")
    says(RESULTS, f"(one epoch over {19_812:,} tweets")  # the recipe's training split, stated once


def test_svd_notebook_claims():
    nb = "notebooks/02_svd.ipynb"
    kept = table("svd", "energy_kept")
    at3, at10 = kept[kept.ratio == 3], kept[kept.ratio == 10]
    says(nb, f"at ratio 3 every role keeps only {span(at3.energy_kept)} % of its energy (relative weight error "
             f"{span(at3.frobenius_error, '{:.2f}', 1)}), at ratio 10 only {span(at10.energy_kept)} %")
    e = table("svd", "svd_errors").set_index(["method", "ratio"])
    sep, cat, asvd, fw = "svd (separated)", "svd (concatenated)", "asvd (separated)", "fwsvd (separated)"
    assert all(e.weight_error[cat, c] > e.weight_error[sep, c] for c in RATIOS)
    assert all(e.output_error[cat, c] > e.output_error[sep, c] for c in (2, 3, 10))
    assert e.output_error[cat, 25] < e.output_error[sep, 25]
    assert all(e.output_error[asvd, c] < e.output_error[sep, c] for c in RATIOS)
    assert all(e.output_error[fw, c] > e.output_error[sep, c] for c in RATIOS)
    o, w = lambda m, c: f"{e.output_error[m, c]:.2f}", lambda m, c: f"{e.weight_error[m, c]:.2f}"  # noqa: E731
    says(nb, f"({o(cat, 2)} against {o(sep, 2)} at ratio 2; only at ratio 25 is it lower, {o(cat, 25)} against {o(sep, 25)})",
         f"({w(asvd, 2)} against {w(sep, 2)} at ratio 2)",
         f"({o(asvd, 2)} against {o(sep, 2)} at ratio 2, {o(asvd, 3)} against {o(sep, 3)} at ratio 3)",
         f"({o(fw, 2)} against {o(sep, 2)} at ratio 2)")
    ratio = float(table("svd").output_error_asvd_vs_svd.iloc[0])
    assert ratio < 1


def test_tensor_notebook_claims():
    nb = "notebooks/03_tensor_factorizations.ipynb"
    u = table("tensor_factorizations", "unfolding_energy")
    qkv = u[u.role.isin(["query", "key", "value"])]
    shared = qkv[qkv["mode"].isin(["rows (out)", "columns (in)"])].energy
    own = qkv[qkv["mode"] == "one layer"].energy
    layers = u[u["mode"] == "layers"].energy
    assert shared.max() < own.min() and layers.min() > 2 / 6
    says(nb, f"keeps {span(shared)} % of the stack's energy, against {span(own)} % for each layer's own basis",
         f"two of the six layer components keep {span(layers)} %")
    t = table("tensor_factorizations", "tensor_errors")
    err = t.set_index(["group", "ratio", "method"]).sort_index().rel_error
    for c in RATIOS:
        ffn = err["ffn", c]
        worst_ffn = "tucker (concatenated)" if c == 2 else "kronecker (separated)"  # the one exception, stated
        assert ffn.idxmin() == "svd (separated)" and ffn.idxmax() == worst_ffn, c
        if c == 2:
            assert ffn.drop(worst_ffn).idxmax() == "kronecker (separated)"
        assert err["qkv", c].idxmax() == "kronecker (separated)"
        assert err["qkv", c].idxmin() == ("svd (separated)" if c <= 3 else "tucker (qkv)")
        assert all(err[g, c, "svd (separated)"] < err[g, c, "falcon (separated)"] < err[g, c, "kronecker (separated)"]
                   for g in ("ffn", "qkv"))  # "FALCON between"
    says(nb, f"Kronecker sums fit worst at every ratio but one (FFN at ×2, where the Tucker stack is worse: "
             f"{err['ffn', 2, 'tucker (concatenated)']:.3f} against {err['ffn', 2, 'kronecker (separated)']:.3f}), "
             f"FALCON between")
    fmt = lambda c: f"{err['qkv', c, 'tucker (qkv)']:.3f} against {err['qkv', c, 'svd (separated)']:.3f} at ×{c}"  # noqa: E731
    says(nb, f"({fmt(10)}, {fmt(25)})")
    macs = t[t.ratio == 2].set_index(["group", "method"]).macs_ratio
    factored = t[t.ratio == 2].set_index(["group", "method"]).factored_macs_ratio
    assert macs["ffn", "svd (separated)"] > 1.9 and macs["ffn", "falcon (separated)"] > 1.9
    kron = t[t.method == "kronecker (separated)"]
    # dearer than dense up to x10, where it runs as its matrix (1x); factored beyond
    assert (kron[kron.ratio <= 10].factored_macs_ratio < 1).all() and (kron[kron.ratio <= 10].macs_ratio == 1).all()
    assert (kron[kron.ratio == 25].factored_macs_ratio > 1).all()
    says(nb, f"At ×2 the factored Kronecker sum would cost {1 / factored['qkv', 'kronecker (separated)']:.0f}× (Q/K/V) "
             f"and {1 / factored['ffn', 'kronecker (separated)']:.0f}× (FFN) the dense MACs, and still more than "
             f"dense up to ×10", f"the FFN Tucker stack costs {1 / macs['ffn', 'tucker (concatenated)']:.0f}×")
    assert 0.9 < 1 / macs["ffn", "svd (concatenated)"] < 1.1  # "about as much as dense"
    k = table("tensor_factorizations", "kronecker_refinement").set_index("ratio")
    assert (k.refined < k.nearest_kp).all()
    says(nb, f"({k.nearest_kp[2]:.2f} → {k.refined[2]:.2f} at ×2, {k.nearest_kp[25]:.2f} → {k.refined[25]:.2f} at ×25)")


@pytest.mark.parametrize("csv, column, row, phrase", [
    ("ffn_latency", "speedup", dict(method="svd", ratio=2), "| {median_ms:.1f} ms | **{speedup:.2f}×** |"),
    ("int8_latency", "speedup", dict(model="int8 dynamic"), "| {median_ms:.0f} ms | **{speedup:.2f}×** |"),
    ("training_step", "speedup", dict(model="minilm-l6 layers3 student", optimizer="AdamW fused"),
     "| {step_ms:.0f} ms (optimizer {optimizer_ms:.0f}) | **{speedup:.2f}×** |"),
])
def test_benchmark_numbers_in_the_readme(csv, column, row, phrase):
    bench = pd.read_csv(ROOT / "benchmarks" / "results" / f"{csv}.csv")
    match = bench.loc[(bench[list(row)] == pd.Series(row)).all(axis=1)].iloc[0]
    assert match[column] > 1
    says(RESULTS, phrase.format(**match))


def test_the_sweeps_malloc_setting_in_the_readme():
    """Dask's nanny's MALLOC_TRIM_THRESHOLD_ slows a training step; the sweep unsets it (tests/test_sweep.py)."""
    t = pd.read_csv(ROOT / "benchmarks" / "results" / "sweep_malloc.csv")
    default, trim = (t[t.setting.str.startswith(p)] for p in ("glibc", "MALLOC_TRIM"))
    assert len(default) == len(trim) == 2 and trim.step_ms.min() > default.step_ms.max()
    assert trim.page_faults_per_step.min() > 2 * default.page_faults_per_step.max()
    says(RESULTS, f"| {default.step_ms.mean():.0f} ms ({default.page_faults_per_step.mean() / 1e3:.0f} k page faults) | "
                  f"{trim.step_ms.mean():.0f} ms ({trim.page_faults_per_step.mean() / 1e3:.0f} k) | "
                  f"**{trim.step_ms.mean() / default.step_ms.mean():.2f}×** |")


def test_factorized_ffn_latency_in_the_readme():
    t = pd.read_csv(ROOT / "benchmarks" / "results" / "ffn_latency.csv")
    row = lambda m, mode, c: t[(t.method == m) & (t["mode"].fillna("") == mode) & (t.ratio == c)].iloc[0]  # noqa: E731
    dense = t[t.method == "dense"].iloc[0]
    svd = [row("svd", "separated", c) for c in (2, 3, 10)]
    fal, tuc, kron = row("falcon", "separated", 2), row("tucker", "concatenated", 2), row("kronecker", "separated", 2)
    assert kron.macs_ratio == 1 and 0.9 < kron.speedup < 1.1  # run as its matrix: the dense time
    says(RESULTS, f"| {dense.median_ms:.1f} ms | {svd[1].median_ms:.1f} / {svd[2].median_ms:.1f} ms | "
                 f"{svd[1].speedup:.2f}× / {svd[2].speedup:.2f}× |",
         f"| {dense.median_ms:.1f} ms | {fal.median_ms:.1f} / {tuc.median_ms:.1f} / {kron.median_ms:.1f} ms | "
         f"{fal.speedup:.2f}× / {tuc.speedup:.2f}× / {kron.speedup:.2f}× |",
         f"(SVD ratio 2: {svd[0].macs_ratio:.2f}× fewer MACs, {svd[0].speedup:.2f}× faster")
    c = pd.read_csv(ROOT / "benchmarks" / "results" / "compression_time.csv")
    s_ = c[c.method == "svd"].seconds
    says(RESULTS, f"(SVD {s_.min():.1f}–{s_.max():.1f} s for all 6 layers, Tucker up to "
                 f"{c[c.method == 'tucker'].seconds.max():.0f} s)")


def test_quantized_inference_in_the_readme():
    t = pd.read_csv(ROOT / "benchmarks" / "results" / "model_inference.csv").set_index("variant")
    cached = t.loc[["weight-only 8-bit, cache", "weight-only 4-bit, cache"]]
    assert (cached[["vs_fp32_512", "vs_fp32_16"]] <= 1.2).all().all()  # within 1.2x of fp32 with the cache
    fp, q, nc, i8 = (t.loc[v] for v in ("fp32", "weight-only 4-bit, cache", "weight-only 4-bit, no cache", "int8 dynamic"))
    sp = lambda a, b: f"{a / b:.2f}×"  # noqa: E731  speed-up: fp32 time / compressed time
    says(RESULTS, f"| {fp.ms_512_tokens:.0f} ms | {q.ms_512_tokens:.0f} ms | {sp(fp.ms_512_tokens, q.ms_512_tokens)} |",
         f"| {fp.ms_16_tokens:.0f} / {fp.ms_512_tokens:.0f} / {fp.ms_16_tokens:.0f} ms | {q.ms_16_tokens:.0f} / "
         f"{nc.ms_512_tokens:,.0f} / {nc.ms_16_tokens:.0f} ms | {sp(fp.ms_16_tokens, q.ms_16_tokens)} / "
         f"{sp(fp.ms_512_tokens, nc.ms_512_tokens)} / {sp(fp.ms_16_tokens, nc.ms_16_tokens)} |",
         f"| {fp.ms_512_tokens:.0f} ms | {i8.ms_512_tokens:.0f} ms | **{sp(fp.ms_512_tokens, i8.ms_512_tokens)}** |",
         f"fp32 {fp.rss_mb:,.0f} / {fp.peak_mb:,.0f}; weight-only 4-bit {q.rss_mb:,.0f} / {q.peak_mb:,.0f} with the cache "
         f"({q.cache_mb:.0f} MB of de-quantized float32 weights held next to the {q.stored_mb:.0f} MB stored) and "
         f"{nc.rss_mb:,.0f} / {nc.peak_mb:,.0f} without it",
         f"at {nc.vs_fp32_512:.1f}× (512 tokens) to {nc.vs_fp32_16:.1f}× (16 tokens) the time")


def test_gptq_phases_in_the_readme():
    t = pd.read_csv(ROOT / "benchmarks" / "results" / "gptq_time.csv")
    g = t[(t.method == "gptq") & (t.grid == "4-bit asym per-channel") & (t.act_order.astype(str) == "True")].iloc[0]
    phases = ("capture", "hessians", "solves", "packing", "rerun")
    assert abs(sum(g[p] for p in phases) - g.seconds) < 0.05 * g.seconds  # the phases account for the time
    says(RESULTS, f"| {g.seconds:.0f} s: capture {g.capture:.0f}, Hessians {g.hessians:.0f}, solves {g.solves:.0f}, "
                 f"packing {g.packing:.0f}, rerun {g.rerun:.0f} s (2 threads) |")


def test_autoencoder_training_time_in_the_readme():
    t = pd.read_csv(ROOT / "benchmarks" / "results" / "ae_training_time.csv")
    sep = t[(t["mode"] == "separated") & (t.role != "embeddings")]
    stacked = t[(t["mode"] == "concatenated") & (t.ratio == 3)].set_index("role")
    emb = t[(t.role == "embeddings") & (t.ratio == 3)].iloc[0]
    limit = int(np.ceil(sep.seconds_per_module.max()))
    assert stacked.seconds.idxmax() == "ffn_in" and (t.epochs == 30).all()
    says(RESULTS, f"under {limit} s per separated module, up to {stacked.seconds.max():.0f} s for the FFN-in rows of all "
                 f"6 layers stacked at ×3 and {emb.seconds:.0f} s for the embedding table at ×3")


def test_autoencoder_seeds_trained_together_in_the_readme():
    t = pd.read_csv(ROOT / "benchmarks" / "results" / "ae_training_time.csv").dropna(subset=["seconds_3_seeds_together"])
    speed = t.seconds_3_seeds_apart / t.seconds_3_seeds_together
    linear, table_ = speed[t.role != "embeddings"], speed[t.role == "embeddings"]
    assert len(linear) == 6 and (linear > 1).all() and (t.ratio == 10).all()
    assert len(table_) == 1 and 0.8 < table_.iloc[0] < 1.2  # compute-bound: batching the seeds buys nothing
    says(RESULTS, f"at ×10 that is {linear.min():.2f}–{linear.max():.2f}× faster than one seed after another on the "
                 f"linear layers", f"and {table_.iloc[0]:.2f}× (no gain) on the compute-bound embedding table")


# ---- the autoencoder notebook (07, on the three-class task) ---------------------------------------

def ae_table(name: str) -> pd.DataFrame:
    """A table of notebook 07's committed point (the binary task's run stays in results.csv as a retired row; its
    record-table rows leave at the next gather)."""
    key = table("autoencoder").key.iloc[0]
    frame = table("autoencoder", name)
    return frame[frame.key == key]


def test_autoencoder_notebook_errors_against_svd():
    nb = "notebooks/07_autoencoder.ipynb"
    assert table("autoencoder").model_name.iloc[0] == "minilm-l6-tweets3"
    c = ae_table("ae_vs_svd").groupby(["role", "ratio", "method"])[["weight_error", "output_error"]].mean()
    for (role, ratio), g in c.groupby(level=["role", "ratio"]):
        assert (g.loc[role, ratio, "ae"] > g.loc[role, ratio, "svd"]).all(), (role, ratio)  # worse in both errors
    over_one = sorted(map(tuple, c.xs("ae", level="method").query("weight_error > 1").index))
    assert over_one == [("ffn_out", 10), ("query", 3), ("query", 10)]
    f = lambda role, col: f"{c.loc[role, 3, 'ae'][col]:.3f} against {c.loc[role, 3, 'svd'][col]:.3f}"  # noqa: E731
    says(nb, f"weight error {f('query', 'weight_error')} (query), {f('ffn_in', 'weight_error')} (FFN in), "
             f"{f('ffn_out', 'weight_error')} (FFN out); output error on test tweets' activations "
             f"{f('query', 'output_error')}, {f('ffn_in', 'output_error')}, {f('ffn_out', 'output_error')}",
         "on the query at both ratios and on the FFN out at ×10")


def test_autoencoder_notebook_ablation_paired():
    nb = "notebooks/07_autoencoder.ipynb"
    a = ae_table("ae_ablation").set_index("variant")
    assert (a.metric == "macro_f1").all() and (a.drop(index="svd").seeds == 3).all()
    seed_name = "seed design (mixed loss, norms, [2x,4x])"
    p = ae_table("ae_ablation_paired").set_index(["variant", "against"])
    v = lambda name, rival="svd": p.loc[(name, rival)]  # noqa: E731
    svd, seed, lin = a.loc["svd"], a.loc[seed_name], a.loc["linear decoder (no hidden layer)"]
    deep, no_norm = a.loc["deeper decoder [2x,4x,8x]"], a.loc["no norm re-scaling"]
    cos, rmse = a.loc["cosine loss only"], a.loc["RMSE loss only"]
    assert v(seed_name).verdict == "below" and v(lin.name).verdict == "≈" and v(lin.name, seed_name).verdict == "above"
    assert v(deep.name).verdict == v(deep.name, seed_name).verdict == "below"
    assert v(cos.name, seed_name).verdict == v(rmse.name, seed_name).verdict == "≈"
    # the same cell as notebook 04's table: Q/K/V at x3, 3 seeds, the same training
    assert seed.test_score == pytest.approx(offline_row("ae", "separated", "qkv", 3).test_macro_f1, abs=1e-9)
    # without norm re-scaling every seed predicts one class for every tweet: that class's F1 over 3 classes
    from tcomp_utils.majority import committed_test_labels
    share = np.bincount(committed_test_labels("tweets3"))[1] / len(committed_test_labels("tweets3"))
    assert set(no_norm.score_seeds.split(";")) == {f"{2 * share / (1 + share) / 3:.4f}"}
    assert no_norm.test_accuracy == pytest.approx(share) and 100 * no_norm.test_score < 100 / 3
    iv = lambda r: f"{pct(r.test_score)} % ({pct(r.score_lo)}–{pct(r.score_hi)})"  # noqa: E731
    latent = lambda r: int(r.latent.split()[-1])  # noqa: E731
    seeds = lambda r: [100 * float(x) for x in r.score_seeds.split(";")]  # noqa: E731
    spread = max(max(seeds(r)) - min(seeds(r)) for r in a.drop(index="svd").itertuples())
    says(nb, f"SVD keeps {iv(svd)} test macro-F1, the seed's design {iv(seed)} with a latent size of {latent(seed)} "
             f"(seeds {', '.join(f'{x:.1f}' for x in seeds(seed)[:-1])} and {seeds(seed)[-1]:.1f} %; against SVD "
             f"{_paired_text(v(seed_name))} points",
         f"(no hidden layer, latent size {latent(lin)}) the autoencoder keeps {iv(lin)}: not distinguishable from "
         f"SVD ({_paired_text(v(lin.name))}) and above the seed's design ({_paired_text(v(lin.name, seed_name))})",
         f"([2x, 4x, 8x], latent size {latent(deep)}) keeps {pct(deep.test_score)} %, below both",
         f"(neutral: macro-F1 {pct(no_norm.test_score)} %, below no skill)",
         f"{pct(cos.test_score)} % with the cosine loss only, {pct(rmse.test_score)} % with RMSE only, "
         f"{pct(seed.test_score)} % mixed; against the seed's design {_paired_text(v(cos.name, seed_name))} and "
         f"{_paired_text(v(rmse.name, seed_name))}", f"spread (up to {spread:.0f} points within one variant)")


def test_autoencoder_curves_end_on_their_plateau():
    """Issue 37: the curves run until the early-stopping rule fires, well before the cap; replaying the rule
    on the recorded held-out errors stops each curve exactly at its last epoch."""
    nb = "notebooks/07_autoencoder.ipynb"
    point = table("autoencoder").iloc[0]
    patience, cap = int(point.ae_patience), int(point.ae_epochs)
    h = ae_table("ae_history")
    assert h.variant.nunique() == 3 and h.kept.sum() == 3
    first, last, runs = [], [], []
    for _, g in h.groupby("variant"):
        e = g.sort_values("epoch").held_out_error.to_numpy()
        best, stale, stop = np.inf, 0, None
        for i, err in enumerate(e):  # autoencoder_training's rule: a new best by at least 0.1 % resets the count
            stale = 0 if err < best * (1 - 1e-3) else stale + 1
            best = min(best, err)
            if stale >= patience:
                stop = i
                break
        assert stop == len(e) - 1 < cap - 1  # stopped by the rule, at the recorded end, before the cap
        first.append(100 * (e[0] - e[10]) / e[0])
        last.append(100 * (e[-1 - patience] - e[-1]) / e[-1 - patience])
        runs.append(len(e))
    says(nb, f"stop by the early-stopping rule after {', '.join(map(str, sorted(runs)[:-1]))} and {max(runs)} "
             f"epochs, well before the {cap}-epoch cap; the held-out error fell by {min(first):.0f}–{max(first):.0f} % "
             f"over the first 10 epochs and by {min(last):.2f}–{max(last):.2f} % over the last 10")
    t = ae_table("ae_seconds_per_module")
    q = t[t.role == "query"].seconds
    assert t.seconds.idxmax() == t[(t.role == "ffn_in") & (t.ratio == 3)].index[0]
    says(nb, f"takes {q.min():.1f}–{q.max():.1f} s for a 384 × 384 query matrix and up to {t.seconds.max():.1f} s "
             f"for the FFN-in matrix at ×3 on one thread")
    assert int(point.ae_threads) == 1


# ---- structured pruning (issue 15) -------------------------------------------------------------

def test_the_three_class_task():
    """Issue 37's task: the task model's scores from the dense cell of the structured-pruning table, ID against
    magnitude at mu 0.25 (first draw) read from the paired interval over the same test tweets, the no-skill
    level, and the binary task's numbers it replaces."""
    from tcomp_utils import metrics, task_models
    from tcomp_utils.majority import chance_macro_f1, majority_macro_f1
    r = table("structured_pruning_encoder")
    cell = lambda m, mu: r[(r.method == m) & (r.mu == mu) & (r.calibration_seed.fillna(0) == 0)  # noqa: E731
                           & (r.calibration_examples.fillna(0) < 2000)].iloc[0]
    dense, id25, mag25 = cell("dense", 1.0), cell("id", 0.25), cell("magnitude", 0.25)
    assert dense.test_examples == 2000 and dense.model_name == "minilm-l6-tweets3"
    labels = metrics.decode_predictions(dense.test_labels)
    preds = lambda row: metrics.decode_predictions(row.test_predictions)  # noqa: E731
    assert metrics.macro_f1(labels, preds(dense)) == pytest.approx(dense.test_macro_f1)
    d25 = metrics.paired_interval(labels, preds(id25), preds(mag25), "macro_f1")
    assert d25.verdict == "above"
    pts = lambda x: f"{100 * x:.1f}"  # noqa: E731
    says(RESULTS, f"at μ = 0.25 ID keeps {pct(id25.test_macro_f1)} % (first calibration draw) and magnitude order "
                  f"{pct(mag25.test_macro_f1)} %, a paired difference of +{pts(d25.difference)} points "
                  f"[{pts(d25.lo)}, {pts(d25.hi)}]")
    binary = table("structured_pruning_encoder_binary")
    acc = lambda m, mu: binary[(binary.method == m) & (binary.mu == mu)].test_accuracy.iloc[0]  # noqa: E731
    recipe = task_models.RECIPES["minilm-l6-tweets3"]
    assert (recipe.task, recipe.epochs, recipe.train_examples) == ("tweets3", 1, None)
    says(RESULTS, f"random structured pruning at μ = 0.9 keeps {pct(acc('random', 0.9))} %",
         f"on the binary task ID at μ = 0.5 lost {100 * (acc('dense', 1.0) - acc('id', 0.5)):.1f} points of accuracy",
         f"for one epoch, {math.ceil(34197 / recipe.batch_size):,} steps over the 34,197 training")
    says(RESULTS, f"41.3 % of the 2,000 test tweets, whose macro-F1 is {majority_macro_f1('tweets3'):.1f} %",
         f"**{chance_macro_f1('tweets3'):.1f} % is the no-skill line of its figures**",
         f"test macro-F1 {pct(dense.test_macro_f1)} % ({pct(dense.test_macro_f1_lo)}–{pct(dense.test_macro_f1_hi)})**, "
         f"accuracy {pct(dense.test_accuracy)} %, MCC {dense.test_mcc:.3f}, with {pct(dense.test_majority_share)} % of",
         f"the structured-pruning table (complete: {len(r)} cells)")


def test_structured_pruning_encoder_claims():
    """Seed 001 on the three-class model: every verdict read from paired intervals over the same test tweets and
    the calibration draws (ID against Kwon's masks and against the dense model; Kwon's masks on 2,000 tweets
    against 256 and against ID), the MAC budgets met, the times to prune, the complete grid's time."""
    from tcomp_utils.figures.pruning import _tweets3_cells, paired_differences
    from tcomp_utils.sweep import SweepSpec
    r = table("structured_pruning_encoder")
    assert len(r) == len(SweepSpec.load(ROOT / "papermill_runs" / "structured_pruning_encoder.yaml").points)
    cells = _tweets3_cells(r)
    pruned = cells[cells.method != "dense"]
    assert ((pruned.macs_ratio <= pruned.mu + 1e-9) & (pruned.macs_ratio >= pruned.mu - 0.01)).all()  # within 1 % under mu
    assert (pruned[pruned.variant.isin(["id", "fisher", "random"])].groupby(["variant", "mu"]).size() == 3).all()
    fmt = lambda d, m: f"{d.difference[m]:+.1f} [{d.lo[m]:+.1f}, {d.hi[m]:+.1f}]".replace("-", "−")  # noqa: E731
    mus = lambda xs: ", ".join(f"{m:g}" for m in xs)  # noqa: E731

    def split(a: str, b: str) -> tuple[list, list, pd.DataFrame]:
        """The mu where a is not distinguishable from b, where it differs (one switch, from the top), and all."""
        d = paired_differences(r, a, b).set_index("mu")
        same = sorted(d.index[d.verdict == "≈"], reverse=True)
        other = sorted(d.index[d.verdict != "≈"], reverse=True)
        assert len(d) == 8 and len(set(d.verdict[other])) <= 1 and (not same or not other or min(same) > max(other))
        return same, other, d
    same, above, vs_fisher = split("id", "fisher")
    assert set(vs_fisher.verdict[above]) == {"above"}
    kept, below, vs_dense = split("id", "dense")
    assert set(vs_dense.verdict[below]) == {"below"}
    big = paired_differences(r, "fisher-2k", "fisher").set_index("mu")
    big_same = sorted(big.index[big.verdict == "≈"], reverse=True)
    big_above = sorted(big.index[big.verdict == "above"], reverse=True)
    assert len(big_same) + len(big_above) == 8 and min(big_same) > max(big_above)
    id_big = paired_differences(r, "id", "fisher-2k").set_index("mu")
    ahead = sorted(id_big.index[id_big.verdict == "above"], reverse=True)
    assert (id_big.verdict[id_big.index < ahead[0]] == "above").all() and (id_big.verdict[id_big.index > ahead[0]] == "≈").all()
    mean = pruned.groupby(["variant", "mu"]).test_macro_f1.mean()
    secs = pruned.groupby("variant").prune_seconds.median()
    minutes = r.elapsed_s.sum() / 60
    assert minutes / 2 <= 120  # issue 37's target for a complete grid on 2 cores
    says(RESULTS,
         f"ID is ahead of Kwon's Fisher masks at every μ from {above[0]:g} down ({fmt(vs_fisher, above[0])} points at "
         f"μ = {above[0]:g}, {fmt(vs_fisher, 0.5)} at 0.5, {fmt(vs_fisher, 0.25)} at 0.25) and not distinguishable "
         f"from them at μ = {mus(same)}",
         f"ID is not distinguishable from the dense model at μ = {mus(kept)} and below it from μ = {below[0]:g} "
         f"({fmt(vs_dense, 0.5)} at μ = 0.5)",
         f"at μ = 0.25 it still keeps {pct(mean['id', 0.25])} % against the Fisher masks' {pct(mean['fisher', 0.25])} %",
         f"are not distinguishable from the same masks on 256 down to μ = {big_same[-1]:g} and ahead of them at "
         f"μ = {' and '.join(f'{m:g}' for m in big_above)} ({fmt(big, 0.25)} at 0.25), yet still behind ID from "
         f"μ = {ahead[0]:g} down",
         f"magnitude and random order fall to {pct(mean['magnitude', 0.5])} % and {pct(mean['random', 0.5])} % at μ = 0.5",
         f"Pruning took {secs['id']:.0f} s by ID, {secs['fisher']:.0f} s by the Fisher masks and {secs['fisher-2k']:.0f} s "
         "by the Fisher masks on 2,000 tweets",
         f"({len(r)} cells, {minutes:.0f} minutes of cell time, so about {minutes / 2:.0f} minutes on 2 cores")
    dense = float(cells[cells.method == "dense"].test_macro_f1.iloc[0])
    says("notebooks/09_structured_pruning_table.ipynb",
         f"magnitude and random order fall to {pct(mean['magnitude', 0.5])} % and {pct(mean['random', 0.5])} % at "
         f"μ = 0.5 (dense: {pct(dense)} %)",
         f"in the complete encoder grid ({len(r)} cells;",
         f"every μ from {above[0]:g} down ({fmt(vs_fisher, 0.25)} macro-F1 points at μ = 0.25) and not distinguishable "
         f"from the dense model down to μ = {kept[-1]:g}")


def test_structured_pruning_decoder_claims():
    r = table("structured_pruning_decoder")
    r = r.assign(gptq_bits=r.gptq_bits.astype(int))
    cell = lambda m, b: r[(r.method == m) & (r.gptq_bits == b)].set_index("mu")  # noqa: E731
    dense, dense4 = cell("dense", 0).iloc[0], cell("dense", 4).iloc[0]
    mus = [0.9, 0.8, 0.7, 0.6, 0.5]
    for bits in (0, 4):  # "ID is ahead of the Fisher masks at every mu on both texts, with and without GPTQ"
        for text in ("novel", "jargon"):
            assert (cell("id", bits).loc[mus, f"perplexity_{text}"] < cell("fisher", bits).loc[mus, f"perplexity_{text}"]).all()
    pruned = r[r.method != "dense"]
    assert ((pruned.macs_ratio <= pruned.mu + 1e-9) & (pruned.macs_ratio >= pruned.mu - 0.01)).all()
    assert (pruned.prune_seconds < 600).all()  # the issue's target for smollm2-135m: under 10 minutes
    idn, fin, id4 = cell("id", 0).perplexity_novel, cell("fisher", 0).perplexity_novel, cell("id", 4)
    mb = lambda x: f"{x / 1e6:.1f}"  # noqa: E731
    embedding_mb = 49152 * 576 * 4 / 1e6
    assert pruned.bytes_after.min() > embedding_mb * 1e6  # the embedding table stays whole in every cell
    secs = pruned.groupby("method").prune_seconds.median()
    says(RESULTS, f"(novel: {idn[0.9]:.1f} against {fin[0.9]:.1f} at μ = 0.9, {idn[0.5]:.1f} against {fin[0.5]:.1f} "
                 f"at μ = 0.5)",
         f"the novel's perplexity rises from {dense.perplexity_novel:.1f} to {idn[0.9]:.1f} at μ = 0.9 and to "
         f"{idn[0.5]:.1f} at μ = 0.5",
         f"at μ = 0.9 ({id4.perplexity_novel[0.9]:.1f} against {idn[0.9]:.1f}; dense {dense4.perplexity_novel:.1f} "
         f"against {dense.perplexity_novel:.1f})",
         f"embedding table ({embedding_mb:.0f} MB in float32)",
         f"from {mb(dense.bytes_after)} to {mb(dense4.bytes_after)} MB and pruning on top saves at most "
         f"{mb(dense4.bytes_after - id4.bytes_after.min())} MB more ({mb(id4.bytes_after[0.5])} MB at μ = 0.5)",
         f"Pruning took {secs['id']:.0f} s by ID and {secs['fisher']:.0f} s by the Fisher masks")


STRUCTURED_NB = "notebooks/08_structured_pruning.ipynb"


def test_structured_pruning_notebook_claims():
    check = table("structured_pruning", "id_check")
    cal, held = (check[check.split == s].set_index("kept").output_error for s in ("calibration", "held-out"))
    assert (held >= cal - 1e-9).all()  # held-out is never better than calibration, and "a little worse"
    half = 768
    alloc = table("structured_pruning", "allocation").set_index(["method", "mu"])
    a_id, a_fi = alloc.loc[("id", 0.5)], alloc.loc[("fisher", 0.5)]
    assert a_id.heads_kept < a_fi.heads_kept and a_id.neurons_kept > a_fi.neurons_kept
    scales = table("structured_pruning", "error_scales").set_index("error")
    assert (scales.loc["stream", ["perplexity_novel", "perplexity_jargon"]]
            < scales.loc["absolute", ["perplexity_novel", "perplexity_jargon"]]).all()
    lat = table("structured_pruning", "latency").set_index("mu")
    assert (lat.efficiency >= 0.8).all()  # the issue's target: speed-up >= 0.8 x the MAC reduction
    secs = alloc.seconds.groupby(level="method")
    assert secs.max()["id"] < 60  # the issue's target: minilm-l6 by ID under 60 s on 2 cores
    f = lambda x: f"{x:.1f}"  # noqa: E731
    v = {e: scales.loc[e, ["perplexity_novel_validation", "perplexity_jargon_validation"]] for e in scales.index}
    assert (v["stream"] < v["absolute"]).all()  # the default was chosen on the validation parts
    says(STRUCTURED_NB, "absolute errors give perplexity " + " on the novel and ".join(f(x) for x in v["absolute"])
         + " on the Jargon File, stream-relative ones " + " and ".join(f(x) for x in v["stream"])
         + " (dense " + " and ".join(f(x) for x in v["dense"]) + ")")
    says(STRUCTURED_NB,
         f"leaves a relative output error of {cal[half]:.3f} on the calibration tweets and {held[half]:.3f} on test tweets",
         f"At μ = 0.5 ID keeps {a_id.heads_kept:.0f} of 72 heads and {a_id.neurons_kept:,.0f} of 9,216 neurons, the "
         f"Fisher masks {a_fi.heads_kept:.0f} heads and {a_fi.neurons_kept:,.0f} neurons",
         f"absolute errors give perplexity {f(scales.perplexity_novel['absolute'])} on the novel and "
         f"{f(scales.perplexity_jargon['absolute'])} on the Jargon File, stream-relative ones "
         f"{f(scales.perplexity_novel['stream'])} and {f(scales.perplexity_jargon['stream'])} (dense "
         f"{f(scales.perplexity_novel['dense'])} and {f(scales.perplexity_jargon['dense'])})",
         f"runs {lat.speedup[0.5]:.2f}× faster at μ = 0.5 ({lat.mac_reduction[0.5]:.2f}× fewer MACs) and "
         f"{lat.speedup[0.4]:.2f}× faster at μ = 0.4 ({lat.mac_reduction[0.4]:.2f}×)",
         f"is {np.floor(100 * lat.efficiency.min()) / 100:.2f} or more at every μ",
         f"Pruning took {secs.min()['id']:.0f}–{secs.max()['id']:.0f} s by ID and "
         f"{secs.min()['fisher']:.0f}–{secs.max()['fisher']:.0f} s by the Fisher masks")
    from tcomp_utils.methods import structured  # its docstring cites the same comparison
    assert (f"perplexity {f(scales.perplexity_novel['absolute'])} against {f(scales.perplexity_novel['stream'])} with "
            f"``\"stream\"``, dense {f(scales.perplexity_novel['dense'])}") in " ".join(structured.__doc__.split())


def test_structured_pruning_benchmarks_in_the_readme():
    lat = pd.read_csv(ROOT / "benchmarks" / "results" / "structured_latency.csv").set_index("mu")
    t = pd.read_csv(ROOT / "benchmarks" / "results" / "structured_prune_time.csv")
    assert (lat.efficiency >= 0.8).all()  # the issue's target
    mus = [0.7, 0.5, 0.4]
    s = t.groupby("method").seconds
    assert s.max()["id"] < 60  # the issue's target: minilm-l6 by ID under 60 s on 2 cores
    says(RESULTS, f"μ = 0.7 / 0.5 / 0.4 ({' / '.join(f'{1 / lat.macs_ratio[m]:.2f}×' for m in mus)} fewer MACs) | "
                 f"{lat.median_ms[1.0]:.0f} ms | {' / '.join(f'{lat.median_ms[m]:.0f}' for m in mus)} ms | "
                 f"{' / '.join(f'{lat.speedup[m]:.2f}×' for m in mus)} |",
         f"| {s.min()['id']:.1f}–{s.max()['id']:.1f} s / {s.min()['fisher']:.1f}–{s.max()['fisher']:.1f} s |",
         f"MAC reduction {lat.efficiency[lat.index < 1].min():.2f}–{lat.efficiency[lat.index < 1].max():.2f} at every μ")


# ---- quantization-aware training of the translation model (issue 16) --------------------------

def bleu_interval(metric: str = "bleu") -> tuple[float, float]:
    """The embedded translation model's test score and its 95 % bootstrap half-width."""
    ci = pd.read_csv(ROOT / "benchmarks" / "results" / "translation_bleu_ci.csv")
    test = ci[(ci.split == "test") & (ci.metric == metric)].iloc[0]
    return float(test.score), float(test.ci95_halfwidth)


def _signed(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def _paired(r) -> str:
    return f"{_signed(r.test_bleu_diff)} [{_signed(r.test_bleu_diff_lo)}, {_signed(r.test_bleu_diff_hi)}]"


def qat_row(protocol: str, quantizer: str | None = None, bits: int | None = None, target: str | None = None,
            ptq: str | None = None) -> pd.Series:
    r = table("qat_table")
    ptq_ = r.ptq.fillna("signmag")
    match = (r.protocol == protocol) & ((r.quantizer == quantizer) if quantizer else True) & \
        ((r.bits == bits) if bits else True) & ((r.target == target) if target else True) & \
        ((ptq_ == ptq) if ptq else True)
    assert match.sum() == 1, (protocol, quantizer, bits, target, ptq)
    return r[match].iloc[0]


def test_the_qat_table_starts_from_the_help_baseline():
    fp32 = qat_row("fp32")
    base = pd.read_csv(ROOT / "benchmarks" / "results" / "translation_baselines.csv")
    seed0 = base[(base.recipe == "transformer-help-en-de") & (base.seed == 0)].iloc[0]
    assert fp32.test_bleu == pytest.approx(seed0.test_bleu, abs=1e-9)  # the very model the baselines score
    says(RESULTS, f"greedy **test BLEU {fp32.test_bleu:.2f}** on all {fp32.test_examples:,.0f} help test pairs")


def test_post_training_quantization_verdicts_from_paired_intervals():
    r = table("qat_table")
    ptq = r[r.protocol == "ptq"].assign(method=lambda d: d.ptq.fillna("signmag"))
    graded = ptq[ptq.bits.notna()]
    high = graded[graded.bits >= 4]
    assert len(high) == 13 and (high.test_bleu_verdict == "≈").all()
    three = graded[graded.bits == 3].set_index(["method", "target"])
    assert (three.loc["rtn"].test_bleu_verdict == "below").all() and (three.loc["gptq"].test_bleu_verdict == "≈").all()
    two = graded[graded.bits == 2].set_index(["method", "target"])
    assert (two.test_bleu_verdict == "below").all()
    assert two.loc[("gptq", "linear")].test_bleu_diff > two.loc[("rtn", "linear")].test_bleu_diff
    collapsed = ptq[ptq.bits.isna() | (ptq.bits == 1)]
    assert len(collapsed) == 5 and (collapsed.test_bleu < 5).all()
    says(RESULTS, f"is not distinguishable from fp32 (the {len(high)} cells' differences "
                  f"{_signed(high.test_bleu_diff.min())} to {_signed(high.test_bleu_diff.max())} BLEU)",
         f"At 3 bits RTN falls below fp32 ({_paired(three.loc[('rtn', 'attention')])} on the attention, "
         f"{_paired(three.loc[('rtn', 'linear')])} on all linear) while GPTQ stays not distinguishable "
         f"({_paired(three.loc[('gptq', 'attention')])} and {_paired(three.loc[('gptq', 'linear')])})",
         f"GPTQ less so than RTN on all linear ({_signed(two.loc[('gptq', 'linear')].test_bleu_diff)} against "
         f"{_signed(two.loc[('rtn', 'linear')].test_bleu_diff)})",
         f"collapse after training ({collapsed.test_bleu.min():.2f} to {collapsed.test_bleu.max():.2f} BLEU)")


def test_qat_fine_tuning_so_far_against_fp32_and_its_control():
    from tcomp_utils.sweep import SweepSpec
    r = table("qat_table")
    assert len(r) == len(pd.read_csv(ROOT / "papermill_runs" / "qat_table" / "results.csv"))  # only computed rows
    fine = r[(r.protocol == "finetune") & (r.quantizer == "seed") & (r.target == "attention") & (r.bits >= 2)]
    fine = fine.sort_values("bits", ascending=False)
    control = qat_row("fp32_finetune").test_bleu
    half = 0.8  # the baseline's test-sample bootstrap half-width (the baselines table: ±0.8 to ±0.9)
    assert list(fine.bits) == [8, 4, 2] and (fine.test_bleu_verdict == "above").all() and (fine.test_bleu < control).all()
    assert control - fine.test_bleu.iloc[2] > half  # the 2-bit row's gap: paired in the next test
    collapsed = [qat_row("finetune", q, b, t).test_bleu for q, b, t in (("binary", None, "attention"),
                                                                        ("binary", None, "linear"),
                                                                        ("seed", 1, "attention"))]
    assert all(qat_row("finetune", q, b, t).test_bleu_verdict == "below" for q, b, t in
               (("binary", None, "attention"), ("binary", None, "linear"), ("seed", 1, "attention")))
    says(RESULTS, f"unscaled binary weights score {collapsed[0]:.2f} on the attention and {collapsed[1]:.2f} on all "
                  f"linear, its 1-bit grid on the attention {collapsed[2]:.2f}")
    says(RESULTS, f"one epoch of QAT fine-tuning scores {', '.join(f'{b:.2f}' for b in fine.test_bleu[:-1])} and "
                  f"{fine.test_bleu.iloc[-1]:.2f}",
         "(" + ", ".join(_signed(d) for d in fine.test_bleu_diff[:-1]) + f" and {_signed(fine.test_bleu_diff.iloc[-1])})",
         f"epoch with no quantizer scores {control:.2f}",
         f"(8-bit attention and embeddings: {qat_row('finetune', 'seed', 8, 'attention+embeddings').test_bleu:.2f})")
    scaled = {t: (qat_row("ptq", "binary_scaled", None, t), qat_row("finetune", "binary_scaled", None, t))
              for t in ("attention", "linear")}
    assert [ft.test_bleu_verdict for _, ft in scaled.values()] == ["above", "below"]
    assert all(ft.test_bleu > ptq.test_bleu + 10 for ptq, ft in scaled.values())  # rescued, unlike the seed's grids
    (pa, fa), (pl, fl) = scaled["attention"], scaled["linear"]
    says(RESULTS, f"after one epoch they score {fa.test_bleu:.2f} on the attention ({_paired(fa)}, above fp32; "
                  f"{control - fa.test_bleu:.2f} under the control's score) and {fl.test_bleu:.2f} on every linear layer "
                  f"({_paired(fl)}, below fp32), where after training alone they score {pa.test_bleu:.2f} and "
                  f"{pl.test_bleu:.2f}")
    linear = [qat_row("finetune", "seed", b, "linear") for b in (8, 4)]
    assert all(x.test_bleu_verdict == "above" for x in linear)
    assert abs(linear[0].test_bleu - control) <= half < control - linear[1].test_bleu
    says(RESULTS, f"On every linear layer QAT fine-tuning scores {linear[0].test_bleu:.2f} at 8 bits and\n"
                  f"{linear[1].test_bleu:.2f} at 4 bits ({_signed(linear[0].test_bleu_diff)} and "
                  f"{_signed(linear[1].test_bleu_diff)} above fp32)")
    spec = SweepSpec.load(ROOT / "papermill_runs" / "qat_table.yaml")
    assert len(r) == len(spec.points) == 49  # every cell computed
    says(RESULTS, f"The grid is complete: all {len(spec.points)} cells.")


def test_qat_from_scratch():
    """The seed's own protocol, all nine rows: each verdict read from its paired interval to fp32, set against
    the four fp32 training seeds' spread (a from-scratch row is another training run), and what the rows
    say of the seed's ordering; the grid's measured time."""
    from scipy import stats

    from tcomp_utils.sweep import longest_first_wall

    base = pd.read_csv(ROOT / "benchmarks" / "results" / "translation_baselines.csv")
    seeds = base[base.recipe == "transformer-help-en-de"].test_bleu
    row = lambda q, b, t: qat_row("scratch", q, b, t)  # noqa: E731
    two, one, four, eight = (row("seed", b, "attention") for b in (2, 1, 4, 8))
    emb8, lin8, lin4 = row("seed", 8, "attention+embeddings"), row("seed", 8, "linear"), row("seed", 4, "linear")
    bin_att, binary = row("binary", None, "attention"), row("binary", None, "linear")
    for r in (eight, four, emb8, lin8, lin4):  # within the fp32 training seeds' range
        assert seeds.min() < r.test_bleu < seeds.max() and r.best_step == r.train_steps == 1032
    assert lin8.test_bleu_verdict == "≈" and {eight.test_bleu_verdict, four.test_bleu_verdict, emb8.test_bleu_verdict,
                                              lin4.test_bleu_verdict} == {"below"}
    assert lin8.test_bleu > eight.test_bleu and lin4.test_bleu > four.test_bleu  # more quantized, yet higher: noise
    says(RESULTS, f"scores\n{lin8.test_bleu:.2f} at 8 bits against {eight.test_bleu:.2f} for the attention alone, and "
                  f"{lin4.test_bleu:.2f} against {four.test_bleu:.2f} at 4 bits (two cells each,\nno paired interval of the two)")
    assert two.test_bleu_verdict == "below" and two.test_bleu < seeds.min() - 1  # below every seed
    assert two.best_step == two.train_steps == 1032  # still improving when the recipe's steps ended
    assert max(one.test_bleu, bin_att.test_bleu, binary.test_bleu) < 1  # collapsed: none translates
    assert bin_att.best_step == binary.best_step == 172
    n = len(seeds)
    half = stats.t.ppf(0.975, n - 1) * seeds.std(ddof=1) * (1 + 1 / n) ** 0.5
    assert seeds.mean() - half < two.test_bleu  # a fresh fp32 seed's prediction interval covers it
    says(RESULTS, f"2 bits lie below all four seeds, {seeds.min() - two.test_bleu:.2f} BLEU under the\nlowest",
         f"spans {seeds.mean() - half:.2f} to {seeds.mean() + half:.2f} and covers {two.test_bleu:.2f}",
         f"2 bits score {two.test_bleu - one.test_bleu:.1f} BLEU more than 1 bit ({_signed(two.test_bleu_diff)} "
         f"against {_signed(one.test_bleu_diff)} to fp32 on the same sentences")
    says(RESULTS, "**QAT from scratch (the seed's protocol): all 9 rows, one training seed each.**",
         f"spread of the four fp32 training seeds ({seeds.min():.2f} to {seeds.max():.2f})",
         f"scores {eight.test_bleu:.2f} at 8 bits and {four.test_bleu:.2f} at 4 ({_paired(eight)} and {_paired(four)}, below "
         f"seed 0 on the paired interval), 8 bits on the attention and embeddings {emb8.test_bleu:.2f} ({_paired(emb8)}, below), "
         f"and on every linear layer 8 bits {lin8.test_bleu:.2f} ({_paired(lin8)}, ≈) and 4 bits {lin4.test_bleu:.2f} "
         f"({_paired(lin4)}, below)",
         f"At 2 bits the attention scores {two.test_bleu:.2f} ({_paired(two)}, below fp32)",
         f"the 1-bit grid on the attention scores {one.test_bleu:.2f} ({one.stochastic_test_bleu:.2f} with stochastic "
         f"re-quantization), binary weights on the attention {bin_att.test_bleu:.2f} and on every linear layer "
         f"{binary.test_bleu:.2f} (best validation BLEU at step {binary.best_step:.0f})")
    r = table("qat_table")
    scratch = r.query("protocol == 'scratch'")
    assert len(r) == 49 and len(scratch) == 9
    says(RESULTS, f"({scratch.elapsed_s.min() / 60:.0f} to {scratch.elapsed_s.max() / 60:.0f}\nminutes a row on one worker",
         f"grid's 49 cells take {r.elapsed_s.sum() / 3600:.1f} CPU-hours (a from-scratch row {scratch.elapsed_s.mean() / 60:.1f} "
         f"minutes on average, the nine {scratch.elapsed_s.sum() / 3600:.1f} CPU-hours by themselves), "
         f"{longest_first_wall(list(r.elapsed_s), workers=2) / 3600:.1f} hours packed on 2 workers: over the issue's 3-hour aim")
    runs = pd.read_csv(ROOT / "papermill_runs" / "qat_table" / "runs.csv")
    full = runs[~runs.reduced.astype(bool)]
    assert len(full) == 8
    last = full[full.points_run.isin([4, 5]) & (full.workers == 2)]
    assert last.points_run.tolist() == [4, 5]  # the nine from-scratch cells, two sittings
    says(RESULTS, "was run in eight sweeps over three days", "from-scratch cells in two sittings, four in "
         f"{last.wall_s.iloc[0] / 60:.1f} minutes and five in {last.wall_s.iloc[1] / 60:.1f} minutes, two at a time")


def test_qat_fine_tuning_against_its_control_on_the_same_sentences():
    """The rerun fine-tuning cells reproduce the table's BLEU, and each verdict against the no-quantizer control
    is the paired interval's: 8 and 4 bits on the attention ≈, 2 bits and row-scaled binary below; ≈ on Ding."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("qat_finetune_control", ROOT / "benchmarks" / "qat_finetune_control.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    says(RESULTS, mod.table())
    c = mod.compare().set_index("row")
    assert (c.test_bleu.round(6) == c.cell_bleu.round(6)).all()  # each rerun is the table's cell
    runs = pd.read_csv(mod.OUT)
    assert runs[runs.quantizer == "none"].test_bleu.round(6).item() == round(qat_row("fp32_finetune").test_bleu, 6)
    att = ["seed8-attention", "seed4-attention", "seed2-attention", "binary_scaled-attention"]
    assert c.loc[att, "test_verdict"].tolist() == ["≈", "≈", "below", "below"]
    assert (c.ood_test_verdict == "≈").all()
    interval = lambda r: f"{_signed(r.test_diff)} [{_signed(r.test_lo)}, {_signed(r.test_hi)}]"  # noqa: E731
    says(RESULTS, f"8 and 4 bits on the attention are not distinguishable ({interval(c.loc[att[0]])} and "
                  f"{interval(c.loc[att[1]])}); 2 bits fall below it ({interval(c.loc[att[2]])}), and so do the "
                  f"row-scaled binary weights ({interval(c.loc[att[3]])})",
         "On the Ding sentences, where every model scores about 1 BLEU, none is distinguishable from the control")
    says(RESULTS, "By QAT fine-tuning, where the baseline is the same epoch with no quantizer, \"2-bit ≈ baseline\" "
                  "does not hold: 2 bits on the attention fall below the control on its paired interval")
    says(README, "fine-tuned one epoch with the quantizer, 8 and 4 bits on the attention are not distinguishable from "
                 f"the same epoch without it and 2 bits fall below it ({_signed(c.loc[att[2], 'test_diff'])} BLEU, paired)")
    assert c.ood_bleu.max() < 1.5
    assert c.loc["seed8-linear", "test_verdict"] == "≈"
    says(RESULTS, f"against the control 8 bits are not distinguishable\n({interval(c.loc['seed8-linear'])}, `seed:8:linear`)")
    word = {"≈": "not distinguishable from it", "below": "below it", "above": "above it"}
    l4, ae = c.loc["seed4-linear"], c.loc["seed8-attention+embeddings"]
    says(RESULTS, f"At 4 bits on every linear layer the row is {word[l4.test_verdict]} ({interval(l4)}, `seed:4:linear`), "
                  f"and 8 bits on the attention and embeddings are {word[ae.test_verdict]} ({interval(ae)})")
    bl = c.loc["binary_scaled-linear"]
    assert bl.test_verdict == "below"
    says(RESULTS, f"On every linear layer the row-scaled binary weights score {-bl.test_diff:.2f} under the control "
                  f"({interval(bl)}, below it)")
    minutes = runs.wall_minutes
    says(RESULTS, f"{minutes.min():.0f} to {minutes.max():.0f} minutes a run on one thread")


def _qat_scratch_seeds():
    """benchmarks/qat_scratch_seeds.py as a module (its rows' comparisons read only committed files)."""
    import importlib.util

    if "qat_scratch_seeds" not in sys.modules:
        spec = importlib.util.spec_from_file_location("qat_scratch_seeds", ROOT / "benchmarks" / "qat_scratch_seeds.py")
        sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules["qat_scratch_seeds"]


def test_the_qat_scratch_seeds_behind_the_2_bit_verdict():
    """The 2-bit attention row with more training seeds: below its fp32 twin on each seed's paired interval, and
    below fp32 across four seeds (t interval), where three seeds had left it not distinguishable; so the README
    says "2-bit ≈ baseline" does not hold."""
    from tcomp_utils import scores

    mod = _qat_scratch_seeds()
    says(RESULTS, mod.table())
    row = mod.Row("seed", 2, "attention")
    per_seed = mod.compare(row).set_index("seed")
    assert per_seed.index.tolist() == [0, 1, 2, 3] and (per_seed.verdict == "below").all()
    fp32 = pd.read_csv(ROOT / "benchmarks" / "results" / "translation_baselines.csv").query("recipe == @mod.MODEL")
    assert sorted(fp32.seed) == [0, 1, 2, 3] and (per_seed.bleu < fp32.test_bleu.min()).all()  # "under all four"
    s1, s2, s3 = per_seed.loc[1], per_seed.loc[2], per_seed.loc[3]
    across = mod.across_seeds(row)
    assert across.verdict == "below" and across.hi < 0
    three = scores.seed_interval(per_seed["diff"].loc[[0, 1, 2]].to_numpy())
    assert three.lo < 0 < three.hi  # what three seeds said
    fp32_seed = fp32.set_index("seed").test_bleu
    says(RESULTS, f"2 bits on the attention score {s1.bleu:.2f}, {-s1['diff']:.2f} BLEU under fp32 seed 1 (below on its paired\ninterval)",
         f"with seed 2 (39 training minutes) {s2.bleu:.2f}, {-s2['diff']:.2f} under fp32 seed 2",
         f"with seed 3 (58 training minutes,\nbeside two other runs) {s3.bleu:.2f}, {-s3['diff']:.2f} under fp32 seed 3",
         f"gives seed 2's {fp32_seed[2]:.2f} again", f"the new seed's\n{fp32_seed[3]:.2f})",
         "(" + ", ".join(_signed(d) for d in per_seed["diff"]) + ")",
         f"give a t interval of {_signed(across.lo)} to {_signed(across.hi)}",
         f"With three seeds the interval was {_signed(three.lo)} to\n{_signed(three.hi)}")
    says(README, f"2 bits on the attention fall below fp32 across four training seeds ({_signed(across.difference)} BLEU, t interval "
                 f"{_signed(across.lo)} to {_signed(across.hi)}; each seed below the fp32 model of the same seed on the paired "
                 "interval), so \"2-bit ≈ baseline\" does not hold by either protocol")


def test_the_qat_scratch_seeds_of_8_bit_attention():
    """8 bits on the attention from scratch with three training seeds: each seed below its fp32 twin on the paired
    interval, and below fp32 across the seeds (t interval), by less than the fp32 seeds' sd, so the table's one run
    (seed 0) lies within their spread."""
    mod = _qat_scratch_seeds()
    per_seed = mod.compare(mod.Row("seed", 8, "attention")).set_index("seed")
    assert per_seed.index.tolist() == [0, 1, 2] and (per_seed.verdict == "below").all()
    across = mod.across_seeds(mod.Row("seed", 8, "attention"))
    assert across.verdict == "below" and across.hi < 0
    fp32 = pd.read_csv(ROOT / "benchmarks" / "results" / "translation_baselines.csv").query("recipe == @mod.MODEL")
    assert fp32.test_bleu.min() < per_seed.loc[0, "bleu"] and -across.difference < fp32.test_bleu.std(ddof=1)
    runs = pd.read_csv(mod.OUT).query("bits == 8 and target == 'attention'")
    s1, s2 = per_seed.loc[1], per_seed.loc[2]
    says(RESULTS, f"{runs.train_minutes.max():.1f} training minutes each",
         f"{s1.bleu:.2f} and\n{s2.bleu:.2f}, {-s1['diff']:.2f} and {-s2['diff']:.2f} BLEU under their fp32 twins",
         f"as the table's seed-0 cell is ({_signed(per_seed.loc[0, 'diff'])})",
         f"the difference is {_signed(across.difference)}, t interval {_signed(across.lo)} to {_signed(across.hi)}: **below**",
         f"fp32 seeds' own spread (sd {fp32.test_bleu.std(ddof=1):.1f})",
         f"below it by {-across.difference:.2f} BLEU: below)")
    says(README, "8 bits on the attention fall below it in each of three seeds "
                 f"({_signed(across.difference)} BLEU, t interval {_signed(across.lo)} to {_signed(across.hi)})")


def test_stochastic_re_quantization_at_evaluation():
    ptq2, ft2 = qat_row("ptq", "seed", 2, "attention"), qat_row("finetune", "seed", 2, "attention")
    one, ft1 = qat_row("ptq", "seed", 1, "attention"), qat_row("finetune", "seed", 1, "attention")
    assert ft1.stochastic_test_bleu > ft1.test_bleu + 1
    assert ptq2.stochastic_test_bleu < ptq2.test_bleu and ft2.stochastic_test_bleu < ft2.test_bleu
    assert one.stochastic_test_bleu > one.test_bleu + 1
    says(RESULTS, f"{ptq2.stochastic_test_bleu:.2f} against {ptq2.test_bleu:.2f} by nearest rounding at 2 bits",
         f"{ft2.stochastic_test_bleu:.2f} against {ft2.test_bleu:.2f} after QAT fine-tuning",
         f"1-bit grid it scores {one.stochastic_test_bleu:.2f} where nearest rounding collapses to {one.test_bleu:.2f}",
         f"and {ft1.stochastic_test_bleu:.2f} against {ft1.test_bleu:.2f} after QAT fine-tuning")
    assert table("qat_table").ood_test_bleu.max() < 1.5  # "every cell ... about 1 BLEU" out of domain


QAT_NB = "notebooks/10_quantization_aware_training.ipynb"


def test_qat_notebook_claims():
    near = table("qat_narrative", "nearest_rounding").set_index("bits")
    assert near.rel_error.is_monotonic_decreasing and (near.levels_used <= near.levels_on_grid).all()
    stoch = table("qat_narrative", "stochastic_rounding").set_index("draws").rel_error_of_mean
    assert stoch[1] > near.rel_error[2] > stoch[256]  # one draw is noisier than nearest, the mean of many is not
    says(QAT_NB, "relative error of " + f"{near.rel_error[1]:.3f} with 1 magnitude bit, {near.rel_error[2]:.3f} with 2, "
                 f"{near.rel_error[4]:.3f} with 4 and {near.rel_error[8]:.4f} with 8 (using "
                 + ", ".join(map(str, near.levels_used[[1, 2, 4]])) + f" and {near.levels_used[8]} of the grid's "
                 + ", ".join(map(str, near.levels_on_grid[[1, 2, 4]])) + f" and {near.levels_on_grid[8]} levels)",
         f"One stochastic rounding with 2 bits errs by {stoch[1]:.3f}, more than the nearest level, but the mean of "
         f"256 draws by {stoch[256]:.3f}")
    res = table("qat_narrative", "qat_results").set_index("config").test_bleu
    log = table("qat_narrative", "qat_log")
    loss = log[log.kind == "train"].groupby("config").loss
    first, last = loss.apply(lambda s: s.head(20).mean()), loss.apply(lambda s: s.tail(20).mean())
    b = lambda name: f"{res[name]:.2f}"  # noqa: E731
    fp32, _ = bleu_interval()  # the German→English model of notebook 10 (benchmarks/translation_bleu_ci.py)
    assert res["binary, scaled, attention"] > fp32 and res["binary, attention"] < 0.05 and res["binary, linear"] < 0.05
    assert first["binary, attention"] > 2 * first["8-bit, attention"]
    says(QAT_NB, f"from the trained model (test BLEU {fp32:.2f}): 8-bit attention {b('8-bit, attention')}, 2-bit "
                 f"{b('2-bit, attention')} and row-scaled binary {b('binary, scaled, attention')}; the seed's \"1-bit\" "
                 f"(ternary) grid {b('1-bit, attention')}, its unscaled binary weights {b('binary, attention')} "
                 f"(attention) and {b('binary, linear')} (all linear)",
         f"start at a training loss of {first['binary, attention']:.1f} and {first['binary, linear']:.1f} (mean of the "
         f"first 20 steps; the 8-bit row {first['8-bit, attention']:.1f}) and end at {last['binary, attention']:.1f} "
         f"and {last['binary, linear']:.1f}")
    ex = table("qat_narrative", "translations").set_index("source").loc["Sein Name fällt mir gerade nicht ein."]
    says(QAT_NB, f"(reference \"{ex.reference}\") becomes \"{ex.fp32}\" in fp32, \"{ex['8-bit, attention']}\" with "
                 f"8-bit attention and \"{ex['1-bit, attention']}\" on the ternary grid")
    runs = pd.read_csv(ROOT / "papermill_runs" / "qat_narrative" / "runs.csv")
    says(QAT_NB, f"per configuration; {runs.wall_s.iloc[-1] / 60:.0f} minutes on 2 cores")


# ---- composable pruning (issue 17) -------------------------------------------------------------

def test_composable_pruning_claims():
    """Seed 002 on the help Transformer: composed models start higher, reach their baseline only at the last
    step (or never), end not distinguishable from it (paired by seed, t interval over seeds), and the seconds
    saved come from faster steps, not fewer."""
    from tcomp_utils.figures import composable_gaps, composable_saving
    s = table("composable_table", "summary")
    r = table("composable_table")
    units = table("composable_table", "unit_runs")
    seeds = sorted(r.seed)
    assert len(seeds) >= 2 and len(s) == 6 * len(seeds) and set(s.seed) == set(seeds)
    assert (r.n_configurations == 6).all() and (r.unit_uses > r.n_units).all()  # five or more sharing units
    assert (abs(r.with_s - (r.record_s + r.unit_s + r.composed_model_s)) < 1e-6).all()
    assert (s.val_bleu_before_composed > s.val_bleu_before_baseline).all()
    reached = s.steps_to_baseline.dropna()
    assert (reached == 200).all()  # no model-level step saved
    gaps = composable_gaps(s).set_index("configuration")
    assert (gaps.verdict == "≈").all()
    saved = composable_saving(r).iloc[-1]
    ratio = s.train_seconds_composed / s.train_seconds_baseline  # the same 200 steps in both arms
    pts = lambda x, f="{:+.2f}": f.format(x).replace("-", "−")  # noqa: E731
    overall = gaps.loc["all 6"]
    says(RESULTS, f"validation BLEU before model-level fine-tuning {s.val_bleu_before_composed.min():.1f}–"
                  f"{s.val_bleu_before_composed.max():.1f} against the baselines' {s.val_bleu_before_baseline.min():.1f}–"
                  f"{s.val_bleu_before_baseline.max():.1f}",
         f"only at the last of the 200 steps in {len(reached)} of the {len(s)} runs",
         f"over the six configurations is {pts(overall.difference)} [{pts(overall.lo)}, {pts(overall.hi)}], not "
         "distinguishable",
         f"({pts(saved['saved (s)'], '{:+.0f}')} [{pts(saved.lo, '{:+.0f}')}, {pts(saved.hi, '{:+.0f}')}] s a seed, "
         f"{saved['saved (%)']:.1f} %)",
         f"a composed run took {ratio.min():.2f} to {ratio.max():.2f} times its baseline's seconds",
         f"({units.seconds.min():.1f} to {units.seconds.max():.1f} s each)",
         f"sharing {int(r.n_units.iloc[0])} units ({int(r.unit_uses.iloc[0])} uses)",
         f"(test BLEU {r.dense_test_bleu.iloc[0]:.2f};")
    from tcomp_utils.sweep import SweepSpec
    cells = len(SweepSpec.load(ROOT / "papermill_runs" / "composable_table.yaml").points)
    minutes = r.elapsed_s / 60
    says(RESULTS, f"({cells} cells, one a seed, {minutes.min():.0f} to {minutes.max():.0f} minutes each",
         f"the Transformer's {cells} cells take {r.elapsed_s.sum() / 3600:.1f} CPU-hours ({minutes.min():.0f} to "
         f"{minutes.max():.0f} minutes each, about {r.elapsed_s.sum() / 7200:.1f} hours packed on 2 workers: over the aim)")
    assert r.elapsed_s.sum() / 7200 > 3  # the issue's 3-hour aim, missed as the text says
    says(SWEEPS, f"| `papermill_runs/composable_table.yaml` ({cells} cells) |")


def test_composable_pruning_on_the_t5_claims():
    """Seed 002 on seed 002's architecture (issue 36): the query-rate T5, the generator's configuration at attention
    0.5 and linear 0.5, four fine-tuning seeds, every cell computed with the current code; RESULTS' two tables are
    the committed rows', each verdict read from a t interval over the seeds."""
    from tcomp_utils.figures import _composable_readme, _composable_set_readme, composable_gaps, composable_saving
    s, r = table("composable_t5", "summary"), table("composable_t5")
    ok = r[r.status == "ok"]
    assert sorted(ok.seed) == [0, 1, 2, 3] and (ok.n_configurations == 1).all() and set(s.key) == set(ok.key)
    assert (ok.model_name == "t5-help-en-de-query-rate").all() and not ok.stale.astype(str).eq("True").any()
    base = pd.read_csv(ROOT / "benchmarks" / "results" / "translation_baselines.csv").set_index(["recipe", "seed"])
    assert (ok.dense_test_bleu == base.loc[("t5-help-en-de-query-rate", 0), "test_bleu"]).all()  # the cached seed 0
    for block in (_composable_readme(s), _composable_set_readme(r)):
        assert " ".join(block.split()) in _text(RESULTS)
    gap, saved = composable_gaps(s).iloc[-1], composable_saving(r).iloc[-1]
    pts = lambda x, f="{:+.2f}": f.format(x).replace("-", "−")  # noqa: E731
    assert gap.verdict == "≈" and saved.verdict == "≈" and (s.steps_to_baseline == 200).all()
    assert (s.val_bleu_before_composed > s.val_bleu_before_baseline).all()
    assert s.val_bleu_before_composed.nunique() == s.val_bleu_before_baseline.nunique() == 1  # "every seed starts there"
    ratio = s.train_seconds_composed / s.train_seconds_baseline  # the same 200 steps in both arms
    runs = pd.read_csv(ROOT / "papermill_runs" / "composable_t5" / "runs.csv").iloc[-1]
    assert runs.points_run == runs.points_total == 4 and runs.workers == 2
    says(RESULTS, f"validation BLEU {s.val_bleu_before_composed.iloc[0]:.2f} against {s.val_bleu_before_baseline.iloc[0]:.2f} "
                  "before model-level fine-tuning",
         f"only at the last of the 200 steps, in all {len(s)} seeds",
         f"composed minus baseline test BLEU is {pts(gap.difference)} [{pts(gap.lo)}, {pts(gap.hi)}] over the 4 seeds, "
         "not distinguishable",
         f"(means {s.test_bleu_composed.mean():.2f} and {s.test_bleu_baseline.mean():.2f}, against the dense model's "
         f"{ok.dense_test_bleu.iloc[0]:.2f})", f"training seed 0, test BLEU {ok.dense_test_bleu.iloc[0]:.2f}",
         f"the 30 units ({ok.unit_s.min():.1f} to {ok.unit_s.max():.1f} s a seed)",
         f"a composed run took {ratio.min():.2f} to {ratio.max():.2f} times its baseline's seconds",
         f"longer by {-saved['saved (s)']:.0f} s a seed, [{pts(saved.lo, '{:.0f}')}, {pts(saved.hi, '{:+.0f}')}] "
         f"({pts(saved['saved (%)'], '{:.1f}')} %): not distinguishable",
         f"The 4 cells took {runs.wall_s / 60:.1f} minutes on 2 workers ({ok.elapsed_s.mean() / 60:.0f} minutes each)")
    says(README, f"the composed model reaches its baseline no sooner, and its test BLEU ({pts(gap.difference)} "
                 f"[{pts(gap.lo)}, {pts(gap.hi)}]) and the seconds saved ({pts(saved['saved (s)'], '{:.0f}')} "
                 f"[{pts(saved.lo, '{:.0f}')}, {pts(saved.hi, '{:+.0f}')}] a seed) are not distinguishable")


def test_composable_pruning_on_the_t5_grid_claims():
    """Seed 002's generator grid on the query-rate T5 (issue 36): six configurations sharing 81 units, one cell a
    fine-tuning seed, every cell of the spec computed with the current code; RESULTS' tables are the committed rows'
    and its prose the verdicts of t intervals over the seeds."""
    from tcomp_utils.figures import _composable_readme, _composable_set_readme, composable_gaps, composable_saving
    from tcomp_utils.sweep import SweepSpec
    s, r = table("composable_t5_grid", "summary"), table("composable_t5_grid")
    spec_seeds = [p["seed"] for p in SweepSpec.load(ROOT / "papermill_runs" / "composable_t5_grid.yaml").points]
    seeds = sorted(r.seed)
    assert seeds == sorted(spec_seeds) == [0, 1, 2, 3] and len(s) == 6 * len(seeds) and set(s.key) == set(r.key)
    assert (r.model_name == "t5-help-en-de-query-rate").all() and not r.stale.astype(str).eq("True").any()
    assert (r.n_configurations == 6).all() and (r.n_units == 81).all() and (r.unit_uses == 180).all()
    assert (abs(r.with_s - (r.record_s + r.unit_s + r.composed_model_s)) < 1e-6).all()
    for block in (_composable_readme(s), _composable_set_readme(r)):
        assert " ".join(block.split()) in _text(RESULTS)
    assert (s.val_bleu_before_composed > s.val_bleu_before_baseline).all()
    steps = s.steps_to_baseline
    early = s[steps == 100]
    assert set(steps.dropna()) == {100, 200} and list(early.configuration.unique()) == ["a25-l30"]
    gaps = composable_gaps(s).set_index("configuration")
    overall, saved = gaps.loc["all 6"], composable_saving(r).iloc[-1]
    assert overall.verdict == "above" and saved.verdict == "≈"
    per_seed = (s.test_bleu_composed - s.test_bleu_baseline).groupby(s.seed).mean()
    assert (per_seed > 0).all()
    configs = gaps.drop(index="all 6")
    above = list(configs.index[configs.verdict == "above"])
    assert above == ["a25-l70", "a50-l30", "a50-l70"] and (configs.drop(index=above).verdict == "≈").all()
    # the saving is the early reaches: had those runs gone all 200 steps, every seed would have lost time
    assert sorted(r[r.saved_s > 0].seed) == sorted(early.seed)
    cut = (early.train_seconds_composed - early.seconds_to_baseline).groupby(early.seed).sum()
    assert (r.set_index("seed").saved_s.sub(cut, fill_value=0) < 0).all()
    # a50-l50 repeats the one-configuration study (papermill_runs/composable_t5.yaml) seed for seed: the same BLEU
    one = table("composable_t5", "summary")
    one = one[one.model_name == "t5-help-en-de-query-rate"].set_index("seed")
    same = s[s.configuration == "a50-l50"].set_index("seed").loc[one.index]
    cols = ["test_bleu_baseline", "test_bleu_composed", "val_bleu_before_composed"]
    assert (abs(same[cols] - one[cols]) < 1e-9).all().all()
    ratio = s.train_seconds_composed / s.train_seconds_baseline  # the same 200 steps in both arms
    light = s[s.configuration == "a25-l30"]
    assert (light[["test_bleu_baseline", "test_bleu_composed"]] > r.dense_test_bleu.iloc[0]).all().all()
    pts = lambda x, f="{:+.2f}": f.format(x).replace("-", "−")  # noqa: E731
    runs = pd.read_csv(ROOT / "papermill_runs" / "composable_t5_grid" / "runs.csv")
    assert list(runs.workers) == [2, 2] and list(runs.points_run) == [2, 2]
    lose, gain = r.set_index("seed").saved_s.sort_index(), early.set_index("seed").sort_index()
    says(RESULTS, "81 units (180 uses), one cell a fine-tuning seed, four seeds",
         f"validation BLEU before model-level fine-tuning {s.val_bleu_before_composed.min():.1f}–"
         f"{s.val_bleu_before_composed.max():.1f} against the baselines' {s.val_bleu_before_baseline.min():.1f}–"
         f"{s.val_bleu_before_baseline.max():.1f}",
         f"at the last of the 200 steps in {(steps == 200).sum()} of the {len(s)} runs, at step 100 in "
         f"{len(early)} (a25-l30, seeds {' and '.join(map(str, gain.index))}), and not at all in the other "
         f"{steps.isna().sum()}",
         f"over the six configurations is {pts(overall.difference)} [{pts(overall.lo)}, {pts(overall.hi)}]: above, "
         f"and positive in every seed ({pts(per_seed.min())} to {pts(per_seed.max())}); three configurations' own "
         f"intervals clear 0 ({', '.join(above)})",
         f"The 81 units cost {r.unit_s.mean():.0f} s a seed",
         f"a composed run took {ratio.min():.2f} to {ratio.max():.2f} times its baseline's seconds",
         f"{pts(saved['saved (s)'], '{:.0f}')} [{pts(saved.lo, '{:.0f}')}, {pts(saved.hi, '{:+.0f}')}] s a seed "
         f"({pts(saved['saved (%)'], '{:.1f}')} %), not distinguishable: seeds 0 and 1 lost {-lose[0]:.0f} and "
         f"{-lose[1]:.0f} s, seeds 2 and 3 saved {lose[2]:.0f} and {lose[3]:.0f} s",
         f"({gain.seconds_to_baseline.iloc[0]:.0f} and {gain.seconds_to_baseline.iloc[1]:.0f} s against "
         f"{gain.train_seconds_baseline.iloc[0]:.0f} and {gain.train_seconds_baseline.iloc[1]:.0f})",
         f"(a25-l30: {light.test_bleu_baseline.mean():.2f} and {light.test_bleu_composed.mean():.2f} against "
         f"{r.dense_test_bleu.iloc[0]:.2f})",
         f"The 4 cells took {runs.wall_s.iloc[0] / 60:.1f} and {runs.wall_s.iloc[1] / 60:.1f} minutes, two side by "
         "side on 2 workers in each sitting",
         f"(`composable_t5_grid.yaml`: 4 cells of about {runs.cell_s.sum() / len(r) / 60:.0f} minutes, "
         f"{runs.wall_s.sum() / 3600:.1f} hours on 2 workers in two sittings, just over the 3-hour aim)")
    assert 3 < runs.wall_s.sum() / 3600 < 3.5
    says(README, f"at the generator's six configurations ({len(seeds)} seeds, 81 shared units) the composed models end "
                 f"{pts(overall.difference)} [{pts(overall.lo)}, {pts(overall.hi)}] test BLEU above their baselines, "
                 f"but the seconds saved ({pts(saved['saved (s)'], '{:.0f}')} [{pts(saved.lo, '{:.0f}')}, "
                 f"{pts(saved.hi, '{:+.0f}')}] a seed) are not distinguishable from 0")


def test_composable_table_notebook_claims():
    from tcomp_utils.figures import composable_gaps
    s = table("composable_table", "summary")
    r = table("composable_table")
    overall = composable_gaps(s).iloc[-1]
    pts = lambda x: f"{x:+.2f}".replace("-", "−")  # noqa: E731
    says("notebooks/13_composable_table.ipynb",
         f"the six configurations share {int(r.n_units.iloc[0])} units",
         f"only at the last of the 200 steps in {int(s.steps_to_baseline.notna().sum())} of the {len(s)} runs",
         f"{pts(overall.difference)} [{pts(overall.lo)}, {pts(overall.hi)}] BLEU over the {len(r)} seeds")


def test_composable_notebook_claims():
    scheme = table("composable_narrative", "scheme")
    units = table("composable_narrative", "unit_mse").assign(ratio=lambda d: d["last"] / d["first"])
    ratio = units.groupby("kind_rate").ratio.median()
    curve = table("composable_narrative", "walk_curve").set_index(["arm", "step"]).val_bleu
    kinds = scheme.groupby("kind").size()
    assert ratio[["heads 0.25", "heads 0.5"]].min() > ratio[["l1 0.3", "l1 0.7"]].max()  # heads recover less
    minutes = pd.read_csv(ROOT / "papermill_runs" / "composable_narrative" / "runs.csv").wall_s.iloc[-1] / 60
    says("notebooks/12_composable_pruning.ipynb",
         f"{minutes:.0f} minutes on 2 cores): the four configurations use {scheme.uses.sum()} pruned modules but only "
         f"{len(scheme)} distinct units ({kinds['heads']} attention blocks without some heads, {kinds['l1']} L1-pruned "
         f"linear layers), so {scheme.uses.sum() - len(scheme)} module-level fine-tunings are saved",
         f"median of {100 * ratio['l1 0.3']:.0f} % (L1 at 0.3) and {100 * ratio['l1 0.7']:.0f} % (L1 at 0.7) of its "
         f"first step's, but only to {100 * ratio['heads 0.25']:.0f} % and {100 * ratio['heads 0.5']:.0f} % for heads",
         f"starts at validation BLEU {curve['composed', 0]:.2f} against the baseline's {curve['baseline', 0]:.2f} and "
         f"after the same 200 model-level steps ends at {curve['composed', 200]:.2f} against {curve['baseline', 200]:.2f}")


# ---- the atlas (README) -------------------------------------------------------------------------

@cache
def _atlas() -> dict:
    """The atlas's points by model and pipeline, the paired differences on the tweet model, and the module."""
    from tcomp_utils import atlas

    pts = atlas.points(table("atlas"))
    by = {m: g.set_index("pipeline") for m, g in pts.groupby("model")}
    pairs = atlas.paired(pts).set_index(["a", "b"])
    return {"pts": pts, "tw": by["minilm-l6-tweets3"], "lm": by["smollm2-135m"], "atlas": atlas, "pairs": pairs}


G4, G3 = "gptq(bits=4, roles=['linear', 'embeddings'])", "gptq(bits=3, roles=['linear', 'embeddings'])"
G8, R8 = "gptq(bits=8, roles=['linear', 'embeddings'])", "rtn(bits=8, roles=['linear', 'embeddings'])"
R4, R3 = "rtn(bits=4, roles=['linear', 'embeddings'])", "rtn(bits=3, roles=['linear', 'embeddings'])"
ID5, ID7 = "structured(criterion='id', mu=0.5)", "structured(criterion='id', mu=0.7)"
LM_G4 = "gptq(bits=4, group_size=128, roles=['linear', 'embeddings'])"


def _paired_text(d) -> str:
    """A paired difference as the prose writes it: ``+0.13 [−0.47, +0.69]`` (true minus signs)."""
    return f"{d.difference:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}]".replace("-", "−")


def _loss_text(d) -> str:
    """A difference below 0 as a loss: ``1.40 [0.47, 2.36]``."""
    assert d.verdict == "below"
    return f"{-d.difference:.2f} [{-d.hi:.2f}, {-d.lo:.2f}]"


def test_atlas_byte_and_mac_verdicts():
    a = _atlas()
    tw, lm, atlas, pairs = a["tw"], a["lm"], a["atlas"], a["pairs"]
    dense = tw.loc["dense"]
    bytes_won = atlas.winners(a["pts"], "bytes", [2, 4, 8])
    macs_won = atlas.winners(a["pts"], "macs", [1.5, 2])
    bytes_ties = dict(zip(bytes_won.factor[bytes_won.model == "minilm-l6-tweets3"],
                          atlas.ties(a["pts"], bytes_won[bytes_won.model == "minilm-l6-tweets3"], "bytes")))
    bytes_won, macs_won = bytes_won.set_index(["model", "factor"]), macs_won.set_index(["model", "factor"])
    tw3 = lambda k, won=bytes_won: won.loc[("minilm-l6-tweets3", k), "pipeline"]  # noqa: E731
    # only quantization of every weight (the table included) gets the tweet model under half its bytes
    under_half = tw[tw.bytes_frac <= 0.5]
    assert under_half.family.str.contains("RTN|GPTQ").all()
    not_quant = tw[~tw.family.isin(["RTN", "GPTQ", "dense"]) & ~tw.family.str.contains("→")]
    assert tw3(2) == G8 and tw3(4) == G4 and tw3(8) == f"{ID7} + {G4}"
    assert sorted(bytes_ties[2]) == sorted([R8, R4, G4]) and R4 in bytes_ties[4] and G3 in bytes_ties[8]
    assert [pairs.loc[(p, "dense")].verdict for p in (G8, G4, f"{ID7} + {G4}")] == ["≈", "≈", "below"]
    assert [pairs.loc[(f"gptq(bits={b}, roles=['linear', 'embeddings'])", f"rtn(bits={b}, roles=['linear', 'embeddings'])")]
            .verdict for b in (8, 4, 3)] == ["≈", "≈", "above"]
    assert tw3(1.5, macs_won) == tw3(2, macs_won) == ID5
    fid = [pairs.loc[(f"structured(criterion='id', mu={m})", f"fisher_pruning(mu={m})")] for m in (0.9, 0.7, 0.5)]
    assert [d.verdict for d in fid] == ["≈", "≈", "above"]
    g8, g4, c7, g3, id5 = tw.loc[G8], tw.loc[G4], tw.loc[f"{ID7} + {G4}"], tw.loc[G3], tw.loc[ID5]
    id3, svd2 = tw.loc["structured(criterion='id', mu=0.3)"], tw.loc["svd(ratio=2)"]
    phrases = [
        f"no factorization or pruning point of the tweet model stores less than {100 * not_quant.bytes_frac.min():.0f} % of its bytes",
        f"GPTQ at 8 bits\n  keeps {g8.quality:.2f} % in {100 * g8.bytes_frac:.1f} % of the bytes (dense {dense.quality:.2f} %; "
        f"{_paired_text(pairs.loc[(G8, 'dense')])} points",
        f"at 4× GPTQ at 4 bits keeps {g4.quality:.2f} % in\n  {100 * g4.bytes_frac:.1f} % ({_paired_text(pairs.loc[(G4, 'dense')])}",
        f"({c7.quality:.2f} % in {100 * c7.bytes_frac:.1f} %),\n  is {_loss_text(pairs.loc[(f'{ID7} + {G4}', 'dense')])} points below",
        f"GPTQ at 3 bits alone ({g3.quality:.2f} % in\n  {100 * g3.bytes_frac:.1f} %)",
        f"GPTQ beats RTN only at 3 bits ({_paired_text(pairs.loc[(G3, R3)])} points)",
        f"ID pruning to half the MACs keeps {id5.quality:.2f} % ({_loss_text(pairs.loc[(ID5, 'dense')])} points under the dense\n  "
        f"{dense.quality:.2f} %)",
        f"to 0.3 of the MACs {id3.quality:.2f} %",
        f"SVD at ratio 2\n  ({svd2.macs_frac:.2f} of the MACs) keeps {svd2.quality:.2f} %",
        f"distinguishable at 0.9 ({_paired_text(fid[0])}) and 0.7 ({_paired_text(fid[1])}), ID above at 0.5\n  ({_paired_text(fid[2])} points)",
    ]
    for doc in (RESULTS, "notebooks/17_atlas.ipynb"):
        says(doc, *phrases)
    # the decoder
    ld, lg8 = lm.loc["dense"], lm.loc[G8]
    id9, fp9, lid7 = lm.loc["structured(criterion='id', mu=0.9)"], lm.loc["fisher_pruning(mu=0.9)"], lm.loc[ID7]
    assert pd.isna(bytes_won.loc[("smollm2-135m", 4), "pipeline"])  # no point reaches it
    assert lm.bytes_frac.min() > 0.25 and pd.isna(macs_won.loc[("smollm2-135m", 1.5), "pipeline"])
    destroyed = lm[lm.quality > 100 * ld.quality]
    assert set(destroyed.index) == {"svd(ratio=1.5)", "asvd(ratio=1.2, roles='ffn')", "pruning(ratio=2)"}
    phrases = [
        f"perplexity {ld.quality:.2f} on the held-out novel",
        f"GPTQ at 8 bits\n  ({lg8.quality:.2f} in {100 * lg8.bytes_frac:.0f} % of the bytes)",
        f"no point reaches 4× fewer bytes: the smallest, GPTQ\n  at 3 bits, stores {100 * lm.bytes_frac.min():.0f} %",
        f"ID pruning to 0.9\n  of the MACs ({id9.quality:.2f}) beats Kwon's Fisher masks ({fp9.quality:.2f})",
        f"costs {lid7.quality_loss:.0f} % perplexity ({lid7.quality:.2f})",
    ]
    for doc in (RESULTS, "notebooks/17_atlas.ipynb"):
        says(doc, *phrases)


def test_atlas_combination_verdicts():
    a = _atlas()
    tw, pairs = a["tw"], a["pairs"]
    c5 = tw.loc[f"{ID5} + {G4}"]
    both = tw[(tw.bytes_frac <= 0.125) & (tw.macs_frac <= 0.5)]
    assert list(both.index) == [f"{ID5} + {G4}"]
    idsvd = tw.loc[f"{ID7} + svd(ratio=1.5)"]
    on_id, on_svd = pairs.loc[(f"{ID5} + {G4}", ID5)], pairs.loc[(f"svd(ratio=1.5) + {G4}", "svd(ratio=1.5)")]
    assert on_id.verdict == on_svd.verdict == "≈"
    for doc in (RESULTS, "notebooks/17_atlas.ipynb"):
        says(doc,
             f"ID pruning to half the MACs then GPTQ at 4 bits is the only point with at most half the MACs and an "
             f"eighth of the bytes ({c5.quality:.2f} % in {100 * c5.bytes_frac:.1f} % of the bytes)",
             f"({_paired_text(on_id)} points against ID pruning alone)", f"on top of SVD at ratio 1.5 neither ({_paired_text(on_svd)})",
             f"({100 * idsvd.macs_frac:.0f} % of the MACs, {idsvd.quality:.2f} %) is "
             f"{_loss_text(pairs.loc[(f'{ID7} + svd(ratio=1.5)', ID7)])} points below ID pruning to 0.7 alone")


def test_atlas_counted_against_measured_and_timing():
    tw = _atlas()["tw"]
    quant = tw[tw.family.isin(["RTN", "GPTQ"])]
    ids = tw[tw.index.str.fullmatch(r"structured\(criterion='id', mu=0\.\d\)")].sort_values("macs_frac")
    svd = tw.loc[["svd(ratio=1.5)", "svd(ratio=2)", "svd(ratio=10)"]]
    csr = tw[tw.family == "pruning"]
    assert (quant.macs_frac == 1).all() and (csr.macs_frac == 1).all()
    assert ids.latency_frac.is_monotonic_increasing  # ID pruning's time follows its MACs
    says(RESULTS, f"quantized points run at {quant.latency_frac.min():.2f}–{quant.latency_frac.max():.2f}× the dense time "
                 f"(median {quant.latency_frac.median():.2f}×)",
         "ID\n  pruning's time follows its MACs (" + ", ".join(f"{m:.1f} → {l:.2f}" for m, l in zip(ids.macs_frac, ids.latency_frac)),
         "SVD's less so (" + ", ".join(f"{m:.2f} → {l:.2f}" for m, l in zip(svd.macs_frac, svd.latency_frac)),
         f"magnitude pruning stored as CSR ({csr.latency_frac.min():.2f}–{csr.latency_frac.max():.2f}×)",
         f"the dense model itself ranged from {tw.dense_latency_ms.min():.0f} to {tw.dense_latency_ms.max():.0f} ms")
    runs = table("atlas", "runs")
    full = runs[(runs.workers.astype(str) == "2") & (runs.points_run == 41)].iloc[-1]
    three = runs[(runs.workers.astype(str) == "1") & (runs.points_run == 28)].iloc[-1]
    says(RESULTS, f"on 2\nworkers in {full.wall_s / 60:.1f} minutes, the points' own times adding up to {full.cell_s / 60:.0f} minutes",
         f"28 points ran on one worker in {three.wall_s / 60:.1f} minutes")


def test_distillation_narrative_claims():
    runs = table("distillation_narrative", "kd_vs_pkd").set_index("objective")
    teacher = table("distillation_narrative").teacher_test_accuracy.iloc[0]
    kd, pkd = runs.loc["KD"], runs[runs.index.str.startswith("PKD")].iloc[0]
    assert 100 * (teacher - runs["test accuracy"].max()) < 1.5  # the seed's target, met with more training
    terms = table("distillation_narrative", "loss_terms")
    pkd_terms = terms[terms.objective == pkd.name]
    pt, soft = pkd_terms[pkd_terms.term == "pt"].value, pkd_terms[pkd_terms.term == "kd"].value
    wall = table("distillation_narrative", "runs").wall_s.iloc[-1]
    nb = "notebooks/14_distillation.ipynb"
    says(nb, f"{wall / 60:.1f} minutes", f"reaches {100 * kd['test accuracy']:.2f} % test accuracy with KD and "
             f"{100 * pkd['test accuracy']:.2f} % with PKD (β = {pkd.beta:g}), against the teacher's {100 * teacher:.2f} %",
         f"it starts at {pt.iloc[0]:.1e} and ends at {pt.iloc[-1]:.1e}",
         f"about {pkd.beta * pt.iloc[-1]:.4f} against the soft targets' {soft.iloc[-1]:.3f}",
         f"PKD's {100 * (kd['test accuracy'] - pkd['test accuracy']):.2f} points under KD")
    says(RESULTS, f"`layers3` student to {100 * kd['test accuracy']:.2f} % with KD and {100 * pkd['test accuracy']:.2f} % with PKD")


# ---- students and PKD (README, seed 004) ----------------------------------------------------------

def test_student_table_claims():
    from tcomp_utils import figures
    from tcomp_utils.sweep import longest_first_wall

    results = pd.read_csv(ROOT / "papermill_runs/student_table/results.csv")
    cells = figures.student_cells(results).set_index("student")
    teacher = cells.attrs["teacher_score"]
    assert cells.attrs["headline"] == "macro_f1"
    grid = figures.student_beta_grid(results).set_index("beta")
    kd = grid[grid.objective == "kd"].iloc[0]
    pkd = grid[grid.objective == "pkd"]
    # the seed's grid searched at seed 0, the chosen beta run at 3 seeds
    assert list(pkd.index) == [10.0, 100.0, 500.0, 1000.0] and (pkd.verdict == "≈").all()
    assert kd.seeds == 3 and pkd.seeds.tolist() == [3, 1, 1, 1]
    sign = lambda r: f"{r.difference:+.2f} [{r.lo:+.2f}, {r.hi:+.2f}]".replace("-", "−")  # noqa: E731
    l3 = cells.loc["layers3"]
    assert l3["best β"] == 10.0 and l3["best trained"] == "kd"
    ok_cells = (results.status == "ok").sum()
    v = figures.student_verdicts(results)
    kd_ce = v[(v.student == "layers3") & (v.comparison == "KD − CE")].iloc[0]
    assert kd_ce.verdict == "above" and kd_ce.seeds == 3
    says(RESULTS, f"KD reaches {kd.test:.2f} ± {kd.test_sd:.2f} % macro-F1 over 3 seeds",
         f"PKD at β = 10 (the β chosen on validation at seed 0) {pkd.loc[10.0].test:.2f} ± {pkd.loc[10.0].test_sd:.2f} %, "
         f"PKD − KD {sign(pkd.loc[10.0])} points over the 3 seeds",
         f"{sign(pkd.loc[100.0])} at 100, {sign(pkd.loc[500.0])} at 500 and {sign(pkd.loc[1000.0])} at 1000",
         f"Fine-tuning on the labels alone gives {l3.CE:.2f} %: KD − CE {sign(kd_ce)} points, above")
    vt = v[v.comparison.str.endswith("− teacher")].set_index("student")
    assert len(vt) == 11 and (vt.verdict == "below").all()  # every trained student
    top = cells[cells.seeds > 0].sort_values("KD", ascending=False)
    assert list(top.index[:3]) == ["self_falconlayer", "self_svd", "ffn_tuckervertical"]
    assert list(top.index[-2:]) == ["self_tuckerlayer", "self_tucker_4d"]
    says(README, f"not met (the 3-layer student {kd.test:.2f} % with KD against {teacher:.2f} %; KD beats fine-tuning on the "
                 "labels, PKD is not distinguishable from KD; every student below its teacher on the paired interval)")
    says(RESULTS, f"({ok_cells} cells, 3 seeds on `layers3`)")
    says(RESULTS, f"No student matches the teacher ({teacher:.2f} %)",
         f"`self_falconlayer` (KD {cells.loc['self_falconlayer', 'KD']:.2f} %, {sign(vt.loc['self_falconlayer'])} points, "
         f"{cells.loc['self_falconlayer', 'MACs']:.0f} % of the MACs)",
         f"`self_svd` (KD {cells.loc['self_svd', 'KD']:.2f} %, {sign(vt.loc['self_svd'])} points, "
         f"{cells.loc['self_svd', 'MACs']:.0f} % of the MACs)",
         f"`ffn_tuckervertical`\n  ({cells.loc['ffn_tuckervertical', 'KD']:.2f} %, {sign(vt.loc['ffn_tuckervertical'])})",
         f"`layers3` (KD {l3.KD:.2f} %, {sign(vt.loc['layers3'])} over the seeds)",
         f"`self_tuckerlayer` ({cells.loc['self_tuckerlayer', 'KD']:.2f} %, {sign(vt.loc['self_tuckerlayer'])})",
         f"`self_tucker_4d` ({cells.loc['self_tucker_4d', 'KD']:.2f} %, {sign(vt.loc['self_tucker_4d'])})",
         f"`layers3`,\n  {l3.latency:.2f}× the teacher's latency")
    half = cells[cells.MACs <= 50.01]  # the classifier head's MACs put layers3 a hair above 50 %
    assert list(half.index) == ["layers3"]
    falcon = ["self_falconlayer", "self_falconvertical", "self_falcon_4d", "self_falcon"]
    assert cells.loc[falcon, "KD"].is_monotonic_decreasing
    shared = falcon[:3]  # the three forms that share factors across layers
    says(RESULTS, ", ".join(f"`{f}` {cells.loc[f, 'KD']:.2f}" for f in falcon) + " % after KD",
         f"store {cells.loc[shared, 'params'].round().unique()[0]:.0f} % of the parameters and count "
         f"{cells.loc[shared, 'MACs'].round().unique()[0]:.0f} % of the teacher's")
    sgd, svd_fit = cells.loc["self_falcon (SGD fit)"], cells.loc["self_falcon"]
    rec, fac = cells.loc["self_tuckervertical (reconstructed)"], cells.loc["self_tuckervertical"]
    assert rec.untrained == fac.untrained and rec.MACs < fac.MACs
    says(RESULTS, f"`self_falcon` starts at {sgd.untrained:.2f} % (per-block SVD: {svd_fit.untrained:.2f} %)",
         f"scores {rec.untrained:.2f} % untrained, as the factorized one, at {rec.MACs:.0f} % of the MACs instead of "
         f"{fac.MACs:.0f} % and {rec.latency:.2f}× the teacher's latency instead of {fac.latency:.2f}×")
    retired = results[results.status == "retired"]
    cut = retired[retired.teacher_name.eq("minilm-l6-tweets3") & retired.objective.eq("kd")
                  & (retired.fit.eq("sgd") | retired.reconstruct.astype(str).eq("True"))]
    assert len(cut) == 2
    says(RESULTS, f"after KD the SGD fit reached {100 * cut[cut.fit.eq('sgd')].test_macro_f1.iloc[0]:.2f} % "
                  f"and the reconstructed Tucker student {100 * cut[cut.fit.ne('sgd')].test_macro_f1.iloc[0]:.2f} %")
    assert not (results.status == "failed").any()
    ok = results[results.status == "ok"]
    trained = ok[ok.objective != "none"]
    l3 = trained[trained.student == "layers3"]
    assert len(l3) == 12 and set(l3.max_steps) == {1000} and set(trained[trained.student != "layers3"].max_steps) == {500}
    log = pd.read_csv(ROOT / "papermill_runs/student_table/train_log.csv", low_memory=False)
    evals = log[log.key.isin(set(l3.key)) & log.val_macro_f1.notna()].sort_values(["key", "step"])

    def late_gain(e: pd.DataFrame) -> float:  # best of the last 300 steps over the best before them (points)
        end = e.step.max()
        return 100 * (e[e.step > end - 300].val_macro_f1.max() - e[e.step <= end - 300].val_macro_f1.max())
    gains = evals.groupby("key").apply(late_gain, include_groups=False)
    rises = evals.groupby("key").apply(lambda e: 100 * (e.val_macro_f1.max() - e[e.step <= 300].val_macro_f1.max()),
                                       include_groups=False)
    early = l3[l3.train_steps < 1000]
    old_kd = retired[retired.teacher_name.eq("minilm-l6-tweets3") & retired.student.eq("layers3")
                     & retired.objective.eq("kd") & retired.max_steps.eq(250)]
    assert len(old_kd) == 3 and 100 * old_kd.test_macro_f1.mean() < kd.test - 2
    says(RESULTS, f"{len(early)} of the 12 `layers3` runs stopped early",
         "CE at steps " + ", ".join(f"{n:.0f}" for n in early[early.objective == "ce"].sort_values("seed").train_steps[:-1])
         + f" and\n  {early[early.objective == 'ce'].sort_values('seed').train_steps.iloc[-1]:.0f}, PKD seed 1 at "
         f"{early[early.objective == 'pkd'].train_steps.iloc[0]:.0f}",
         f"the last 300 steps of each run added at most {gains.max():.2f} points of validation\n  macro-F1 to its best "
         f"before them (the steps from 300 on: up to {rises.max():.2f})",
         f"75.45 % at 250 steps (3 seeds, an earlier sitting's retired rows) to {kd.test:.2f} %")
    assert f"{100 * old_kd.test_macro_f1.mean():.2f}" == "75.45"
    # the factorized students: stopped early, or their best at the last scoring and by how much it rose there
    fac = trained[trained.student != "layers3"].set_index("key")
    fac_log = log[log.key.isin(set(fac.index)) & log.val_macro_f1.notna()].sort_values(["key", "step"])
    last_rise = fac_log.groupby("key").val_macro_f1.apply(lambda v: 100 * (v.iloc[-1] - v.iloc[:-1].max()))
    at_end = fac[fac.best_step == fac.train_steps]
    climbing = at_end[at_end.index.map(last_rise) > 1]
    assert list(climbing.student) == ["self_tuckerlayer"] and len(at_end) == 4
    tl = fac_log[fac_log.key == climbing.index[0]].val_macro_f1
    old_fac = retired[retired.teacher_name.eq("minilm-l6-tweets3") & retired.objective.eq("kd") & retired.max_steps.eq(250)
                      & retired.fit.isna() & retired.reconstruct.isna() & retired.student.ne("layers3")
                      ].set_index("student").test_macro_f1
    moved = cells.loc[old_fac.index, "KD"] - 100 * old_fac
    tucker = ["self_tuckerlayer", "self_tuckervertical", "self_tucker_4d"]
    assert moved[tucker].min() > moved.drop(tucker).abs().max()
    says(RESULTS, f"{(fac.train_steps < 500).sum()} of the 10 stopped early, and of\n  the {len(at_end)} that score their best "
                  f"at the last scoring, 3 gain at most {at_end.drop(climbing.index).index.map(last_rise).max():.2f} points",
         f"({100 * tl.iloc[-2]:.2f} →\n  {100 * tl.iloc[-1]:.2f} % in its last 50 steps)",
         "the Tucker students moved most (" + ", ".join(
             f"`{m}` {100 * old_fac[m]:.2f} → {cells.loc[m, 'KD']:.2f} %" for m in tucker) + ")",
         f"the others by at most {moved.drop(tucker).abs().max():.2f} points")
    # time: the complete grid as one sitting, every cell computed with the current code
    runs = pd.read_csv(ROOT / "papermill_runs/student_table/runs.csv")
    sitting = runs.iloc[-1]
    assert sitting.points_run == sitting.points_total == len(ok) == 36 and str(sitting.workers) == "2"
    assert not ok.stale.astype(str).eq("True").any()
    assert sitting.wall_s / 60 <= 120  # the issue's 2-hour target
    before = retired[retired.teacher_name.eq("minilm-l6-tweets3") & retired.student.eq("layers3") & retired.max_steps.eq(1000)]
    med = lambda d, o: d[d.objective == o].elapsed_s.median()  # noqa: E731
    assert (before[before.objective == "kd"].sort_values("seed").best_step.tolist()
            == l3[l3.objective == "kd"].sort_values("seed").best_step.tolist())
    says(RESULTS, f"in **{sitting.wall_s / 60:.1f} minutes**\n  ({len(ok)} cells, {sitting.cell_s / 60:.0f} cell-minutes)",
         f"cell now takes {med(l3, 'ce'):.0f} s with CE, {med(l3, 'kd'):.0f} s with KD and {med(l3, 'pkd'):.0f} s with PKD, "
         f"against {med(before, 'ce'):.0f}, {med(before, 'kd'):.0f} and {med(before, 'pkd'):.0f} s",
         f"The {120 - sitting.wall_s / 60:.0f} minutes left under the target")
    id5 = table("atlas").query("model_name == 'minilm-l6-tweets3' and pipeline == \"structured(criterion='id', mu=0.5)\"")
    l3c = cells.loc["layers3"]
    for doc in (RESULTS, "notebooks/17_atlas.ipynb"):
        says(doc, f"`layers3` after KD keeps {l3c.KD:.2f} % at {l3c.MACs:.0f} % of the MACs, where ID pruning to half "
                  f"the MACs without training keeps {id5.quality.iloc[0]:.2f} %; `ffn_svd` after KD "
                  f"{cells.loc['ffn_svd', 'KD']:.2f} % at {cells.loc['ffn_svd', 'MACs']:.0f} %")


# ---- make run: every table represented, and whether it reproduced (issue 35) --------------------

# a table whose one cell is too long for make run is represented by a spec of its own that runs one
# configuration through the same notebook
# make run's point of notebook 13 (one configuration on the Transformer) stands for both of its tables: a T5 cell
# takes 16 minutes and a second translation model, over make run's share
REPRESENTED_BY = {"composable_table": "composable_config", "composable_t5": "composable_config",
                  "composable_t5_grid": "composable_config"}


def test_the_atlas_names_its_points_at_or_below_no_skill():
    from tcomp_utils import atlas
    from tcomp_utils.majority import chance_macro_f1, majority_macro_f1

    pts = atlas.points(table("atlas", "results"))
    dead = pts[pts.no_skill]
    assert sorted(dead.pipeline) == ["ae(ratio=10, roles='ffn')", "ae(ratio=3, roles='ffn')", "pruning(ratio=10)",
                                     "pruning(ratio=3)", "svd(ratio=10)"]
    assert (dead.model == "minilm-l6-tweets3").all()
    # the autoencoder at x10 and pruning at x10 sit above the majority class's macro-F1 and still learnt nothing
    assert (dead.quality > majority_macro_f1("tweets3")).all()
    says(RESULTS, f"A macro-F1 at or below {chance_macro_f1('tweets3'):.1f} %",
         f"scores less,\n{majority_macro_f1('tweets3'):.1f} %)", f"winner ({len(dead)} tweet\npoints")


def test_make_run_represents_every_table_and_says_whether_it_reproduced():
    from tcomp_utils import figures, reproduce
    specs = reproduce.load_specs(sorted(str(p) for p in (ROOT / "papermill_runs").glob("*.yaml")), None, None)
    in_run = {s.name for s in specs}
    for t in list(figures.README_TABLES.values()) + list(figures.FIGURES.values()):
        sweep = t.source.split("/")[1]
        assert REPRESENTED_BY.get(sweep, sweep) in in_run, f"{sweep} has no point in make run"
    r = pd.read_csv(ROOT / "papermill_runs" / "reproduction.csv")
    assert set(r.table) == in_run
    assert sum(len(s.reduced if s.reduced is not None else s.points) for s in specs) == len(r)
    runs = pd.read_csv(ROOT / "papermill_runs" / "reproduction_runs.csv").iloc[-1]
    ok = r[r.status == "reproduced"]
    assert runs.points == len(r) and runs.reproduced == len(ok) and runs.workers == 2
    known = r[r.status == "known difference"]
    assert (known.reason.str.len() > 0).all() if len(known) else True  # each with the reason its spec states
    says(REPRODUCTION, f"reproduced {len(ok)} of {len(r)} points within tolerance, in {r.table.nunique()} tables"
         + (f"; {len(known)} known difference(s)" if len(known) else ""),
         f"{runs.wall_s / 60:.1f} minutes for the points on 2 workers",
         f"largest relative difference among them {ok.largest_relative_difference.max():.1g}; every value "
         f"identical in {(ok.largest_relative_difference == 0).sum()} of them")
    says(README, f"({runs.wall_s / 60:.1f} minutes for the points on 2 cores")
    for row in r[r.status != "reproduced"].itertuples():  # every miss is named, with its table
        says(REPRODUCTION, f"`{row.table}`")


def test_make_reproduce_time_is_the_committed_cells_time():
    """`make reproduce`'s stated hours are the committed cells' recorded seconds (every ok cell of every sweep,
    each timed with another cell beside it), halved for 2 workers, and the largest grids are named with theirs."""
    hours = {p.parent.name: table(p.parent.name).elapsed_s.sum() / 3600
             for p in (ROOT / "papermill_runs").glob("*/results.csv")}
    total = sum(hours.values())
    packed = {k: round(v / 2, 1) for k, v in hours.items()}
    named = ["qat_table", "composable_table", "composable_t5_grid", "offline_compression"]
    assert sorted(packed, key=packed.get, reverse=True)[:4] == named
    assert max(v for k, v in packed.items() if k not in named) <= 1.5
    says(REPRODUCTION, f"about {total / 2:.0f} hours ({total:.1f} CPU-hours",
         f"the QAT grid takes {packed['qat_table']}, seed 002's composable grids {packed['composable_table']} on the "
         f"Transformer and {packed['composable_t5_grid']} on the T5, seed 000's offline table "
         f"{packed['offline_compression']}, and every other table 1.5 or less",
         f"every cell of every table (about {total / 2:.0f} h on 2 cores")
    says(README, f"`make reproduce` (about {total / 2:.0f} h on 2 cores")


def test_the_translation_learning_curve_in_the_readme_is_the_committed_one():
    """Issue 36's learning curve: the README's table is the committed CSV's; after one epoch every
    variant is still rising; over 8 epochs the d256 recipe reaches the goal of 25 test BLEU, beats the
    d128 one by a paired interval above 0 in-domain and is not distinguishable from it on the Ding
    sentences; the 45-minute estimates follow from the measured step costs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lc", ROOT / "benchmarks" / "translation_learning_curve.py")
    lc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lc)
    csv = ROOT / "benchmarks" / "results" / "translation_learning_curve.csv"
    assert lc.markdown(csv) in (ROOT / RESULTS).read_text(encoding="utf-8")
    rows = pd.read_csv(csv)
    final = rows[rows.kind == "final"].set_index("variant")
    val = rows[rows.kind == "validation"]
    one_epoch = {"d256-lr2e-3", "d256-lr1e-3", "d128-lr2e-3", "d128-lr4e-3"}  # 2 sizes x 2 rates
    big, small = "d256-lr2e-3-8ep", "d128-lr4e-3-8ep"
    assert one_epoch | {big, small} <= set(final.index)
    assert (final.test_examples == 1000).all() and (final.ood_examples == 1000).all()
    for name, part in val[val.variant.isin(one_epoch)].groupby("variant"):
        assert part.val_bleu.iloc[-1] == part.val_bleu.max(), name  # still rising when the epoch ended
    t = lambda v: f"{final.loc[v, 'test_bleu']:.1f}"  # noqa: E731
    assert final.loc["d256-lr2e-3"].test_bleu > final.loc["d256-lr1e-3"].test_bleu
    assert final.loc["d128-lr4e-3"].test_bleu > final.loc["d128-lr2e-3"].test_bleu
    says(RESULTS, f"the higher peak rate scored more at both sizes (d256: {t('d256-lr2e-3')} against "
                 f"{t('d256-lr1e-3')} test BLEU; d128: {t('d128-lr4e-3')} against {t('d128-lr2e-3')}; one seed each")
    for name in (big, small):  # levelled off: the last two epochs add less than the first two
        v = val[val.variant == name].val_bleu.to_numpy()
        assert v[-1] - v[-5] < v[3] - v[0], name
    assert final.loc[big].test_bleu >= 25 > final.loc[small].test_bleu
    says(RESULTS, f"reaches test BLEU {t(big)} in-domain**", f"chrF {final.loc[big, 'test_chrf']:.1f}",
         f"after {final.loc[big, 'elapsed_s'] / 60:.0f} training minutes on one thread, and {small} {t(small)}")
    step = final.elapsed_s / final.step
    says(RESULTS, f"a d256 step {step[big]:.1f} s, a d128 step {step[small]:.1f} s",
         f"scored four times an epoch: {step['d256-lr2e-3']:.1f} s and {step['d128-lr2e-3']:.1f} s)")
    for name, said in ((big, "about 740 d256 steps"), (small, "1,240 d128 steps")):
        assert abs(45 * 60 / step[name] - float(said.split()[-3].replace(",", ""))) < 15, name
        says(RESULTS, said)
    inside, outside = lc.paired(big, small, "test"), lc.paired(big, small, "ood_test")
    assert inside.verdict == "above" and outside.verdict == "≈"
    says(RESULTS, f"is {inside.difference:.1f} BLEU better (paired bootstrap 95 % interval [{inside.lo:.1f}, "
                 f"{inside.hi:.1f}]", f"({final.loc[big, 'ood_bleu']:.1f} and {final.loc[small, 'ood_bleu']:.1f}; "
                 f"difference {outside.difference:.1f} [{outside.lo:.1f}, {outside.hi:.1f}], not distinguishable")
    # the T5 at three times the recipe's steps: still not translating (the copy probe's factor does not carry over)
    t5, t5_val = "t5-d128-lr4e-3-9ep", val[val.variant == "t5-d128-lr4e-3-9ep"].set_index("step").val_bleu
    assert final.loc[t5, "step"] == 3 * 1032 and final.loc[t5].test_bleu < 2 and t5_val.max() < 2
    transformer_at_1032 = val[val.variant == small].set_index("step").val_bleu[1032]
    says(RESULTS, f"9 epochs, 3,096 steps, {final.loc[t5, 'elapsed_s'] / 60:.0f} training minutes on one thread) still has "
                  f"validation BLEU {t5_val[2752]:.1f} at step 2,752 and {t5_val[3096]:.1f} at\nthe end, and test BLEU "
                  f"{t(t5)} (Ding {final.loc[t5, 'ood_bleu']:.1f}), where the Transformer of the same size had "
                  f"{transformer_at_1032:.1f} at step 1,032")
    says(README, f"The T5 by the same recipe scores 0.9, and still {t(t5)} after three times its steps "
                 f"({final.loc[t5, 'elapsed_s'] / 60:.0f} minutes on one\nthread)")


def test_the_translation_baselines_in_the_readme_are_the_committed_ones():
    """Issue 36's baselines: the README's table is the committed CSV's; three Transformer seeds with
    their mean ± sd; the seed spread exceeds one model's test-sample interval (a paired interval of two
    seeds excludes 0); the T5 by the same recipe is below the Transformer by a paired interval. The
    paired intervals come from the kept translations (no model is trained or loaded)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tb", ROOT / "benchmarks" / "translation_baselines.py")
    tb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tb)
    assert tb.table() in (ROOT / RESULTS).read_text(encoding="utf-8")
    rows = pd.read_csv(tb.OUT)
    tr = rows[rows.recipe == "transformer-help-en-de"]
    assert sorted(tr.seed) == [0, 1, 2, 3] and (rows.test_examples == 2010).all() and (rows.ood_examples == 1000).all()
    says(RESULTS, f"give test BLEU {tr.test_bleu.mean():.1f} ± {tr.test_bleu.std(ddof=1):.1f} (sd) in-domain")
    assert tr.test_bleu.max() < 25
    seeds = tb.paired(("transformer-help-en-de", 0), ("transformer-help-en-de", 1))
    assert seeds.verdict != "≈" and abs(seeds.difference) > tr.test_bleu_ci95.max() / 2
    says(RESULTS, f"seed 0 minus seed 1 is {seeds.difference:.1f} BLEU, paired interval [{seeds.lo:.1f}, {seeds.hi:.1f}]",
         f"one model's bootstrap interval (±{tr.test_bleu_ci95.mean():.1f})")
    seed0 = tr[tr.seed == 0].iloc[0]
    says(RESULTS, f"the same model bit for bit on any machine, test BLEU {seed0.test_bleu:.2f} again on a fresh one")
    t5 = rows[rows.recipe == "t5-help-en-de"].iloc[0]
    gap = tb.paired(("t5-help-en-de", 0), ("transformer-help-en-de", 0))
    assert gap.verdict == "below"
    says(RESULTS, f"test BLEU {t5.test_bleu:.1f} (paired difference to the Transformer's seed 0: {gap.difference:.1f}, "
                 f"[{gap.lo:.1f}, {gap.hi:.1f}])")
    # the T5 blocks with the Transformer's embeddings translate, below the Transformer and far above the tied T5
    te = rows[rows.recipe == "t5-help-en-de-transformer-embeddings"].iloc[0]
    below = tb.paired(("t5-help-en-de-transformer-embeddings", 0), ("transformer-help-en-de", 0))
    above = tb.paired(("t5-help-en-de-transformer-embeddings", 0), ("t5-help-en-de", 0))
    assert below.verdict == "below" and above.verdict == "above" and te.test_bleu < tr.test_bleu.min()
    assert te.best_step == te.steps == seed0.steps  # the same steps, and still climbing at the last one
    pts = lambda x, sign="": f"{x:{sign}.1f}".replace("-", "−")  # noqa: E731
    says(RESULTS, f"scores test BLEU **{te.test_bleu:.1f}** (Ding {te.ood_bleu:.1f}) after the same {te.steps:,} steps, "
                  f"{above.difference:.1f} above the tied T5 (paired interval [{above.lo:.1f}, {above.hi:.1f}])",
         f"{pts(below.difference)} [{pts(below.lo)}, {pts(below.hi)}] against its seed 0, and under the lowest of the "
         f"Transformer's four seeds ({tr.test_bleu.min():.1f})",
         f"about {tr.test_bleu.mean() - te.test_bleu:.1f} BLEU short",
         f"{te.validation_bleu:.1f} on all 2,000 validation pairs, where the Transformer's seed 0 has "
         f"{seed0.validation_bleu:.1f}", f"The T5 that translates trained in {te.train_minutes:.1f} minutes on one "
                                         f"thread ({te.wall_minutes:.1f} with its scoring)")
    says(README, f"`t5-help-en-de-transformer-embeddings` scores **{te.test_bleu:.1f}** (Ding {te.ood_bleu:.1f}) after "
                 f"the same {te.steps:,} steps ({te.train_minutes:.1f} minutes on one thread), still climbing, and "
                 f"{-below.difference:.1f} BLEU below the Transformer's seed 0 on the paired interval")
    # the same T5 with its queries trained at 1/sqrt(d_kv) of the rate: above the Transformer of the same training seed
    qr = rows[rows.recipe == "t5-help-en-de-query-rate"].set_index("seed")
    assert sorted(qr.index) == [0, 1] and (qr.best_step == qr.steps).all() and qr.test_bleu.min() > tr.test_bleu.max()
    same = {s: tb.paired(("t5-help-en-de-query-rate", s), ("transformer-help-en-de", s)) for s in (0, 1)}
    gain = tb.paired(("t5-help-en-de-query-rate", 0), ("t5-help-en-de-transformer-embeddings", 0))
    twins = tb.paired(("t5-help-en-de-query-rate", 1), ("t5-help-en-de-query-rate", 0))
    assert all(p.verdict == "above" for p in same.values()) and gain.verdict == "above" and twins.verdict == "≈"
    iv = lambda p: f"{pts(p.difference, '+')} [{pts(p.lo, '+')}, {pts(p.hi, '+')}]"  # noqa: E731
    says(RESULTS, f"test BLEU **{qr.test_bleu.mean():.1f} ± {qr.test_bleu.std(ddof=1):.1f}**\nover 2 training seeds "
                  f"(Ding {qr.ood_bleu.mean():.1f} ± {qr.ood_bleu.std(ddof=1):.1f}), {gain.difference:.1f} above the same "
                  f"T5 without it (seed 0, paired interval [{gain.lo:.1f}, {gain.hi:.1f}])",
         f"{iv(same[0])} for seed 0 and {iv(same[1])}\nfor seed 1",
         f"not distinguishable from each other ({iv(twins)})",
         f"Its validation BLEU on all 2,000 pairs is\n{qr.validation_bleu[0]:.1f}",
         f"in {qr.train_minutes[0]:.1f} and {qr.train_minutes[1]:.1f} minutes")
    says(README, f"`t5-help-en-de-query-rate` scores **{qr.test_bleu.mean():.1f} ± {qr.test_bleu.std(ddof=1):.1f}** (2 "
                 f"training seeds;\nDing {qr.ood_bleu.mean():.1f}) in {qr.train_minutes[0]:.1f} minutes on one thread",
         f"(paired: {iv(same[0])} and {iv(same[1])})")
    # the front page states the same baseline, its spread and where the learning curve gets (issue 36's Must show)
    ood = tr.ood_bleu
    says(README, f"greedy test BLEU **{tr.test_bleu.mean():.1f} ± {tr.test_bleu.std(ddof=1):.1f}** in-domain (4 training "
                 f"seeds, mean ± sd; one model's 95 % bootstrap half-width ±{tr.test_bleu_ci95.mean():.1f}) and "
                 f"{ood.mean():.1f} ± {ood.std(ddof=1):.1f} out of domain",
         "`python benchmarks/translation_baselines.py transformer-help-en-de:0,1,2,3 t5-help-en-de:0 "
         "t5-help-en-de-transformer-embeddings:0 t5-help-en-de-query-rate:0,1`",
         f"{seed0.parameters / 1e6:.1f} M parameters, {seed0.steps:,.0f} steps", f"The T5 by the same recipe scores {t5.test_bleu:.1f}, and still")
    curve = pd.read_csv(ROOT / "benchmarks" / "results" / "translation_learning_curve.csv")
    final = curve[curve.kind == "final"].set_index("variant")
    big, small = final.loc["d256-lr2e-3-8ep"], final.loc["d128-lr4e-3-8ep"]
    assert big.test_bleu >= 25 > small.test_bleu
    says(README, f"the d256 model reaches {big.test_bleu:.1f} after {big.elapsed_s / 60:.0f} minutes on one thread (8 epochs) "
                 f"and the d128 one levels off at {small.test_bleu:.1f}")
    with gzip.open(ROOT / "data" / "libreoffice_help_en_de.tsv.gz", "rt", encoding="utf-8") as fh:
        pairs = sum(1 for _ in fh)  # one segment pair a line
    says(README, f"({pairs:,} segment pairs from Debian's packages")


def test_the_copy_probe_behind_the_slow_t5():
    """The T5's lag is alignment: on a copy task with no language it needs about three times the
    Transformer's steps at both rates, and then it copies too (benchmarks/t5_copy_probe.py)."""
    rows = pd.read_csv(ROOT / "benchmarks" / "results" / "t5_copy_probe.csv")
    first = rows[rows.loss < 1].groupby(["architecture", "lr"]).step.min()
    ratio = {lr: first[("t5", lr)] / first[("transformer", lr)] for lr in (4e-3, 1e-3)}
    assert all(2.5 <= r <= 3.5 for r in ratio.values()), ratio  # "about three times"
    last = rows.groupby(["architecture", "lr"]).tail(1).set_index(["architecture", "lr"]).loss
    assert last[("t5", 4e-3)] < 0.05 and last[("transformer", 4e-3)] < 0.05  # both copy in the end
    says(RESULTS, f"falls under 1 nat by step {first[('transformer', 4e-3)]} at the recipes' peak rate 4e-3 and by step "
                  f"{first[('transformer', 1e-3)]} at 1e-3; the T5's by step {first[('t5', 4e-3)]} and by step "
                  f"{first[('t5', 1e-3)]:,}: **{ratio[4e-3]:.1f} and {ratio[1e-3]:.1f} times the steps**",
         f"(loss {last[('t5', 4e-3)]:.3f} after 1,500 steps at 4e-3)")
    says(README, "more slowly than the Transformer (a copy probe in")
    base = pd.read_csv(ROOT / "benchmarks" / "results" / "translation_baselines.csv").set_index("recipe")
    t5 = base.loc["t5-help-en-de"]
    # the extrapolation was measured: test_the_translation_learning_curve_in_the_readme_is_the_committed_one
    says(RESULTS, f"three times the recipe's {t5.steps:,}\nsteps before it translates. Measured, it does not")


def test_the_t5_pilots_that_point_to_the_embeddings():
    """T5's blocks with the Transformer's embeddings (untied tables, scaled inputs, sinusoidal positions) translate
    after 344 steps where any one or two of the three do not (benchmarks/results/t5_pilots.jsonl); the Transformer's
    own 6.3 at that step is read off its training log, which is not committed."""
    import json

    rows = [json.loads(line) for line in (ROOT / "benchmarks" / "results" / "t5_pilots.jsonl").read_text().splitlines()]
    flags = ("untie", "embed_scale", "sinusoidal")
    by = {tuple(f for f in flags if r.get(f)): r for r in rows if r["steps"] == 344 and r.get("dropout") == 0.0}
    assert len(by) == 5 and all(r["recipe"] == "t5-help-en-de" for r in by.values())
    full, others = by.pop(flags), list(by.values())
    assert full["val_bleu"] > 3 * max(r["val_bleu"] for r in others)
    last = lambda r: r["loss_per_50"][-1]  # noqa: E731  (steps 301-344)
    assert last(by[("untie", "embed_scale")]) < min(last(by[(f,)]) for f in ("untie", "embed_scale")) - 0.25
    says(RESULTS, f"reach validation BLEU\n{full['val_bleu']:.2f} where the tied T5 reaches",
         f"reach at most {max(r['val_bleu'] for r in others):.2f}")
    pilots = (ROOT / "benchmarks" / "results" / "translation_pilots.md").read_text(encoding="utf-8")
    for key, r in [*by.items(), (flags, full)]:
        name = " ".join("--" + f.replace("_", "-") for f in key)
        assert f"`{name}`" in pilots, name
        assert f"| {r['loss_per_50'][-3]:.2f} | {last(r):.2f} | " in pilots, (name, r)
    longer = [r for r in rows if r["steps"] == 688]
    assert len(longer) == 1 and longer[0]["loss_per_50"][:6] == full["loss_per_50"][:6]  # the same run, further
    says(RESULTS, f"Run on to 688 steps it reaches {longer[0]['val_bleu']:.2f}")
    assert (f"reaches validation BLEU {longer[0]['val_bleu']:.2f} with loss {last(longer[0]):.2f} over steps 650–688"
            in " ".join(pilots.split()))
    dropped = [r for r in rows if r["steps"] == 344 and "dropout" not in r and all(r.get(f) for f in flags)]
    assert len(dropped) == 1 and dropped[0]["val_bleu"] < full["val_bleu"] / 2  # the recipe's dropout 0.1
    assert f"loss {last(dropped[0]):.2f} over steps 301–344 and validation BLEU {dropped[0]['val_bleu']:.2f}" in " ".join(pilots.split())


# ---- the front page (README) ------------------------------------------------------------------

def test_the_readme_quotes_only_numbers_stated_where_they_are_checked():
    """The README is a summary: every decimal number, percentage or measured time in it must be one that
    RESULTS.md or docs/ state (where the claims tests above check them against the results), so a number
    cannot change there without the README failing here."""
    sources = " ".join(_text(doc) for doc in (RESULTS, *(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))))
    readme = _text(README)
    numbers = re.findall(r"\d+ min \d+ s|(?<![=\d.])\d[\d,]*\.\d+|\d+ %", readme)  # not a version pin
    assert len(numbers) >= 10, numbers  # the seed verdicts and the commands' times
    missing = [n for n in numbers if n not in sources]
    assert not missing, f"README numbers that RESULTS.md and docs/ do not state: {missing}"
    assert len((ROOT / README).read_text(encoding="utf-8").splitlines()) <= 200  # a front page, read in minutes
    for target in re.findall(r"\]\(((?:notebooks|docs|papermill_runs)/[^)#]+|RESULTS\.md)\)", readme):
        assert (ROOT / target).exists(), f"the README links {target}, which does not exist"


def test_the_three_class_model_under_quantization():
    """Issue 37's GPTQ rows: each verdict of the RESULTS prose read from the paired intervals over the same
    test tweets (to fp32, GPTQ with act-order against RTN, act-order against plain GPTQ)."""
    from tcomp_utils import metrics
    from tcomp_utils.figures.gptq import paired_to_fp32
    r = table("gptq_table")
    d = paired_to_fp32(r, "minilm-l6-tweets3")
    assert len(d) == 18
    assert (d[d.bits == 8].verdict == "≈").all() and (d[d.bits == 3].verdict == "below").all()
    at4 = d[d.bits == 4].set_index(["variant", "grid"]).verdict
    assert sorted(at4[at4 != "below"].index) == [("GPTQ", "g128"), ("GPTQ + act-order", "g128")]
    rtn3 = d[(d.variant == "RTN") & (d.bits == 3) & (d.grid == "per channel")].iloc[0]
    fp32 = cell("minilm-l6-tweets3", "fp32")
    labels = metrics.decode_predictions(fp32.test_labels)

    def paired(a: str, b: str, bits: int, group: int):
        pa, pb = (metrics.decode_predictions(cell("minilm-l6-tweets3", v, bits, group).test_predictions) for v in (a, b))
        return metrics.paired_interval(labels, pa, pb, "macro_f1")
    against_rtn = [paired("GPTQ + act-order", "RTN", b, g).verdict for b in (4, 3) for g in (0, 128)]
    assert against_rtn == ["≈"] * 4
    ao3 = paired("GPTQ + act-order", "GPTQ", 3, 0)
    assert ao3.verdict == "below"
    pts = lambda x: f"{100 * x:.1f}".replace("-", "−")  # noqa: E731
    runs = pd.read_csv(ROOT / "papermill_runs" / "gptq_table" / "runs.csv")
    three = runs[runs.points_run == 19].iloc[0]  # the three-class cells, one run
    assert three.wall_s / 60 <= 120  # issue 37's target for a complete grid on 2 cores
    says(RESULTS, f"the three-class model's 19 took {three.wall_s / 60:.0f} minutes on one worker")
    says(RESULTS, f"**90.25 %** and **{100 * fp32.test_macro_f1:.2f} %**",
         f"(RTN per channel {rtn3.difference:.1f} points [{rtn3.lo:.1f}, {rtn3.hi:.1f}])".replace("-", "−"),
         f"not distinguishable from 0 in any of the {len(against_rtn)} cells below 8 bits",
         f"act-order is below plain GPTQ at 3 bits per channel ({pts(ao3.difference)} [{pts(ao3.lo)}, {pts(ao3.hi)}])")
