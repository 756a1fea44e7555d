"""Train many small MLPs at once: one batched model whose members are independent runs.

The course's experiments compare training set-ups over several seeds (plain vs smoothed, one
``eps`` against another, a teacher's temperature). Each run is a tiny MLP on about 1,000 digits,
so training one at a time spends nearly all its time in Python, not in arithmetic. Here ``M`` runs
share one loop: the weights of layer ``l`` are stacked into ``[M, in, out]`` and applied with
``torch.baddbmm``, every member draws its own mini-batch order from its own seeded generator,
and the loss is the *sum* of the members' own batch-mean losses.

Why that is the same as ``M`` separate runs: the members share no parameter, so the gradient of
the sum with respect to member ``m``'s weights is the gradient of member ``m``'s own loss; and
Adam works element by element (its moments and step size are per parameter entry), so one Adam
over the stacked tensors takes exactly the steps ``M`` separate Adams would. Member ``m`` starts
from :func:`utils.training.make_mlp` built right after ``torch.manual_seed(init_seed[m])``, the
same initial weights a separate run with that seed gets. Results agree with separate runs up to
float32 rounding (``baddbmm`` sums in another order than ``addmm``); ``tests/test_utils_ensemble.py``
checks this against :func:`utils.training.train_classifier`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.training import make_mlp

MemberLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(logits [M, B, K], targets [M, B], idx [M, B]) -> [M]``: each member's batch-mean loss."""


def smoothed_ce(eps: Sequence[float] | torch.Tensor) -> MemberLoss:
    """Per-member label-smoothed cross-entropy, PyTorch's convention, one ``eps`` per member.

    ``(1 - eps) * NLL + eps * mean_k(-log p_k)`` (lecture 03's memory-light form, equal to
    ``F.cross_entropy(..., label_smoothing=eps)``), averaged over each member's batch.
    """
    eps_t = torch.as_tensor(eps, dtype=torch.float32)
    if eps_t.ndim != 1 or ((eps_t < 0) | (eps_t >= 1)).any():
        raise ValueError(f"eps must be a list of values in [0, 1), one per member, got {eps!r}")

    def loss(logits, targets, idx):
        e = eps_t.to(logits.device)[:, None]
        logp = F.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return ((1 - e) * nll + e * (-logp.mean(dim=-1))).mean(dim=1)

    return loss


class MLPEnsemble(nn.Module):
    """``M`` ReLU MLPs of the same shape (:func:`utils.training.make_mlp`) evaluated together."""

    def __init__(self, members: Sequence[nn.Sequential]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        linears = [[m for m in seq if isinstance(m, nn.Linear)] for seq in members]
        shapes = {tuple((l.in_features, l.out_features) for l in ls) for ls in linears}
        if len(shapes) != 1:
            raise ValueError("every member must have the same architecture")
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.stack([ls[i].weight.detach().T.clone() for ls in linears])) for i in range(len(linears[0]))])
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.stack([ls[i].bias.detach().clone() for ls in linears])) for i in range(len(linears[0]))])

    @property
    def size(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: torch.Tensor, penultimate: bool = False) -> torch.Tensor:
        """``x``: ``[M, B, in]`` (or ``[B, in]``, shared by all members) -> logits ``[M, B, K]``."""
        if x.ndim == 2:
            x = x.unsqueeze(0).expand(self.size, -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if penultimate and i == last:
                return x
            x = torch.baddbmm(b.unsqueeze(1), x, w)
            if i < last:
                x = torch.relu(x)
        return x

    def member(self, m: int) -> nn.Sequential:
        """Member ``m`` as a stand-alone :func:`make_mlp`-style ``nn.Sequential`` (a copy)."""
        layers: list[nn.Module] = []
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            lin = nn.Linear(w.shape[1], w.shape[2]).to(w.device)
            with torch.no_grad():
                lin.weight.copy_(w[m].T)
                lin.bias.copy_(b[m])
            layers.append(lin)
            if i < len(self.weights) - 1:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)


@dataclass
class EnsembleHistory:
    """Per-epoch training loss of each member, ``[epochs, M]``; validation accuracy if asked for."""

    train_loss: torch.Tensor
    val_acc: torch.Tensor | None = None


def train_ensemble(
    x: torch.Tensor,
    y: torch.Tensor,
    loss: MemberLoss,
    init_seeds: Sequence[int],
    order_seeds: Sequence[int] | None = None,
    *,
    hidden: int = 64,
    depth: int = 1,
    num_classes: int = 10,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[MLPEnsemble, EnsembleHistory]:
    """Train ``M = len(init_seeds)`` MLPs with Adam, each on its own data and batch order.

    ``x``: ``[M, n, d]`` (or ``[n, d]`` shared), ``y``: ``[M, n]`` (or ``[n]``). Member ``m``
    starts from ``make_mlp`` seeded with ``init_seeds[m]`` and shuffles with a generator seeded
    with ``order_seeds[m]`` (default: ``init_seeds``), exactly like
    :func:`utils.training.train_classifier` with ``seed=order_seeds[m]``.
    """
    m_count = len(init_seeds)
    order_seeds = list(init_seeds if order_seeds is None else order_seeds)
    if m_count == 0 or len(order_seeds) != m_count:
        raise ValueError(f"need one init seed and one order seed per member, got {len(init_seeds)} and {len(order_seeds)}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got epochs={epochs}, batch_size={batch_size}, lr={lr}")
    if x.ndim == 2:
        x = x.unsqueeze(0).expand(m_count, -1, -1)
    if y.ndim == 1:
        y = y.unsqueeze(0).expand(m_count, -1)
    if x.shape[0] != m_count or y.shape[:2] != x.shape[:2]:
        raise ValueError(f"x must be [M, n, d] and y [M, n] with M = {m_count}, got {tuple(x.shape)} and {tuple(y.shape)}")
    device = x.device
    members = []
    for s in init_seeds:
        torch.manual_seed(int(s))
        members.append(make_mlp(in_features=x.shape[2], hidden=hidden, num_classes=num_classes, depth=depth))
    model = MLPEnsemble(members).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gens = [torch.Generator().manual_seed(int(s)) for s in order_seeds]
    n = x.shape[1]
    rows = torch.arange(m_count, device=device)[:, None]
    losses, val_acc = [], []
    for _ in range(epochs):
        model.train()
        order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)
        total = torch.zeros(m_count, device=device)
        for i in range(0, n, batch_size):
            idx = order[:, i : i + batch_size]
            logits = model(x[rows, idx])
            per_member = loss(logits, y[rows, idx], idx)
            opt.zero_grad(set_to_none=True)
            per_member.sum().backward()
            opt.step()
            total += per_member.detach() * idx.shape[1]
        losses.append(total / n)
        if val is not None:
            val_acc.append((predict(model, val[0]).argmax(-1) == val[1]).float().mean(dim=-1))
    history = EnsembleHistory(torch.stack(losses).cpu(), torch.stack(val_acc).cpu() if val_acc else None)
    return model, history


@torch.no_grad()
def predict(model: MLPEnsemble, x: torch.Tensor) -> torch.Tensor:
    """Logits ``[M, n, K]`` of every member on ``x`` (``[n, d]`` shared or ``[M, n, d]``)."""
    model.eval()
    return model(x)
