"""Logit standardization (LS; Sun et al., CVPR 2024) on every base loss, and with SDD.

The official code (sunshangquan/logit-standardization-KD at f6e5aa5) z-scores both networks' logits over the classes
before the unchanged loss: ``mdistiller/distillers/KD.py`` lines 7-18 and ``DKD.py`` lines 7-39, with
``logit.std(dim=-1)`` (PyTorch's unbiased default) and ``1e-7`` added to it, the ``T^2`` factor kept. The checks run in
float64 against references written out here and the textbook formulas of ``test_gradients``.
"""

from __future__ import annotations

import pytest
import torch
from helpers.app import compose_config
from hydra.utils import instantiate
from test_gradients import ALPHA, BETA, GAMMA, textbook_dkd, textbook_kd, textbook_nkd

from sdd_lightning.catalog import compose_setting, published_top1, setting_names
from sdd_lightning.method.losses import DKDLoss, KDLoss, NKDLoss, ScaleDecoupledLoss, sdd_loss, standardize_logits

K = 7
LOSSES = {
    "kd": (lambda T: KDLoss(temperature=T, standardize=True), textbook_kd),
    "dkd": (lambda T: DKDLoss(temperature=T, alpha=ALPHA, beta=BETA, standardize=True), textbook_dkd),
    "nkd": (lambda T: NKDLoss(temperature=T, gamma=GAMMA, standardize=True), textbook_nkd),
}
PLAIN = {"kd": KDLoss(2.0), "dkd": DKDLoss(2.0, ALPHA, BETA), "nkd": NKDLoss(2.0, GAMMA)}


def _logits(*shape, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + 1.5


def _positive(n, seed, low=0.2, high=5.0):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, 1, generator=g, dtype=torch.float64)


def reference_z_score(z):
    """The paper's formula written out: mean and unbiased (K - 1) standard deviation per row, eps 1e-7."""
    k = z.shape[-1]
    mean = z.sum(-1, keepdim=True) / k
    std = (((z - mean) ** 2).sum(-1, keepdim=True) / (k - 1)).sqrt()
    return (z - mean) / (std + 1e-7)


def test_the_transform_is_the_official_z_score_with_the_unbiased_std():
    z = _logits(5, K)
    got = standardize_logits(z)
    torch.testing.assert_close(got, reference_z_score(z), rtol=0, atol=1e-12)
    torch.testing.assert_close(got.mean(-1), torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(got.std(-1), torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-6)
    biased = (z - z.mean(-1, keepdim=True)) / (z.std(-1, correction=0, keepdim=True) + 1e-7)
    assert not torch.allclose(got, biased, rtol=1e-3)  # the convention is pinned: K - 1, not K
    assert torch.equal(got.argmax(-1), z.argmax(-1))


def test_the_transform_keeps_the_dtype_and_shape_and_needs_two_classes():
    z = _logits(2, 3, K)
    low = standardize_logits(z.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16 and low.shape == z.shape
    torch.testing.assert_close(low.double(), reference_z_score(z), rtol=0, atol=2e-2)
    assert torch.equal(standardize_logits(torch.full((2, K), 3.0)), torch.zeros(2, K))  # a flat row: zeros, finite
    with pytest.raises(ValueError, match="at least 2 classes"):
        standardize_logits(torch.zeros(4, 1))


@pytest.mark.parametrize("T", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("base", list(LOSSES))
def test_the_standardized_loss_is_the_base_formula_on_z_scored_logits(base, T):
    build, textbook = LOSSES[base]
    s, t, y = _logits(6, K), _logits(6, K, seed=1), torch.arange(6) % K
    expected = textbook(reference_z_score(s), reference_z_score(t), y, T)
    torch.testing.assert_close(build(T)(s, t, y), expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(build(T)(s, t, y), textbook(s, t, y, T))  # the switch does something


@pytest.mark.parametrize("network", ["student", "teacher"])
@pytest.mark.parametrize("base", list(LOSSES))
def test_a_positive_per_sample_scale_and_a_shift_of_either_network_change_nothing(base, network):
    loss = LOSSES[base][0](2.0)
    s, t, y = _logits(8, K), _logits(8, K, seed=1), torch.arange(8) % K
    a, b = _positive(8, seed=2), (_positive(8, seed=3) - 2.5) * 4  # a in [0.2, 5], b in [-9.2, 9.8]
    moved = (a * s + b, t) if network == "student" else (s, a * t + b)
    torch.testing.assert_close(loss(*moved, y), loss(s, t, y), rtol=1e-6, atol=1e-9)  # up to the 1e-7 of the std
    plain = PLAIN[base]
    assert not torch.allclose(plain(*moved, y), plain(s, t, y), rtol=1e-3)  # what LS removes


@pytest.mark.parametrize("T", [0.5, 2.0, 4.0])
@pytest.mark.parametrize("base", list(LOSSES))
def test_the_student_gradient_equals_autograd_of_the_reference(base, T):
    build, textbook = LOSSES[base]
    s0, t, y = _logits(6, K), _logits(6, K, seed=1), torch.arange(6) % K
    w = _positive(6, seed=4).squeeze(1) - 1.0  # per-row upstream weights of both signs
    grads = []
    for fn in (build(T), lambda s, t, y: textbook(reference_z_score(s), reference_z_score(t), y, T)):
        s = s0.clone().requires_grad_()
        (w * fn(s, t, y)).sum().backward()
        grads.append(s.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("base", list(LOSSES))
def test_gradcheck_through_the_standardization_and_the_hand_written_kd_backward(base):
    loss = LOSSES[base][0](2.0)
    s = _logits(4, K, seed=2).requires_grad_()
    t, y = _logits(4, K, seed=3), torch.tensor([0, 3, 6, 3])
    assert torch.autograd.gradcheck(lambda s: loss(s, t, y), (s,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("base", list(LOSSES))
def test_no_gradient_reaches_the_teacher(base):
    s, t = _logits(3, K).requires_grad_(), _logits(3, K, seed=1).requires_grad_()
    LOSSES[base][0](2.0)(s, t, torch.tensor([1, 2, 3])).sum().backward()
    assert s.grad is not None and t.grad is None


def test_with_sdd_every_region_is_standardized_on_its_own():
    """Scaling and shifting each (sample, region) logit vector by its own numbers changes neither the loss nor which
    regions are complementary; the functional form with ``standardize=True`` is the same loss."""
    batch, regions = 5, 5
    s, t = _logits(batch, regions, K), _logits(batch, regions, K, seed=1)
    y = torch.arange(batch) % K
    loss = ScaleDecoupledLoss(KDLoss(temperature=2.0, standardize=True))
    out = loss(s, t, y)
    a_s, a_t = _positive(batch * regions, seed=5), _positive(batch * regions, seed=6)
    b = (_positive(batch * regions, seed=7) - 2.5) * 4
    moved = loss((a_s * s.reshape(-1, K) + b).view_as(s), (a_t * t.reshape(-1, K) - b).view_as(t), y)
    torch.testing.assert_close(moved.loss, out.loss, rtol=1e-6, atol=1e-9)
    assert torch.equal(moved.complementary, out.complementary)
    per_region = KDLoss(temperature=2.0)(reference_z_score(s), reference_z_score(t)).view(batch, regions)
    torch.testing.assert_close(out.per_region, per_region, rtol=1e-10, atol=1e-12)
    functional = sdd_loss(s, t, y, base="kd", temperature=2.0, standardize=True)
    torch.testing.assert_close(functional, out.loss, rtol=0, atol=0)


def test_the_switch_is_a_setting_that_compares_prints_and_must_be_a_boolean():
    assert KDLoss(2.0, standardize=True).settings() == {"temperature": 2.0, "standardize": True}
    assert DKDLoss(standardize=True) != DKDLoss() and NKDLoss(standardize=True) == NKDLoss(4.0, 8.0, False, True)
    assert eval(repr(NKDLoss(gamma=1.5, standardize=True))) == NKDLoss(gamma=1.5, standardize=True)
    for value in ("true", 1, None):
        with pytest.raises(ValueError, match=rf"DKDLoss: standardize must be true or false, got {value!r}"):
            DKDLoss(standardize=value)


@pytest.mark.parametrize("method", ["kd", "sd_kd", "dkd", "sd_dkd", "nkd", "sd_nkd"])
def test_one_flag_on_the_base_loss_node_turns_it_on_for_every_method(method):
    overrides = ["pair=cifar100/res32x4_res8x4", f"distill={method}"]
    loss = instantiate(compose_config([*overrides, "distill.loss.standardize=true"]).distill.loss)
    expected = {"kd": KDLoss, "dkd": DKDLoss, "nkd": NKDLoss}[method.removeprefix("sd_")]
    assert type(loss) is expected and loss == expected(standardize=True)  # the pair's other values are the defaults


# The LS paper's CIFAR-100 recipes, from the official LS code (see conf/experiment/cifar100/ls/ and the evidence
# `ls_recipe` in docs/recipes.md): (KD+LS: T, KD weight), (DKD+LS: T, alpha, beta), the published top-1 of KD+LS and
# DKD+LS (README.md lines 90/94 and 103/107), and the pair's SD scale set.
LS_RECIPES = {
    "res32x4_res8x4": ((2.0, 9.0), (2.0, 9.0, 72.0), (76.62, 77.01), [1, 2]),
    "res32x4_shv2": ((2.0, 9.0), (2.0, 9.0, 72.0), (75.56, 77.37), [1, 2, 4]),
    "wrn40_2_mv2": ((3.0, 9.0), (2.0, 15.0, 30.0), (69.23, 70.01), [1, 2, 4]),
    "vgg13_mv2": ((3.0, 9.0), (3.0, 9.0, 18.0), (68.61, 69.98), [1, 2, 4]),
    "res50_mv2": ((3.0, 1.0), (2.0, 15.0, 30.0), (69.02, 70.45), [1, 2, 4]),
}


@pytest.mark.parametrize("method", ["kd_ls", "sd_kd_ls", "dkd_ls", "sd_dkd_ls"])
@pytest.mark.parametrize("pair", list(LS_RECIPES))
def test_the_ls_settings_compose_with_the_papers_values(pair, method):
    setting = f"cifar100/ls/{pair}/{method}"
    (kd_t, kd_w), (dkd_t, alpha, beta), (kd_top1, dkd_top1), sd_scales = LS_RECIPES[pair]
    cfg = compose_setting(setting)
    d, plain = cfg.distill, method.removeprefix("sd_")
    assert d.loss.standardize is True and cfg.method == method.removesuffix("_ls")
    assert list(d.scales) == (sd_scales if method.startswith("sd_") else [1])
    if plain == "kd_ls":
        assert d.loss._target_.endswith(".KDLoss")
        assert (d.loss.temperature, d.ce_weight, d.kd_weight, d.warmup_epochs) == (kd_t, 0.1, kd_w, 0)
    else:
        assert d.loss._target_.endswith(".DKDLoss")
        assert (d.loss.temperature, d.loss.alpha, d.loss.beta) == (dkd_t, alpha, beta)
        assert (d.ce_weight, d.kd_weight, d.warmup_epochs) == (1.0, 1.0, 20)
    assert setting in setting_names()
    paper = None if method.startswith("sd_") else {"kd_ls": kd_top1, "dkd_ls": dkd_top1}[method]
    assert published_top1(setting) == paper  # SD-*+LS: no published number
