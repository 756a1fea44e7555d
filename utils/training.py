"""A small, seeded training loop for the course's classifiers, with a tqdm progress bar."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from utils.data import Split

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_mlp(in_features: int = 64, hidden: int = 64, num_classes: int = 10, depth: int = 1) -> nn.Sequential:
    """A plain ReLU MLP: ``depth`` hidden layers of width ``hidden``, then the logits."""
    if depth < 0 or hidden < 1:
        raise ValueError(f"depth must be >= 0 and hidden >= 1, got depth={depth}, hidden={hidden}")
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@dataclass
class History:
    """Per-epoch curves; ``val_loss`` is plain (unsmoothed) cross-entropy so runs compare."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits for ``x`` in evaluation mode, batched."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


BatchLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``batch_loss(logits, targets, idx)``: the loss of one mini-batch; ``idx`` are its rows of the training set."""


def fit(
    model: nn.Module,
    train: Split,
    batch_loss: BatchLoss,
    val: Split | None = None,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    desc: str = "training",
) -> History:
    """The loop behind :func:`train_classifier` and :func:`utils.distill.train_student`.

    Adam on mini-batches in an order drawn from a generator seeded with ``seed``, so two calls
    with the same arguments give the same model. ``batch_loss`` also gets the batch's row indices,
    for losses that need more than the labels (a teacher's logits for those rows, say).
    Validation loss is the *plain* cross-entropy: a smoothed loss has a floor above zero and is not
    comparable across smoothing values.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got epochs={epochs}, batch_size={batch_size}, lr={lr}")
    device = next(model.parameters()).device
    x, y = train.x.to(device), train.y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history = History()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        model.train()
        order = torch.randperm(len(y), generator=gen).to(device)
        total, correct = 0.0, 0
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            logits = model(x[idx])
            loss = batch_loss(logits, y[idx], idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            correct += (logits.argmax(1) == y[idx]).sum().item()
        history.train_loss.append(total / len(y))
        history.train_acc.append(correct / len(y))
        if val is not None:
            logits = predict_logits(model, val.x.to(device))
            history.val_loss.append(nn.functional.cross_entropy(logits, val.y.to(device)).item())
            history.val_acc.append(accuracy(logits, val.y.to(device)))
            bar.set_postfix(val_acc=f"{history.val_acc[-1]:.3f}")
    return history


def train_classifier(model: nn.Module, train: Split, loss_fn: LossFn, val: Split | None = None, **options) -> History:
    """Train ``model`` with Adam on ``train`` using ``loss_fn(logits, targets)``.

    ``options`` are :func:`fit`'s: ``epochs``, ``lr``, ``batch_size``, ``weight_decay``, ``seed``,
    ``progress``, ``desc``.
    """
    return fit(model, train, lambda logits, targets, idx: loss_fn(logits, targets), val, **options)
