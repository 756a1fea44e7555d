"""utils.distill: the distillation loss, softened targets and the student training loop."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.data import Split
from utils.distill import distillation_loss, soften, train_student


def logits(n=8, k=5, seed=0, scale=2.0):
    return scale * torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


LABELS = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])


# --------------------------------------------------------------------------- soften
def test_soften_is_softmax_of_scaled_logits():
    z = logits()
    torch.testing.assert_close(soften(z, 1.0), z.softmax(dim=1))
    torch.testing.assert_close(soften(z, 3.0), (z / 3.0).softmax(dim=1))
    torch.testing.assert_close(soften(z, 2.5).sum(dim=1), torch.ones(len(z), dtype=torch.float64))


def test_higher_temperature_flattens():
    z = logits()
    ent = [-(soften(z, t) * soften(z, t).log()).sum(dim=1).mean().item() for t in (0.5, 1.0, 2.0, 4.0, 100.0)]
    assert ent == sorted(ent), "entropy grows with the temperature"
    assert ent[-1] == pytest.approx(math.log(5), abs=1e-3), "a very high temperature is nearly uniform"
    assert torch.equal(soften(z, 4.0).argmax(dim=1), z.argmax(dim=1)), "the arg-max never changes"


@pytest.mark.parametrize("t", [0, 0.0, -1.0, float("nan"), float("inf"), True, "2"])
def test_soften_bad_temperature(t):
    with pytest.raises(ValueError, match="temperature"):
        soften(logits(), t)


def test_soften_bad_logits():
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        soften(torch.tensor([1, 2]), 2.0)
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        soften(torch.ones(3), 2.0)


# --------------------------------------------------------------------------- loss
def test_alpha_zero_is_plain_cross_entropy():
    s, t = logits(seed=1), logits(seed=2)
    torch.testing.assert_close(distillation_loss(s, t, LABELS, temperature=3.0, alpha=0.0), F.cross_entropy(s, LABELS))


def test_soft_term_is_t_squared_kl_by_hand():
    s, t, temp = logits(seed=1), logits(seed=2), 3.0
    p_t, p_s = (t / temp).softmax(dim=1), (s / temp).softmax(dim=1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(dim=1).mean()
    torch.testing.assert_close(distillation_loss(s, t, LABELS, temperature=temp, alpha=1.0), temp**2 * kl)
    mixed = distillation_loss(s, t, LABELS, temperature=temp, alpha=0.7)
    torch.testing.assert_close(mixed, 0.7 * temp**2 * kl + 0.3 * F.cross_entropy(s, LABELS))


def test_student_equal_to_teacher_has_zero_soft_loss_and_positive_otherwise():
    z = logits()
    assert distillation_loss(z, z.clone(), LABELS, temperature=4.0, alpha=1.0).item() == pytest.approx(0.0, abs=1e-12)
    assert distillation_loss(logits(seed=5), z, LABELS, temperature=4.0, alpha=1.0).item() > 0.01


def test_soft_gradient_is_t_times_probability_gap():
    """d/dz_s of T^2 * KL(p_t || softmax(z_s / T)) is T * (p_s - p_t) / N: the T^2 keeps the scale."""
    t_logits = logits(seed=2)
    for temp in (1.0, 2.0, 4.0):
        s = logits(seed=1).requires_grad_(True)
        distillation_loss(s, t_logits, LABELS, temperature=temp, alpha=1.0).backward()
        expected = temp * ((s.detach() / temp).softmax(dim=1) - (t_logits / temp).softmax(dim=1)) / len(s)
        torch.testing.assert_close(s.grad, expected)


def test_no_gradient_reaches_the_teacher():
    s, t = logits(seed=1).requires_grad_(True), logits(seed=2).requires_grad_(True)
    distillation_loss(s, t, LABELS, temperature=2.0, alpha=0.5).backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(alpha=1.5), "alpha"),
    (dict(alpha=-0.1), "alpha"),
    (dict(alpha=True), "alpha"),
    (dict(temperature=0.0), "temperature"),
])
def test_loss_bad_scalars(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distillation_loss(logits(), logits(seed=1), LABELS, **kwargs)


def test_loss_bad_shapes():
    with pytest.raises(ValueError, match="equal in shape"):
        distillation_loss(logits(k=5), logits(k=4), LABELS)
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(logits(), logits(seed=1), LABELS[:3])
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(logits(), logits(seed=1), LABELS.double())
    with pytest.raises(ValueError, match="tensors"):
        distillation_loss(logits().tolist(), logits(seed=1), LABELS)


# --------------------------------------------------------------------------- training loop
def toy_problem(n=96, d=6, k=3):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen)
    teacher = nn.Linear(d, k)
    with torch.no_grad():
        teacher.weight.copy_(3 * torch.randn(k, d, generator=gen))
        teacher.bias.zero_()
    y = teacher(x).argmax(dim=1).detach()
    return Split(x, y), teacher


def student(d=6, k=3, hidden=8, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, k))


def test_train_student_learns_the_teacher_and_is_deterministic():
    train, teacher = toy_problem()
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    a, b = student(), student()
    agree_before = (a(train.x).argmax(1) == teacher(train.x).argmax(1)).float().mean().item()
    ha = train_student(a, teacher, train, val=train, temperature=2.0, alpha=0.9, epochs=15, lr=1e-2, batch_size=16, seed=3, progress=False)
    train_student(b, teacher, train, temperature=2.0, alpha=0.9, epochs=15, lr=1e-2, batch_size=16, seed=3, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb), "same seed, same student"
    agree_after = (a(train.x).argmax(1) == teacher(train.x).argmax(1)).float().mean().item()
    assert agree_after > max(agree_before, 0.85), (agree_before, agree_after)
    assert len(ha.train_loss) == len(ha.val_loss) == len(ha.train_acc) == len(ha.val_acc) == 15
    assert ha.train_loss[-1] < ha.train_loss[0]
    for n, p in teacher.named_parameters():
        assert torch.equal(p, before[n]), "the teacher is frozen"


def test_train_student_seed_changes_the_batch_order():
    train, teacher = toy_problem()
    a, b = student(), student()
    train_student(a, teacher, train, epochs=2, batch_size=16, seed=0, progress=False)
    train_student(b, teacher, train, epochs=2, batch_size=16, seed=1, progress=False)
    assert not torch.equal(a[0].weight, b[0].weight)


def test_train_student_bad_inputs():
    train, teacher = toy_problem()
    with pytest.raises(ValueError, match="same number of classes"):
        train_student(student(k=4), teacher, train, epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train_student(student(), teacher, train, epochs=0, progress=False)
    with pytest.raises(ValueError, match="temperature"):
        train_student(student(), teacher, train, temperature=-2.0, progress=False)
    with pytest.raises(ValueError, match="alpha"):
        train_student(student(), teacher, train, alpha=2.0, progress=False)
