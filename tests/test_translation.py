"""The translation task and the embedded translation model: tokenizer, batches, loss, decoding,
BLEU/chrF, recipe caching, resumable training."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tcomp_utils import metrics, tasks, translation

TINY = dataclasses.replace(translation.RECIPES["transformer-de-en-smoke"], train_examples=256, epochs=1, eval_every=4,
                           val_examples=8, eval_examples=16, vocab_size=300, max_length=16)


def test_both_directions_share_the_pairs_and_the_splits():
    de_en, en_de = tasks.load_task("de-en"), tasks.load_task("en-de")
    assert translation.pair_fields(de_en.spec) == ("de", "en") and translation.pair_fields(en_de.spec) == ("en", "de")
    for split, n in (("test", 1000), ("validation", 500)):
        assert len(de_en[split]) == n and de_en[split]["de"] == en_de[split]["de"]
    for side in ("de", "en"):  # a sentence with two translations stays within one split
        train = set(de_en["train"][side])
        assert not train & set(de_en["test"][side]) and not train & set(de_en["validation"][side])
        assert not set(de_en["test"][side]) & set(de_en["validation"][side])
    with pytest.raises(ValueError, match="not translation"):
        translation.pair_fields(tasks.get_task_spec("tweets"))


def test_translation_scores_give_bleu_chrf_and_their_signatures():
    refs = ["The cat sits on the mat.", "It is raining today."]
    same = metrics.translation_scores(refs, refs)
    assert same["bleu"] == pytest.approx(100.0) and same["chrf"] == pytest.approx(100.0)
    assert "tok:13a" in same["bleu_signature"] and "nc:6" in same["chrf_signature"]
    worse = metrics.translation_scores(["The dog sits on a mat.", "It rains."], refs)
    assert 0 < worse["chrf"] < 100 and worse["bleu"] < same["bleu"]
    with pytest.raises(ValueError, match="1 hypotheses but 2 references"):
        metrics.translation_scores(refs[:1], refs)


def test_tokenizer_has_t5_special_tokens_and_round_trips_text():
    task = tasks.load_task("de-en")
    tok = translation.train_tokenizer(task["train"]["de"][:2000] + task["train"]["en"][:2000], 500)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2) and len(tok) == 500
    text = task["test"]["de"][0]
    ids = tok(text).input_ids
    assert ids[-1] == tok.eos_token_id and tok.decode(ids, skip_special_tokens=True) == text
    with pytest.raises(ValueError, match="vocab_size must be > 3"):
        translation.train_tokenizer(["a b"], 3)


def test_the_bpe_tokenizer_is_the_same_on_every_run_and_round_trips_text():
    """BPE's trainer is deterministic (the unigram trainer is not): a recipe's model can be remade."""
    task = tasks.load_task("help-en-de")
    texts = task["train"]["en"][:1500] + task["train"]["de"][:1500]
    first, second = (translation.train_tokenizer(texts, 600, kind="bpe") for _ in range(2))
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str() and len(first) == 600
    assert (first.pad_token_id, first.eos_token_id, first.unk_token_id) == (0, 1, 2)
    text = task["test"]["de"][0]
    ids = first(text).input_ids
    assert ids[-1] == first.eos_token_id and first.decode(ids, skip_special_tokens=True) == text
    with pytest.raises(ValueError, match="tokenizer kind 'wordpiece'; allowed: unigram, bpe"):
        translation.train_tokenizer(texts, 600, kind="wordpiece")


def test_the_tokenizer_field_leaves_the_keys_of_unigram_recipes_unchanged():
    recipe = translation.RECIPES["transformer-de-en"]
    assert recipe.tokenizer == "unigram"
    assert recipe.key() == "5acc9dbc47c7"  # the key of the cached model the committed rows came from
    assert dataclasses.replace(recipe, tokenizer="bpe").key() != recipe.key()
    with pytest.raises(ValueError, match="tokenizer='sentencepiece'; allowed: unigram, bpe"):
        translation.TranslationRecipe(tokenizer="sentencepiece")


def test_batches_mask_label_padding_and_the_smoothed_loss_is_the_cross_entropy():
    task = tasks.load_task("de-en")
    tok = translation.train_tokenizer(task["train"]["de"][:500] + task["train"]["en"][:500], 300)
    batch = next(iter(translation.seq2seq_batches(tok, task["train"].select(range(8)), task.spec, 8, 16).epoch(0)))
    labels = batch["labels"]
    assert (labels == -100).any() and not (labels == tok.pad_token_id).any()
    assert batch["input_ids"].shape[1] <= 16
    model = translation.build_model(TINY, tok).eval()
    with torch.no_grad():
        smoothed = translation.smoothed_loss(0.1)(model, batch)
        plain = translation.smoothed_loss(0.0)(model, batch)
        assert plain == pytest.approx(model(**batch).loss.item(), rel=1e-5)   # HF's own loss: plain CE
    assert smoothed != pytest.approx(plain.item())


def test_recipes_name_a_known_architecture_with_consistent_heads():
    with pytest.raises(ValueError, match="architecture='rnn'; allowed: transformer, t5"):
        dataclasses.replace(TINY, architecture="rnn")
    with pytest.raises(ValueError, match=r"num_heads × d_kv = d_model; got 2 × 8 != 32"):
        dataclasses.replace(TINY, d_kv=8)
    dataclasses.replace(TINY, architecture="t5", d_kv=8)  # T5 sizes its heads freely


@pytest.mark.parametrize("architecture,cls", [("transformer", "MarianMTModel"), ("t5", "T5ForConditionalGeneration")])
def test_translate_keeps_input_order_and_beam_search_runs(architecture, cls):
    task = tasks.load_task("de-en")
    tok = translation.train_tokenizer(task["train"]["de"][:500] + task["train"]["en"][:500], 300)
    model = translation.build_model(dataclasses.replace(TINY, architecture=architecture), tok)
    assert type(model).__name__ == cls
    # the Transformer's generator is its own matrix (the seed's); transformers 5 ties T5's always
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (architecture == "t5")
    src = task["test"]["de"][:6]
    together = translation.translate(model, tok, src, batch_size=4, max_length=8)
    alone = [translation.translate(model, tok, [s], max_length=8)[0] for s in src]
    assert together == alone
    assert len(translation.translate(model, tok, src[:2], max_length=8, num_beams=3)) == 2


@pytest.mark.slow
def test_recipes_cache_and_reload_the_tokenizer_and_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(translation, "translation_model_dir", lambda: tmp_path)
    model, tok, info = translation.get_translation_model("tiny", TINY, progress=False)
    assert info.metrics["steps"] == 8 and info.metrics["test_examples"] == 16 and (info.path / "log.csv").is_file()
    assert "tok:13a" in info.metrics["test_bleu_signature"]
    saved = json.loads((info.path / "hypotheses.json").read_text())
    assert [len(saved[s]) for s in ("validation", "test")] == [info.metrics["validation_examples"], 16]

    def no_training(*a, **k):
        raise AssertionError("a cached recipe must not retrain")

    monkeypatch.setattr(translation, "make", no_training)
    again, tok2, info2 = translation.get_translation_model("tiny", TINY, progress=False)
    assert info2.path == info.path and info2.metrics == info.metrics
    task = tasks.load_task("de-en")
    src = task["test"]["de"][:5]
    assert tok2(src).input_ids == tok(src).input_ids
    ids = tok(src, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(again(**ids, decoder_input_ids=ids["input_ids"]).logits,
                           model(**ids, decoder_input_ids=ids["input_ids"]).logits)
    hyps = translation.translate(again, tok2, task["test"]["de"][:16], max_length=TINY.max_length)
    assert metrics.translation_scores(hyps, task["test"]["en"][:16])["bleu"] == info.metrics["test_bleu"]
    with pytest.raises(AssertionError, match="must not retrain"):
        translation.get_translation_model("tiny", dataclasses.replace(TINY, vocab_size=301), progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [info.path.name]  # nothing half-written, no checkpoint left


def test_a_help_corpus_model_is_remade_bit_for_bit_and_scored_out_of_domain_too(tmp_path, monkeypatch):
    """BPE vocabulary + one pinned thread: made twice, the same weights and the same translations; its
    metrics carry the Ding sentences' BLEU (out of domain), with the translations they scored."""
    monkeypatch.setattr(translation, "translation_model_dir", lambda: tmp_path)
    recipe = dataclasses.replace(TINY, task="help-en-de", tokenizer="bpe")
    model, _, info = translation.get_translation_model("tiny-help", recipe, progress=False)
    ding = tasks.load_task("en-de")["test"]
    assert info.metrics["ood_task"] == "en-de" and info.metrics["ood_test_examples"] == len(ding)
    saved = json.loads((info.path / "hypotheses.json").read_text())
    assert len(saved["ood_test"]) == len(ding)
    assert metrics.translation_scores(saved["ood_test"], ding["de"])["bleu"] == info.metrics["ood_test_bleu"]
    again, _, info2 = translation.get_translation_model("tiny-help", recipe, retrain=True, progress=False)
    untimed = lambda m: {k: v for k, v in m.items() if k != "train_time_s"}  # noqa: E731
    assert untimed(info2.metrics) == untimed(info.metrics)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_a_stopped_training_resumes_from_its_checkpoint_and_ends_as_an_unbroken_one(tmp_path, monkeypatch):
    task = tasks.load_task("de-en")
    tok = translation.train_tokenizer(task["train"]["de"][:500] + task["train"]["en"][:500], 300)
    whole = translation.build_model(TINY, tok)
    r1 = translation.train_model(whole, tok, TINY, task, checkpoint_dir=tmp_path / "a", progress=False)
    real, calls = translation.evaluate, []

    def stop_at_the_second_evaluation(*a, **k):  # after the checkpoint of step 4, before that of step 8
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(translation, "evaluate", stop_at_the_second_evaluation)
    with pytest.raises(KeyboardInterrupt):
        translation.train_model(translation.build_model(TINY, tok), tok, TINY, task, checkpoint_dir=tmp_path / "b",
                                progress=False)
    monkeypatch.setattr(translation, "evaluate", real)
    resumed = translation.build_model(TINY, tok)
    r2 = translation.train_model(resumed, tok, TINY, task, checkpoint_dir=tmp_path / "b", progress=False)
    assert r2.resumed and not r1.resumed and r1.steps == r2.steps == 8
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))


def test_a_recipe_with_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match=r"precision='fp8'; allowed: fp32, bf16"):
        dataclasses.replace(TINY, precision="fp8")
    assert dataclasses.replace(TINY, precision="fp32").key() != TINY.key()  # precision is part of the cache key


def test_unknown_translation_model_name():
    with pytest.raises(KeyError, match="unknown translation model 'marian'"):
        translation.get_translation_model("marian")


def _tiny_make(recipe, out_dir, checkpoint_dir=None, progress=True):
    """Stands in for training: a tiny Transformer and its tokenizer saved as make() saves them."""
    from conftest import tiny_marian

    tiny_marian().save_pretrained(out_dir, safe_serialization=True)
    translation.train_tokenizer(["ein guter Tag", "a good day"], 40, "bpe").save_pretrained(out_dir)
    return {"steps": 1}


def test_a_damaged_cached_translation_model_is_refused_with_how_to_retrain_it(tmp_path, monkeypatch, capsys):
    from tcomp_utils import files

    monkeypatch.setattr(translation, "translation_model_dir", lambda: tmp_path)
    monkeypatch.setattr(translation, "make", _tiny_make)
    _, _, info = translation.get_translation_model("tiny", TINY, progress=False)
    weights = info.path / "model.safetensors"

    def no_training(*a, **k):
        raise AssertionError("a cached model must not be retrained")

    monkeypatch.setattr(translation, "make", no_training)
    (info.path / files.CHECKSUMS).unlink()  # a model trained before checksums were recorded
    translation.get_translation_model("tiny", TINY, progress=False)
    assert "recorded them now" in capsys.readouterr().err and (info.path / files.CHECKSUMS).is_file()
    intact = weights.read_bytes()
    for damaged in (intact[:-1] + bytes([intact[-1] ^ 1]), intact[: len(intact) // 2]):  # a flipped bit, truncated
        weights.write_bytes(damaged)
        with pytest.raises(files.CacheCorruptedError, match=rf"{weights} does not match the SHA-256 recorded .*; "
                                                            r"retrain it with tcomp_utils\.translation\."
                                                            r"get_translation_model\('tiny', recipe, retrain=True\)"):
            translation.get_translation_model("tiny", TINY, progress=False)
    assert weights.read_bytes() == damaged  # nothing changed on disk


_TERMINATED_TRAINING = """
import sys, time
from pathlib import Path
from tcomp_utils import translation

def make(recipe, out_dir, checkpoint_dir=None, progress=True):
    checkpoint_dir.mkdir(parents=True)  # what a stopped training resumes from: kept
    (out_dir / "model.safetensors").write_bytes(b"half")
    print("building", flush=True)
    time.sleep(120)

translation.translation_model_dir = lambda: Path(sys.argv[1])
translation.make = make
translation.get_translation_model("transformer-de-en-smoke", progress=False)
"""


def test_sigterm_during_translation_training_leaves_no_build_folder_and_keeps_the_checkpoint(tmp_path):
    from test_files import terminated_while_building

    assert terminated_while_building(_TERMINATED_TRAINING, str(tmp_path)) == 143
    key = translation.RECIPES["transformer-de-en-smoke"].key()
    assert [p.name for p in tmp_path.iterdir()] == [f".ckpt-transformer-de-en-smoke-{key}"]


def test_a_t5_without_output_scaling_starts_with_logits_of_unit_scale_and_old_keys_stay():
    """``t5_output_scale=False`` builds T5 v1.1's head (no 1/√d_model before the tied head): its
    initial logits are √d_model times larger than the scaled T5's, and the recipe's key differs (the
    default leaves keys unchanged: test_the_tokenizer_field_leaves_the_keys_of_unigram_recipes_unchanged)."""
    tok = translation.train_tokenizer(["ein kleiner Test", "a small test"] * 20, 40)
    recipe = dataclasses.replace(TINY, architecture="t5", d_model=64, d_kv=16, num_heads=4)
    ids = torch.tensor([[5, 6, 7, 1]])
    spread = {}
    for scale in (True, False):
        model = translation.build_model(dataclasses.replace(recipe, t5_output_scale=scale), tok).eval()
        with torch.no_grad():
            spread[scale] = model(input_ids=ids, decoder_input_ids=ids).logits.std().item()
    assert spread[False] / spread[True] == pytest.approx(64**0.5, rel=1e-4)
    assert dataclasses.replace(recipe, t5_output_scale=False).key() != recipe.key()
