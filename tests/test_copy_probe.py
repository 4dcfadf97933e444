"""The copy probe's batches (benchmarks/t5_copy_probe.py): each sequence is its own target, closed by
</s>, padding masked out of the attention and the loss; bad arguments are refused before any training."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("copy_probe", ROOT / "benchmarks" / "t5_copy_probe.py")
probe = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = probe  # its dataclass looks its module up
spec.loader.exec_module(probe)


def test_a_copy_batch_is_its_own_target_closed_by_eos():
    b = probe.copy_batch(torch.Generator().manual_seed(0), 32, vocab=50, lo=3, hi=9)
    ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == 32 and ids.shape[1] <= 10
    lengths = mask.sum(1) - 1  # symbols before </s>
    assert ((lengths >= 3) & (lengths <= 9)).all()
    for row, n in zip(ids, lengths):
        assert (row[:n] >= probe.FIRST).all() and (row[:n] < 50).all()
        assert row[n] == probe.EOS and (row[n + 1:] == probe.PAD).all()
    assert torch.equal(labels[mask == 1], ids[mask == 1]) and (labels[mask == 0] == -100).all()


def test_bad_arguments_are_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "OUT", tmp_path / "out.csv")
    with pytest.raises(SystemExit, match="--steps >= 50"):
        probe.main(["t5-help-en-de", "--steps", "10"])
    assert not (tmp_path / "out.csv").exists()
