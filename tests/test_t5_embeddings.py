"""A T5 with the Transformer's embeddings (translation recipes with ``t5_embeddings="transformer"``): three
tables, each looked-up vector × √d_model plus sinusoidal positions, saved and loaded as itself; its head
pruning and cached decoding are tested with T5's own in test_t5_heads.py."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import T5ForConditionalGeneration

from tcomp_utils import tasks, translation
from tcomp_utils.t5_embeddings import T5WithTransformerEmbeddings, sinusoidal_positions

RECIPE = dataclasses.replace(translation.RECIPES["t5-help-en-de-transformer-embeddings"], d_model=32, d_ff=64, d_kv=8,
                             num_heads=4, num_layers=2, num_decoder_layers=2)


@pytest.fixture(scope="module")
def tok():
    return translation.train_tokenizer(["ein kleiner Test der Hilfe", "a small test of the help"] * 20, 40, "bpe")


def test_sinusoidal_positions_are_sin_then_cos_of_the_transformer_angles():
    pe = sinusoidal_positions(3, 4, 6)
    assert pe.shape == (4, 6) and pe.dtype == torch.float32
    angle = torch.tensor([3.0, 4, 5, 6])[:, None] / torch.tensor([1.0, 10000 ** (2 / 6), 10000 ** (4 / 6)])
    torch.testing.assert_close(pe, torch.cat([angle.sin(), angle.cos()], 1))
    torch.testing.assert_close(sinusoidal_positions(0, 7, 6)[3:], pe)  # an offset continues the sequence
    with pytest.raises(ValueError, match="even d_model, got 5"):
        sinusoidal_positions(0, 2, 5)


def test_the_recipe_builds_three_tables_of_unit_scale_and_refuses_what_it_cannot_build(tok):
    model = translation.build_model(RECIPE, tok)
    assert type(model) is T5WithTransformerEmbeddings
    enc, dec, out = model.encoder.embed_tokens.weight, model.decoder.embed_tokens.weight, model.lm_head.weight
    assert enc is model.shared.weight and len({id(enc), id(dec), id(out)}) == 3
    assert not torch.equal(enc, dec) and not torch.equal(dec, out)
    for w in (enc, dec, out):  # drawn with std 1/√d_model: the scaled input vectors have std about 1
        assert (w.std() * 32**0.5).item() == pytest.approx(1.0, abs=0.1)
    assert not model.config.scale_decoder_outputs
    plain = translation.build_model(dataclasses.replace(RECIPE, t5_embeddings="t5"), tok)
    assert type(plain) is T5ForConditionalGeneration
    assert RECIPE.key() != dataclasses.replace(RECIPE, t5_embeddings="t5").key()
    with pytest.raises(ValueError, match=r"t5_embeddings='marian'; allowed: t5, transformer"):
        dataclasses.replace(RECIPE, t5_embeddings="marian")
    with pytest.raises(ValueError, match="is for architecture='t5', not 'transformer'"):
        dataclasses.replace(translation.RECIPES["transformer-help-en-de"], t5_embeddings="transformer")


def test_the_query_rate_recipe_trains_t5_queries_slower_and_keeps_older_keys(tok, monkeypatch):
    recipe = translation.RECIPES["t5-help-en-de-query-rate"]
    assert recipe.t5_query_lr_scale == pytest.approx(recipe.d_kv ** -0.5)
    assert dataclasses.replace(recipe, t5_query_lr_scale=1.0) == translation.RECIPES["t5-help-en-de-transformer-embeddings"]
    assert translation.RECIPES["t5-help-en-de-transformer-embeddings"].key() == "e7e418c1c87c"  # its cached model's
    with pytest.raises(ValueError, match="t5_query_lr_scale must be a number > 0, got -1"):
        dataclasses.replace(recipe, t5_query_lr_scale=-1)
    with pytest.raises(ValueError, match="t5_query_lr_scale must be a number > 0, got True"):
        dataclasses.replace(recipe, t5_query_lr_scale=True)   # a bool is an int, but not a rate
    with pytest.raises(ValueError, match="t5_query_lr_scale=0.5 is for architecture='t5', not 'transformer'"):
        dataclasses.replace(translation.RECIPES["transformer-help-en-de"], t5_query_lr_scale=0.5)
    seen = {}
    monkeypatch.setattr(translation.trainer, "train", lambda model, data, config, **kw: seen.update(config=config))
    task = tasks.load_task("help-en-de")
    small = dataclasses.replace(RECIPE, train_examples=64)
    translation.train_model(translation.build_model(small, tok), tok, dataclasses.replace(small, t5_query_lr_scale=0.25),
                            task, progress=False)
    assert seen["config"].lr_scales == (("*.q.weight", 0.25),)
    translation.train_model(translation.build_model(small, tok), tok, small, task, progress=False)
    assert seen["config"].lr_scales == ()


def test_each_stack_embeds_ids_as_the_transformer_does(tok):
    model = translation.build_model(RECIPE, tok).eval()
    ids = torch.tensor([[5, 9, 11, 1], [7, 1, 0, 0]])
    mask = (ids != 0).long()
    scaled = lambda table: table(ids) * 32**0.5 + sinusoidal_positions(0, 4, 32)  # noqa: E731
    with torch.no_grad():
        got = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        want = model.encoder(inputs_embeds=scaled(model.shared), attention_mask=mask).last_hidden_state
        torch.testing.assert_close(got, want)
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids).logits
        by_hand = model(inputs_embeds=scaled(model.shared), attention_mask=mask,
                        decoder_inputs_embeds=scaled(model.decoder.embed_tokens)).logits
        torch.testing.assert_close(full, by_hand)
        unscaled = model(inputs_embeds=model.shared(ids), attention_mask=mask,
                         decoder_inputs_embeds=model.decoder.embed_tokens(ids)).logits
    assert not torch.allclose(full, unscaled)  # the scaling and positions are not a no-op


def test_a_saved_model_loads_as_itself_with_the_same_outputs(tok, tmp_path):
    model = translation.build_model(RECIPE, tok).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, _ = translation.load_folder(tmp_path)
    assert type(loaded) is T5WithTransformerEmbeddings
    assert loaded.encoder.embed_tokens.weight is loaded.shared.weight
    assert loaded.decoder.embed_tokens.weight is not loaded.shared.weight
    for name, p in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], p, msg=name)
    src = ["a small test", "of the help"]
    assert translation.translate(loaded, tok, src, max_length=6) == translation.translate(model, tok, src, max_length=6)


def test_ids_given_by_position_are_embedded_in_their_place(tok):
    model = translation.build_model(RECIPE, tok).eval()
    ids, mask = torch.tensor([[5, 9, 11, 1], [7, 1, 0, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        by_position = model.encoder(ids, mask).last_hidden_state
        by_name = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(by_position, by_name)
