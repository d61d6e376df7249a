"""What the modules log and measure, against a direct computation on the same batches.

The solver has learning rate 0, so the networks do not change during a fit: every logged epoch value can be
recomputed from the data after it. (BatchNorm running statistics still change in training mode; the direct
evaluation in eval mode runs first, with the statistics the validation used.)
"""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers.training import SmallNet, quiet_trainer
from torch.utils.data import DataLoader, Dataset, TensorDataset

from sdd_lightning.errors import TeacherCheckError
from sdd_lightning.method.losses import KDLoss, NKDLoss
from sdd_lightning.training.module import ClassificationModule, DistillationModule

CLASSES = 10
FROZEN = partial(torch.optim.SGD, lr=0.0)


def _data(n=48, seed=0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, CLASSES, (n,), generator=g))


def _loader(dataset, batch=16) -> DataLoader:
    return DataLoader(dataset, batch_size=batch)


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    return quiet_trainer(tmp_path, **({"num_sanity_val_steps": 0} | kwargs))


def _networks():
    torch.manual_seed(0)
    teacher, student = SmallNet(width=12), SmallNet(width=4)
    with torch.no_grad():  # logits that differ from region to region, so some regions are complementary
        teacher.classifier.weight.mul_(20.0)
        student.classifier.weight.mul_(5.0)
    return teacher, student


def _topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    return (logits.topk(k, -1).indices == y[:, None]).any(-1)


def _assert_logged(logged: dict, name: str, expected) -> None:
    torch.testing.assert_close(logged[name].float(), torch.as_tensor(expected).float(), msg=name)


def test_a_classification_fit_logs_the_accuracy_and_loss_of_its_batches(tmp_path):
    train, val = _data(seed=0), _data(seed=1)
    torch.manual_seed(0)
    module = ClassificationModule(SmallNet(), CLASSES, optimizer=FROZEN)
    trainer = _trainer(tmp_path)
    trainer.fit(module, _loader(train), _loader(val))
    logged = dict(trainer.callback_metrics)
    trainer.test(module, _loader(val), verbose=False)
    tested = dict(trainer.callback_metrics)

    network = module.model
    with torch.no_grad():
        network.eval()
        logits = network(val.tensors[0])
        y = val.tensors[1]
        batch_losses = [F.cross_entropy(logits[i : i + 16], y[i : i + 16]) for i in range(0, 48, 16)]
        _assert_logged(logged, "val/loss", torch.stack(batch_losses).mean())
        _assert_logged(logged, "val/acc1", _topk_correct(logits, y, 1).float().mean())
        _assert_logged(logged, "val/acc5", _topk_correct(logits, y, 5).float().mean())
        _assert_logged(logged, "val/acc1_best", logged["val/acc1"])  # one epoch: the best is the only one
        _assert_logged(logged, "val/acc5_best", logged["val/acc5"])
        _assert_logged(tested, "test/acc1", logged["val/acc1"])  # the same data and weights
        _assert_logged(tested, "test/acc5", logged["val/acc5"])
        network.train()  # batch statistics: the training step's logits
        steps = [network(x) for x, _ in _loader(train)]
        ys = [y for _, y in _loader(train)]
    _assert_logged(
        logged, "train/loss", torch.stack([F.cross_entropy(s, y) for s, y in zip(steps, ys, strict=True)]).mean()
    )
    _assert_logged(
        logged, "train/acc1", torch.cat([s.argmax(-1) == y for s, y in zip(steps, ys, strict=True)]).float().mean()
    )


class _LabelsPerEpoch(Dataset):
    """Fixed images whose labels are replaced at every validation epoch (``epoch`` is set by a callback)."""

    def __init__(self, images: torch.Tensor, labels: list[torch.Tensor]) -> None:
        self.images, self.labels, self.epoch = images, labels, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[self.epoch][i]


class _SetEpoch(L.Callback):
    def __init__(self, dataset: _LabelsPerEpoch) -> None:
        self.dataset = dataset

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.dataset.epoch = trainer.current_epoch


def test_the_best_epoch_is_the_highest_top1_and_its_top5_comes_with_it(tmp_path):
    torch.manual_seed(0)
    module = ClassificationModule(SmallNet(), CLASSES, optimizer=FROZEN)
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        module.model.eval()
        logits = module.model(images)
    ranked = logits.argsort(-1, descending=True)
    second, last = ranked[:, 1], ranked[:, -1]
    # top-1 / top-5 per epoch: 4/8, 4/8 | 6/8, 6/8 | 6/8 (a tie, not better), 8/8 | 2/8, 8/8
    plans = [(4, 0), (6, 0), (6, 2), (2, 6)]  # (labels = the prediction, labels = the second guess); rest wrong
    labels = []
    for right, runner_up in plans:
        y = last.clone()
        y[:right] = ranked[:right, 0]
        y[right : right + runner_up] = second[right : right + runner_up]
        labels.append(y)
    dataset = _LabelsPerEpoch(images, labels)
    trainer = _trainer(tmp_path, max_epochs=4, limit_train_batches=1, callbacks=[_SetEpoch(dataset)])
    trainer.fit(module, _loader(_data(16)), _loader(dataset, batch=8))
    assert float(trainer.callback_metrics["val/acc1"]) == pytest.approx(2 / 8)  # the last epoch's
    assert float(module.best_val_acc1) == pytest.approx(6 / 8) and float(module.best_val_acc5) == pytest.approx(6 / 8)
    _assert_logged(dict(trainer.callback_metrics), "val/acc1_best", 6 / 8)
    _assert_logged(dict(trainer.callback_metrics), "val/acc5_best", 6 / 8)


def test_a_distillation_fit_logs_each_part_and_each_scale_of_its_loss(tmp_path):
    teacher, student = _networks()
    module = DistillationModule(student, teacher, CLASSES, scales=(1, 2), optimizer=FROZEN, ce_weight=0.3)
    train, val = _data(seed=0), _data(seed=1)
    trainer = _trainer(tmp_path)
    trainer.fit(module, _loader(train), _loader(val))
    logged = dict(trainer.callback_metrics)

    with torch.no_grad():
        module.eval()  # validation: the student's global and local predictions, the teacher's too
        x, y = val.tensors
        teacher_global, teacher_local = module.teacher_logits(x)
        _, student_local = module.student_logits(x)
        _assert_logged(logged, "teacher/acc1", (teacher_global.argmax(-1) == y).float().mean())
        for local, prefix in ((teacher_local, "teacher/local_acc1"), (student_local, "val/local_acc1")):
            right = local.argmax(-1) == y[:, None]  # (B, R): region 0 is scale 1, regions 1-4 scale 2
            _assert_logged(logged, f"{prefix}_scale2", right[:, 1:].float().mean())
            if prefix.startswith("val"):
                _assert_logged(logged, f"{prefix}_scale1", right[:, 0].float().mean())
        module.train()
        parts = []
        for x, y in _loader(train):
            student_global, student_local = module.student_logits(x)
            _, teacher_local = module.teacher_logits(x)
            loss, part = module.compute_loss(student_global, student_local, teacher_local, y)
            out = module.distillation_loss(student_local, teacher_local, y)
            parts.append((loss, part, out))
    mean = lambda values: torch.stack(values).mean()  # noqa: E731 (equal batches: the epoch mean)
    _assert_logged(logged, "train/loss", mean([loss for loss, _, _ in parts]))
    for name in ("loss_ce", "loss_kd", "complementary_fraction"):
        _assert_logged(logged, f"train/{name}", mean([(part.terms | part.diagnostics)[name] for _, part, _ in parts]))
    per_region = torch.cat([out.per_region for _, _, out in parts])  # (48, 5)
    complementary = torch.cat([out.complementary for _, _, out in parts]).float()
    _assert_logged(logged, "train/loss_kd_scale1", per_region[:, 0].mean())
    _assert_logged(logged, "train/loss_kd_scale2", per_region[:, 1:].mean())
    _assert_logged(logged, "train/complementary_fraction_scale2", complementary[:, 1:].mean())
    assert "train/complementary_fraction_scale1" not in logged  # region 0 is never complementary
    assert 0 < float(logged["train/complementary_fraction_scale2"]) < 1


def test_the_teacher_is_measured_on_every_loader_given():
    teacher, student = _networks()
    module = DistillationModule(student, teacher, CLASSES, scales=(1, 2))
    first, second = _data(16, seed=4), _data(32, seed=5)
    module.measure_teacher([_loader(first, batch=5), _loader(second, batch=7)])
    x, y = torch.cat([first.tensors[0], second.tensors[0]]), torch.cat([first.tensors[1], second.tensors[1]])
    with torch.no_grad():
        global_logits, local = module.teacher_logits(x)
    right = local.argmax(-1) == y[:, None]
    assert float(module.teacher_acc1) == pytest.approx(float((global_logits.argmax(-1) == y).float().mean()))
    expected = torch.stack([right[:, 0].float().mean(), right[:, 1:].float().mean()])
    torch.testing.assert_close(module.teacher_local_acc1, expected)


def test_without_validation_data_the_teacher_is_not_measured(tmp_path):
    teacher, student = _networks()
    module = DistillationModule(student, teacher, CLASSES, teacher_expected_acc1=0.99)  # would be refused
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(module, _loader(_data()))
    assert float(module.teacher_acc1) == -1 and "teacher/acc1" not in trainer.callback_metrics


def test_a_measured_teacher_is_not_measured_again(tmp_path):
    teacher, student = _networks()
    module = DistillationModule(student, teacher, CLASSES, teacher_expected_acc1=0.99)
    module.teacher_acc1.fill_(0.995)  # as restored from a checkpoint of a run that passed the check
    _trainer(tmp_path, max_steps=1).fit(module, _loader(_data()), _loader(_data(seed=1)))
    assert float(module.teacher_acc1) == pytest.approx(0.995)


@pytest.mark.parametrize(("measured", "refused"), [(0.80, False), (0.75, False), (0.7499, True), (0.2, True)])
def test_a_teacher_below_its_expected_accuracy_minus_the_margin_is_refused(measured, refused):
    teacher, student = _networks()
    module = DistillationModule(student, teacher, CLASSES, teacher_expected_acc1=0.78, teacher_acc1_margin=0.03)
    module.teacher_acc1.fill_(measured)
    module.teacher_local_acc1.fill_(0.5)
    if not refused:
        module.check_teacher()
        assert float(module.teacher_acc1) == pytest.approx(measured)
        return
    with pytest.raises(TeacherCheckError) as error:
        module.check_teacher()
    assert str(error.value) == (
        f"the teacher scores {100 * measured:.2f}% top-1 on the validation data before training, but 78.00% is "
        "expected of it (allowed margin 3.00 points): check teacher.checkpoint and teacher.arch, and that the data "
        "is the one it was trained on. If you mean to distil from it anyway: teacher.check=false"
    )
    # not kept: a rerun measures and checks again
    assert float(module.teacher_acc1) == -1 and (module.teacher_local_acc1 == -1).all()


def test_without_an_expected_accuracy_any_teacher_passes():
    teacher, student = _networks()
    module = DistillationModule(student, teacher, CLASSES)
    module.teacher_acc1.fill_(0.01)
    module.check_teacher()
    assert float(module.teacher_acc1) == pytest.approx(0.01)


def test_compile_compiles_the_forward_passes_and_keeps_the_checkpoint_keys():
    torch.manual_seed(0)
    network = SmallNet()
    keys = list(network.state_dict())
    ClassificationModule(network, CLASSES, compile=True)
    assert hasattr(network.forward, "_torchdynamo_orig_callable")
    assert hasattr(network.forward_features, "_torchdynamo_orig_callable")
    assert list(network.state_dict()) == keys
    teacher, student = _networks()
    DistillationModule(student, teacher, CLASSES, compile=True)
    for net in (student, teacher):  # the head needs the feature maps; the classifier runs on the pooled regions
        assert hasattr(net.forward_features, "_torchdynamo_orig_callable")
        assert not hasattr(net.forward, "_torchdynamo_orig_callable")
    plain = SmallNet()
    ClassificationModule(plain, CLASSES)
    assert not hasattr(plain.forward, "_torchdynamo_orig_callable")


def test_the_default_solver_is_the_official_cifar_sgd():
    module = ClassificationModule(SmallNet(), CLASSES)
    optimizer = module.configure_optimizers()
    assert type(optimizer) is torch.optim.SGD
    assert {k: optimizer.defaults[k] for k in ("lr", "momentum", "weight_decay")} == {
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
    }


def test_channels_last_puts_the_convolutions_in_that_layout_when_the_run_is_set_up():
    module = ClassificationModule(SmallNet(), CLASSES, channels_last=True)
    module.setup("fit")
    weight = module.model.features[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def test_a_teacher_measured_at_zero_is_logged_and_not_measured_again(tmp_path):
    teacher, student = _networks()
    module = DistillationModule(student, teacher, CLASSES, optimizer=FROZEN)
    module.teacher_acc1.fill_(0.0)  # measured (a useless teacher), e.g. restored from a checkpoint
    module.teacher_local_acc1.fill_(0.0)
    trainer = _trainer(tmp_path)
    trainer.fit(module, _loader(_data()), _loader(_data(seed=1)))
    assert float(module.teacher_acc1) == 0.0
    assert float(trainer.callback_metrics["teacher/acc1"]) == 0.0


def test_per_epoch_sums_are_averaged_over_processes_and_the_progress_bar_shows_top1(tmp_path, monkeypatch):
    # Under DDP each process holds the sums of its own shard: the epoch values must be logged with sync_dist, or
    # every rank reports its shard alone (torchmetrics objects synchronise themselves and need no flag).
    calls: dict[str, dict] = {}
    log = L.LightningModule.log

    def recording_log(self, name, value, *args, **kwargs):
        calls[name] = kwargs
        return log(self, name, value, *args, **kwargs)

    monkeypatch.setattr(L.LightningModule, "log", recording_log)
    teacher, student = _networks()
    module = DistillationModule(student, teacher, CLASSES, scales=(1, 2), optimizer=FROZEN)
    trainer = _trainer(tmp_path)
    trainer.fit(module, _loader(_data()), _loader(_data(seed=1)))
    epoch_sums = [n for n in calls if n.startswith(("train/", "teacher/", "val/local_acc1"))]
    assert {"train/loss", "train/loss_kd_scale2", "teacher/acc1", "val/local_acc1_scale2"} <= set(epoch_sums)
    assert [n for n in epoch_sums if calls[n].get("sync_dist") is not True] == []
    assert set(trainer.progress_bar_metrics) == {"val/acc1"}
    calls.clear()  # the same for a network trained without a teacher
    torch.manual_seed(0)
    plain = ClassificationModule(SmallNet(), CLASSES, optimizer=FROZEN)
    _trainer(tmp_path).fit(plain, _loader(_data()), _loader(_data(seed=1)))
    assert {"train/loss", "train/acc1"} <= set(calls)
    assert [n for n in calls if n.startswith("train/") and calls[n].get("sync_dist") is not True] == []


class _RecordsLayout(SmallNet):
    """Records whether each input it is given is in the channels-last layout."""

    def __init__(self):
        super().__init__()
        self.channels_last_inputs: list[bool] = []

    def forward(self, x):
        self.channels_last_inputs.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return super().forward(x)


@pytest.mark.parametrize("channels_last", [True, False])
def test_with_channels_last_the_network_is_given_channels_last_images(tmp_path, channels_last):
    network = _RecordsLayout()
    module = ClassificationModule(network, CLASSES, optimizer=FROZEN, channels_last=channels_last)
    _trainer(tmp_path, max_steps=1, limit_val_batches=1).fit(module, _loader(_data()), _loader(_data(seed=1)))
    assert network.channels_last_inputs and set(network.channels_last_inputs) == {channels_last}


def test_two_validation_loaders_both_count_in_the_teacher_measured_before_training(tmp_path):
    teacher, student = _networks()
    module = DistillationModule(student, teacher, CLASSES, scales=(1, 2), optimizer=FROZEN)
    first, second = _data(16, seed=4), _data(32, seed=5)
    _trainer(tmp_path, max_steps=1).fit(module, _loader(_data()), [_loader(first, batch=5), _loader(second, batch=7)])
    x, y = torch.cat([first.tensors[0], second.tensors[0]]), torch.cat([first.tensors[1], second.tensors[1]])
    with torch.no_grad():
        global_logits, _ = module.teacher_logits(x)
    assert float(module.teacher_acc1) == pytest.approx(float((global_logits.argmax(-1) == y).float().mean()))


@pytest.mark.parametrize("distilling", [False, True])
def test_the_scheduler_steps_once_per_epoch(tmp_path, distilling):
    torch.manual_seed(0)
    solver = {
        "optimizer": partial(torch.optim.SGD, lr=0.1),
        "scheduler": partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.1),
    }
    if distilling:  # the distillation module hands the scheduler on to its parent
        module = DistillationModule(*reversed(_networks()), CLASSES, **solver)
    else:
        module = ClassificationModule(SmallNet(), CLASSES, **solver)
    trainer = _trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(module, _loader(_data()))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.001)


def squared_rows(student, teacher, target):
    """A base loss written as a plain function: per-row squared distance of the logits."""
    return (student - teacher).pow(2).sum(-1)


def test_the_recorded_hyperparameters_name_the_base_loss_and_its_settings():
    teacher, student = _networks()
    configured = DistillationModule(student, teacher, CLASSES, loss=NKDLoss(temperature=1.0, gamma=0.5))
    assert configured.hparams["loss"] == {
        "name": "NKDLoss",
        "temperature": 1.0,
        "gamma": 0.5,
        "exclude_target": False,
        "standardize": False,
    }
    function = DistillationModule(student, teacher, CLASSES, loss=squared_rows)
    assert function.hparams["loss"] == {"name": "squared_rows"}


@pytest.mark.parametrize("value", ["high", True, float("nan"), -0.1])
def test_a_weight_that_is_not_a_finite_non_negative_number_is_refused_by_name(value):
    teacher, student = _networks()
    with pytest.raises(ValueError) as error:
        DistillationModule(student, teacher, CLASSES, ce_weight=value)
    assert str(error.value) == f"ce_weight must be a finite number >= 0, got {value!r}"


def test_a_distillation_modules_defaults_are_the_official_sd_kd_recipe():
    teacher, student = _networks()
    module = DistillationModule(student, teacher, CLASSES)
    assert (module.ce_weight, module.kd_weight, module.warmup_epochs) == (0.1, 0.9, 0.0)
    loss = module.distillation_loss
    assert (loss.complementary_weight, loss.consistent_weight, loss.base) == (2.0, 1.0, KDLoss(temperature=4.0))
    assert module.head.scales == (1, 2, 4) and module.teacher_acc1_margin == 0.01
    assert not module.channels_last and any(isinstance(m, torch.nn.BatchNorm2d) for m in module.teacher.modules())
    assert not hasattr(student.forward_features, "_torchdynamo_orig_callable")
    assert float(module.teacher_acc1) == -1 and (module.teacher_local_acc1 == -1).all()  # -1: not measured yet
    assert "region_scale" not in module.state_dict()  # derived from the scales: not a checkpoint key
    assert not ClassificationModule(SmallNet(), CLASSES).channels_last
    assert DistillationModule(student, teacher, CLASSES, channels_last=True).channels_last


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"ce_weight": 0, "kd_weight": 0},
            "ce_weight and kd_weight are both 0: nothing would be trained; give one a weight > 0",
        ),
        ({"teacher_expected_acc1": -0.5}, "teacher_expected_acc1 must be a finite number >= 0, got -0.5"),
        ({"teacher_acc1_margin": float("inf")}, "teacher_acc1_margin must be a finite number >= 0, got inf"),
    ],
)
def test_distillation_settings_are_refused_by_name(kwargs, message):
    teacher, student = _networks()
    with pytest.raises(ValueError) as error:
        DistillationModule(student, teacher, CLASSES, **kwargs)
    assert str(error.value) == message


def test_either_weight_alone_may_be_zero():
    teacher, student = _networks()
    assert DistillationModule(student, teacher, CLASSES, ce_weight=0, kd_weight=1).kd_weight == 1.0
    assert DistillationModule(student, teacher, CLASSES, ce_weight=1, kd_weight=0).ce_weight == 1.0
