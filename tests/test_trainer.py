"""The one trainer: exact resume from a checkpoint, early stopping with the best weights restored,
no weight decay on norms and biases of any architecture, per-step logs, bare modules."""
import types

import pytest
import torch
from torch import nn

from tcomp_utils import trainer
from tcomp_utils.trainer import ListBatches, TrainConfig, train
from conftest import tiny_bert, tiny_llama, tiny_t5


def _batches(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, 100, (4, 6), generator=g), "attention_mask": torch.ones(4, 6, dtype=torch.long),
             "labels": torch.randint(0, 2, (4,), generator=g)} for _ in range(n)]


def _fresh():
    torch.manual_seed(0)
    model = tiny_bert()  # dropout 0.1: the RNG state matters for an exact resume
    torch.manual_seed(1)
    return model


class Killed(Exception):
    pass


def test_a_run_stopped_and_resumed_ends_with_the_weights_of_an_unbroken_run(tmp_path, monkeypatch):
    # a clock that advances one second per training step: the elapsed times are exact, whatever the machine
    clock = types.SimpleNamespace(now=0.0, perf_counter=lambda: clock.now)
    monkeypatch.setattr(trainer, "time", clock)

    def ticking(model, batch):
        clock.now += 1
        return model(**batch).loss
    config = dict(steps=14, lr=1e-3, warmup_steps=2, progress=False)
    unbroken = _fresh()
    train(unbroken, ListBatches(_batches(), seed=3), TrainConfig(**config), loss=ticking)

    def dies_at_step_8(model, batch, calls=[0]):
        calls[0] += 1
        if calls[0] == 8:
            raise Killed
        return ticking(model, batch)

    broken = _fresh()
    ckpt = dict(checkpoint_dir=tmp_path / "ckpt", checkpoint_every=5)
    with pytest.raises(Killed):  # killed after step 7; the last checkpoint is step 5
        train(broken, ListBatches(_batches(), seed=3), TrainConfig(**config, **ckpt), loss=dies_at_step_8)
    resumed_model = _fresh()  # a new process: fresh model, the checkpoint on disk
    torch.manual_seed(123)  # whatever the RNG now holds, the checkpoint's state is restored
    result = train(resumed_model, ListBatches(_batches(), seed=3), TrainConfig(**config, **ckpt), loss=ticking)
    assert result.resumed and result.steps == 14
    assert result.seconds == 9  # this sitting: steps 6-14
    assert torch.load(tmp_path / "ckpt" / "state.pt", weights_only=False)["elapsed"] == 14  # both sittings' steps
    assert list(result.log.step) == list(range(1, 15))  # the log of steps 1-5 came from the checkpoint
    for (name, a), b in zip(unbroken.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_early_stopping_restores_the_best_weights():
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])
    snapshots = {}

    def evaluate(model):
        snapshots[len(snapshots) + 1] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"accuracy": next(scores)}

    model = _fresh()
    config = TrainConfig(steps=20, lr=1e-3, eval_every=2, metric="accuracy", patience=2, progress=False)
    result = train(model, ListBatches(_batches()), config, evaluate=evaluate)
    assert result.stopped_early and result.steps == 8 and result.best_step == 4 and result.best_metric == 0.7
    assert [e["accuracy"] for e in result.evaluations] == [0.5, 0.7, 0.6, 0.65]
    assert all(torch.equal(v, snapshots[2][k]) for k, v in model.state_dict().items())
    assert not model.training


def test_logs_have_one_row_per_step_and_per_evaluation():
    parts = lambda m, b: (lambda out: (out.loss, {"logit_mean": out.logits.mean().item()}))(m(**b))  # noqa: E731
    result = train(_fresh(), ListBatches(_batches(3)), TrainConfig(epochs=2, lr=1e-3, eval_every=3, progress=False),
                   loss=parts, evaluate=lambda m: {"accuracy": 0.5})
    steps = result.log[result.log.kind == "train"]
    assert list(steps.step) == [1, 2, 3, 4, 5, 6] and list(steps.epoch) == [0, 0, 0, 1, 1, 1]
    assert steps[["loss", "lr", "grad_norm", "logit_mean"]].notna().all().all()
    evals = result.log[result.log.kind == "eval"]
    assert list(evals.step) == [3, 6]
    assert 0 < evals.elapsed_s.iloc[0] <= evals.elapsed_s.iloc[1] <= result.seconds + 0.1  # a learning curve's time axis
    lr = list(steps.lr)  # linear schedule: warm-up (0 steps at 6 % of 6) then linear decay to 0
    assert lr[0] == pytest.approx(1e-3) and all(a > b for a, b in zip(lr, lr[1:]))


@pytest.mark.parametrize("make, norm_names", [(tiny_t5, "layer_norm"), (tiny_llama, "norm"), (tiny_bert, "LayerNorm")])
def test_no_decay_on_norms_and_biases_of_any_architecture(make, norm_names):
    model = make()
    decay, no_decay = (set(map(id, g["params"])) for g in trainer.parameter_groups(model, 0.01))
    names = {id(p): n for n, p in model.named_parameters()}
    norms = [n for n, p in model.named_parameters() if norm_names in n]
    assert norms and all(id(p) in no_decay for n, p in model.named_parameters() if norm_names in n)
    assert all(id(p) in no_decay for n, p in model.named_parameters() if n.endswith("bias"))
    assert all(p.ndim >= 2 for p in model.parameters() if id(p) in decay)
    emb = model.get_input_embeddings().weight
    assert id(emb) in decay and not decay & no_decay
    assert len(decay) + len(no_decay) == len({id(p) for p in model.parameters()}), [names[i] for i in decay & no_decay]


def test_lr_scales_train_the_matched_parameters_at_a_fraction_of_the_rate():
    model = tiny_t5()
    groups = trainer.parameter_groups(model, 0.01, 2e-3, (("*.q.weight", 0.25),))
    queries = {id(p) for n, p in model.named_parameters() if n.endswith(".q.weight")}
    assert len(groups) == 3 and "lr" not in groups[0] and "lr" not in groups[1]
    assert {id(p) for p in groups[2]["params"]} == queries and groups[2] == groups[2] | {"lr": 5e-4, "weight_decay": 0.01}
    assert not queries & {id(p) for g in groups[:2] for p in g["params"]}
    # AdamW's first step moves every weight by about its group's rate (m / sqrt(v) = ±1): the queries by a quarter
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = {"input_ids": torch.tensor([[5, 6, 7, 1]]), "labels": torch.tensor([[8, 9, 1]])}
    config = trainer.TrainConfig(steps=1, lr=2e-3, schedule="constant", weight_decay=0.0, max_grad_norm=None,
                                 progress=False, lr_scales=(("*.q.weight", 0.25),))
    trainer.train(model, [batch], config)
    moved = {n: (p.detach() - before[n]).abs() for n, p in model.named_parameters()}
    q, k = moved["encoder.block.0.layer.0.SelfAttention.q.weight"], moved["encoder.block.0.layer.0.SelfAttention.k.weight"]
    assert q.max().item() == pytest.approx(5e-4, rel=1e-3) and k.max().item() == pytest.approx(2e-3, rel=1e-3)
    with pytest.raises(ValueError, match=r"\['\*.query.weight'\] match no trainable parameter of T5ForConditionalGeneration"):
        trainer.parameter_groups(model, 0.01, 2e-3, (("*.query.weight", 0.5),))
    with pytest.raises(ValueError, match=r"lr_scales entries are \(name pattern, factor > 0\) pairs, got \('\*.q.weight', 0\)"):
        trainer.TrainConfig(lr_scales=(("*.q.weight", 0),))
    with pytest.raises(ValueError, match=r"got \('\*.q.weight', True\)"):
        trainer.TrainConfig(lr_scales=(("*.q.weight", True),))


def test_a_bare_module_trains_to_match_a_target_with_a_custom_loss():
    torch.manual_seed(0)
    target, student = nn.Linear(8, 4), nn.Linear(8, 4)
    xs = [torch.randn(16, 8) for _ in range(4)]
    data = ListBatches([(x, target(x).detach()) for x in xs])
    mse = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])  # noqa: E731
    before = sum(mse(student, b).item() for b in data.batches)
    result = train(student, data, TrainConfig(steps=300, lr=3e-2, weight_decay=0.0, schedule="constant",
                                              warmup_ratio=0.0, progress=False), loss=mse)
    after = sum(mse(student, b).item() for b in data.batches)
    assert after < 1e-3 * before and result.log.loss.iloc[-1] < result.log.loss.iloc[0]


def test_bf16_autocast_trains_float32_weights_along_the_float32_path():
    """Mixed precision changes the matmuls, not what is trained: the weights stay float32, the
    losses follow the float32 run to bfloat16's precision and both runs learn."""
    runs = {}
    for precision in ("fp32", "bf16"):
        model = _fresh()
        result = train(model, _batches(4), TrainConfig(steps=12, lr=1e-3, precision=precision, progress=False))
        assert all(p.dtype == torch.float32 for p in model.parameters())
        runs[precision] = result.log.loss.to_numpy()
    assert runs["bf16"][:4] == pytest.approx(runs["fp32"][:4], rel=0.05)
    assert runs["bf16"][-4:].mean() < runs["bf16"][:4].mean() and runs["fp32"][-4:].mean() < runs["fp32"][:4].mean()


def test_the_fused_adamw_kernel_trains_along_the_default_path_and_resumes_exactly(tmp_path):
    """``fused=True`` is the same AdamW update in one kernel: the weights follow the default loop's to
    float32 rounding, and a fused run stopped at a checkpoint ends where an unbroken fused run does."""
    runs = {}
    for fused in (False, True):
        model = _fresh().eval()  # no dropout: the two runs see the same arithmetic up to the optimizer's
        train(model, _batches(4), TrainConfig(steps=12, lr=1e-3, fused=fused, progress=False))
        runs[fused] = model.state_dict()
    assert all(torch.allclose(runs[False][k], runs[True][k], rtol=1e-4, atol=1e-5) for k in runs[False])
    assert not all(torch.equal(runs[False][k], runs[True][k]) for k in runs[False])  # the kernel did run
    moved = max((runs[True][k].float() - tiny.float()).abs().max().item()
                for k, tiny in _fresh().state_dict().items() if k in runs[True])
    assert moved > 1e-3  # it trained: the agreement above is not two untouched models

    config = dict(steps=8, lr=1e-3, fused=True, progress=False)
    unbroken = _fresh()
    train(unbroken, ListBatches(_batches(), seed=3), TrainConfig(**config))
    ckpt = dict(checkpoint_dir=tmp_path / "ckpt", checkpoint_every=3)

    def dies_at_step_5(model, batch, calls=[0]):
        calls[0] += 1
        if calls[0] == 5:
            raise Killed
        return model(**batch).loss
    with pytest.raises(Killed):
        train(_fresh(), ListBatches(_batches(), seed=3), TrainConfig(**config, **ckpt), loss=dies_at_step_5)
    resumed = _fresh()
    assert train(resumed, ListBatches(_batches(), seed=3), TrainConfig(**config, **ckpt)).resumed
    for (name, a), b in zip(unbroken.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="schedule='cosin'"):
        TrainConfig(schedule="cosin")
    with pytest.raises(ValueError, match="needs eval_every"):
        TrainConfig(patience=2)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="precision='fp16'; allowed: fp32, bf16"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="fused must be True or False.*got 'yes'"):
        TrainConfig(fused="yes")
    with pytest.raises(ValueError, match="no evaluate"):
        train(_fresh(), _batches(1), TrainConfig(steps=1, eval_every=1, progress=False))


def test_dataset_batches_follow_datasets_shuffle_and_grouping_keeps_every_row_once():
    import datasets
    import numpy as np

    ds = datasets.Dataset.from_dict({"x": list(range(203))})
    plain = trainer.DatasetBatches(ds, 10, lambda rows: rows["x"], seed=3)
    for e in range(2):  # the order datasets' own shuffle gives, so runs recorded before grouping existed hold
        assert list(plain.epoch(e)) == [ds.shuffle(seed=3 + e)[i:i + 10]["x"] for i in range(0, 203, 10)]
    lengths = np.random.default_rng(0).integers(1, 65, 203)
    grouped = trainer.DatasetBatches(ds, 10, lambda rows: rows["x"], seed=3, lengths=lengths, pool=5)
    batches = list(grouped.epoch(0))
    assert len(batches) == len(grouped) == 21
    assert sorted(x for b in batches for x in b) == list(range(203))
    spread = lambda bs: np.mean([lengths[b].max() - lengths[b].min() for b in bs])  # noqa: E731
    assert spread(batches) < spread(list(plain.epoch(0))) / 3
    assert batches == list(grouped.epoch(0)) and batches != list(grouped.epoch(1))
    with pytest.raises(ValueError, match="3 lengths for 203 rows"):
        trainer.DatasetBatches(ds, 10, lambda rows: rows["x"], lengths=[1, 2, 3])
