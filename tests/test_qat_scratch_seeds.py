"""The QAT table's extra training seeds (benchmarks/qat_scratch_seeds.py): a row with training seed 0 is the
table's own from-scratch cell (the notebook's protocol, step for step), a saved row replaces an earlier one
of the same row and seed, and a bad row is refused before any training."""
import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from tcomp_utils import runner

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("qat_scratch_seeds", ROOT / "benchmarks" / "qat_scratch_seeds.py")
seeds = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = seeds  # its dataclass looks its module up
spec.loader.exec_module(seeds)
SMOKE = "transformer-de-en-smoke"


@pytest.mark.parametrize("text", ["seed:attention", "seed:0:attention", "seed:9:attention", "seed:2:all",
                                  "binary:1:linear", "ternary:2:attention", "seed:2:attention:x"])
def test_a_bad_row_is_refused_naming_what_is_allowed(text, tmp_path):
    with pytest.raises(ValueError, match=r"QUANTIZER\[:BITS\]:TARGET .*attention\+embeddings"):
        seeds.Row.parse(text)
    with pytest.raises(SystemExit):
        seeds.main([text, "--out", str(tmp_path / "out.csv")])
    assert not (tmp_path / "out.csv").exists()


def test_rows_parse_to_the_table_spec_s_fields():
    assert seeds.Row.parse("seed:2:attention") == seeds.Row("seed", 2, "attention")
    assert seeds.Row.parse("binary:linear") == seeds.Row("binary", None, "linear")
    assert seeds.Row.parse("seed:8:attention+embeddings").name == "seed8-attention+embeddings"


def test_seed_0_is_the_notebook_s_from_scratch_cell_and_a_rerun_replaces_its_row(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel on one thread, as the script and a sweep point
    row = seeds.Row("seed", 2, "attention")
    mine, kept = seeds.train_and_score(row, 0, model_name=SMOKE, threads=1)
    nb = json.loads((ROOT / "notebooks" / "11_qat_table.ipynb").read_text(encoding="utf-8"))
    cell = runner.execute_point(nb, dict(profile="smoke", protocol="scratch", quantizer="seed", bits=2,
                                         target="attention"), cwd=str(ROOT / "notebooks"))
    assert cell["status"] == "ok", cell["error"]
    log = pd.DataFrame(cell["records"]["train_log"])
    assert mine["steps"] == cell["records"]["train_steps"] and mine["best_step"] == cell["records"]["best_step"]
    assert mine["last_loss"] == pytest.approx(log[log.kind == "train"].loss.tail(20).mean(), abs=1e-9)
    assert len(kept["test"]) == mine["test_examples"] and "ood_test" not in kept  # de-en has no Ding twin
    out = tmp_path / "seeds.csv"
    seeds.save(mine, kept, row, out)
    seeds.save({**mine, "test_bleu": -1.0}, kept, row, out)  # the same row and seed again: replaced
    rows = pd.read_csv(out)
    assert len(rows) == 1 and rows.test_bleu.iloc[0] == -1.0
    saved = json.loads(gzip.decompress(seeds.hypotheses_path(row, 0, out).read_bytes()))
    assert saved == kept
