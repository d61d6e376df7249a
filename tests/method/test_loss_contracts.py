"""What the base losses promise beyond their formulas: any leading dimensions, errors that name the loss and the
setting, and configured losses that compare, hash and print by their settings."""

from __future__ import annotations

import pytest
import torch

from sdd_lightning.method.losses import DKDLoss, KDLoss, NKDLoss, dkd_loss, kd_loss, nkd_loss

K = 7
SETTINGS = {
    kd_loss: {"temperature": 2.0},
    dkd_loss: {"temperature": 2.0, "alpha": 0.7, "beta": 3.0},
    nkd_loss: {"temperature": 2.0, "gamma": 1.5, "exclude_target": False},
}


def _logits(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * 3


@pytest.mark.parametrize("loss", SETTINGS, ids=lambda f: f.__name__)
def test_leading_dimensions_give_the_rows_of_the_flattened_batch(loss):
    # (B, R, K) logits with (B, R) targets: one loss per (b, r), the same as the (B * R, K) rows. R = 3 < K = 7 and
    # B = 4 differ from K and from each other, so a reduction over the wrong dimension cannot pass by coincidence.
    s, t = _logits(4, 3, K), _logits(4, 3, K, seed=1)
    y = torch.randint(0, K, (4, 3), generator=torch.Generator().manual_seed(2))
    got = loss(s, t, y, **SETTINGS[loss])
    assert got.shape == (4, 3)
    torch.testing.assert_close(got, loss(s.view(12, K), t.view(12, K), y.view(12), **SETTINGS[loss]).view(4, 3))


def test_kd_of_a_low_precision_student_is_computed_in_the_teachers_wider_dtype():
    # a bfloat16 student under autocast, a float64 teacher: the softmaxes run in float64, not in bfloat16
    s, t = _logits(6, K).bfloat16(), _logits(6, K, seed=1)
    got = kd_loss(s, t, temperature=4.0)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, kd_loss(s.double(), t, temperature=4.0), rtol=1e-12, atol=1e-12)


def test_kd_of_a_low_precision_teacher_is_computed_in_the_students_wider_dtype():
    # the other way round: a float32 teacher must be widened to the float64 student before its softmax
    s, t = _logits(6, K), _logits(6, K, seed=1).float()
    got = kd_loss(s, t, temperature=4.0)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, kd_loss(s, t.double(), temperature=4.0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss", [dkd_loss, nkd_loss], ids=lambda f: f.__name__)
def test_a_loss_that_needs_the_labels_says_so_when_they_are_missing(loss):
    s = _logits(2, K)
    with pytest.raises(ValueError) as error:
        loss(s, s, None, **SETTINGS[loss])
    assert str(error.value) == "this loss needs the ground-truth target (integer class indices)"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: KDLoss(temperature=-1.0), "KDLoss: temperature must be > 0, got -1.0"),
        (lambda: DKDLoss(temperature=0), "DKDLoss: temperature must be > 0, got 0"),
        (lambda: DKDLoss(alpha=float("inf")), "DKDLoss: alpha must be a finite number, got inf"),
        (lambda: NKDLoss(temperature=-2), "NKDLoss: temperature must be > 0, got -2"),
        (lambda: NKDLoss(gamma=True), "NKDLoss: gamma must be a finite number, got True"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_loss_and_the_setting(build, message):
    with pytest.raises(ValueError) as error:
        build()
    assert str(error.value) == message


def test_zero_weights_are_allowed_and_negative_ones_are_not():
    assert DKDLoss(alpha=0.0, beta=0).settings() == {
        "temperature": 4.0,
        "alpha": 0.0,
        "beta": 0.0,
        "standardize": False,
    }
    assert NKDLoss(gamma=0).settings()["gamma"] == 0.0
    with pytest.raises(ValueError, match=r"DKDLoss: alpha must be >= 0, got -0\.5"):
        DKDLoss(alpha=-0.5)


def test_configured_losses_are_equal_and_hash_alike_exactly_when_type_and_settings_agree():
    assert KDLoss(4) == KDLoss(4.0) and hash(KDLoss(4)) == hash(KDLoss(4.0))
    assert KDLoss(2.0) != KDLoss(4.0)
    assert DKDLoss(beta=6.0) != DKDLoss(beta=8.0) and DKDLoss() == DKDLoss(4.0, 1.0, 8.0)
    assert NKDLoss(temperature=4.0, gamma=4.0) != DKDLoss(temperature=4.0, alpha=4.0, beta=4.0)

    class OtherKD(KDLoss):
        pass

    assert OtherKD() != KDLoss() and KDLoss() != "KDLoss(temperature=4.0)"
    # as dictionary keys and set members (a logger or a sweep deduplicating settings)
    assert len({KDLoss(), KDLoss(4.0), KDLoss(2.0), DKDLoss(), NKDLoss()}) == 4
    assert hash(KDLoss(2.0)) != hash(KDLoss(4.0)) and hash(OtherKD()) != hash(KDLoss())


def test_a_configured_loss_prints_as_the_call_that_builds_it():
    assert repr(KDLoss()) == "KDLoss(temperature=4.0, standardize=False)"
    assert repr(DKDLoss(beta=6)) == "DKDLoss(temperature=4.0, alpha=1.0, beta=6.0, standardize=False)"
    assert eval(repr(KDLoss(2.0, standardize=True))) == KDLoss(temperature=2.0, standardize=True)
    assert eval(repr(NKDLoss(gamma=1.5))) == NKDLoss(gamma=1.5)
    assert eval(repr(NKDLoss(exclude_target=True))) == NKDLoss(exclude_target=True) != NKDLoss()
