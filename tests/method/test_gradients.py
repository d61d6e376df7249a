"""Gradients of the base losses and the SDD reduction against autograd of the textbook formulas.

KD has a hand-written backward (``_KDRows``); a lost factor ``T`` or a flipped sign there changes no loss
value, only the training. Every check runs in float64 at several temperatures (``T = 1`` would hide a
lost factor ``T``) and with random per-row weights on the rows (the upstream gradient of a weighted sum).
DKD and NKD (both forms: the official code's soft term over all classes, and ``exclude_target``) are differentiated
by autograd today; the same checks hold whatever backward they get later.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sdd_lightning.method.losses import dkd_loss, kd_loss, nkd_loss, sdd_loss

K = 7
TEMPERATURES = [0.5, 2.0, 4.0]
ALPHA, BETA, GAMMA = 1.3, 6.0, 1.7


def _logits(*shape, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _row_weights(n, seed=7):
    """Random positive and negative weights, so that each row's upstream gradient differs."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g, dtype=torch.float64) * 4 - 1


# --- the textbook formulas, with probabilities computed directly (no log-softmax, no masks) ----------------


def _softmax_parts(s, t, y, T):
    ps, pt = torch.softmax(s / T, -1), torch.softmax(t / T, -1)
    onehot = F.one_hot(y, s.shape[-1]).bool()
    ps_y, pt_y = ps[onehot], pt[onehot]
    ps_nt = ps[~onehot].view(len(y), -1) / (1 - ps_y).unsqueeze(1)
    pt_nt = pt[~onehot].view(len(y), -1) / (1 - pt_y).unsqueeze(1)
    return ps, pt, ps_y, pt_y, ps_nt, pt_nt


def textbook_kd(s, t, y, T):
    del y
    ps, pt = torch.softmax(s / T, -1), torch.softmax(t / T, -1)
    return T**2 * (pt * (pt.log() - ps.log())).sum(-1)


def textbook_dkd(s, t, y, T):
    _, _, ps_y, pt_y, ps_nt, pt_nt = _softmax_parts(s, t, y, T)
    tckd = pt_y * (pt_y / ps_y).log() + (1 - pt_y) * ((1 - pt_y) / (1 - ps_y)).log()
    nckd = (pt_nt * (pt_nt / ps_nt).log()).sum(-1)
    return T**2 * (ALPHA * tckd + BETA * nckd)


def textbook_nkd(s, t, y, T):
    """NKD as the official SDD code computes it: the soft term over all classes, the target included."""
    _, _, ps_y1, pt_y1, _, _ = _softmax_parts(s, t, y, 1.0)
    ps, pt, *_ = _softmax_parts(s, t, y, T)
    return -pt_y1 * ps_y1.log() - GAMMA * T**2 * (pt * ps.log()).sum(-1)


def textbook_nkd_excluding_the_target(s, t, y, T):
    _, _, ps_y1, pt_y1, _, _ = _softmax_parts(s, t, y, 1.0)
    _, _, _, _, ps_nt, pt_nt = _softmax_parts(s, t, y, T)
    return -pt_y1 * ps_y1.log() - GAMMA * T**2 * (pt_nt * ps_nt.log()).sum(-1)


BASES = {
    "kd": (lambda s, t, y, T: kd_loss(s, t, y, temperature=T), textbook_kd),
    "dkd": (lambda s, t, y, T: dkd_loss(s, t, y, temperature=T, alpha=ALPHA, beta=BETA), textbook_dkd),
    "nkd": (lambda s, t, y, T: nkd_loss(s, t, y, temperature=T, gamma=GAMMA, exclude_target=False), textbook_nkd),
    "nkd_exclude_target": (
        lambda s, t, y, T: nkd_loss(s, t, y, temperature=T, gamma=GAMMA, exclude_target=True),
        textbook_nkd_excluding_the_target,
    ),
}
# the keyword arguments of sdd_loss(base=...) for each entry of BASES
SDD_KWARGS = {
    "kd": {"base": "kd"},
    "dkd": {"base": "dkd", "alpha": ALPHA, "beta": BETA},
    "nkd": {"base": "nkd", "gamma": GAMMA},
    "nkd_exclude_target": {"base": "nkd", "gamma": GAMMA, "exclude_target": True},
}


def _student_grad(fn, s, t, y, T, w):
    s = s.detach().clone().requires_grad_()
    (w * fn(s, t, y, T)).sum().backward()
    return s.grad


@pytest.mark.parametrize("T", TEMPERATURES)
@pytest.mark.parametrize("base", list(BASES))
def test_student_gradient_equals_autograd_of_the_textbook_formula(base, T):
    loss, reference = BASES[base]
    n = 6
    s, t, y = _logits(n, K), _logits(n, K, seed=1), torch.arange(n) % K
    w = _row_weights(n)
    torch.testing.assert_close(loss(s, t, y, T), reference(s, t, y, T))
    got, expected = _student_grad(loss, s, t, y, T, w), _student_grad(reference, s, t, y, T, w)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T", TEMPERATURES)
@pytest.mark.parametrize("base", list(BASES))
def test_gradcheck_rows_against_finite_differences(base, T):
    """The full Jacobian of the per-row losses (one backward per row: a per-row upstream gradient)."""
    loss, _ = BASES[base]
    s = _logits(4, K, seed=2).requires_grad_()
    t, y = _logits(4, K, seed=3), torch.tensor([0, 3, 6, 3])
    assert torch.autograd.gradcheck(lambda s: loss(s, t, y, T), (s,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("T", [2.0, 4.0])
def test_kd_backward_with_leading_dimensions_and_strided_upstream_gradient(T):
    """``(B, R, K)`` rows, and an upstream gradient that is a broadcast view (as ``sum`` hands down)."""
    s = _logits(3, 4, K, seed=4).requires_grad_()
    t = _logits(3, 4, K, seed=5)
    assert torch.autograd.gradcheck(lambda s: kd_loss(s, t, temperature=T), (s,), eps=1e-6, atol=1e-7, rtol=1e-5)
    kd_loss(s, t, temperature=T).sum().backward()
    expected = torch.autograd.grad(textbook_kd(s.view(-1, K), t.view(-1, K), None, T).sum(), s)[0]
    torch.testing.assert_close(s.grad, expected)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_gradient_closed_form(T):
    """``d KD_row / d s = T * (softmax(s / T) - softmax(t / T))``: the sign and the factor ``T`` in one line."""
    s, t = _logits(5, K, seed=6).requires_grad_(), _logits(5, K, seed=8)
    w = _row_weights(5)
    (w * kd_loss(s, t, temperature=T)).sum().backward()
    expected = w[:, None] * T * (torch.softmax(s.detach() / T, -1) - torch.softmax(t / T, -1))
    torch.testing.assert_close(s.grad, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kd_gradient_in_low_precision_student(dtype):
    """A float32 or bfloat16 student gets a gradient of its own dtype, close to the float64 one."""
    T = 4.0
    s64, t = _logits(6, K, seed=9), _logits(6, K, seed=10)
    s = s64.to(dtype).requires_grad_()
    w = _row_weights(6)
    (w * kd_loss(s, t.to(dtype), temperature=T)).sum().backward()
    assert s.grad.dtype == dtype
    expected = _student_grad(textbook_kd, s.detach().double(), t.to(dtype).double(), None, T, w)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(s.grad.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())


def test_kd_gradient_is_first_order_only():
    """KD's hand-written backward builds no graph: differentiating its gradient again is an error, not a zero."""
    s, t = _logits(3, K, seed=11).requires_grad_(), _logits(3, K, seed=12)
    (grad,) = torch.autograd.grad(kd_loss(s, t, temperature=2.0).sum(), s, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(grad.sum(), s)


@pytest.mark.parametrize("base", ["dkd", "nkd", "nkd_exclude_target"])
def test_autograd_losses_are_twice_differentiable(base):
    loss, _ = BASES[base]
    s = _logits(3, K, seed=11).requires_grad_()
    t, y = _logits(3, K, seed=12), torch.tensor([1, 2, 5])
    assert torch.autograd.gradgradcheck(
        lambda s: loss(s, t, y, 2.0), (s,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True
    )


@pytest.mark.parametrize("base", list(BASES))
def test_no_gradient_reaches_the_teacher(base):
    loss, _ = BASES[base]
    s, t = _logits(4, K).requires_grad_(), _logits(4, K, seed=1).requires_grad_()
    loss(s, t, torch.arange(4), 4.0).sum().backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def _reference_sdd(s, t, y, T, textbook, complementary_weight):
    """The official reduction on textbook rows: weights by teacher correctness, sum over ``R * B``."""
    b, r, k = s.shape
    rows = textbook(s.reshape(-1, k), t.reshape(-1, k), y.repeat_interleave(r), T).view(b, r)
    correct = t.argmax(-1) == y[:, None]
    weights = torch.where(correct ^ correct[:, :1], complementary_weight, 1.0).to(rows.dtype)
    weights[:, 0] = 1.0
    return (weights * rows).sum() / (b * r)


@pytest.mark.parametrize("T", [2.0, 4.0])
@pytest.mark.parametrize("base", list(BASES))
def test_sdd_loss_gradient_equals_the_reference_reduction(base, T):
    b, r = 5, 5
    s, t = _logits(b, r, K, seed=13), _logits(b, r, K, seed=14)
    y = torch.tensor([0, 1, 2, 3, 4])
    t[torch.arange(b), :, y] += 3.0  # some regions right, some wrong: both weights occur
    kwargs = SDD_KWARGS[base]

    def ours(s, t, y, T):
        return sdd_loss(s, t, y, temperature=T, complementary_weight=2.5, **kwargs)

    def reference(s, t, y, T):
        return _reference_sdd(s, t, y, T, BASES[base][1], 2.5)

    ones = torch.ones(())
    torch.testing.assert_close(ours(s, t, y, T), reference(s, t, y, T))
    torch.testing.assert_close(_student_grad(ours, s, t, y, T, ones), _student_grad(reference, s, t, y, T, ones))
