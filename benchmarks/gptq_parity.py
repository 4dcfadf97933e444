"""GPTQ parity (CPU): tcomp's GPTQ against the authors' reference implementation on ``smollm2-135m``,
side by side, on the same calibration segments and with the same perplexity function.

    python benchmarks/gptq_parity.py --reference DIR [--settings "4-bit per channel,4-bit g128"]
        [--draws 3] [--impl both|tcomp|reference] [--threads 1] [--eval-tokens 16384] [--blocks N]
        [--out benchmarks/results] [--append] [--check-block0]

The reference is IST-DASLab/gptq (Frantar et al., ICLR 2023), its ``gptq.py`` and ``quant.py``. It
is fetched separately and never copied into this repository:

    git clone https://github.com/IST-DASLab/gptq /path/to/gptq
    python benchmarks/gptq_parity.py --reference /path/to/gptq

``DIR`` is put at the front of ``sys.path`` and ``GPTQ`` / ``Quantizer`` are imported from it at run
time. The reference is driven as its ``llama.py`` (``llama_sequential``, without true-sequential)
drives it: block 0's inputs are captured once; then, block by block, a ``GPTQ`` object with a
``Quantizer`` (per channel, asymmetric, no MSE grid search) is made for every ``nn.Linear`` of the
block, forward hooks feed it the block's inputs one calibration sample (batch 1) at a time,
``fasterquant(blocksize=128, percdamp=0.01, ...)`` writes the de-quantized weights into the layers,
and the block is run again to give the next block its inputs. tcomp's side is
``quantize(model, "gptq", ...)`` (the same protocol, :func:`tcomp_utils.capture.sequential`).

Settings (the parity table): ``4-bit per channel``, ``4-bit g128``, ``4-bit per channel act-order``,
``3-bit per channel``, ``3-bit g128``. Calibration draw ``d`` (0 .. ``--draws`` − 1) is 32 segments
of 512 tokens of the calibration prose of ``austen`` at offsets seeded by ``d``; both
implementations get the same draw. Perplexity: :func:`tcomp_utils.metrics.perplexity` on the first
``--eval-tokens`` test tokens (512-token windows) for both, and once for the fp32 model (impl
``fp32``). Time: CPU seconds (``time.process_time``) and wall seconds of the quantization (block
capture included, model copy and evaluation excluded) on ``--threads`` torch threads.

Output: ``<out>/gptq_parity.csv`` (impl, setting, bits, group_size, act_order, draw, perplexity,
cpu_seconds, wall_seconds, threads, blocks, eval_tokens), one row written as soon as it is done;
with ``--append`` the rows already in the file are kept and their (impl, setting, draw) skipped, so
an interrupted run resumes where it stopped. Then a summary (``gptq_parity_summary.csv``): per
setting and impl the mean ± std of perplexity over the draws, mean CPU and wall seconds, and
tcomp's means relative to the reference's (%).

``--check-block0`` instead quantizes the first ``--blocks`` blocks (default 1) with both
implementations on draw 0 and prints, per linear layer of block 0, how far apart their
de-quantized weights are in units of the grid step (``gptq_parity_block0.csv``). Expect a few
per cent of the codes to differ: tcomp rounds every grid scale to float16 before quantizing, the
reference keeps float32, and GPTQ's error feedback carries each flipped code into later columns.

``--blocks N`` quantizes only the first N blocks (for smoke checks); default all 30. A full run
(5 settings × 3 draws × 2 implementations, all blocks, 16,384 evaluation tokens) is about
2 × 15 runs of 2–5 minutes each on one thread.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import io
import math
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from tcomp_utils import adapters, capture, metrics, models, task_models, tasks
from tcomp_utils.methods.quant_grid import column_groups
from tcomp_utils.methods.quantization import quantize

from bench_common import setup, show

# name: (bits, group_size (0 = one scale per output channel), act_order, static_groups)
SETTINGS = {
    "4-bit per channel": (4, 0, False, False),
    "4-bit g128": (4, 128, False, False),
    "4-bit per channel act-order": (4, 0, True, False),
    "3-bit per channel": (3, 0, False, False),
    "3-bit g128": (3, 128, False, False),
}
COLUMNS = ["impl", "setting", "bits", "group_size", "act_order", "draw", "perplexity", "cpu_seconds",
           "wall_seconds", "threads", "blocks", "eval_tokens"]


# ---------------------------------------------------------------------------------------------
# the reference, imported at run time from a checkout of github.com/IST-DASLab/gptq

def load_reference(folder: str):
    """``(GPTQ, Quantizer)`` from the reference checkout ``folder`` (put first on ``sys.path``)."""
    root = Path(folder).expanduser().resolve()
    if not (root / "gptq.py").is_file() or not (root / "quant.py").is_file():
        raise SystemExit(f"--reference {folder}: no gptq.py and quant.py there; "
                         "git clone https://github.com/IST-DASLab/gptq and pass its folder")
    sys.path.insert(0, str(root))
    # The reference's fasterquant() calls torch.cuda.synchronize(), which raises on a CPU-only
    # torch build: make it a no-op there (it only waits for GPU kernels, of which there are none).
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *args, **kwargs: None
    with contextlib.redirect_stdout(io.StringIO()):  # quant.py prints 'CUDA extension not installed.'
        from gptq import GPTQ
        from quant import Quantizer
    return GPTQ, Quantizer


def _main_output(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _row_of(obj, r: int, batch_size: int):
    """Sample ``r`` of a batch's block argument: tensors whose first dimension is the batch size
    are sliced to ``r:r+1`` (recursing into tuples, lists and dicts); everything else (position
    embeddings and ids shared by the batch with leading dimension 1, None, flags) is kept."""
    if torch.is_tensor(obj):
        return obj[r:r + 1] if batch_size > 1 and obj.dim() >= 1 and obj.shape[0] == batch_size else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_row_of(o, r, batch_size) for o in obj)
    if isinstance(obj, dict):
        return {k: _row_of(v, r, batch_size) for k, v in obj.items()}
    return obj


@torch.no_grad()
def reference_gptq(model: nn.Module, batches: list[dict], bits: int, group_size: int, act_order: bool,
                   static_groups: bool, reference: tuple, blocks: int | None = None) -> None:
    """Quantize ``model`` in place with the reference's GPTQ, as ``llama_sequential`` does (without
    true-sequential): one calibration sample at a time, the de-quantized weights left in the
    layers' ``weight``. Only the first ``blocks`` blocks (default all)."""
    GPTQ, Quantizer = reference
    (_, layers), = adapters.layer_stacks(model).values()
    n_blocks = len(layers) if not blocks else min(blocks, len(layers))
    was_training = model.training
    model.eval()
    # block 0's inputs, split into single samples; the other arguments of block 0 (position
    # embeddings, mask...) are reused for every block, as llama.py reuses attention_mask/position_ids
    hidden, other = capture.block_inputs(model, layers, 0, 0, batches)
    inps, extra = [], []
    for h, (args, kwargs) in zip(hidden, other[0]):
        for r in range(h.shape[0]):
            inps.append(h[r:r + 1])
            extra.append((_row_of(args, r, h.shape[0]), _row_of(kwargs, r, h.shape[0])))

    def run(layer):
        return [_main_output(layer(x, *a, **kw)) for x, (a, kw) in zip(inps, extra)]

    for i in range(n_blocks):
        layer = layers[i]
        subset = {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
        gptq = {}
        for name, m in subset.items():
            gptq[name] = GPTQ(m)
            gptq[name].quantizer = Quantizer()
            gptq[name].quantizer.configure(bits, perchannel=True, sym=False, mse=False)

        def add_batch(name):
            def hook(_, inp, out):
                gptq[name].add_batch(inp[0].data, out.data)
            return hook

        handles = [m.register_forward_hook(add_batch(name)) for name, m in subset.items()]
        try:
            run(layer)
        finally:
            for h in handles:
                h.remove()
        for name in subset:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints time and error per layer
                gptq[name].fasterquant(blocksize=128, percdamp=0.01, groupsize=group_size or -1,
                                       actorder=act_order, static_groups=static_groups)
            gptq[name].free()
        del gptq
        if i < n_blocks - 1:
            inps = run(layer)  # the quantized block gives the next block its inputs
    model.train(was_training)


def tcomp_gptq(model: nn.Module, batches: list[dict], bits: int, group_size: int, act_order: bool,
               static_groups: bool, blocks: int | None = None) -> None:
    """Quantize ``model`` in place with tcomp's GPTQ (the first ``blocks`` blocks, default all), all
    options explicit (the config's defaults may differ); a whole block at a time, as the reference."""
    quantize(model, "gptq", bits=bits, group_size=group_size or None, calibration=batches, act_order=act_order,
             static_groups=static_groups, block_size=128, damp=0.01, true_sequential=False, progress=False,
             layers=list(range(blocks)) if blocks else None)


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    """Run ``fn``; return (CPU seconds of this process, wall seconds)."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn(*args, **kwargs)
    return time.process_time() - c0, time.perf_counter() - w0


# ---------------------------------------------------------------------------------------------
# block 0: de-quantized weights of both implementations

def check_block0(model: nn.Module, batches: list[dict], setting: str, reference: tuple, blocks: int) -> pd.DataFrame:
    """Quantize copies of ``model`` (first ``blocks`` blocks) with both implementations; per linear
    layer of block 0: the largest and mean |W_tcomp − W_reference| in grid steps (tcomp's scale of
    the weight's row and group), the share of weights whose code differs (> half a step apart),
    and the largest difference relative to max |W| of the fp32 layer."""
    bits, group_size, act_order, static_groups = SETTINGS[setting]
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    tcomp_gptq(ours, batches, bits, group_size, act_order, static_groups, blocks)
    reference_gptq(theirs, batches, bits, group_size, act_order, static_groups, reference, blocks)
    (_, original), = adapters.layer_stacks(model).values()
    (_, ours_blocks), = adapters.layer_stacks(ours).values()
    (_, theirs_blocks), = adapters.layer_stacks(theirs).values()
    rows = []
    for name, fp in original[0].named_modules():
        if not isinstance(fp, nn.Linear):
            continue
        q = ours_blocks[0].get_submodule(name)
        w_ours, w_theirs = q.weight_matrix(), theirs_blocks[0].get_submodule(name).weight.detach().float()
        groups = q.g_idx.long() if q.g_idx.numel() else column_groups(q.grid, q.in_features)
        step = q.scales.float()[:, groups]
        diff = (w_ours - w_theirs).abs()
        rows.append(dict(setting=setting, layer=name, max_diff_steps=(diff / step).max().item(),
                         mean_diff_steps=(diff / step).mean().item(),
                         codes_differing_pct=100 * (diff > 0.5 * step).float().mean().item(),
                         max_diff_rel_max_w=(diff.max() / fp.weight.detach().abs().max()).item()))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# the CSV: one row at a time, resumable

def _key(row: dict) -> tuple[str, str, str]:
    return str(row["impl"]), str(row["setting"]), str(row["draw"])


def open_results(path: Path, append: bool, blocks: int, eval_tokens: int) -> set[tuple[str, str, str]]:
    """Start ``path`` afresh (header only), or with ``append`` keep it and return the keys of its
    rows; refuse to mix rows of a different ``blocks`` or ``eval_tokens``."""
    if append and path.is_file() and path.stat().st_size:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        other = {(r["blocks"], r["eval_tokens"]) for r in rows} - {(str(blocks), str(eval_tokens))}
        if other:
            raise SystemExit(f"{path} holds rows for (blocks, eval_tokens) {sorted(other)}, this run is "
                             f"({blocks}, {eval_tokens}): use another --out or drop --append")
        return {_key(r) for r in rows}
    with path.open("w", newline="") as f:
        csv.DictWriter(f, COLUMNS).writeheader()
    return set()


def write_row(path: Path, row: dict) -> None:
    with path.open("a", newline="") as f:
        csv.DictWriter(f, COLUMNS).writerow(row)


def summary(path: Path) -> pd.DataFrame:
    """Per setting and impl: mean ± std of perplexity over draws, mean seconds; tcomp vs reference (%)."""
    t = pd.read_csv(path)
    order = {name: k for k, name in enumerate(["fp32", *SETTINGS])}
    g = t.groupby(["setting", "impl"], sort=False).agg(draws=("perplexity", "size"), ppl_mean=("perplexity", "mean"),
                                                       ppl_std=("perplexity", "std"), cpu_s=("cpu_seconds", "mean"),
                                                       wall_s=("wall_seconds", "mean")).reset_index()
    g = g.sort_values(["setting", "impl"], key=lambda s: s.map(order) if s.name == "setting" else s, kind="stable")
    ref = g[g.impl == "reference"].set_index("setting")
    ppl_vs, cpu_vs = [], []
    for _, r in g.iterrows():
        has_ref = r.impl == "tcomp" and r.setting in ref.index
        ppl_vs.append(round(100 * r.ppl_mean / ref.ppl_mean[r.setting], 2) if has_ref else math.nan)
        cpu_vs.append(round(100 * r.cpu_s / ref.cpu_s[r.setting], 1) if has_ref else math.nan)
    return pd.DataFrame({
        "setting": g.setting, "impl": g.impl, "draws": g.draws,
        "perplexity": [f"{m:.3f} ± {s:.3f}" if not math.isnan(s) else f"{m:.3f}" for m, s in zip(g.ppl_mean, g.ppl_std)],
        "cpu_seconds": g.cpu_s.round(1), "wall_seconds": g.wall_s.round(1),
        "ppl_vs_reference_pct": ppl_vs, "cpu_vs_reference_pct": cpu_vs,
    })


# ---------------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help="a checkout of github.com/IST-DASLab/gptq (needed unless --impl tcomp)")
    ap.add_argument("--settings", default=",".join(SETTINGS),
                    help=f"comma-separated names among: {', '.join(SETTINGS)} (default: all)")
    ap.add_argument("--draws", type=int, default=3, help="calibration draws (seeds 0 .. draws-1)")
    ap.add_argument("--impl", choices=("both", "tcomp", "reference"), default="both")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-tokens", type=int, default=16384, help="test tokens for perplexity")
    ap.add_argument("--blocks", "--layers", dest="blocks", type=int, default=0,
                    help="quantize only the first N blocks (default 0: all)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--append", action="store_true", help="keep the rows already in the CSV and skip them")
    ap.add_argument("--check-block0", action="store_true",
                    help="only compare block 0's de-quantized weights of both implementations (draw 0)")
    args = ap.parse_args()
    unknown = [s for s in (s.strip() for s in args.settings.split(",")) if s and s not in SETTINGS]
    if unknown:
        ap.error(f"unknown setting(s) {unknown}; allowed: {', '.join(SETTINGS)}")
    args.settings = [s for s in (s.strip() for s in args.settings.split(",")) if s]
    if (args.impl != "tcomp" or args.check_block0) and not args.reference:
        ap.error("--reference DIR is needed (git clone https://github.com/IST-DASLab/gptq)")
    if args.draws < 1 or args.blocks < 0 or args.eval_tokens < 1024:
        ap.error("need --draws >= 1, --blocks >= 0 and --eval-tokens >= 1024")
    return args


def main() -> None:
    args = parse_args()
    # bench_common.setup parses the shared options itself: hand it ours (seed, threads, folder, header)
    sys.argv = [sys.argv[0], "--threads", str(args.threads), "--out", args.out]
    _, out = setup(__doc__, "GPTQ parity: tcomp vs the reference (IST-DASLab/gptq)")
    reference = load_reference(args.reference) if args.reference else None

    model, tok = models.load_model("smollm2-135m", "causal-lm")
    (_, layers), = adapters.layer_stacks(model).values()
    n_blocks = min(args.blocks, len(layers)) if args.blocks else len(layers)
    prose = tasks.load_task("austen")
    calibration_text = prose.text("calibration")
    draw = lambda d: task_models.lm_segments(tok, calibration_text, n=32, length=512, seed=d)  # noqa: E731

    if args.check_block0:
        tables = [check_block0(model, draw(0), s, reference, args.blocks or 1) for s in args.settings]
        show("gptq_parity_block0", pd.concat(tables).round(5), out,
             f"block 0 de-quantized weights, tcomp vs reference (draw 0, {args.blocks or 1} block(s) quantized): "
             "|difference| in grid steps, share of codes differing, max difference / max |W|")
        return

    test_ids = tok(prose.text("test"), return_tensors="pt").input_ids[0]
    ppl = lambda m: metrics.perplexity(m, test_ids, seq_len=512, max_tokens=args.eval_tokens,  # noqa: E731
                                       progress=False).perplexity
    path = out / "gptq_parity.csv"
    done = open_results(path, args.append, n_blocks, args.eval_tokens)
    common = dict(threads=args.threads, blocks=n_blocks, eval_tokens=args.eval_tokens)

    fp32 = dict(impl="fp32", setting="fp32", bits=32, group_size=0, act_order=False, draw="",
                cpu_seconds="", wall_seconds="", **common)
    if _key(fp32) not in done:
        write_row(path, fp32 | dict(perplexity=round(ppl(model), 4)))
    impls = ("reference", "tcomp") if args.impl == "both" else (args.impl,)
    for setting in args.settings:
        bits, group_size, act_order, static_groups = SETTINGS[setting]
        for d in range(args.draws):
            todo = [impl for impl in impls if (impl, setting, str(d)) not in done]
            if not todo:
                continue
            batches = draw(d)
            for impl in todo:
                m = copy.deepcopy(model)
                if impl == "reference":
                    cpu, wall = timed(reference_gptq, m, batches, bits, group_size, act_order, static_groups,
                                      reference, n_blocks)
                else:
                    cpu, wall = timed(tcomp_gptq, m, batches, bits, group_size, act_order, static_groups, n_blocks)
                row = dict(impl=impl, setting=setting, bits=bits, group_size=group_size, act_order=act_order,
                           draw=d, perplexity=round(ppl(m), 4), cpu_seconds=round(cpu, 2),
                           wall_seconds=round(wall, 2), **common)
                write_row(path, row)
                print(f"{setting:28s} draw {d}  {impl:9s}  perplexity {row['perplexity']:.4f}  "
                      f"{row['cpu_seconds']:.1f} CPU s  {row['wall_seconds']:.1f} s", flush=True)
                del m

    show("gptq_parity_summary", summary(path), out,
         f"smollm2-135m, GPTQ tcomp vs reference, {n_blocks} block(s) quantized, 32 x 512-token calibration segments "
         f"per draw: perplexity (first {args.eval_tokens} test tokens) mean ± std over draws, mean quantization "
         f"seconds on {args.threads} thread(s), tcomp relative to the reference (%)")


if __name__ == "__main__":
    main()
