"""Every registered method on every architecture of the tests: after compression the model runs
(a forward pass of the dense shape, finite), or the method refuses the architecture with a clear
error before anything changes (the weights and the outputs are as they were)."""
import conftest
import pytest
import torch

from tcomp_utils import adapters
from tcomp_utils.registry import compress, method_config, source_index

# small, fast options of each method (budgets every tiny model can meet; the AE trains one epoch),
# and variants whose stacks or steps depend on the architecture: case -> (method, options)
AE = dict(ratio=2, epochs=1, batch_size=64, encoder_widths=[], decoder_widths=[2.0])
CASES = {
    "ae": ("ae", AE),
    "ae-concatenated": ("ae", {**AE, "mode": "concatenated"}),
    "svd": ("svd", dict(ratio=2)),
    "svd-concatenated": ("svd", dict(ratio=2, mode="concatenated")),
    "asvd": ("asvd", dict(ratio=2)),
    "fwsvd": ("fwsvd", dict(ratio=2)),
    "tucker": ("tucker", dict(ratio=2)),
    "tucker-qkv": ("tucker", dict(ratio=2, roles="qkv", mode="qkv")),
    "kronecker": ("kronecker", dict(ratio=2, refine_steps=1)),
    "falcon": ("falcon", dict(ratio=2)),
    "falcon-qkv-concatenated": ("falcon", dict(ratio=2, roles="qkv", mode="qkv-concatenated")),
    "structured": ("structured", dict(mu=0.8)),
    "structured-neurons": ("structured", dict(mu=0.8, units="neurons")),
    "structured-heads": ("structured", dict(mu=0.8, units="heads")),
    "fisher_pruning": ("fisher_pruning", dict(mu=0.8)),
    "fisher_pruning-neurons": ("fisher_pruning", dict(mu=0.8, units="neurons")),
    "pruning": ("pruning", dict(ratio=2)),
    "pruning-concatenated": ("pruning", dict(ratio=2, mode="concatenated")),
    "signmag": ("signmag", dict(bits=4)),
    "rtn": ("rtn", dict(bits=4)),
    "gptq": ("gptq", dict(bits=4)),
    "gptq-lm_head": ("gptq", dict(bits=4, group_size=16, true_sequential=True, lm_head=True)),
}

# what is refused, and why (the message must say it): structured pruning (STAT's and Kwon's) works
# on encoders and decoder-only models, not seq2seq; removing heads is refused where the attention
# reads its head count from the shared config (Phi-3 slices its fused qkv at config.num_attention_heads);
# a Q/K/V stack needs one shape, which grouped-query attention's narrower keys and values do not
# have; a classifier has no LM head to quantize
SEQ2SEQ = r"supports encoders and decoder-only models, not a seq2seq model \(t5\)"
PHI3_HEADS = r"reads the head count from the model config \(config.num_attention_heads\).*units='neurons'"
QKV_SHAPES = r"stacks need matrices of one shape; .*differ \(mode 'qkv.*grouped-query attention; mode='concatenated'"
GQA = ("falcon", "gemma3_text", "llama", "mistral", "phi3", "qwen2")
REFUSED = {
    **{(case, "t5"): SEQ2SEQ for case in CASES if CASES[case][0] in ("structured", "fisher_pruning")},
    ("structured", "phi3"): PHI3_HEADS, ("structured-heads", "phi3"): PHI3_HEADS, ("fisher_pruning", "phi3"): PHI3_HEADS,
    **{(case, name): QKV_SHAPES for case in ("tucker-qkv", "falcon-qkv-concatenated") for name in GQA},
    ("gptq-lm_head", "bert"): r"lm_head=True but BertForSequenceClassification has no linear output head",
}


def calibration(name: str, n: int = 2) -> list[dict]:
    """``n`` batches of 2 sequences of 8 tokens (the second half of one padded) with the model's
    own labels: classes for the classifier, the (unpadded) input ids for a language model."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 100, (2, 8), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 4:] = 0
        labels = torch.tensor([0, 1]) if name == "bert" else ids.masked_fill(mask == 0, -100)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def test_the_cases_cover_every_method_of_the_package():
    assert sorted({method for method, _ in CASES.values()}) == sorted(source_index()[0])


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_untouched(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)


@pytest.mark.parametrize("name", sorted(conftest.ARCHITECTURES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_method_runs_on_every_architecture_or_refuses_it_untouched(case, name):
    torch.manual_seed(0)
    model = adapters.prepare(conftest.ARCHITECTURES[name]())  # compress() prepares too: exact, not a change
    inputs = conftest.model_inputs(name)
    with torch.no_grad():
        dense = model(**inputs).logits
    state = _state(model)
    method, options = CASES[case]
    config = method_config(method, **options)
    if (case, name) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[case, name]) as refused:
            compress(model, config, calibration(name), progress=False)
        assert not getattr(refused.value, "__notes__", None)  # refused before replacing any module
        _assert_untouched(model, state)
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, dense)
        return
    report = compress(model, config, calibration(name), progress=False)
    assert len(report.modules) > 0
    if method in ("structured", "fisher_pruning"):  # units really removed: fewer MACs
        assert report.after.macs < report.before.macs
    with torch.no_grad():
        out = model(**inputs).logits
    assert out.shape == dense.shape and torch.isfinite(out).all()


# the token table, quantized at 8 bits, keeps the outputs close; a table whose class adds to the
# look-up (Gemma's scales the rows by √hidden) is refused: a packed table would drop what it adds
SCALED_TABLE = (r"model.embed_tokens \(embeddings\) is a Gemma3TextScaledWordEmbedding, not a plain nn.Linear or "
                r"nn.Embedding \(not a subclass with its own forward")


@pytest.mark.filterwarnings("ignore:.*tied to its token table")
@pytest.mark.parametrize("name", sorted(conftest.ARCHITECTURES))
@pytest.mark.parametrize("method", ["rtn", "gptq", "signmag"])
def test_a_quantized_token_table_keeps_the_outputs_or_is_refused_untouched(method, name):
    torch.manual_seed(0)
    model = adapters.prepare(conftest.ARCHITECTURES[name]())
    inputs = conftest.model_inputs(name)
    with torch.no_grad():
        dense = model(**inputs).logits
    state = _state(model)
    config = method_config(method, bits=8, roles="embeddings")
    if name == "gemma3_text":
        with pytest.raises(TypeError, match=SCALED_TABLE):
            compress(model, config, calibration(name), progress=False)
        _assert_untouched(model, state)
        return
    compress(model, config, calibration(name), progress=False)
    with torch.no_grad():
        out = model(**inputs).logits
    assert ((out - dense).norm() / dense.norm()).item() < 0.05
