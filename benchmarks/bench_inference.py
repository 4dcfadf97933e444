"""Inference with quantized weights (CPU): latency and memory of ``smollm2-135m`` in fp32, with
weight-only 8- and 4-bit ``QuantLinear`` layers (with and without the de-quantized weight cache),
and with torch's dynamic int8 ``Linear`` path.

    python benchmarks/bench_inference.py [--threads 2] [--runs 20] [--out benchmarks/results]

Each variant runs in a fresh Python process (so one variant's memory does not hide another's):
load the model, quantize every linear layer of the blocks (round-to-nearest: the codes GPTQ would
choose cost the same to run), free what is no longer used, then time one forward pass on 512 and on
16 tokens (median of ``--runs``; the first 512-token pass, which fills the cache, is timed on its
own as ``first_ms``). Memory: ``stored_mb`` is what the budget counter counts (the model as
stored), ``rss_mb`` the process's resident memory once the model is ready, ``peak_mb`` the highest
resident memory sampled (every 0.5 ms) during the timed passes. Prints and writes
``model_inference.csv``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pandas as pd

VARIANTS = ("fp32", "weight-only 8-bit, cache", "weight-only 4-bit, cache", "weight-only 4-bit, no cache",
            "int8 dynamic")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


class PeakRSS:
    """Highest resident memory (MB) seen by a sampling thread while the ``with`` block runs."""

    def __enter__(self):
        self.peak, self._stop = _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.0005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def measure(variant: str, threads: int, runs: int) -> dict:
    """One variant, in this process: setup, then latency and memory as a flat dict."""
    import ctypes
    import gc

    import torch

    from tcomp_utils import budget, models
    from tcomp_utils.methods import quantized
    from tcomp_utils.methods.quantization import quantize
    from tcomp_utils.metrics import latency

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model, _ = models.load_model("smollm2-135m", "causal-lm")
    model.eval()
    with torch.no_grad():  # own every weight (the loader may map the cached file lazily), so RSS counts it all
        for t in list(model.parameters()) + list(model.buffers()):
            t.data = t.data.clone()
    gc.collect()
    if variant.startswith("weight-only"):
        quantize(model, "rtn", bits=int(variant.split()[1].split("-")[0]), progress=False)
        quantized.set_dequant_cache_limit(0 if "no cache" in variant else 1024)
    elif variant == "int8 dynamic":
        model = quantized.int8_dynamic(model)
    stored = budget.footprint(model).bytes / 1e6 if variant != "int8 dynamic" else float("nan")
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the freed fp32 weights back to the OS before measuring
    rss = _rss_mb()
    long_ids, short_ids = torch.randint(0, 49152, (1, 512)), torch.randint(0, 49152, (1, 16))
    with PeakRSS() as peak, torch.inference_mode():
        t0 = time.perf_counter()
        model(long_ids)
        first = (time.perf_counter() - t0) * 1e3
        ms512 = latency(lambda: model(long_ids), runs=runs, threads=threads).median_ms
        ms16 = latency(lambda: model(short_ids), runs=runs, threads=threads).median_ms
    return dict(variant=variant, stored_mb=round(stored, 1), rss_mb=round(rss, 1), peak_mb=round(peak.peak, 1),
                first_ms=round(first, 1), ms_512_tokens=round(ms512, 1), ms_16_tokens=round(ms16, 2),
                cache_mb=round(quantized.dequant_cache_bytes() / 2**20, 1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--variant":  # the child process of one variant
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return
    from bench_common import setup, show

    args, out = setup(__doc__, "quantized inference")
    rows = []
    for variant in VARIANTS:
        child = subprocess.run([sys.executable, __file__, "--variant", variant, str(args.threads), str(args.runs)],
                               capture_output=True, text=True, check=True)
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(f"  {variant}: {rows[-1]['ms_512_tokens']} ms / 512 tokens", flush=True)
    table = pd.DataFrame(rows)
    for n in ("512", "16"):
        table[f"vs_fp32_{n}"] = (table[f"ms_{n}_tokens"] / table[f"ms_{n}_tokens"][0]).round(2)
    show("model_inference", table, out, "smollm2-135m, one forward pass (batch 1): latency (ms, median) and "
         "memory (MB): stored, resident when ready, peak during the passes; de-quantized cache held")


if __name__ == "__main__":
    main()
