"""Autoencoder training time (CPU) on ``minilm-l6``: per module (``separated``) and per role stacked
across the 6 layers (``concatenated``), and for the word-embedding table, at ratios 3, 10 and 25,
with the seed's design (30 epochs, batches of 16 rows; 256 for the 30,522-row table), against SVD
of the same matrices; and the latency of the compressed model (the reconstructed weight is cached:
the same matmuls as dense).

    python benchmarks/bench_autoencoder.py [--threads 2] [--epochs 30] [--out benchmarks/results]

Prints and writes ``ae_training_time.csv``: role, mode, ratio, latent size, matrices, rows per
autoencoder, epochs, seconds per autoencoder, seconds per module, SVD seconds per module, and the
seconds to train 3 seeds together (:func:`train_autoencoders`, as the offline table does; at ratio 10)
against 3 times one seed; and
``ae_latency.csv``: the encoder on 32 tweets padded to 128 tokens, dense vs AE-compressed FFN.
Times depend on the machine; the header says which.
"""
from __future__ import annotations

import copy
import dataclasses
import time

import pandas as pd
import torch

from tcomp_utils import adapters, models
from tcomp_utils.metrics import latency
from tcomp_utils.methods.autoencoder import RowGroup, decoder_widths_for, fit_modules, train_autoencoders
from tcomp_utils.registry import compress, method_config

from bench_common import setup, show

CASES = [("query", "separated", 16), ("query", "concatenated", 16), ("ffn_in", "separated", 16),
         ("ffn_in", "concatenated", 16), ("ffn_out", "separated", 16), ("ffn_out", "concatenated", 16),
         ("embeddings", "separated", 256)]
RATIOS = (3, 10, 25)


def main() -> None:
    args, out = setup(__doc__, "Autoencoder compression: training time", epochs=30)
    model = models.load_model("minilm-l6", "base")[0].eval()
    rows = []
    for role, mode, batch in CASES:
        rms = adapters.find_modules(model, role)
        groups = [rms] if mode == "concatenated" else [rms[:1]]  # one module stands for the six
        for ratio in RATIOS:
            config = method_config("ae", roles=role, mode=mode, ratio=ratio, epochs=args.epochs, batch_size=batch,
                                   select="weight_error")
            start = time.perf_counter()
            fit = fit_modules(model, groups[0], config)
            seconds = time.perf_counter() - start
            together = float("nan")
            if ratio == 10:  # the same autoencoder with seeds 0, 1, 2 in one batched training
                start = time.perf_counter()
                group = RowGroup(groups[0], torch.cat([rm.module.weight.detach() for rm in groups[0]]).float(),
                                 fit["latent"], decoder_widths_for(fit["latent"], config.decoder_widths), [None] * len(groups[0]))
                train_autoencoders(group, [dataclasses.replace(config, seed=s) for s in range(3)])
                together = time.perf_counter() - start
            start = time.perf_counter()
            compress(copy.deepcopy(model), method_config("svd", roles=role, layers=None if role == "embeddings" else [0],
                                                         ratio=ratio), progress=False)
            svd = time.perf_counter() - start
            n_rows = sum(rm.module.weight.shape[0] for rm in groups[0])
            rows.append(dict(role=role, mode=mode, ratio=ratio, latent=fit["latent"], matrices=len(groups[0]),
                             rows=n_rows, epochs=args.epochs, batch=batch, seconds=round(seconds, 2),
                             seconds_per_module=round(seconds / len(groups[0]), 2), svd_seconds_per_module=round(svd, 3),
                             seconds_3_seeds_together=round(together, 2), seconds_3_seeds_apart=round(3 * seconds, 2) if ratio == 10 else float("nan")))
            print(rows[-1], flush=True)
    show("ae_training_time", pd.DataFrame(rows), out,
         f"AE training time ({args.threads} threads): one autoencoder per module or per stacked role")

    ids = torch.randint(1000, 20000, (32, 128))
    ae = copy.deepcopy(model)
    compress(ae, method_config("ae", roles="ffn", ratio=10, epochs=1, select="last"), progress=False)
    lat = []
    for name, m in (("dense", model), ("ae ffn x10 (cached weights)", ae)):
        with torch.inference_mode():
            r = latency(lambda m=m: m(input_ids=ids), runs=args.runs, threads=args.threads)
        lat.append(dict(model=name, median_ms=round(r.median_ms, 1), p90_ms=round(r.p90_ms, 1)))
    show("ae_latency", pd.DataFrame(lat), out, "Encoder on 32 × 128 tokens: dense vs AE-compressed FFN")


if __name__ == "__main__":
    main()
