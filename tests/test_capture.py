"""One calibration capture: padded batches give exactly the rows of the real tokens, on every path
(one pass, streamed, block by block), for encoders, decoders and seq2seq models."""
import pytest
import torch

from tcomp_utils import adapters, capture
from tcomp_utils.methods.factorization import activation_scales
from conftest import tiny_bert, tiny_llama, tiny_t5

LENGTHS = [5, 3, 7]


def _sequences(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 100, (n,), generator=g) for n in LENGTHS]


def _padded(seqs, key="input_ids", mask="attention_mask"):
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    att = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], att[i, :len(s)] = s, 1
    return {key: ids, mask: att}


def _alone(seqs, key="input_ids", mask="attention_mask"):
    return [{key: s[None], mask: torch.ones(1, len(s), dtype=torch.long)} for s in seqs]


def _targets(model, roles):
    return [rm for role in roles for rm in adapters.find_modules(model, role)]


def _check_all_paths_agree(model, padded, alone, roles):
    targets = _targets(model, roles)
    reference = capture.capture_inputs(model, targets, alone)  # one sequence per batch: no padding at all
    captured = capture.capture_inputs(model, targets, [padded])
    for path, x in reference.items():
        torch.testing.assert_close(captured[path], x, atol=1e-5, rtol=1e-5)
    streamed = {}
    capture.stream(model, targets, [padded], lambda p, x: streamed.setdefault(p, []).append(x))
    for path, x in reference.items():
        torch.testing.assert_close(torch.cat(streamed[path]), x, atol=1e-5, rtol=1e-5)
    in_blocks = [rm for rm in targets if rm.stack is not None]
    seen = set()
    for step in capture.sequential(model, [padded], in_blocks):
        mine = [rm for rm in in_blocks if rm.stack == step.stack and rm.layer == step.layer]
        for path, x in step.inputs(mine).items():
            torch.testing.assert_close(x, reference[path], atol=1e-5, rtol=1e-5)
            seen.add(path)
    assert seen == {rm.path for rm in in_blocks}
    return reference


def test_encoder_padding_is_dropped_on_every_path():
    torch.manual_seed(0)
    model = tiny_bert()
    seqs = _sequences()
    ref = _check_all_paths_agree(model, _padded(seqs), _alone(seqs), ["query", "ffn_out"])
    assert all(len(x) == sum(LENGTHS) for x in ref.values())  # real tokens only: 15 rows, not 3 × 7
    # a classifier head sees one row per sequence: kept whole
    head = adapters.RoleModule("classifier", "head", None, None, model.classifier)
    assert capture.capture_inputs(model, [head], [_padded(seqs)])["classifier"].shape == (3, 32)


def test_decoder_padding_is_dropped_on_every_path():
    torch.manual_seed(0)
    model = tiny_llama()
    seqs = _sequences(1)
    _check_all_paths_agree(model, _padded(seqs), _alone(seqs), ["key", "ffn_in", "ffn_out"])


def test_seq2seq_uses_the_encoder_and_decoder_masks_where_each_applies():
    torch.manual_seed(0)
    model = tiny_t5()
    src, tgt = _sequences(2), _sequences(3)[::-1]  # decoder lengths 7, 3, 5
    padded = _padded(src) | _padded(tgt, "decoder_input_ids", "decoder_attention_mask")
    alone = [a | b for a, b in zip(_alone(src), _alone(tgt, "decoder_input_ids", "decoder_attention_mask"))]
    ref = _check_all_paths_agree(model, padded, alone, ["query", "cross_query", "cross_key"])
    enc_q = [p for p in ref if p.startswith("encoder.") and p.endswith(".q")]
    dec_q = [p for p in ref if p.startswith("decoder.") and p.endswith("SelfAttention.q")]
    cross_k = [p for p in ref if p.endswith("EncDecAttention.k")]
    assert all(len(ref[p]) == sum(LENGTHS) for p in enc_q + dec_q + cross_k)
    # cross-attention keys read the encoder's output: the rows of the source tokens
    assert ref[cross_k[0]].shape[0] == sum(len(s) for s in src)


def test_sequential_hands_each_block_the_outputs_of_the_changed_blocks_before_it():
    torch.manual_seed(0)
    model = tiny_llama()
    batches = [_padded(_sequences(4))]
    targets = _targets(model, ["ffn_out"])
    for step in capture.sequential(model, batches, targets):
        if step.layer == 0:
            with torch.no_grad():
                targets[0].module.weight.mul_(0.5)  # "compress" block 0 while it is yielded
        else:
            after = step.inputs([targets[1]])[targets[1].path]
    fresh = capture.capture_inputs(model, [targets[1]], batches)[targets[1].path]
    torch.testing.assert_close(after, fresh, atol=1e-5, rtol=1e-5)


def test_activation_statistics_ignore_padding():
    torch.manual_seed(0)
    model = tiny_bert()
    seqs = _sequences(5)
    targets = _targets(model, ["ffn_in"])
    padded, alone = activation_scales(model, targets, [_padded(seqs)]), activation_scales(model, targets, _alone(seqs))
    for path in padded:
        torch.testing.assert_close(padded[path], alone[path], atol=1e-5, rtol=1e-5)


def _calls_per_block(model, batches, first, last):
    """How many times each block of the stack runs while :func:`capture.block_inputs` records."""
    _, blocks = next(iter(adapters.layer_stacks(model).values()))
    calls = {i: 0 for i in range(len(blocks))}
    handles = [blocks[i].register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
               for i in range(len(blocks))]
    try:
        hidden, other = capture.block_inputs(model, blocks, first, last, batches)
    finally:
        for h in handles:
            h.remove()
    return calls, hidden, other


def test_blocks_that_share_their_call_arguments_are_captured_up_to_the_first_block_only():
    """Llama's blocks get the same masks and rotary tables: after the first batch shows it, the
    other batches stop at the first block, and every block is handed the first block's arguments."""
    torch.manual_seed(0)
    model = tiny_llama()
    batches = [_padded(_sequences(s)) for s in range(3)]
    calls, hidden, other = _calls_per_block(model, batches, 0, 1)
    assert calls == {0: 3, 1: 1}  # block 1 ran for the first batch only
    assert len(hidden) == 3 and all(len(other[i]) == 3 for i in (0, 1))
    for b in range(3):
        assert capture._same(other[1][b], other[0][b])


def test_blocks_with_their_own_call_arguments_are_captured_on_every_batch():
    """T5's first block computes the position bias and passes it on: block 1's arguments differ
    from block 0's, so every batch runs up to the last block and each block keeps its own."""
    torch.manual_seed(0)
    model = tiny_t5()
    batches = [{**_padded(_sequences(s)), "decoder_input_ids": torch.ones(3, 4, dtype=torch.long)} for s in range(3)]
    calls, hidden, other = _calls_per_block(model, batches, 0, 1)
    assert calls[1] == 3
    assert not capture._same(other[1][0], other[0][0])


def test_position_limits_are_the_absolute_tables_and_none_for_relative_or_rotary_positions():
    """BERT's and GPT-2's tables hold their positions; OPT's is shifted by 2 and RoBERTa's starts
    after the padding id (64 rows: 62 tokens); T5 (relative) and Llama (rotary) have no limit."""
    from transformers import RobertaConfig, RobertaModel
    from conftest import tiny_gpt2, tiny_opt

    roberta = RobertaModel(RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=64))
    assert capture.position_limits(tiny_bert()) == {"bert.embeddings.position_embeddings": 64}
    assert capture.position_limits(tiny_gpt2()) == {"transformer.wpe": 64}
    assert capture.position_limits(tiny_opt()) == {"model.decoder.embed_positions": 64}
    assert capture.position_limits(roberta) == {"embeddings.position_embeddings": 62}
    assert capture.position_limits(tiny_t5()) == {} and capture.position_limits(tiny_llama()) == {}


def test_calibration_longer_than_the_positions_is_refused_before_any_pass():
    """A 100-token batch on a 64-position BERT fails deep inside transformers; it is refused
    first, naming its length, the limit and the fix, and no batch has run."""
    torch.manual_seed(0)
    model = tiny_bert()
    targets = _targets(model, ["query"])
    batches = [{"input_ids": torch.randint(1, 100, (2, 8))}, {"input_ids": torch.randint(1, 100, (2, 100))}]
    seen = []
    with pytest.raises(ValueError, match=r"batch 1: input_ids has 100 tokens.*at most 64 .*max_length=64"):
        capture.stream(model, targets, batches, lambda p, x: seen.append(p))
    assert seen == []
    with pytest.raises(ValueError, match="100 tokens"):
        next(capture.sequential(model, batches, targets))
    capture.stream(model, targets, [{"input_ids": torch.randint(1, 100, (2, 64))}], lambda p, x: None)  # 64 fit


def test_a_seq2seq_decoder_is_checked_against_its_own_table_and_rotary_models_are_not_limited():
    from conftest import tiny_marian

    torch.manual_seed(0)
    marian = tiny_marian()
    long_decoder = {"input_ids": torch.randint(1, 100, (1, 8)), "decoder_input_ids": torch.randint(1, 100, (1, 70))}
    with pytest.raises(ValueError, match=r"decoder_input_ids has 70 tokens.*model\.decoder\.embed_positions"):
        capture.check_lengths(marian, [long_decoder])
    llama = tiny_llama()  # rotary: 80 tokens past max_position_embeddings=64 still run
    capture.stream(llama, _targets(llama, ["query"]), [{"input_ids": torch.randint(1, 100, (1, 80))}],
                   lambda p, x: None)
