"""One harness for a saved model's footprint, counted and measured, in a fresh process.

    result = probe(folder, inputs)   # folder: written by serialize.save_compressed

A child Python process loads the model from ``folder`` with :func:`serialize.load_compressed`,
counts it again with the budget counter (parameters, stored bytes, MACs per token), times its
forward pass on ``inputs`` (one thread, median of ``runs``) and reads its peak resident memory.
A fresh process for every model means no point's memory or warm caches leak into the next one's,
and the counts come from what was saved, not from the object that was compressed.

Peak memory: the child resets the kernel's high-water mark of its resident set after its imports
(``/proc/self/clear_refs``, Linux) and reads it (``VmHWM``) after loading and running, so the
number is what loading and running the model added; where that is not possible it falls back to
``getrusage``'s peak since the process started, less the resident set after the imports (which can
only over-state it), and says so in ``memory_method``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

INPUTS = "probe_inputs.pt"


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def _measure(folder: Path, inputs: Path, runs: int, warmup: int, threads: int, seq_len: int) -> dict:
    from . import budget, metrics, serialize

    batch = torch.load(inputs)
    base_kb = _status_kb("VmRSS") or 0
    exact = _reset_peak()
    model = serialize.load_compressed(folder)
    loaded_kb = _status_kb("VmRSS") or 0
    fp = budget.footprint(model, seq_len)
    timed = metrics.latency(lambda: model(**batch), runs=runs, warmup=warmup, threads=threads)
    if exact and _status_kb("VmHWM") is not None:
        peak_kb, method = _status_kb("VmHWM") - base_kb, "VmHWM after clear_refs"
    else:  # ru_maxrss is in KiB on Linux, bytes on macOS
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_kb = (peak // 1024 if sys.platform == "darwin" else peak) - base_kb
        method = "ru_maxrss less the resident set after imports"
    return {"saved_params": fp.params, "saved_bytes": fp.bytes, "saved_macs": fp.macs,
            "file_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
            "latency_ms": timed.median_ms, "latency_p10_ms": timed.p10_ms, "latency_p90_ms": timed.p90_ms,
            "latency_runs": timed.runs, "threads": timed.threads,
            "load_mb": (loaded_kb - base_kb) / 1024, "peak_mb": peak_kb / 1024, "memory_method": method}


def saved_description(folder: str | os.PathLike) -> dict:
    """The ``tcomp.json`` of the model saved in ``folder`` (read without building the model), its
    ``config`` (the HF config) a mapping."""
    path = Path(folder) / "tcomp.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no saved model (tcomp.json): save it with serialize.save_compressed")
    try:
        description = json.loads(path.read_text())
        if not isinstance(description, dict) or not isinstance(description["config"], dict):
            raise TypeError("the description and its config must be mappings")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a valid description ({type(err).__name__}: {err})") from None
    return description


def random_inputs(folder: str | os.PathLike, batch: int = 1, seq_len: int = 128,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """One forward pass's inputs for the model saved in ``folder``: ``batch`` rows of ``seq_len``
    token ids drawn by ``seed`` from its vocabulary (an encoder-decoder model reads them on both
    sides), all attended. For counting and timing only: a forward pass costs the same whatever
    tokens it reads."""
    config = saved_description(folder)["config"]
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if not isinstance(vocab, int) or vocab < 1:
        raise ValueError(f"the config saved in {folder} gives no vocab_size (got {vocab!r}): pass the inputs yourself")
    if batch < 1 or seq_len < 1:
        raise ValueError(f"need batch >= 1 and seq_len >= 1, got batch={batch}, seq_len={seq_len}")
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return inputs | {"decoder_input_ids": ids.clone()} if config.get("is_encoder_decoder") else inputs


def probe(folder: str | os.PathLike, inputs: dict[str, torch.Tensor], runs: int = 10, warmup: int = 2,
          threads: int = 1, seq_len: int = 128, timeout: float = 1800) -> dict:
    """Count and measure the model saved in ``folder`` in a fresh process: ``saved_params``,
    ``saved_bytes``, ``saved_macs`` (per token at ``seq_len``), ``file_bytes`` (the files on disk),
    ``latency_ms`` (median over ``runs`` forward passes on ``inputs``, with p10/p90), ``load_mb``
    and ``peak_mb`` (resident memory added by loading, and at the peak of loading and running, MiB).
    ``inputs``: the keyword arguments of one forward pass (e.g. a tokenized batch)."""
    folder = Path(folder)
    if not (folder / "tcomp.json").is_file():
        raise FileNotFoundError(f"{folder} holds no saved model (tcomp.json): save it with serialize.save_compressed")
    if runs < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"need runs >= 1, warmup >= 0, threads >= 1; got runs={runs}, warmup={warmup}, threads={threads}")
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(dict(inputs), Path(tmp) / INPUTS)
        cmd = [sys.executable, "-m", "tcomp_utils.probe", str(folder), str(Path(tmp) / INPUTS), "--runs", str(runs),
               "--warmup", str(warmup), "--threads", str(threads), "--seq-len", str(seq_len)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"probing {folder} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcomp_utils.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("inputs", type=Path)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args(argv)
    print(json.dumps(_measure(args.folder, args.inputs, args.runs, args.warmup, args.threads, args.seq_len)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
