import math

import numpy as np
import pytest
import torch
from torch import nn

from tcomp_utils import metrics, scores


def test_classification_metrics_on_hand_example():
    labels = [1, 1, 1, 0, 0, 0, 0, 0]
    preds = [1, 1, 0, 1, 0, 0, 0, 0]
    # TP=2 FN=1 FP=1 TN=4
    assert metrics.accuracy(labels, preds) == 6 / 8
    assert metrics.f1(labels, preds) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert metrics.mcc(labels, preds) == pytest.approx((2 * 4 - 1 * 1) / math.sqrt(3 * 3 * 5 * 5))


def test_correlations_on_hand_example():
    x = [1.0, 2.0, 3.0, 4.0]
    assert metrics.pearson(x, [2.0, 4.0, 6.0, 8.0]) == pytest.approx(1.0)
    assert metrics.spearman(x, [1.0, 10.0, 100.0, 1000.0]) == pytest.approx(1.0)
    assert metrics.spearman(x, [4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)


def test_score_rejects_unknown_metric():
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['bleu4'\]"):
        metrics.score(["accuracy", "bleu4"], [1], [1])


def test_bleu():
    refs = ["the cat sat on the mat .", "a dog barks loudly at night ."]
    assert metrics.bleu(refs, refs) == pytest.approx(100.0)
    assert metrics.bleu(["completely different words here", "nothing shared"], refs) < 5
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        metrics.bleu(refs, refs[:1])


class UniformLM(nn.Module):
    """Logits equal everywhere: every token has probability 1/V, so perplexity is exactly V."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        return type("Out", (), {"logits": torch.zeros(*ids.shape, self.vocab) + self.dummy})


class CountingLM(UniformLM):
    """Records which windows it saw."""

    def __init__(self, vocab):
        super().__init__(vocab)
        self.seen = []

    def forward(self, ids):
        self.seen.append(ids.shape[1])
        return super().forward(ids)


def test_perplexity_of_uniform_model_is_vocab_size():
    ids = torch.randint(0, 37, (1000,))
    r = metrics.perplexity(UniformLM(37), ids, seq_len=100, progress=False)
    assert r.perplexity == pytest.approx(37)
    assert (r.windows, r.tokens) == (10, 10 * 99)  # GPTQ protocol: non-overlapping, first token unscored


def test_perplexity_drops_partial_window_and_truncates():
    lm = CountingLM(5)
    r = metrics.perplexity(lm, torch.zeros(250, dtype=torch.long), seq_len=100, progress=False)
    assert lm.seen == [100, 100] and r.tokens == 198
    r = metrics.perplexity(UniformLM(5), torch.zeros(250, dtype=torch.long), seq_len=100, max_tokens=100, progress=False)
    assert r.windows == 1


def test_strided_perplexity_scores_every_token_once():
    lm = CountingLM(11)
    r = metrics.perplexity(lm, torch.zeros(250, dtype=torch.long), seq_len=100, stride=50, progress=False)
    assert r.tokens == 249  # every token after the first, exactly once
    assert lm.seen == [100, 100, 100, 100]  # windows start at 0, 50, 100, 150 (the last reaches the end)
    assert r.perplexity == pytest.approx(11)


def test_perplexity_bad_arguments():
    with pytest.raises(ValueError, match="stride must lie in"):
        metrics.perplexity(UniformLM(3), torch.zeros(10, dtype=torch.long), seq_len=4, stride=5)
    with pytest.raises(ValueError, match="shorter than one window"):
        metrics.perplexity(UniformLM(3), torch.zeros(10, dtype=torch.long), seq_len=20, progress=False)


def test_latency_counts_runs_and_restores_threads():
    calls = []
    before = torch.get_num_threads()
    r = metrics.latency(lambda: calls.append(torch.get_num_threads()), runs=5, warmup=2, threads=1)
    assert len(calls) == 7 and set(calls) == {1}
    assert torch.get_num_threads() == before
    assert r.runs == 5 and r.threads == 1 and 0 <= r.p10_ms <= r.median_ms <= r.p90_ms
    with pytest.raises(ValueError, match="runs >= 1"):
        metrics.latency(lambda: None, runs=0)


def test_bootstrap_interval_macro_f1_and_majority_share():
    from tcomp_utils import metrics as m
    labels = [0] * 70 + [1] * 30
    collapsed = [0] * 100
    assert m.accuracy(labels, collapsed) == 0.7 and m.majority_share(collapsed, 0) == 1.0
    assert m.macro_f1(labels, collapsed) == pytest.approx((2 * 0.7 / 1.7) / 2)  # class 1 scores 0
    lo, hi = m.bootstrap_interval(labels, collapsed, "accuracy", n_resamples=500)
    assert lo < 0.7 < hi and 0.05 < hi - lo < 0.25  # about ±1.96·sqrt(.21/100)
    perfect = list(labels)
    assert m.bootstrap_interval(labels, perfect, n_resamples=50) == (1.0, 1.0)
    # several runs (seeds): the statistic is their mean; the interval narrows around it
    lo2, hi2 = m.bootstrap_interval(labels, [collapsed, perfect], n_resamples=500)
    assert lo2 < 0.85 < hi2 and hi2 - lo2 < hi - lo
    assert m.bootstrap_interval(labels, collapsed, n_resamples=200, seed=3) == \
        m.bootstrap_interval(labels, collapsed, n_resamples=200, seed=3)
    with pytest.raises(ValueError, match="99 predictions per run for 100 labels"):
        m.bootstrap_interval(labels, collapsed[:99])


def test_a_paired_interval_decides_where_the_marginal_intervals_overlap():
    """A is right wherever B is, and on 8 more of 200 examples: the marginal intervals overlap, the
    paired interval of the difference lies above 0; seeds that disagree make it cover 0 again."""
    from tcomp_utils import metrics as m
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    wrong = (labels + 1) % 3
    b = np.where(np.arange(200) < 150, labels, wrong)
    a = np.where(np.arange(200) < 158, labels, wrong)
    lo_a, hi_a = m.bootstrap_interval(labels, a, n_resamples=500)
    lo_b, hi_b = m.bootstrap_interval(labels, b, n_resamples=500)
    assert lo_a < hi_b  # the marginal intervals overlap: not decidable from them
    got = m.paired_interval(labels, a, b, n_resamples=500)
    assert got.difference == pytest.approx(0.04) and 0 < got.lo <= got.difference <= got.hi and got.verdict == "above"
    assert m.paired_interval(labels, b, a, n_resamples=500).verdict == "below"
    same = m.paired_interval(labels, a, a, "macro_f1", n_resamples=50)
    assert (same.difference, same.lo, same.hi, same.verdict) == (0.0, 0.0, 0.0, "≈")
    # three seeds of A, two of which are no better than B: the mean is still ahead, but the runs'
    # spread is resampled too and the verdict is "not distinguishable"
    c = np.where(np.arange(200) < 180, labels, wrong)
    seeds = m.paired_interval(labels, [c, b, b], b, n_resamples=500)
    assert seeds.difference == pytest.approx(0.15 / 3) and seeds.lo <= 0 < seeds.hi and seeds.verdict == "≈"
    # paired runs (run i of both shares a seed): the same draws for both
    assert m.paired_interval(labels, [a, a], [b, b], paired_runs=True, n_resamples=200).verdict == "above"
    with pytest.raises(ValueError, match="paired_runs needs as many runs of a as of b, got 2 and 1"):
        m.paired_interval(labels, [a, a], b, paired_runs=True)
    with pytest.raises(ValueError, match=r"199 \(a\) and 200 \(b\) for 200 labels"):
        m.paired_interval(labels, a[:199], b)


def test_paired_bleu_interval_is_the_corpus_difference_with_a_paired_bootstrap():
    import sacrebleu

    from tcomp_utils import metrics

    refs = [f"the {w} sat on the mat number {i} today" for i, w in enumerate(["cat", "dog", "bird", "fox"] * 25)]
    good = [r if i % 3 else r.replace("mat", "rug") for i, r in enumerate(refs)]
    bad = [r.replace("sat on", "is near").replace("today", "") for r in refs]
    got = metrics.paired_bleu_interval(good, bad, refs, n_resamples=200)
    exact = sacrebleu.corpus_bleu(good, [refs]).score - sacrebleu.corpus_bleu(bad, [refs]).score
    assert abs(got.difference - exact) < 1e-9  # the same corpus BLEU as sacrebleu's
    assert got.lo <= got.difference <= got.hi and got.lo > 0 and got.verdict == "above"
    swapped = metrics.paired_bleu_interval(bad, good, refs, n_resamples=200)
    assert abs(swapped.difference + got.difference) < 1e-9 and swapped.verdict == "below"
    assert abs(swapped.lo + got.hi) < 1e-9 and abs(swapped.hi + got.lo) < 1e-9  # the same draws, mirrored
    same = metrics.paired_bleu_interval(good, good, refs, n_resamples=50)
    assert (same.difference, same.lo, same.hi, same.verdict) == (0.0, 0.0, 0.0, "≈")
    # systems that differ on a tenth of the sentences: a narrower interval than systems that differ on all
    close = [g if i % 10 else b for i, (g, b) in enumerate(zip(good, bad))]
    paired = metrics.paired_bleu_interval(good, close, refs, n_resamples=300)
    with pytest.raises(ValueError, match="one hypothesis of each system"):
        metrics.paired_bleu_interval(good[:-1], bad, refs)
    assert paired.hi - paired.lo < got.hi - got.lo


def test_paired_bleu_interval_over_runs_of_a_is_the_mean_and_holds_their_spread():
    import sacrebleu

    from tcomp_utils import metrics

    refs = [f"the {w} sat on the mat number {i} today" for i, w in enumerate(["cat", "dog", "bird", "fox"] * 25)]
    good = [r if i % 3 else r.replace("mat", "rug") for i, r in enumerate(refs)]
    bad = [r.replace("sat on", "is near").replace("today", "") for r in refs]
    close = [g if i % 10 else b for i, (g, b) in enumerate(zip(good, bad))]
    bleu = {n: sacrebleu.corpus_bleu(h, [refs]).score for n, h in (("good", good), ("bad", bad), ("close", close))}
    twice = metrics.paired_bleu_interval([good, good], close, refs, n_resamples=200)
    once = metrics.paired_bleu_interval(good, close, refs, n_resamples=200)
    assert abs(twice.difference - once.difference) < 1e-9  # two identical runs: the one run's difference
    mixed = metrics.paired_bleu_interval([good, bad], close, refs, n_resamples=200)
    assert abs(mixed.difference - ((bleu["good"] + bleu["bad"]) / 2 - bleu["close"])) < 1e-9
    # resampling the runs too: the interval spans from about "bad − close" to "good − close"
    assert mixed.lo < bleu["bad"] - bleu["close"] + 1 and mixed.hi > bleu["good"] - bleu["close"] - 1
    with pytest.raises(ValueError, match=r"\[100, 99\] \(a\)"):
        metrics.paired_bleu_interval([good, good[:-1]], close, refs)


# ---- perplexity windows that start with BOS ----------------------------------------------------
def _tokenizer(adds_bos: bool, has_bos: bool = True):
    """A word-level fast tokenizer over "w0 … w49"; BOS id 1, put before every text when ``adds_bos``
    (as Gemma's does; SmolLM2's has a BOS token it never adds)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<bos>": 1, **{f"w{i}": i + 2 for i in range(50)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    special = {"unk_token": "<unk>", **({"bos_token": "<bos>"} if has_bos else {})}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


class WindowLM(UniformLM):
    """Uniform, and records every window it is fed."""

    def __init__(self, vocab):
        super().__init__(vocab)
        self.windows = []

    def forward(self, ids):
        self.windows.append(ids[0].tolist())
        return super().forward(ids)


def test_bos_token_id_is_what_the_tokenizer_puts_before_a_text():
    assert metrics.bos_token_id(_tokenizer(adds_bos=True)) == 1
    assert metrics.bos_token_id(_tokenizer(adds_bos=False)) is None  # a BOS token it does not add
    assert metrics.bos_token_id(_tokenizer(adds_bos=False, has_bos=False)) is None


def test_with_bos_every_window_starts_with_it_and_it_is_never_scored():
    tok = _tokenizer(adds_bos=True)
    ids = tok(" ".join(f"w{i % 50}" for i in range(250)), return_tensors="pt").input_ids[0]
    assert ids[0] == 1 and len(ids) == 251  # the text's own BOS, then 250 words
    lm = WindowLM(52)
    r = metrics.perplexity(lm, ids, seq_len=100, progress=False, bos_token_id=metrics.bos_token_id(tok))
    assert [w[0] for w in lm.windows] == [1, 1] and all(len(w) == 100 for w in lm.windows)
    assert lm.windows[0][1:] == ids[1:100].tolist() and lm.windows[1][1:] == ids[100:199].tolist()
    assert (r.windows, r.tokens) == (2, 2 * 99)  # every text token of a window, the BOS never
    assert r.perplexity == pytest.approx(52)
    lm = WindowLM(52)  # strided: each of the 250 text tokens scored once, the first from the BOS alone
    r = metrics.perplexity(lm, ids, seq_len=100, stride=50, progress=False, bos_token_id=1)
    assert r.tokens == 250 and all(w[0] == 1 and 1 not in w[1:] for w in lm.windows)
    with pytest.raises(ValueError, match=r"stride must lie in \(0, seq_len - 1=99\], got 100"):
        metrics.perplexity(lm, ids, seq_len=100, stride=100, bos_token_id=1)
    with pytest.raises(ValueError, match=r"bos_token_id must be a token id \(an int >= 0\) or None, got 'x'"):
        metrics.perplexity(lm, ids, seq_len=100, bos_token_id="x")


def test_without_bos_the_windows_are_the_text_as_it_is():
    tok = _tokenizer(adds_bos=False)
    ids = tok(" ".join(f"w{i % 50}" for i in range(250)), return_tensors="pt").input_ids[0]
    lm = WindowLM(52)
    r = metrics.perplexity(lm, ids, seq_len=100, progress=False, bos_token_id=metrics.bos_token_id(tok))
    assert lm.windows == [ids[:100].tolist(), ids[100:200].tolist()] and r.tokens == 2 * 99


@pytest.mark.parametrize("adds_bos", [True, False])
def test_the_text_perplexity_workload_starts_windows_with_bos_when_its_tokenizer_adds_one(adds_bos):
    from tcomp_utils import workloads

    class Texts(workloads.TextPerplexityWorkload):
        PROFILES = {"tiny": workloads.Profile("none", calibration=1, length=20, eval_tokens=None)}

    tok, lm = _tokenizer(adds_bos), WindowLM(52)
    wl = Texts("tiny")
    wl._loaded = (lm, tok)
    wl._test_ids = {t: tok(" ".join(f"w{i}" for i in range(45)), return_tensors="pt").input_ids[0] for t in wl.TEXTS}
    scores = wl.scores(lm, set())
    assert all((w[0] == 1) == adds_bos for w in lm.windows) and len(lm.windows) == 4
    assert lm.windows[0][:2] == ([1, 2] if adds_bos else [2, 3])  # [BOS, w0] or [w0, w1]
    assert scores["eval_tokens_novel"] == 2 * 19  # 2 windows: 19 text tokens after the BOS, or 19 after the first


@pytest.mark.slow
def test_the_embedded_decoders_tokenizer_adds_no_bos_so_its_perplexities_keep_their_protocol():
    from tcomp_utils import workloads

    assert metrics.bos_token_id(workloads.get("smollm2-135m", "smoke").tokenizer) is None


def test_predictions_round_trip_through_their_digit_string_and_bad_values_are_named():
    preds = [0, 2, 1, 1, 0, 9]
    text = metrics.encode_predictions(np.array(preds))
    assert text == "c021109" and metrics.decode_predictions(text).tolist() == preds
    assert metrics.decode_predictions(text).dtype == np.int64
    with pytest.raises(ValueError, match=r"classes 0..9 only, got \[-1, 12\]"):
        metrics.encode_predictions([0, 12, -1])
    with pytest.raises(ValueError, match="'c' then digits"):
        metrics.decode_predictions("c01a")
    with pytest.raises(ValueError, match="'c' then digits"):
        metrics.decode_predictions("0121")
    # a results table read back keeps the string (digits alone would be read as one number)
    import io
    import pandas as pd
    back = pd.read_csv(io.StringIO(pd.DataFrame({"p": [metrics.encode_predictions([0, 1] * 40)]}).to_csv(index=False)))
    assert metrics.decode_predictions(back.p[0]).tolist() == [0, 1] * 40


@pytest.mark.parametrize("k", [2, 3])
def test_the_bootstraps_confusion_count_scores_equal_sklearns(k):
    """The resampling loops score by confusion counts: the same numbers as the sklearn metrics, a class absent
    from a resample included (macro-F1 averages over the classes present, as sklearn does)."""
    rng = np.random.default_rng(k)
    for n in (7, 50, 400):
        y, p = rng.integers(0, k, n), rng.integers(0, k, n)
        p[: n // 3] = y[: n // 3]
        if n == 7:
            y[y == k - 1], p[p == k - 1] = 0, 0  # the last class absent
        names = ["accuracy", "macro_f1", "mcc"] + (["f1"] if k == 2 else [])
        for name in names:
            score = scores._resample_scorer(name, y, p[None, :])
            assert score(0, np.arange(n)) == pytest.approx(metrics.METRICS[name](y, p), abs=1e-12), (name, n)
    const = np.zeros(10, dtype=int)
    assert scores._resample_scorer("mcc", const, const[None, :])(0, np.arange(10)) == 0.0 == metrics.mcc(const, const)


def test_seed_interval_is_students_t_over_the_seeds_and_refuses_a_single_seed():
    from scipy import stats
    from tcomp_utils.scores import seed_interval
    iv = seed_interval([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) / 3 ** 0.5  # sd 1 over 3 seeds
    assert (iv.difference, iv.lo, iv.hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert iv.verdict == "≈" and iv.resamples == 0  # 4.3 / sqrt(3) = 2.48 > 2: covers 0
    assert seed_interval([1.9, 2.0, 2.1]).verdict == "above" and seed_interval([-1.9, -2.0, -2.1]).verdict == "below"
    for bad in ([1.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="two or more finite differences"):
            seed_interval(bad)
