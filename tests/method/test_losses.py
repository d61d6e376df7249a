import pytest
import torch

from sdd_lightning.method.losses import (
    DKDLoss,
    KDLoss,
    NKDLoss,
    ScaleDecoupledLoss,
    base_loss,
    complementary_mask,
    dkd_loss,
    kd_loss,
    nkd_loss,
    sdd_loss,
)

K = 7


def _logits(*shape, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _textbook_parts(s, t, y, T):
    """Probabilities as in the papers, computed directly (no log-softmax tricks)."""
    ps, pt = torch.softmax(s / T, -1), torch.softmax(t / T, -1)
    onehot = torch.nn.functional.one_hot(y, s.shape[-1]).bool()
    ps_y, pt_y = ps[onehot], pt[onehot]
    ps_nt = ps[~onehot].view(len(y), -1) / (1 - ps_y).unsqueeze(1)
    pt_nt = pt[~onehot].view(len(y), -1) / (1 - pt_y).unsqueeze(1)
    return ps, pt, ps_y, pt_y, ps_nt, pt_nt


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_matches_textbook(T):
    s, t, y = _logits(5, K), _logits(5, K, seed=1), torch.arange(5) % K
    ps, pt, *_ = _textbook_parts(s, t, y, T)
    expected = T**2 * (pt * (pt.log() - ps.log())).sum(-1)
    torch.testing.assert_close(kd_loss(s, t, y, temperature=T), expected)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_matches_textbook(T):
    s, t, y = _logits(5, K), _logits(5, K, seed=1), torch.arange(5) % K
    _, _, ps_y, pt_y, ps_nt, pt_nt = _textbook_parts(s, t, y, T)
    tckd = pt_y * (pt_y / ps_y).log() + (1 - pt_y) * ((1 - pt_y) / (1 - ps_y)).log()
    nckd = (pt_nt * (pt_nt / ps_nt).log()).sum(-1)
    expected = T**2 * (1.0 * tckd + 8.0 * nckd)
    torch.testing.assert_close(dkd_loss(s, t, y, temperature=T, alpha=1.0, beta=8.0), expected)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_nkd_matches_textbook_and_excludes_the_target(T):
    s, t, y = _logits(5, K), _logits(5, K, seed=1), torch.arange(5) % K
    _, _, ps_y1, pt_y1, _, _ = _textbook_parts(s, t, y, 1.0)
    _, _, _, _, ps_nt, pt_nt = _textbook_parts(s, t, y, T)
    expected = -pt_y1 * ps_y1.log() - 6.0 * T**2 * (pt_nt * ps_nt.log()).sum(-1)
    torch.testing.assert_close(nkd_loss(s, t, y, temperature=T, gamma=6.0, exclude_target=True), expected)
    torch.testing.assert_close(NKDLoss(temperature=T, gamma=6.0, exclude_target=True)(s, t, y), expected)
    # the non-target term does not depend on the target logit's *relative* value among the rest:
    # raising the target logit of both networks changes only the target term.
    s2, t2 = s.clone(), t.clone()
    s2[torch.arange(5), y] += 5.0
    t2[torch.arange(5), y] += 5.0
    kw = {"temperature": T, "exclude_target": True}
    non_target = nkd_loss(s, t, y, gamma=1.0, **kw) - nkd_loss(s, t, y, gamma=0.0, **kw)
    non_target2 = nkd_loss(s2, t2, y, gamma=1.0, **kw) - nkd_loss(s2, t2, y, gamma=0.0, **kw)
    torch.testing.assert_close(non_target, non_target2)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_nkd_by_default_keeps_the_target_in_the_soft_term_as_the_official_code(T):
    """The official SDD_nkd.py builds its "non-target" mask as ones scattered with 1 at the label (lines 23 and 53 of
    mdistiller/distillers/SDD_nkd.py in shicaiwei123/SDD-CVPR2024): all ones, so its soft term is the full
    cross-entropy ``-sum_k softmax(t / T)_k log softmax(s / T)_k`` over every class, the target included, with no
    renormalisation. The reference below is that formula with probabilities computed directly, in float64."""
    s, t, y = _logits(5, K), _logits(5, K, seed=1), torch.arange(5) % K
    _, _, ps_y1, pt_y1, _, _ = _textbook_parts(s, t, y, 1.0)
    ps, pt, *_ = _textbook_parts(s, t, y, T)
    expected = -pt_y1 * ps_y1.log() - 6.0 * T**2 * (pt * ps.log()).sum(-1)
    got = nkd_loss(s, t, y, temperature=T, gamma=6.0, exclude_target=False)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(NKDLoss(temperature=T, gamma=6.0)(s, t, y), expected, rtol=1e-12, atol=1e-12)
    # the two forms differ on every row: the target class carries teacher probability in the official one
    corrected = nkd_loss(s, t, y, temperature=T, gamma=6.0, exclude_target=True)
    assert ((got - corrected).abs() > 1e-6).all()
    # with gamma 0 only the shared target term is left
    torch.testing.assert_close(
        nkd_loss(s, t, y, temperature=T, gamma=0.0, exclude_target=False),
        nkd_loss(s, t, y, temperature=T, gamma=0.0, exclude_target=True),
    )


@pytest.mark.parametrize(
    "base,kwargs",
    [
        ("kd", {"temperature": 4.0}),
        ("dkd", {"temperature": 4.0, "alpha": 1.0, "beta": 8.0}),
        ("nkd", {"temperature": 4.0, "gamma": 6.0, "exclude_target": False}),
        ("nkd", {"temperature": 4.0, "gamma": 6.0, "exclude_target": True}),
    ],
)
def test_one_region_equals_the_base_loss(base, kwargs):
    s, t, y = _logits(6, 1, K).float(), _logits(6, 1, K, seed=1).float(), torch.arange(6) % K
    fn = {"kd": kd_loss, "dkd": dkd_loss, "nkd": nkd_loss}[base]
    got = sdd_loss(s, t, y, base=base, **kwargs)
    assert torch.equal(got, fn(s[:, 0], t[:, 0], y, **kwargs).sum() / 6)
    torch.testing.assert_close(got, fn(s[:, 0], t[:, 0], y, **kwargs).mean(), rtol=1e-6, atol=0)


def _hand_built_batch():
    """Two samples, three regions, target 0 for both; argmaxes chosen by hand.

    sample 0: global -> 0 (right), region 1 -> 0 (right), region 2 -> 1 (wrong)
    sample 1: global -> 1 (wrong), region 1 -> 2 (wrong, but a different class), region 2 -> 0 (right)
    """
    preds = torch.tensor([[0, 0, 1], [1, 2, 0]])
    teacher = torch.nn.functional.one_hot(preds, K).double() * 5.0
    return teacher, torch.tensor([0, 0])


def test_complementary_regions_under_each_rule():
    teacher, y = _hand_built_batch()
    correctness = complementary_mask(teacher, y, "correctness")
    agreement = complementary_mask(teacher, y, "agreement")
    assert correctness.tolist() == [[False, False, True], [False, False, True]]
    assert agreement.tolist() == [[False, False, True], [False, True, True]]


def test_weights_and_reduction_follow_the_official_code():
    teacher, y = _hand_built_batch()
    student = _logits(2, 3, K, seed=5)
    per_region = kd_loss(student.view(6, K), teacher.view(6, K), temperature=4.0).view(2, 3)
    weights = torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 2.0]], dtype=torch.float64)
    expected = (weights * per_region).sum() / 6
    out = ScaleDecoupledLoss(KDLoss(temperature=4.0))(student, teacher, y)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.complementary_fraction, torch.tensor(0.5, dtype=torch.float64))
    weights_agreement = torch.tensor([[1.0, 1.0, 2.0], [1.0, 2.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(
        sdd_loss(student, teacher, y, consistency="agreement", temperature=4.0),
        (weights_agreement * per_region).sum() / 6,
    )


def _official_style(student, teacher, y, T, beta=2.0):
    """The official code's approach: per-region KD rows and four boolean teacher-correctness cases."""
    b, r, k = student.shape
    rows = kd_loss(student.reshape(-1, k), teacher.reshape(-1, k), temperature=T).view(b, r)
    pred = teacher.argmax(-1)
    global_right = (pred[:, 0] == y).unsqueeze(1).expand(b, r)
    local_right = pred == y.unsqueeze(1)
    total = rows[global_right & local_right].sum() + rows[~global_right & ~local_right].sum()
    total = total + beta * (rows[global_right & ~local_right].sum() + rows[~global_right & local_right].sum())
    return total / (b * r)


def test_matches_an_official_style_reference_on_random_local_logits():
    student, teacher = _logits(16, 21, 100, seed=3), _logits(16, 21, 100, seed=4)
    y = torch.randint(0, 100, (16,), generator=torch.Generator().manual_seed(0))
    teacher[torch.arange(16), :, y] += 4.0  # make some regions right, some wrong
    torch.testing.assert_close(
        sdd_loss(student, teacher, y, temperature=4.0), _official_style(student, teacher, y, 4.0)
    )


@pytest.mark.parametrize("base", ["kd", "dkd", "nkd"])
def test_gradients_reach_the_student_logits_only(base):
    student = _logits(4, 5, K).requires_grad_()
    teacher = _logits(4, 5, K, seed=1).requires_grad_()
    sdd_loss(student, teacher, torch.arange(4), base=base).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("base", ["kd", "dkd", "nkd"])
@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 8.0])
def test_finite_at_extreme_logits(base, T):
    g = torch.Generator().manual_seed(0)
    student = ((torch.randint(0, 2, (4, 5, K), generator=g) * 2 - 1) * 1e4).float().requires_grad_()
    teacher = ((torch.randint(0, 2, (4, 5, K), generator=g) * 2 - 1) * 1e4).float()
    loss = sdd_loss(student, teacher, torch.arange(4) % K, base=base, temperature=T)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(student.grad).all()


def test_a_callable_base_loss_is_used_per_region():
    def l1(s, t, y, *, scale=1.0):
        return scale * (s - t).abs().sum(-1)

    student, teacher = _logits(3, 5, K), _logits(3, 5, K, seed=1)
    got = sdd_loss(student, teacher, torch.arange(3), base=l1, complementary_weight=1.0, scale=2.0)
    torch.testing.assert_close(got, 2.0 * (student - teacher).abs().sum(-1).mean())


def test_no_host_synchronisation_or_value_branches():
    compiled = torch.compile(sdd_loss, fullgraph=True, backend="eager")
    student, teacher = _logits(4, 5, K).float(), _logits(4, 5, K, seed=1).float()
    y = torch.arange(4)
    for base in ("kd", "dkd", "nkd"):
        torch.testing.assert_close(compiled(student, teacher, y, base=base), sdd_loss(student, teacher, y, base=base))


def test_bad_inputs_say_what_is_wrong():
    s = _logits(2, 3, K)
    with pytest.raises(ValueError) as error:
        sdd_loss(s, s[:, :2], torch.arange(2))
    assert str(error.value) == (
        f"student_local and teacher_local must both be local logits of shape (B, R, K), got (2, 3, {K}) and (2, 2, {K})"
    )
    with pytest.raises(ValueError) as error:
        sdd_loss(s, s, torch.arange(3))
    assert str(error.value) == "target must have shape (B,) = (2,), got (3,)"
    with pytest.raises(ValueError, match="kd, dkd, nkd"):
        sdd_loss(s, s, torch.arange(2), base="mse")
    with pytest.raises(ValueError, match="correctness, agreement"):
        sdd_loss(s, s, torch.arange(2), consistency="majority")


@pytest.mark.parametrize(
    ("cls", "settings"),
    [
        (KDLoss, {"temperature": 2.0}),
        (DKDLoss, {"temperature": 2.0, "alpha": 0.5, "beta": 6.0}),
        (NKDLoss, {"gamma": 1.5}),
        (NKDLoss, {"gamma": 1.5, "exclude_target": True}),
    ],
)
def test_a_base_loss_class_is_its_function_with_its_settings(cls, settings):
    s, t, y = _logits(6, K), _logits(6, K, seed=1), torch.arange(6) % K
    loss = cls(**settings)
    fn = {KDLoss: kd_loss, DKDLoss: dkd_loss, NKDLoss: nkd_loss}[cls]
    function_settings = {k: v for k, v in loss.settings().items() if k != "standardize"}  # a class-only switch
    torch.testing.assert_close(loss(s, t, y), fn(s, t, y, **function_settings))
    assert loss.settings() == {**cls().settings(), **settings}
    assert base_loss(cls.__name__.removesuffix("Loss").lower(), **settings) == loss


def test_the_library_defaults_are_the_official_cifar_values():
    assert KDLoss().settings() == {"temperature": 4.0, "standardize": False}
    assert DKDLoss().settings() == {"temperature": 4.0, "alpha": 1.0, "beta": 8.0, "standardize": False}
    assert NKDLoss().settings() == {"temperature": 4.0, "gamma": 8.0, "exclude_target": False, "standardize": False}
    loss = ScaleDecoupledLoss()
    assert (loss.base, loss.complementary_weight, loss.consistent_weight, loss.consistency) == (
        KDLoss(),
        2.0,
        1.0,
        "correctness",
    )


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: KDLoss(temperature=0), "temperature"),
        (lambda: KDLoss(temperature=float("nan")), "temperature"),
        (lambda: DKDLoss(beta=-1), "beta"),
        (lambda: DKDLoss(alpha="1"), "alpha"),
        (lambda: NKDLoss(gamma=-0.5), "gamma"),
        (lambda: NKDLoss(exclude_target=1), "exclude_target"),
        (lambda: ScaleDecoupledLoss(complementary_weight=-1), "complementary_weight"),
        (lambda: ScaleDecoupledLoss(consistent_weight=float("inf")), "consistent_weight"),
        (lambda: ScaleDecoupledLoss(consistency="majority"), "consistency"),
    ],
)
def test_bad_settings_are_refused_when_the_loss_is_built_naming_the_setting(build, named):
    with pytest.raises(ValueError, match=named):
        build()


def test_the_loss_and_its_parts_keep_the_precision_of_the_logits():
    # region weights are cast to the per-region losses' dtype: a bfloat16 pair gives a bfloat16 loss, not float32
    s, t = _logits(4, 5, K).bfloat16(), _logits(4, 5, K).flip(0).bfloat16()
    out = ScaleDecoupledLoss()(s, t, torch.arange(4))
    assert out.loss.dtype == out.complementary_fraction.dtype == out.per_region.dtype == torch.bfloat16


def test_a_base_that_is_neither_a_name_nor_callable_and_a_boolean_weight_are_refused_by_name():
    with pytest.raises(ValueError) as error:
        base_loss(3)
    assert str(error.value) == "base must be one of kd, dkd, nkd or a callable per-sample loss, got 3"
    with pytest.raises(ValueError) as error:
        ScaleDecoupledLoss(complementary_weight=True)
    assert str(error.value) == "complementary_weight must be a finite number >= 0, got True"
