import pytest
import torch
import torch.nn.functional as F
from helpers.training import SmallNet, quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from sdd_lightning.method.losses import KDLoss, kd_loss
from sdd_lightning.training.module import ClassificationModule, DistillationModule, warmup_factor


def _loader(n=32, classes=10, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, classes, (n,), generator=g))
    return DataLoader(data, batch_size=batch)


def _trainer(tmp_path, **kwargs):
    return quiet_trainer(tmp_path, **kwargs)


def _distiller(**kwargs):
    torch.manual_seed(0)
    teacher, student = SmallNet(width=12), SmallNet(width=4)
    return DistillationModule(student, teacher, num_classes=10, **kwargs)


def test_training_leaves_the_teacher_bit_identical_and_changes_the_student(tmp_path):
    module = _distiller(scales=(1, 2, 4))
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in module.student.state_dict().items()}
    _trainer(tmp_path, max_steps=3, limit_val_batches=0).fit(module, _loader())
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    changed = [k for k, v in module.student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert any("running_mean" in k for k in changed) and any("weight" in k for k in changed)
    assert not module.teacher.training and all(not p.requires_grad for p in module.teacher.parameters())


def test_the_optimiser_holds_student_parameters_only():
    module = _distiller()
    optimizer = module.configure_optimizers()
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in module.student.parameters()}
    assert not held & {id(p) for p in module.teacher.parameters()}


def test_teacher_stays_in_eval_mode_when_lightning_calls_train():
    module = _distiller()
    module.train()
    assert module.student.training and not module.teacher.training


def test_global_scale_gives_exactly_plain_kd():
    module = _distiller(scales=(1,), ce_weight=0.1, kd_weight=0.9, loss=KDLoss(temperature=4.0))
    x, y = next(iter(_loader()))
    student_global, student_local = module.student_logits(x)
    _, teacher_local = module.teacher_logits(x)
    loss, parts = module.compute_loss(student_global, student_local, teacher_local, y)
    logits_s, logits_t = module.student(x), module.teacher(x)
    expected = 0.1 * F.cross_entropy(logits_s, y) + 0.9 * kd_loss(logits_s, logits_t, temperature=4.0).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    assert parts.diagnostics["complementary_fraction"] == 0


def test_the_loss_is_the_weighted_sum_of_its_named_terms():
    """LossParts: the terms and the weights they entered the loss with (kd: its weight times the warm-up)."""
    module = _distiller(scales=(1, 2), ce_weight=0.3, kd_weight=2.0, warmup_epochs=20)
    x, y = next(iter(_loader()))
    student_global, student_local = module.student_logits(x)
    loss, parts = module.compute_loss(student_global, student_local, module.teacher_logits(x)[1], y)
    assert parts.weights == {"loss_ce": 0.3, "loss_kd": module.distillation_weight()}
    assert module.distillation_weight() == pytest.approx(2.0 / 20)  # epoch 0 of a 20-epoch warm-up
    assert set(parts.terms) == {"loss_ce", "loss_kd"} and set(parts.diagnostics) == {"complementary_fraction"}
    total = sum(parts.weights[name] * parts.terms[name] for name in parts.terms)
    torch.testing.assert_close(loss.detach(), total, rtol=1e-6, atol=1e-7)
    assert set(parts.per_scale) == {"loss_kd", "complementary_fraction"}
    assert parts.per_scale["loss_kd"].shape == (2,) and parts.per_scale["complementary_fraction"].shape == (1,)


@pytest.mark.parametrize(
    ("dtype", "loss_dtype"),
    [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.bfloat16, torch.float32)],
)
def test_the_loss_is_computed_in_at_least_fp32_and_float64_stays_float64(dtype, loss_dtype):
    """Half-precision logits (autocast) are lifted to fp32; float64 (the step-for-step oracle) is not lowered."""
    module = _distiller(scales=(1, 2))
    x, y = next(iter(_loader()))
    student_global, student_local = module.student_logits(x)
    _, teacher_local = module.teacher_logits(x)
    loss, parts = module.compute_loss(student_global.to(dtype), student_local.to(dtype), teacher_local.to(dtype), y)
    assert loss.dtype == parts.terms["loss_ce"].dtype == parts.terms["loss_kd"].dtype == loss_dtype


def test_region_zero_is_the_student_output():
    module = _distiller(scales=(1, 2, 4))
    x, _ = next(iter(_loader()))
    module.eval()
    torch.testing.assert_close(module.student_logits(x)[1][:, 0], module.student(x))


def test_warmup_is_linear_from_the_first_epoch():
    assert warmup_factor(1, 20) == pytest.approx(0.05)
    assert warmup_factor(10, 20) == pytest.approx(0.5)
    assert warmup_factor(25, 20) == 1.0
    assert warmup_factor(1, 0) == 1.0


def test_fit_logs_metrics_and_measures_the_teacher_once(tmp_path):
    module = _distiller(scales=(1, 2))
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(module, _loader(), _loader(seed=1))
    metrics = trainer.callback_metrics
    for name in (
        "val/acc1",
        "val/acc5",
        "val/loss",
        "val/acc1_best",
        "train/acc1",
        "train/loss_kd",
        "train/complementary_fraction",
        "train/loss_kd_scale1",
        "train/loss_kd_scale2",
        "train/complementary_fraction_scale2",
        "val/acc5_best",
        "teacher/acc1",
    ):
        assert name in metrics, name
    # the teacher measured on the validation data equals a direct evaluation of it
    x, y = next(iter(DataLoader(_loader(seed=1).dataset, batch_size=32)))
    direct = (module.teacher(x).argmax(1) == y).float().mean()
    torch.testing.assert_close(module.teacher_acc1, direct)
    assert metrics["val/acc1_best"] >= metrics["val/acc1"] - 1e-6


def test_classification_module_trains(tmp_path):
    torch.manual_seed(0)
    module = ClassificationModule(SmallNet(), num_classes=10)
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(module, _loader(), _loader(seed=1))
    assert 0 <= trainer.callback_metrics["val/acc1"] <= 1


def test_scales_must_start_with_the_global_region():
    with pytest.raises(ValueError, match="start with 1"):
        _distiller(scales=(2, 4))


def test_checkpoints_load_with_weights_only(tmp_path):
    module = _distiller(scales=(1, 2))
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, _loader())
    path = tmp_path / "step.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # plain types only: no enums or callables pickled
    assert checkpoint["hyper_parameters"]["pooling"] == "exact"


def test_hierarchical_pooling_keeps_cross_entropy_and_accuracy_on_the_true_global_logits():
    # 7x7 maps: the official 4x4-first pyramid's region 0 is not the global average there
    torch.manual_seed(0)
    teacher, student = SmallNet(width=12, map_size=7), SmallNet(width=4, map_size=7)
    module = DistillationModule(student, teacher, num_classes=10, scales=(1, 2), pooling="hierarchical")
    module.eval()
    x, y = next(iter(_loader()))
    student_global, student_local = module.student_logits(x)
    torch.testing.assert_close(student_global, module.student(x))
    assert (student_local[:, 0] - student_global).abs().max() > 1e-4
    _, parts = module.compute_loss(student_global, student_local, module.teacher_logits(x)[1], y)
    torch.testing.assert_close(parts.terms["loss_ce"], F.cross_entropy(module.student(x), y))
    torch.testing.assert_close(module.evaluation_logits(x), module.student(x))
