"""QAT fine-tuning against its control (benchmarks/qat_finetune_control.py): a rerun is the table's own
fine-tuning cell step for step, each row is paired with the control on the same sentences (help test and
Ding), and a bad row is refused before any training."""
import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from tcomp_utils import runner

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


control = _load("qat_finetune_control")
baselines = sys.modules["translation_baselines"]
SMOKE = "transformer-de-en-smoke"


@pytest.mark.parametrize("text", ["contrl", "none:none", "seed:0:attention", "binary:1:linear"])
def test_a_bad_row_is_refused_naming_what_is_allowed(text, tmp_path, capsys):
    with pytest.raises(SystemExit):
        control.main([text, "--out", str(tmp_path / "out.csv")])
    err = capsys.readouterr().err
    assert "QUANTIZER[:BITS]:TARGET" in err and "attention+embeddings, or control" in err
    assert not (tmp_path / "out.csv").exists()


def test_control_and_rows_parse():
    assert control.parse("control") == control.CONTROL
    assert control.parse("seed:4:linear") == control.scratch.Row("seed", 4, "linear")


def test_a_rerun_is_the_notebook_s_fine_tuning_cell(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel on one thread, as the script and a sweep point
    row = control.scratch.Row("seed", 2, "attention")
    mine, kept = control.finetune_and_score(row, model_name=SMOKE, threads=1)
    nb = json.loads((ROOT / "notebooks" / "11_qat_table.ipynb").read_text(encoding="utf-8"))
    cell = runner.execute_point(nb, dict(profile="smoke", protocol="finetune", quantizer="seed", bits=2,
                                         target="attention", finetune_epochs=control.EPOCHS),
                                cwd=str(ROOT / "notebooks"))
    assert cell["status"] == "ok", cell["error"]
    log = pd.DataFrame(cell["records"]["train_log"])
    assert mine["steps"] == cell["records"]["train_steps"] and mine["best_step"] == cell["records"]["best_step"]
    assert mine["last_loss"] == pytest.approx(log[log.kind == "train"].loss.tail(20).mean(), abs=1e-9)
    assert len(kept["test"]) == mine["test_examples"] and "ood_test" not in kept  # de-en has no Ding twin


def _keep(out: Path, row, bleu: float, hyps: dict) -> None:
    control.scratch.save(dict(model=control.MODEL, quantizer=row.quantizer, bits=row.bits, target=row.target,
                              seed=0, test_bleu=bleu, ood_bleu=bleu), hyps, row, out)


def test_each_row_is_paired_with_the_control_on_the_same_sentences(tmp_path):
    recipe = control.translation.RECIPES[control.MODEL]
    refs = {split: baselines.references(recipe, split) for split in control.SPLITS}
    out = tmp_path / "ft.csv"
    with pytest.raises(LookupError, match="no control run"):
        _keep(out, control.scratch.Row("seed", 8, "attention"), 100.0, refs)
        control.compare(out)
    # the control translates every other sentence wrong; the 8-bit row every sentence right
    wrong = {s: [r if i % 2 else "falsch" for i, r in enumerate(v)] for s, v in refs.items()}
    _keep(out, control.CONTROL, 50.0, wrong)
    c = control.compare(out)
    assert list(c.row) == ["seed8-attention"]
    r = c.iloc[0]
    assert r.cell_bleu == pytest.approx(20.5554, abs=1e-3)  # the table's 8-bit attention fine-tuning cell
    for split in control.SPLITS:
        assert r[f"{split}_diff"] > 0 and r[f"{split}_lo"] > 0 and r[f"{split}_verdict"] == "above"
    assert "| seed8-attention | 100.00 (20.56) | +" in control.table(out)
    saved = json.loads(gzip.decompress(control.scratch.hypotheses_path(control.CONTROL, 0, out).read_bytes()))
    assert saved == wrong
