"""What the DistillationModule's loss is made of: CE on the global logits, the warm-up and settings in use.

The warm-up follows the official trainer (mdistiller ``engine/trainer.py``): its epochs count from 1 and
the SDD/DKD/NKD distillers scale their term by ``min(epoch / warmup, 1)``. Lightning counts epochs from
0, so a 20-epoch warm-up gives 1/20 in Lightning's epoch 0, 2/20 in epoch 1 and the full weight from
epoch 19 (the official 20th) on. These tests read the weight from the loss of the module's training step
and the parts it logs, not from ``warmup_factor`` alone.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers.training import SmallNet, quiet_trainer

from sdd_lightning.method.losses import BASE_LOSSES, sdd_loss
from sdd_lightning.training.module import DistillationModule

CLASSES = 10


def _teacher_and_student() -> tuple[SmallNet, SmallNet]:
    """Small networks whose logits differ clearly from class to class and from region to region."""
    torch.manual_seed(0)
    teacher, student = SmallNet(width=12), SmallNet(width=4)
    with torch.no_grad():
        teacher.classifier.weight.mul_(20.0)
        student.classifier.weight.mul_(10.0)
    return teacher, student


def _batch(n=8, seed=0):
    """Images and labels; half the labels are the teacher's global prediction, so some regions are right."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, CLASSES, (n,), generator=g)
    with torch.no_grad():
        y[: n // 2] = _teacher_and_student()[0].eval()(x[: n // 2]).argmax(1)
    return x, y


def _distiller(**kwargs) -> DistillationModule:
    teacher, student = _teacher_and_student()
    return DistillationModule(student, teacher, num_classes=CLASSES, **kwargs)


def _bare_trainer() -> L.Trainer:
    return quiet_trainer(max_epochs=None)  # Lightning's default; it never fits


def _set_epoch(module: DistillationModule, trainer: L.Trainer, epoch: int) -> None:
    """Attach ``trainer`` as it is while Lightning runs training epoch ``epoch`` (counted from 0)."""
    trainer.fit_loop.epoch_progress.current.completed = epoch
    module.trainer = trainer
    assert module.current_epoch == epoch


def _number(value: torch.Tensor | float) -> float:
    return value.detach().item() if isinstance(value, torch.Tensor) else float(value)


def _training_step(module: DistillationModule, x, y) -> tuple[torch.Tensor, dict[str, float]]:
    """One ``training_step`` in train mode: its loss and what it adds to the epoch's logged means
    (``train/loss_ce``, ``train/loss_kd``, ...; with one step, the means are that step's values)."""
    module.on_train_epoch_start()  # a fresh epoch: the module's sums start empty
    module.train()
    loss = module.training_step((x, y), 0)
    logged = module._train_sums.means()
    return loss, {name: _number(value) for name, value in logged.items() if value.dim() == 0}


def _applied_distillation_weight(
    module: DistillationModule, loss: torch.Tensor | float, logged: dict[str, float]
) -> float:
    """The weight the step's loss puts on the SDD term: ``(loss - ce_weight * CE) / L_SDD``."""
    return (_number(loss) - module.ce_weight * logged["train/loss_ce"]) / logged["train/loss_kd"]


def _local_logits(module: DistillationModule, x) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher local logits ``(B, R, K)`` through the module's feature hooks and head."""
    with torch.no_grad():
        return module.head(*module.student_features(x)), module.head(*module.teacher_features(x))


# The official factor min(epoch / 20, 1) with epoch = Lightning epoch + 1.
WARMUP_20 = {0: 1 / 20, 1: 2 / 20, 18: 19 / 20, 19: 1.0, 20: 1.0, 150: 1.0}


@pytest.mark.parametrize("base", ["kd", "dkd", "nkd"])
def test_distillation_weight_during_a_20_epoch_warmup(base):
    module = _distiller(scales=(1, 2, 4), loss=BASE_LOSSES[base](), warmup_epochs=20, kd_weight=2.0, ce_weight=0.5)
    x, y = _batch()
    trainer = _bare_trainer()
    for epoch, factor in WARMUP_20.items():
        _set_epoch(module, trainer, epoch)
        assert module.distillation_weight() == pytest.approx(2.0 * factor, rel=1e-12), f"epoch {epoch}"
        applied = _applied_distillation_weight(module, *_training_step(module, x, y))
        assert applied == pytest.approx(2.0 * factor, rel=1e-4), f"{base}: epoch {epoch} applied {applied}"


def test_no_warmup_means_the_full_weight_from_the_first_epoch():
    module = _distiller(scales=(1, 2), warmup_epochs=0, kd_weight=3.0)
    x, y = _batch()
    trainer = _bare_trainer()
    for epoch in (0, 1, 5):
        _set_epoch(module, trainer, epoch)
        assert _applied_distillation_weight(module, *_training_step(module, x, y)) == pytest.approx(3.0, rel=1e-4)


class _RecordingDistiller(DistillationModule):
    """Keeps, per epoch, the loss and its parts that the module logs at the epoch's end (one step per epoch)."""

    def log_dict(self, dictionary, *args, **kwargs):
        for name in ("train/loss", "train/loss_ce", "train/loss_kd"):
            if name in dictionary:
                self.logged.setdefault(self.current_epoch, {})[name] = _number(dictionary[name])
        super().log_dict(dictionary, *args, **kwargs)


def test_warmup_follows_lightnings_epochs_in_a_fit(tmp_path):
    """A real fit of 21 one-step epochs with a 20-epoch warm-up: the weight of each step's loss."""
    teacher, student = _teacher_and_student()
    module = _RecordingDistiller(student, teacher, num_classes=CLASSES, scales=(1, 2), warmup_epochs=20, kd_weight=2.0)
    module.logged = {}
    x, y = _batch()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(x))
    quiet_trainer(tmp_path, max_epochs=21, limit_val_batches=0).fit(module, loader)
    assert sorted(module.logged) == list(range(21))
    applied = {
        epoch: _applied_distillation_weight(module, logged["train/loss"], logged)
        for epoch, logged in module.logged.items()
    }
    for epoch in (0, 1, 19, 20):
        assert applied[epoch] == pytest.approx(2.0 * WARMUP_20[epoch], rel=1e-4), f"epoch {epoch}"
    expected = [2.0 * min((epoch + 1) / 20, 1.0) for epoch in range(21)]
    assert [applied[epoch] for epoch in range(21)] == pytest.approx(expected, rel=1e-4)


def test_cross_entropy_is_on_the_global_logits_with_several_scales():
    module = _distiller(scales=(1, 2, 4), ce_weight=0.7, kd_weight=0.0)
    x, y = _batch()
    loss, logged = _training_step(module, x, y)
    ce = F.cross_entropy(module.student(x), y)
    torch.testing.assert_close(loss, 0.7 * ce)
    # the logged part is the same CE, also while the SDD term is on
    module.kd_weight = 1.0
    loss, logged = _training_step(module, x, y)
    assert logged["train/loss_ce"] == pytest.approx(ce.item(), rel=1e-6)
    # ... and not the CE of any other region (each would differ)
    local, _ = _local_logits(module, x)
    assert local.shape[1] == 1 + 4 + 16
    for region in range(1, local.shape[1]):
        assert (F.cross_entropy(local[:, region], y) - ce).abs() > 1e-3, region


SETTINGS = {
    "kd": {"temperature": 2.5},
    "dkd": {"temperature": 3.0, "alpha": 0.7, "beta": 5.0},
    "nkd": {"temperature": 1.5, "gamma": 2.5},
}


@pytest.mark.parametrize("consistency", ["correctness", "agreement"])
@pytest.mark.parametrize("base", list(SETTINGS))
def test_every_loss_setting_reaches_the_loss(base, consistency):
    """The step's loss is ``ce_weight * CE + kd_weight * L_SDD``, L_SDD with all of the constructor's settings."""
    region_settings = {"complementary_weight": 3.0, "consistent_weight": 0.5, "consistency": consistency}
    settings = region_settings | SETTINGS[base]
    module = _distiller(
        scales=(1, 2, 4), loss=BASE_LOSSES[base](**SETTINGS[base]), ce_weight=0.3, kd_weight=1.7, **region_settings
    )
    x, y = _batch(n=16)
    loss, logged = _training_step(module, x, y)
    assert 0 < logged["train/complementary_fraction"] < 1  # both region weights are in play
    student_local, teacher_local = _local_logits(module, x)
    expected = sdd_loss(student_local, teacher_local, y, base=base, **settings)
    assert logged["train/loss_kd"] == pytest.approx(expected.item(), rel=1e-5)
    ce = F.cross_entropy(module.student(x), y)
    torch.testing.assert_close(loss, 0.3 * ce + 1.7 * expected)
    # each setting changes the loss, so a setting that did not reach it would fail the comparison above
    for name, value in settings.items():
        if name == "consistency":
            continue
        changed = sdd_loss(student_local, teacher_local, y, base=base, **(settings | {name: value * 1.5}))
        assert not torch.allclose(changed, expected, rtol=1e-4), name
