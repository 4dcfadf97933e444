"""Low-rank students and Patient Knowledge Distillation (seed 004): each mode builds the seed's
factorization, the PKD loss is the hand computation and reduces to KD and CE, a student equal to its
teacher does not move, bad pairs and modes are clear errors."""
import math

import numpy as np
import pytest
import torch

from tcomp_utils import budget, distill, trainer
from tcomp_utils.methods import students
from tcomp_utils.distill import DistillConfig, DistillationError
from tcomp_utils.registry import ConfigError
from conftest import tiny_bert


def _teacher(**kw):
    torch.manual_seed(0)
    return tiny_bert(**{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, **kw})


def _batches(n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 100, (6, 9), generator=gen)
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (6,), generator=gen)})
    return out


@pytest.mark.parametrize("mode, roles, rank, cls", [
    ("self_svd", {"query", "key", "value"}, "16", "LowRankLinear"),               # 192/768 of 64
    ("ffn_svd", {"ffn_in", "ffn_out"}, "26", "LowRankLinear"),                     # 306/768 of 64
    ("self_tuckerlayer", {"query", "key", "value"}, "2x32x32", "TuckerLinear"),    # [2, 384, 384] of [3, 768, 768]
    ("self_tuckervertical", {"query", "key", "value"}, "2x48x48", "TuckerLinear"),  # [8, 576, 576] of [12, 768, 768]
    ("self_tucker_4d", {"query", "key", "value"}, "2x2x48x48", "TuckerLinear"),   # [2, 8, 576, 576]
    ("self_falcon", {"query", "key", "value"}, "3", "FalconLinear"),
    ("self_falconlayer", {"query", "key", "value"}, "8", "FalconLinear"),     # one pointwise per layer
    ("self_falconvertical", {"query", "key", "value"}, "8", "FalconLinear"),  # one pointwise per role
    ("self_falcon_4d", {"query", "key", "value"}, "16", "FalconLinear"),      # one pointwise for all 9
])
def test_each_mode_builds_the_seeds_factorization(mode, roles, rank, cls):
    teacher = _teacher()
    student, rows = students.make_student(teacher, mode)
    assert set(rows.role) == roles and len(rows) == 3 * len(roles)
    if rank is not None:
        assert set(rows["rank"].astype(str)) == {rank}
    for path in rows.path:
        assert type(student.get_submodule(path)).__name__ == cls
        assert type(teacher.get_submodule(path)).__name__ == "Linear"  # the teacher is not changed
    assert budget.footprint(student).params < budget.footprint(teacher).params
    if mode.startswith("self_falcon"):  # budgeted like self_svd: at most its stored numbers per matrix (or stack)
        assert (rows.params_after <= rows.params_before / 2).all()
        shared = {id(student.get_submodule(p).shared) for p in rows.path}
        assert len(shared) == {"self_falcon": 1, "self_falconlayer": 3, "self_falconvertical": 3, "self_falcon_4d": 1}[mode]


def test_the_stacked_falcon_students_store_their_shared_factor_once_and_reload(tmp_path):
    """self_falcon_4d on 3 layers of 64: the 9 Q/K/V matrices share one pointwise factor (64 x 8 blocks
    x depth 16) and keep a depthwise factor (depth 16 x 64 inputs) each; saved and reloaded, it computes the same."""
    from tcomp_utils import serialize

    teacher = _teacher()
    student, rows = students.make_student(teacher, "self_falcon_4d")
    assert budget.footprint(student).params == budget.footprint(teacher).params - 9 * 64 * 64 + 64 * 8 * 16 + 9 * 16 * 64
    assert rows.params_after.sum() == pytest.approx(64 * 8 * 16 + 9 * (16 * 64 + 64))
    # factored, a matrix would cost 16·(64 + 64·8) MACs > 64·64: it computes with its matrix, as the seed's
    assert all(student.get_submodule(p).runs_dense for p in rows.path)
    assert budget.footprint(student).macs == budget.footprint(teacher).macs
    ids = torch.randint(3, 100, (2, 9))
    serialize.save_compressed(student, tmp_path / "s")
    loaded = serialize.load_compressed(tmp_path / "s")
    student.eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, student(input_ids=ids).logits)
    assert budget.footprint(loaded) == budget.footprint(student)
    _, sgd_rows = students.make_student(teacher, "self_falconlayer", fit="sgd", fit_steps=300, fit_lr=3e-2)
    _, svd_rows = students.make_student(teacher, "self_falconlayer")
    assert (sgd_rows.rel_error >= svd_rows.rel_error - 1e-5).all() and (sgd_rows.rel_error < 1.1 * svd_rows.rel_error).all()


def test_reconstructed_tucker_students_run_dense_matrices_and_keep_the_factors_stored_and_trained(tmp_path):
    """reconstruct=True: the same logits as the factorized student, the teacher's (dense) MACs, the
    factorized student's stored numbers; the factors get the gradients; saved and reloaded alike."""
    from tcomp_utils import serialize

    teacher = _teacher().eval()
    ids = torch.randint(3, 100, (2, 9))
    for mode in ("self_tuckerlayer", "self_tucker_4d", "ffn_tuckervertical"):
        factored, rows = students.make_student(teacher, mode)
        dense, dense_rows = students.make_student(teacher, mode, reconstruct=True)
        assert not rows.reconstructed.any() and dense_rows.reconstructed.all()
        assert dense_rows.params_after.tolist() == rows.params_after.tolist()
        with torch.no_grad():
            torch.testing.assert_close(dense(input_ids=ids).logits, factored(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        fp, fp_factored = budget.footprint(dense), budget.footprint(factored)
        assert fp.macs == budget.footprint(teacher).macs and fp.params == fp_factored.params < budget.footprint(teacher).params
        assert fp_factored.macs != fp.macs
    layer = dense.get_submodule(dense_rows.path[0])
    assert layer.runs_dense and layer.tcomp_footprint().macs == layer.in_features * layer.out_features
    dense.train()
    dense(input_ids=ids).logits.sum().backward()
    assert layer.coeffs[0].grad is not None and layer.shared.core.grad.abs().sum() > 0
    dense.eval()
    serialize.save_compressed(dense, tmp_path / "d")
    loaded = serialize.load_compressed(tmp_path / "d")
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, dense(input_ids=ids).logits)
    assert budget.footprint(loaded) == budget.footprint(dense)
    with pytest.raises(ConfigError, match="reconstruct=True rebuilds Tucker students' matrices; mode 'self_svd' is svd: "
                                          "give one of self_tuckerlayer, self_tuckervertical, self_tucker_4d, "
                                          "ffn_tuckervertical"):
        students.make_student(teacher, "self_svd", reconstruct=True)


@pytest.mark.parametrize("mode", students.MODES)
def test_every_mode_distills_under_bf16_autocast(mode):
    """The table trains with bf16 matmuls: every mode's forward and backward run under autocast (the
    4-D Tucker stack once mixed a bf16 partial product with a float32 coefficient) and follow the
    float32 logits to bfloat16's precision; the weights stay float32."""
    teacher = _teacher().eval()
    student, _ = students.make_student(teacher, mode)
    batch = _batches(1)[0]
    with torch.no_grad():
        ref = student(**distill._inputs(batch)).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = student(**distill._inputs(batch)).logits.float()
    torch.testing.assert_close(low, ref, atol=0.05, rtol=0.05)
    result = distill.distill(student, teacher, [batch], DistillConfig(beta=0.0),
                             trainer.TrainConfig(steps=1, lr=1e-3, precision="bf16", progress=False))
    assert result.steps == 1 and np.isfinite(result.log.loss).all()
    assert all(p.dtype == torch.float32 for p in student.parameters())


def test_ffn_tucker_vertical_stacks_each_ffn_matrix_across_layers_and_explicit_ranks_are_taken():
    teacher = _teacher()
    student, rows = students.make_student(teacher, "ffn_tuckervertical")
    assert dict(zip(rows.role, rows["rank"].astype(str))) == {"ffn_in": "2x64x32", "ffn_out": "2x32x64"}
    _, rows = students.make_student(teacher, "self_svd", ranks=5)
    assert set(rows["rank"].astype(str)) == {"5"}
    with pytest.raises(ConfigError, match="unknown student mode 'self_svdd'; modes: self_svd, ffn_svd"):
        students.make_student(teacher, "self_svdd")


def test_the_pkd_loss_is_the_hand_computation():
    s = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    t = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    s_cls = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]])   # (batch 2, one matched layer, hidden 2)
    t_cls = torch.tensor([[[4.0, 3.0]], [[0.0, 2.0]]])
    cfg = DistillConfig(alpha=0.3, temperature=2.0, beta=10.0)
    total, parts = distill.pkd_loss(s, t, y, s_cls, t_cls, cfg)

    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()
    kd = np.mean([sum(p * math.log(p / q) for p, q in zip(softmax(tt / 2), softmax(ss / 2)))
                  for ss, tt in zip(s.numpy(), t.numpy())]) * 4
    ce = np.mean([-math.log(softmax(ss)[c]) for ss, c in zip(s.numpy(), y.numpy())])
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    pt = np.mean([(unit(a) - unit(b)) ** 2 for a, b in
                  [(np.array([3, 4.0]), np.array([4, 3.0])), (np.array([1, 0.0]), np.array([0, 2.0]))]])
    assert parts["kd"] == pytest.approx(kd, rel=1e-5) and parts["ce"] == pytest.approx(ce, rel=1e-5)
    assert parts["pt"] == pytest.approx(pt, rel=1e-5)
    assert float(total) == pytest.approx(0.3 * kd + 0.7 * ce + 10 * pt, rel=1e-5)
    raw = distill.pkd_loss(s, t, y, s_cls, t_cls, DistillConfig(alpha=0.3, temperature=2.0, beta=10.0, normalize=False))
    assert raw[1]["pt"] == pytest.approx(np.mean([(3 - 4) ** 2, (4 - 3) ** 2, 1, 4]) / 1, rel=1e-5)
    kd_only, _ = distill.pkd_loss(s, t, y, s_cls, t_cls, DistillConfig(alpha=0.3, temperature=2.0, beta=0.0))
    assert float(kd_only) == pytest.approx(0.3 * kd + 0.7 * ce, rel=1e-5)   # beta = 0: plain KD
    ce_only, _ = distill.pkd_loss(s, t, y, s_cls, t_cls, DistillConfig(alpha=0.0, beta=0.0))
    assert float(ce_only) == pytest.approx(ce, rel=1e-5)                     # alpha = 0: CE only


def test_layer_maps_of_pkd_skip_and_last():
    assert distill.layer_map(6, 12, "skip") == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]
    assert distill.layer_map(6, 12, "last") == [(1, 7), (2, 8), (3, 9), (4, 10), (5, 11)]
    assert distill.layer_map(3, 3, "skip") == distill.layer_map(3, 3, "last") == [(1, 1), (2, 2)]
    with pytest.raises(DistillationError, match="a student of 4 layers cannot be matched to a teacher of 3"):
        distill.layer_map(4, 3)


def test_a_student_equal_to_its_teacher_does_not_move():
    """At equality the soft targets and the patient term are at their minimum: their gradient is
    zero to double precision, so a distillation step (alpha = 1) leaves the student the teacher,
    while the labels' term (alpha < 1) does move it. (Over many steps Adam would amplify the
    1e-16 residue, as it divides by the gradient's own size.)"""
    teacher = _teacher(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    for alpha, moves in ((1.0, False), (0.5, True)):
        student = students.layer_student(teacher, 3)
        before = {k: v.clone() for k, v in student.state_dict().items()}
        result = distill.distill(student, teacher, _batches(1), DistillConfig(alpha=alpha, beta=100.0),
                                 trainer.TrainConfig(steps=1, lr=1e-2, weight_decay=0.0, max_grad_norm=None,
                                                     progress=False))
        assert result.log.kd.iloc[0] == 0 and result.log.pt.iloc[0] == 0
        change = max((v - before[k]).abs().max().item() for k, v in student.state_dict().items()
                     if v.is_floating_point())
        assert (change > 1e-3) if moves else (change < 1e-8), (alpha, change)


def test_distillation_brings_a_fresh_student_to_its_teacher_on_held_out_inputs_and_the_cache_runs_it_once():
    """A randomly initialised 2-layer student of a confident 3-layer teacher: PKD lowers the KL
    divergence to the teacher on batches it did not train on to a fifth, and the patient term
    falls too; the cached teacher runs once per example over five epochs and gives what the
    teacher gives on the fly."""
    teacher = _teacher()
    with torch.no_grad():
        teacher.classifier.weight.mul_(50)  # confident soft targets
    torch.manual_seed(1)
    student = tiny_bert(hidden_size=64, intermediate_size=128, num_hidden_layers=2)

    def held_out_kl() -> float:
        student.eval()
        with torch.no_grad():
            return float(np.mean([torch.nn.functional.kl_div(
                student(**{k: v for k, v in b.items() if k != "labels"}).logits.log_softmax(-1),
                teacher(**{k: v for k, v in b.items() if k != "labels"}).logits.log_softmax(-1),
                log_target=True, reduction="batchmean").item() for b in _batches(4, seed=9)]))
    before = held_out_kl()
    cached, data = distill.Teacher(teacher, cache=True), _batches(8)
    result = distill.distill(student, cached, data, DistillConfig(alpha=1.0, beta=10.0, temperature=1.0),
                             trainer.TrainConfig(epochs=5, lr=1e-3, weight_decay=0.0, progress=False))
    assert held_out_kl() < 0.2 * before
    assert result.log.pt.iloc[-3:].mean() < 0.5 * result.log.pt.iloc[:3].mean()
    assert cached.computed == sum(b["input_ids"].shape[0] for b in data)
    on_the_fly = distill.Teacher(teacher)
    for batch in data:
        for a, b in zip(cached(batch), on_the_fly(batch)):
            torch.testing.assert_close(a, b)
    layered = students.layer_student(teacher, 2)
    assert layered.config.num_hidden_layers == 2 and len(layered.bert.encoder.layer) == 2
    assert layered.bert.encoder.layer[1] is not teacher.bert.encoder.layer[1]
    torch.testing.assert_close(layered.bert.encoder.layer[1].output.dense.weight,
                               teacher.bert.encoder.layer[1].output.dense.weight)


def test_a_stored_teacher_is_filled_once_in_fixed_batches_and_read_back_by_any_batching(tmp_path):
    """prefill runs the teacher on every example once; a new Teacher on the same store reads every
    output back without running (whatever batches ask, here one example at a time and reversed) and
    gets exactly what was stored, which is what the teacher gives on the fly; a changed weight
    changes the fingerprint the store is named by."""
    teacher = _teacher()
    data = _batches(3)
    store = tmp_path / "outputs" / f"{distill.fingerprint(teacher)}-fp32.pt"
    first = distill.Teacher(teacher, store=store)
    assert first.prefill(data) == 18 and first.prefill(data) == 0  # the second pass finds every example cached
    assert first.save() == store and [p.name for p in store.parent.iterdir()] == [store.name]  # no temporary left
    again = distill.Teacher(teacher, store=store)
    assert again.loaded == 18
    on_the_fly = distill.Teacher(teacher)
    for batch in reversed(data):
        for row in range(batch["input_ids"].shape[0]):
            one = {k: v[row:row + 1] for k, v in batch.items()}
            for a, b, c in zip(again(one), first(one), on_the_fly(one)):
                assert torch.equal(a, b)
                torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
    assert again.computed == 0
    changed = _teacher()
    with torch.no_grad():
        changed.classifier.bias.add_(1e-3)
    assert distill.fingerprint(changed) != distill.fingerprint(teacher) == distill.fingerprint(_teacher())
    with pytest.raises(distill.DistillationError, match="prefill needs a cache"):
        distill.Teacher(teacher).prefill(data)
    with pytest.raises(distill.DistillationError, match="no store"):
        distill.Teacher(teacher, cache=True).save()
    with pytest.raises(distill.DistillationError, match="nothing is cached yet"):
        distill.Teacher(teacher, store=tmp_path / "empty.pt").save()
    with pytest.raises(ValueError, match="precision='fp16'; allowed: fp32, bf16"):
        first.prefill(data, precision="fp16")


def test_bad_pairs_are_clear_errors():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models as tok_models

    def tok(words):
        return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel(
            {w: i for i, w in enumerate(words)}, unk_token="[UNK]")))
    teacher = _teacher()
    with pytest.raises(DistillationError, match="tokenizers differ"):
        distill.check_pair(students.layer_student(teacher, 2), teacher, tok(["[UNK]", "a", "b"]), tok(["[UNK]", "a", "c"]))
    with pytest.raises(DistillationError, match="vocabulary has 120 tokens, the teacher's 100"):
        distill.check_pair(tiny_bert(vocab_size=120), tiny_bert())
    with pytest.raises(DistillationError, match="the student's are 32 wide, the teacher's 64"):
        distill.check_pair(tiny_bert(), teacher)
    with pytest.raises(DistillationError, match="the student has 3 labels, the teacher 2"):
        distill.check_pair(_teacher(num_labels=3), teacher)
    with pytest.raises(DistillationError, match="strategy='middle'"):
        DistillConfig(strategy="middle")
    with pytest.raises(ConfigError, match="keep=4: the teacher has 3 layers"):
        students.layer_student(teacher, 4)
