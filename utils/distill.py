"""Knowledge distillation (Hinton et al. 2015): train a small student on a teacher's softened outputs.

The student's loss mixes two terms,

    alpha * T**2 * KL( softmax(teacher / T) || softmax(student / T) )  +  (1 - alpha) * CE(student, y),

where ``T`` (the temperature) flattens both distributions so that the teacher's small
probabilities on the wrong classes ("this 7 looks a bit like a 1") carry weight, and ``T**2``
keeps the soft term's gradients on the same scale as the hard term's when ``T`` changes.
Muller et al. (2019, "When does label smoothing help?") found that teachers trained with label
smoothing make worse students: smoothing erases much of that wrong-class structure.

:func:`train_student` mirrors :func:`utils.training.train_classifier` (Adam, a seeded batch order,
the same :class:`~utils.training.History`), except that each batch also sees the teacher's logits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.data import Split
from utils.training import History, fit, predict_logits


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return float(temperature)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the weight of the soft term) must be in [0, 1], got {alpha!r}")
    return float(alpha)


def soften(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / T)`` over the last dimension: the teacher's 'soft targets' at temperature ``T``."""
    t = _check_temperature(temperature)
    if not torch.is_tensor(logits) or not logits.is_floating_point() or logits.ndim != 2:
        raise ValueError("logits must be a floating-point tensor of shape [N, K]")
    return (logits / t).softmax(dim=-1)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Hinton et al.'s distillation loss (mean over the batch); see the module docstring.

    ``alpha=0`` is plain cross-entropy on the labels; ``alpha=1`` ignores the labels. The teacher's
    logits are treated as constants (no gradient flows into the teacher).
    """
    t = _check_temperature(temperature)
    a = _check_alpha(alpha)
    if not torch.is_tensor(student_logits) or not torch.is_tensor(teacher_logits):
        raise ValueError("student_logits and teacher_logits must be tensors")
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must both be [N, K] and equal in shape, got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if labels.ndim != 1 or len(labels) != len(student_logits) or labels.is_floating_point():
        raise ValueError(f"labels must be 1-D class indices, one per row of the logits; got shape {tuple(labels.shape)}, dtype {labels.dtype}")
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t
    hard = F.cross_entropy(student_logits, labels)
    return a * soft + (1.0 - a) * hard


def train_student(
    student: nn.Module,
    teacher: nn.Module,
    train: Split,
    val: Split | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    desc: str = "distilling",
) -> History:
    """Train ``student`` with :func:`distillation_loss` against a frozen ``teacher``.

    The teacher's logits on ``train.x`` are computed once, in evaluation mode. Batches come in an
    order fixed by ``seed``; ``History.train_loss`` is the distillation loss and ``val_loss`` the
    plain cross-entropy on ``val``, as in :func:`utils.training.train_classifier`.
    """
    _check_temperature(temperature)
    _check_alpha(alpha)
    device = next(student.parameters()).device
    x = train.x.to(device)
    teacher_logits = predict_logits(teacher, x).detach()
    if teacher_logits.shape[1] != predict_logits(student, x[:1]).shape[1]:
        raise ValueError("teacher and student must predict the same number of classes")
    return fit(student, train, lambda logits, targets, idx: distillation_loss(logits, teacher_logits[idx], targets, temperature, alpha),
               val, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress, desc=desc)


def ensemble_distillation_loss(teacher_logits: torch.Tensor, temperatures, alphas):
    """Per-member distillation loss for :func:`utils.ensemble.train_ensemble`.

    ``teacher_logits``: ``[M, n, K]``, member ``m``'s teacher on member ``m``'s training set;
    ``temperatures`` and ``alphas``: one value per member (``alpha = 0``: plain cross-entropy, a
    student trained alone). The same formula as :func:`distillation_loss`, one value per member.
    """
    t = torch.as_tensor([_check_temperature(float(v)) for v in temperatures], dtype=torch.float32)
    a = torch.as_tensor([_check_alpha(float(v)) for v in alphas], dtype=torch.float32)
    if teacher_logits.ndim != 3 or len(t) != teacher_logits.shape[0] or len(a) != len(t):
        raise ValueError("teacher_logits must be [M, n, K] with one temperature and one alpha per member")
    teacher_logits = teacher_logits.detach()

    def loss(logits, targets, idx):
        tt = t.to(logits.device)[:, None, None]
        teacher = torch.gather(teacher_logits, 1, idx.unsqueeze(-1).expand(-1, -1, teacher_logits.shape[2]))
        log_p_s = F.log_softmax(logits / tt, dim=-1)
        log_p_t = F.log_softmax(teacher / tt, dim=-1)
        soft = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1).mean(dim=1) * t.to(logits.device) ** 2
        hard = -F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1).mean(dim=1)
        aa = a.to(logits.device)
        return aa * soft + (1 - aa) * hard

    return loss
