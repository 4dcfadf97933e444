"""One calibration capture: padded batches give exactly the rows of the real tokens, on every path
(one pass, streamed, block by block), for encoders, decoders and seq2seq models."""
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
