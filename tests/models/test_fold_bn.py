import pytest
import torch
import torch.nn.functional as F
from helpers.training import SmallNet, quiet_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sdd_lightning.models import build_model
from sdd_lightning.models.fold_bn import find_conv_bn_pairs, fold_batchnorm
from sdd_lightning.training.module import DistillationModule

# One network of every family, and how many BatchNorms stay because no convolution feeds them directly
# (the pre-activation BatchNorms of the wide ResNets read a residual sum or the network input).
FAMILIES = {
    "resnet8x4": 0,
    "ResNet18": 0,
    "wrn_16_2": 6,
    "vgg8": 0,
    "MobileNetV2": 0,
    "ShuffleV1": 0,
    "ShuffleV2": 0,
    "imagenet_resnet18": 0,
    "MobileNetV1": 0,
    "torchvision:efficientnet_b0": 0,
}


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as a trained network has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                module.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _assert_logits_close(folded: torch.Tensor, reference: torch.Tensor) -> None:
    scale = reference.abs().max().clamp_min(1.0)
    torch.testing.assert_close(folded / scale, reference / scale, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,kept", FAMILIES.items())
def test_folding_is_exact_and_keeps_the_interface(name, kept):
    torch.manual_seed(0)
    model = _randomise_batchnorm(build_model(name, num_classes=100))
    model.requires_grad_(False)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, features = model(x), model.forward_features(x)
    classifier = model.get_classifier()

    assert fold_batchnorm(model) is model
    assert _count_bn(model) == kept
    assert not model.training
    assert model.get_classifier() is classifier
    assert all(not p.requires_grad for p in model.parameters())
    with torch.no_grad():
        _assert_logits_close(model(x), logits)
        assert model.forward_features(x).shape == features.shape


def test_small_sequential_network_folds_every_pair():
    model = _randomise_batchnorm(SmallNet(width=6))
    x = torch.randn(4, 3, 16, 16)
    expected = model(x).detach()
    assert find_conv_bn_pairs(model) == [("features.0", "features.1"), ("features.3", "features.4")]
    fold_batchnorm(model)
    assert isinstance(model.features[1], nn.Identity) and model.features[0].bias is not None
    assert "features.1.running_mean" not in model.state_dict()
    _assert_logits_close(model(x).detach(), expected)


class _Awkward(nn.Module):
    """Three convolutions whose BatchNorms must not be folded, and one that must."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Conv2d(3, 4, 3, padding=1, bias=False)  # its output is also added to the BN output
        self.bn_shared = nn.BatchNorm2d(4)
        self.relu_between = nn.Conv2d(4, 4, 1, bias=False)  # an in-place ReLU sits between conv and BN
        self.bn_after_relu = nn.BatchNorm2d(4)
        self.no_stats = nn.Conv2d(4, 4, 1, bias=False)
        self.bn_no_stats = nn.BatchNorm2d(4, track_running_stats=False)  # eval mode uses batch statistics
        self.plain = nn.Conv2d(4, 4, 1)
        self.bn_plain = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shared(x)
        x = self.bn_shared(y) + y
        x = self.bn_after_relu(F.relu(self.relu_between(x), inplace=True))
        x = self.bn_no_stats(self.no_stats(x))
        return self.bn_plain(self.plain(x))


def test_only_exclusive_direct_pairs_are_folded():
    model = _randomise_batchnorm(_Awkward())
    x = torch.randn(2, 3, 8, 8)
    expected = model(x).detach()
    assert find_conv_bn_pairs(model) == [("plain", "bn_plain")]
    fold_batchnorm(model)
    assert _count_bn(model) == 3
    _assert_logits_close(model(x).detach(), expected)


# -- DistillationModule(fold_teacher_bn=True) ---------------------------------------------------------------


def _loader(n=24, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=batch)


def _module(fold: bool) -> DistillationModule:
    torch.manual_seed(0)
    teacher = _randomise_batchnorm(SmallNet(width=12))
    return DistillationModule(SmallNet(width=4), teacher, num_classes=10, scales=(1, 2), fold_teacher_bn=fold)


def _trainer(tmp_path, **kwargs):
    # Lightning's defaults for what the tests do not set: checkpointing on, no epoch limit
    return quiet_trainer(
        tmp_path, **({"enable_checkpointing": True, "max_epochs": None, "limit_val_batches": 0} | kwargs)
    )


def test_module_folds_the_teacher_exactly():
    plain, folded = _module(fold=False), _module(fold=True)
    assert _count_bn(folded.teacher) == 0 and _count_bn(folded.student) == 2
    x = torch.randn(8, 3, 16, 16)
    _assert_logits_close(folded.teacher_logits(x)[1], plain.teacher_logits(x)[1])
    assert all(not p.requires_grad for p in folded.teacher.parameters())
    held = {id(p) for group in folded.configure_optimizers().param_groups for p in group["params"]}
    assert held == {id(p) for p in folded.student.parameters()}


def test_a_folded_module_saves_and_resumes_from_its_own_checkpoint(tmp_path):
    module = _module(fold=True)
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=True)
    trainer.fit(module, _loader())
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    checkpoint = trainer.checkpoint_callback.best_model_path
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert "teacher.features.0.bias" in state and "teacher.features.1.running_mean" not in state

    rebuilt = _module(fold=True)  # the same recipe: the teacher is folded again in __init__
    rebuilt.load_state_dict(state, strict=True)
    resumed = _trainer(tmp_path, max_epochs=2, enable_checkpointing=False)
    # weights_only=False: the module's hyperparameters hold enums, which torch's weights-only loader refuses.
    resumed.fit(rebuilt, _loader(), ckpt_path=checkpoint, weights_only=False)
    assert resumed.current_epoch == 2
    for key, value in rebuilt.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key


def test_a_network_without_batchnorm_is_left_as_it_is_without_a_trial_run():
    class FixedSize(nn.Module):  # like a transformer built for one input size: a 32x32 trial run would fail
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3 * 8 * 8, 4)

        def forward_features(self, x):
            assert x.shape[-2:] == (8, 8), "this network takes 8x8 images only"
            return self.proj(x.flatten(1))

    net = FixedSize()
    assert fold_batchnorm(net) is net and not net.training
