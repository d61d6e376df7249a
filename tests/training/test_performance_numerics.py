"""The speed settings change the numbers only as much as they should (no timing here: see benchmarks/).

- bf16 autocast (Lightning ``precision="bf16-mixed"``): the step's loss within 1e-2 relative of fp32.
- channels_last and a teacher with folded BatchNorm: the same loss as the plain fp32 step, to float rounding.
- The training step has no host synchronisation: its loss computation compiles as one graph.
"""

import lightning as L
import pytest
import torch
from helpers.training import quiet_trainer

from sdd_lightning.method.losses import BASE_LOSSES
from sdd_lightning.models import build_model
from sdd_lightning.training.module import DistillationModule


def _batch(n=8, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, classes, (n,), generator=g)


def _module(base="kd", **kwargs):
    torch.manual_seed(0)
    teacher, student = build_model("small_cnn", num_classes=10), build_model("resnet8", num_classes=10)
    with torch.no_grad():  # trained-looking BatchNorm statistics, and logits of a trained network's size
        g = torch.Generator().manual_seed(1)
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        teacher.get_classifier().weight.mul_(30.0)
        student.get_classifier().weight.mul_(10.0)
    return DistillationModule(student, teacher, num_classes=10, scales=(1, 2, 4), loss=BASE_LOSSES[base](), **kwargs)


def _step_loss(module, batch, *, bf16=False):
    module.train()
    if module.channels_last:
        module.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        x, y = batch
        x = module._prepare(x)
        loss, _ = module.compute_loss(*module.student_logits(x), module.teacher_logits(x)[1], y)
    return loss


@pytest.mark.parametrize("base", ["kd", "dkd", "nkd"])
def test_bf16_autocast_step_loss_is_within_1e_2_of_fp32(base):
    batch = _batch()
    fp32 = _step_loss(_module(base), batch)
    module = _module(base)
    bf16 = _step_loss(module, batch, bf16=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert module.student_logits(batch[0])[1].dtype == torch.bfloat16  # autocast did run in bf16
    assert bf16.dtype == torch.float32
    assert torch.isfinite(bf16)
    assert abs(bf16.item() - fp32.item()) <= 1e-2 * abs(fp32.item())


def _first_step_loss(precision, tmp_path, **kwargs):
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(outputs["loss"].detach().float())

    x, y = _batch(16)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer = quiet_trainer(
        tmp_path, precision=precision, max_epochs=None, max_steps=1, limit_val_batches=0, callbacks=[Record()]
    )
    trainer.fit(_module(**kwargs), loader)
    return losses[0]


def test_lightning_bf16_mixed_step_matches_fp32(tmp_path):
    fp32 = _first_step_loss("32-true", tmp_path)
    bf16 = _first_step_loss("bf16-mixed", tmp_path)
    assert abs(bf16.item() - fp32.item()) <= 1e-2 * abs(fp32.item())


def test_channels_last_and_folded_teacher_give_the_fp32_loss():
    batch = _batch()
    plain = _step_loss(_module(), batch)
    tuned = _step_loss(_module(channels_last=True, fold_teacher_bn=True), batch)
    torch.testing.assert_close(tuned, plain, rtol=1e-5, atol=1e-6)


def test_the_loss_of_a_step_compiles_without_graph_breaks():
    """``fullgraph=True`` fails on any host read (``.item()``, ``bool(tensor)``) or data-dependent shape."""
    module = _module(channels_last=True, fold_teacher_bn=True)
    x, y = _batch()
    (student_global, student_local), teacher_local = module.student_logits(x), module.teacher_logits(x)[1]
    compiled = torch.compile(module.compute_loss, fullgraph=True, backend="eager")
    loss, parts = compiled(student_global, student_local, teacher_local, y)
    expected, expected_parts = module.compute_loss(student_global, student_local, teacher_local, y)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(parts, expected_parts)
    compiled_head = torch.compile(module.head, fullgraph=True, backend="eager")
    torch.testing.assert_close(
        compiled_head(module.student.forward_features(x), module.student.get_classifier()), student_local
    )
