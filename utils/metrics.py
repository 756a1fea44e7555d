"""Evaluation metrics written out in torch: confusion matrix, per-class precision/recall/F1, entropy.

Convention (as in scikit-learn): rows of a confusion matrix are the *actual* classes and columns
the *predicted* ones, so ``cm[i, j]`` counts samples of class ``i`` that the model called ``j``.
A precision, recall or F1 whose denominator is zero (a class never predicted, or never present)
is reported as 0 rather than NaN, which is also scikit-learn's ``zero_division=0``.

``cross_entropy_floor`` answers "how low can a label-smoothed loss go?": the entropy of the
smoothed target, which no model can beat, so smoothed and plain losses are not comparable.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class PrecisionRecallF1(NamedTuple):
    """Per-class precision, recall and F1 (float64 tensors of shape ``[K]``) and the support."""

    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    support: torch.Tensor


def _class_indices(name: str, values) -> torch.Tensor:
    t = torch.as_tensor(values)
    if t.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor of class indices, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {t.dtype}")
    return t.long()


def confusion_matrix(labels, preds, num_classes: int) -> torch.Tensor:
    """Counts ``cm[actual, predicted]`` as an int64 ``[num_classes, num_classes]`` tensor.

    ``labels`` are the true classes and ``preds`` the predicted ones (1-D integer tensors of the
    same length, values in ``[0, num_classes)``). The result lives on the CPU.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    y = _class_indices("labels", labels).cpu()
    p = _class_indices("preds", preds).cpu()
    if len(y) != len(p):
        raise ValueError(f"labels and preds differ in length: {len(y)} vs {len(p)}")
    for name, t in (("labels", y), ("preds", p)):
        if len(t) and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got values from {t.min().item()} to {t.max().item()}")
    flat = torch.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _check_confusion(cm) -> torch.Tensor:
    cm = torch.as_tensor(cm).detach().cpu()  # float64 below: on the CPU (MPS has no float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"a confusion matrix must be square and non-empty, got shape {tuple(cm.shape)}")
    if cm.is_complex() or cm.dtype == torch.bool:
        raise ValueError(f"a confusion matrix holds counts, got dtype {cm.dtype}")
    cm = cm.double()
    if not torch.isfinite(cm).all() or (cm < 0).any():
        raise ValueError("a confusion matrix holds non-negative finite counts")
    return cm


def accuracy_from_confusion(cm) -> float:
    """Fraction of samples on the diagonal (0.0 for an all-zero matrix)."""
    cm = _check_confusion(cm)
    total = cm.sum()
    return (cm.diagonal().sum() / total).item() if total > 0 else 0.0


def _safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))


def precision_recall_f1(cm) -> PrecisionRecallF1:
    """Per-class precision (column-wise), recall (row-wise) and F1 from a confusion matrix.

    precision_k = cm[k, k] / (column k sum): of everything called k, how much was k.
    recall_k    = cm[k, k] / (row k sum):    of everything that was k, how much was found.
    F1 is their harmonic mean. Zero denominators give 0.
    """
    cm = _check_confusion(cm)
    tp = cm.diagonal()
    predicted = cm.sum(dim=0)
    actual = cm.sum(dim=1)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, actual)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return PrecisionRecallF1(precision, recall, f1, actual.long())


def entropy(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats along ``dim``, with 0 * log 0 taken as 0.

    ``probs`` must be non-negative and sum to 1 along ``dim`` (within 1e-4).
    """
    probs = torch.as_tensor(probs)
    if not probs.is_floating_point():
        raise ValueError(f"probs must be a floating-point tensor, got dtype {probs.dtype}")
    if probs.ndim == 0:
        raise ValueError("probs must have at least one dimension")
    if (probs < 0).any() or not torch.isfinite(probs).all():
        raise ValueError("probs must be finite and non-negative")
    if not torch.allclose(probs.sum(dim=dim), torch.ones((), dtype=probs.dtype), atol=1e-4):
        raise ValueError(f"probs must sum to 1 along dim={dim}")
    return 0.0 - torch.special.xlogy(probs, probs).sum(dim=dim)  # 0.0 - x, not -x: no -0.0 for a one-hot


def smoothed_target(labels, num_classes: int, label_smoothing: float) -> torch.Tensor:
    """The target that ``nn.CrossEntropyLoss(label_smoothing=eps)`` trains towards (float64, on the CPU).

    ``(1 - eps) * one_hot + eps / K`` (Szegedy et al. 2016): the true class gets ``1 - eps + eps/K``.
    """
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    y = _class_indices("labels", labels).cpu()  # float64 result: built on the CPU, MPS has no float64
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values from {y.min().item()} to {y.max().item()}")
    one_hot = torch.nn.functional.one_hot(y, num_classes).double()
    return (1.0 - label_smoothing) * one_hot + label_smoothing / num_classes


def cross_entropy_floor(num_classes: int, label_smoothing: float) -> float:
    """The smallest value the label-smoothed cross-entropy can take: the entropy of its target.

    Cross-entropy splits as ``H(q, p) = H(q) + KL(q || p)``; only the KL part depends on the
    model, so a loss with ``label_smoothing=eps`` cannot go below ``H(q)``, which is 0 for
    ``eps=0`` and grows with ``eps``.
    """
    q = smoothed_target(torch.zeros(1, dtype=torch.long), num_classes, label_smoothing)
    return entropy(q[0]).item()


def plot_confusion_matrix(cm, class_names=None, ax=None, normalize: str | None = None, title: str | None = None, cmap: str = "Blues"):
    """Heat map of a confusion matrix (rows actual, columns predicted), each cell annotated.

    ``normalize="true"`` divides each row by its sum, so the diagonal shows per-class recall;
    ``normalize="pred"`` divides each column, so the diagonal shows per-class precision;
    ``None`` shows the counts.
    """
    import matplotlib.pyplot as plt

    from utils.plotting import set_style

    counts = _check_confusion(cm)
    if normalize not in (None, "true", "pred"):
        raise ValueError(f"normalize must be None, 'true' or 'pred', got {normalize!r}")
    k = counts.shape[0]
    names = [str(i) for i in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}x{k} confusion matrix")
    if normalize == "true":
        values = _safe_divide(counts, counts.sum(dim=1, keepdim=True).expand_as(counts))
    elif normalize == "pred":
        values = _safe_divide(counts, counts.sum(dim=0, keepdim=True).expand_as(counts))
    else:
        values = counts
    set_style()
    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * k + 2.2, 0.45 * k + 1.8))
    image = ax.imshow(values.numpy(), cmap=cmap, vmin=0)
    ax.grid(False)
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    top = values.max().item() if values.numel() else 0.0
    fmt = (lambda v: f"{v:.2f}") if normalize else (lambda v: f"{v:.0f}")
    size = 9 if k <= 5 else 7
    for i in range(k):
        for j in range(k):
            v = values[i, j].item()
            ax.text(j, i, fmt(v), ha="center", va="center", fontsize=size, color="white" if v > 0.6 * top else "black")
    if title:
        ax.set_title(title)
    return ax
