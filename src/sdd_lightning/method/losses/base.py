"""Per-sample base logit losses: KD, DKD and NKD, as functions and as configured callables.

Every function takes student logits ``(N, K)``, teacher logits ``(N, K)`` and integer targets ``(N,)`` and
returns one loss per row ``(N,)``; leading dimensions beyond one are allowed as long as the targets match them.
All terms are computed from log-softmax forms, so they stay finite at any logit scale (no ``log(0)``), and the
teacher side is detached. The functions take their settings as keyword arguments, with no defaults.

The classes :class:`KDLoss`, :class:`DKDLoss` and :class:`NKDLoss` own those settings: they check them once, in
the constructor, hold the library's one default for each (the official SDD CIFAR-100 values), and are called
like the functions, ``loss(student_logits, teacher_logits, target) -> (N,)``. The configs name them
(``conf/loss/*.yaml``) and :class:`~sdd_lightning.training.module.DistillationModule` takes one. A new base loss is one
more such callable and one YAML file that names it.

Every class also takes ``standardize`` (default ``False``): logit standardization (Sun et al., "Logit
Standardization in Knowledge Distillation", CVPR 2024), which z-scores each row of both networks' logits with
:func:`standardize_logits` before the unchanged loss. In the scale-decoupled loss a row is one region of one
sample, so every region's logit vector is standardized on its own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "BASE_LOSSES",
    "DKDLoss",
    "KDLoss",
    "NKDLoss",
    "PerSampleLoss",
    "dkd_loss",
    "kd_loss",
    "nkd_loss",
    "standardize_logits",
]

STANDARDIZE_EPS = 1e-7
"""Added to the standard deviation, as in the official LS code (``(logit - mean) / (1e-7 + stdv)``)."""


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logit standardization: every logit vector z-scored over its classes (the last dimension).

    ``(z - mean(z)) / (std(z) + 1e-7)`` with the unbiased (``K - 1``) standard deviation, which is what the
    official code computes: sunshangquan/logit-standardization-KD, ``mdistiller/distillers/KD.py`` lines 7-10
    (``logit.std(dim=-1)``, PyTorch's default correction of 1; the same ``normalize`` is in ``DKD.py`` lines 7-10).
    The result does not change when a row is scaled by a positive number or shifted by any number (up to the
    ``1e-7``), and its argmax is the row's own. Computed in at least float32 and returned in the dtype of
    ``logits``; differentiable (plain autograd).
    """
    if logits.shape[-1] < 2:
        raise ValueError(f"logit standardization needs at least 2 classes, got logits of shape {tuple(logits.shape)}")
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    std, mean = torch.std_mean(z, dim=-1, keepdim=True)  # correction=1: Tensor.std's default, as the official code
    return ((z - mean) / (std + STANDARDIZE_EPS)).to(logits.dtype)


def _kl_from_log_probs(log_p_teacher: torch.Tensor, log_p_student: torch.Tensor) -> torch.Tensor:
    """``KL(p_t || p_s)`` summed over the last dimension, safe where ``p_t`` underflows to 0."""
    return F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(-1)


class _KDRows(torch.autograd.Function):
    """Per-row KD with its gradient written out: ``T * (softmax(s / T) - softmax(t / T))`` per unit of loss.

    The same value as ``T^2 * kl_div(log_softmax(s / T), log_softmax(t / T), log_target=True).sum(-1)``,
    computed with fewer full-size temporaries: autograd through those ops keeps and re-reads about twice as
    many (B*R, K) tensors, and with R = 21 regions per image these rows dominate the cost of the loss.
    Differentiable once, in the student logits only (the teacher side is a constant).
    """

    @staticmethod
    def forward(ctx, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        dtype = torch.promote_types(student_logits.dtype, teacher_logits.dtype)
        log_p_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
        p_t = log_p_t.exp()
        # KL(p_t || p_s) = sum p_t * (log p_t - log p_s); 0 where p_t underflows, as kl_div with log targets.
        rows = (log_p_t.sub_(log_p_s).mul_(p_t)).sum(-1) * temperature**2
        ctx.save_for_backward(log_p_s, p_t)
        ctx.temperature = temperature
        ctx.student_dtype = student_logits.dtype
        return rows

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rows: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        log_p_s, p_t = ctx.saved_tensors
        grad = log_p_s.exp().sub_(p_t).mul_((grad_rows * ctx.temperature).unsqueeze(-1))
        return grad.to(ctx.student_dtype), None, None


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    temperature: float,
) -> torch.Tensor:
    """Hinton et al.'s KD: ``T^2 * KL(softmax(t / T) || softmax(s / T))`` per row.

    ``target`` is accepted (and ignored) so that every base loss has one calling form. Gradients flow into
    ``student_logits`` (first order only).
    """
    del target
    return _KDRows.apply(student_logits, teacher_logits.detach(), temperature)


def _target_split(logits: torch.Tensor, target_mask: torch.Tensor, temperature: float):
    """Log-probabilities of target vs rest, and the log-softmax over the non-target classes.

    Returns ``(log_binary (..., 2), log_non_target (..., K))``; the target entry of
    ``log_non_target`` is finite but meaningless and must be masked out by the caller.
    """
    z = logits / temperature
    lse_all = z.logsumexp(-1)
    lse_rest = z.masked_fill(target_mask, float("-inf")).logsumexp(-1)
    z_target = (z * target_mask).sum(-1)
    log_binary = torch.stack([z_target - lse_all, lse_rest - lse_all], dim=-1)
    log_non_target = z - lse_rest.unsqueeze(-1)
    return log_binary, log_non_target


def _target_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target is None:
        raise ValueError("this loss needs the ground-truth target (integer class indices)")
    return F.one_hot(target.long(), logits.shape[-1]).bool()


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): ``alpha * TCKD + beta * NCKD`` per row, each with ``T^2``.

    TCKD is the KL between the binary (target, rest) distributions; NCKD the KL between the
    distributions over the non-target classes only (the target class excluded exactly).
    """
    mask = _target_mask(student_logits, target)
    log_bin_s, log_nt_s = _target_split(student_logits, mask, temperature)
    log_bin_t, log_nt_t = _target_split(teacher_logits.detach(), mask, temperature)
    tckd = _kl_from_log_probs(log_bin_t, log_bin_s)
    p_nt_t = log_nt_t.exp().masked_fill(mask, 0.0)
    nckd = (p_nt_t * (log_nt_t - log_nt_s).masked_fill(mask, 0.0)).sum(-1)
    return (alpha * tckd + beta * nckd) * temperature**2


def nkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float,
    gamma: float,
    exclude_target: bool,
) -> torch.Tensor:
    """Normalized KD (Yang et al., ICCV 2023) per row, as the official SDD code computes it or as NKD is defined.

    Both forms are ``-p_t[y] * log p_s[y]`` (at temperature 1) plus ``gamma * T^2`` times a soft cross-entropy
    at temperature ``T``:

    - ``exclude_target=False`` (the official code, and so every published NKD / SD-NKD number): the soft term is
      ``-sum_k softmax(t / T)_k * log softmax(s / T)_k`` over *all* classes, the target included. The official
      "non-target" mask, ``ones_like(logits).scatter_(1, label, 1)`` (SDD-CVPR2024
      ``mdistiller/distillers/SDD_nkd.py`` lines 23 and 53; ``nkd.py`` line 23 for the ImageNet baseline), is all
      ones, so nothing is removed and nothing is renormalised.
    - ``exclude_target=True`` (NKD as its paper defines it): the cross-entropy between the teacher's and the
      student's softened distributions over the non-target classes only, each renormalised over them.
    """
    mask = _target_mask(student_logits, target)
    teacher_logits = teacher_logits.detach()
    log_p_s = F.log_softmax(student_logits, dim=-1)
    p_t = F.softmax(teacher_logits, dim=-1)
    target_term = -((p_t * log_p_s) * mask).sum(-1)
    if exclude_target:
        _, log_nt_s = _target_split(student_logits, mask, temperature)
        _, log_nt_t = _target_split(teacher_logits, mask, temperature)
        p_nt_t = log_nt_t.exp().masked_fill(mask, 0.0)
        soft_term = -(p_nt_t * log_nt_s.masked_fill(mask, 0.0)).sum(-1)
    else:
        log_q_s = F.log_softmax(student_logits / temperature, dim=-1)
        q_t = F.softmax(teacher_logits / temperature, dim=-1)
        soft_term = -(q_t * log_q_s).sum(-1)
    return target_term + gamma * temperature**2 * soft_term


def _check_flag(owner: str, name: str, value: bool) -> bool:
    """A switch must be a real boolean (not ``1``, not ``"true"``); the error names the setting."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be true or false, got {value!r}")
    return value


def _check_settings(owner: str, **settings: float) -> None:
    """Temperatures must be positive, weights non-negative, all finite numbers; the error names the setting."""
    for name, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
        if name == "temperature" and value <= 0:
            raise ValueError(f"{owner}: temperature must be > 0, got {value!r}")
        if name != "temperature" and value < 0:
            raise ValueError(f"{owner}: {name} must be >= 0, got {value!r}")


class PerSampleLoss:
    """A base logit loss with its settings: ``loss(student_logits, teacher_logits, target) -> (N,)``.

    Subclasses set their settings in ``__init__`` (checked there, once) and implement ``__call__``;
    :meth:`settings` returns them as plain numbers and booleans, which is what checkpoints and loggers record.
    A subclass that sets ``standardize`` passes its logits through :meth:`_standardized` first.
    """

    standardize: bool = False

    def settings(self) -> dict[str, float | bool]:
        """The loss's settings by name (plain Python numbers and booleans)."""
        return {}

    def _standardized(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits the loss is computed on: both standardized (:func:`standardize_logits`) when
        ``standardize`` is set, else as given. The teacher side stays detached.

        The official LS code standardizes the whole logit vector, target class included, and only then applies
        the loss and its temperature (``KD.py`` lines 13-18, ``DKD.py`` lines 13-39): DKD's target/non-target
        split and NKD's two terms see standardized logits, and the ``T^2`` factor is kept.
        """
        if not self.standardize:
            return student_logits, teacher_logits
        return standardize_logits(student_logits), standardize_logits(teacher_logits.detach())

    def __call__(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.settings() == self.settings()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(self.settings().items())))


class KDLoss(PerSampleLoss):
    """Hinton et al.'s KD per row (see :func:`kd_loss`).

    Args:
        temperature: softening temperature T (the loss is scaled by T^2); 4 in the official CIFAR-100 recipes
            (with ``standardize``, the LS paper's base temperature: 2 or 3 by pair).
        standardize: logit standardization (LS) of both networks' logits, per row, before the loss
            (:func:`standardize_logits`); off by default.
    """

    def __init__(self, temperature: float = 4.0, standardize: bool = False) -> None:
        _check_settings("KDLoss", temperature=temperature)
        self.temperature = float(temperature)
        self.standardize = _check_flag("KDLoss", "standardize", standardize)

    def settings(self) -> dict[str, float | bool]:
        return {"temperature": self.temperature, "standardize": self.standardize}

    def __call__(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        student_logits, teacher_logits = self._standardized(student_logits, teacher_logits)
        return kd_loss(student_logits, teacher_logits, target, temperature=self.temperature)


class DKDLoss(PerSampleLoss):
    """Decoupled KD per row (see :func:`dkd_loss`).

    Args:
        temperature: T; 4 in the official CIFAR-100 recipes (1 on ImageNet).
        alpha: weight of the target-class term (TCKD); 1.
        beta: weight of the non-target term (NCKD); 8 by default, 6 for some pairs (the pair configs set it).
        standardize: logit standardization (LS) of both networks' logits, per row, before the loss
            (:func:`standardize_logits`); off by default.
    """

    def __init__(
        self, temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0, standardize: bool = False
    ) -> None:
        _check_settings("DKDLoss", temperature=temperature, alpha=alpha, beta=beta)
        self.temperature, self.alpha, self.beta = float(temperature), float(alpha), float(beta)
        self.standardize = _check_flag("DKDLoss", "standardize", standardize)

    def settings(self) -> dict[str, float | bool]:
        return {
            "temperature": self.temperature,
            "alpha": self.alpha,
            "beta": self.beta,
            "standardize": self.standardize,
        }

    def __call__(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        student_logits, teacher_logits = self._standardized(student_logits, teacher_logits)
        return dkd_loss(
            student_logits, teacher_logits, target, temperature=self.temperature, alpha=self.alpha, beta=self.beta
        )


class NKDLoss(PerSampleLoss):
    """Normalized KD per row (see :func:`nkd_loss`); by default the official SDD code's form.

    Args:
        temperature: T of the soft term; 4 in the official SDD CIFAR-100 recipes (the NKD paper and its
            ImageNet baseline use 1).
        gamma: weight of the soft term; 8 by default, 6 for some pairs (the NKD paper uses 1.5).
        exclude_target: ``False`` (default): the soft term runs over all classes, the target included, as the
            official SDD code computes it (its "non-target" mask is all ones) and as its published NKD and SD-NKD
            numbers were trained. ``True``: the target class is left out and the rest renormalised, as NKD is
            defined (``distill.loss.exclude_target=true``).
        standardize: logit standardization (LS) of both networks' logits, per row, before the loss
            (:func:`standardize_logits`); off by default. Both terms see the standardized logits (the official
            LS code has no NKD; this follows what it does for DKD), with either ``exclude_target``.
    """

    def __init__(
        self, temperature: float = 4.0, gamma: float = 8.0, exclude_target: bool = False, standardize: bool = False
    ) -> None:
        _check_settings("NKDLoss", temperature=temperature, gamma=gamma)
        self.temperature, self.gamma = float(temperature), float(gamma)
        self.exclude_target = _check_flag("NKDLoss", "exclude_target", exclude_target)
        self.standardize = _check_flag("NKDLoss", "standardize", standardize)

    def settings(self) -> dict[str, float | bool]:
        return {
            "temperature": self.temperature,
            "gamma": self.gamma,
            "exclude_target": self.exclude_target,
            "standardize": self.standardize,
        }

    def __call__(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        student_logits, teacher_logits = self._standardized(student_logits, teacher_logits)
        return nkd_loss(
            student_logits,
            teacher_logits,
            target,
            temperature=self.temperature,
            gamma=self.gamma,
            exclude_target=self.exclude_target,
        )


BASE_LOSSES: dict[str, type[PerSampleLoss]] = {"kd": KDLoss, "dkd": DKDLoss, "nkd": NKDLoss}
"""The built-in base losses by the names the functional API (``sdd_loss(base="kd")``) accepts."""
