"""Plots with one consistent look: target distributions as bars, and training curves."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import torch

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def set_style() -> None:
    """The course's matplotlib defaults (called by the plotting helpers; safe to call again)."""
    plt.rcParams.update({
        "figure.figsize": (6.0, 3.6),
        "figure.dpi": 100,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.prop_cycle": plt.cycler(color=PALETTE),
        "legend.frameon": False,
    })


def plot_distribution(probs: torch.Tensor | Sequence[float], ax=None, labels: Sequence[str] | None = None, title: str | None = None, color: str | None = None):
    """Bar chart of one probability vector (a target or a prediction), values printed on the bars."""
    set_style()
    values = torch.as_tensor(probs).detach().cpu().to(torch.float64)  # CPU first: MPS has no float64
    if values.ndim != 1:
        raise ValueError(f"plot_distribution takes one probability vector (1-D), got shape {tuple(values.shape)}")
    if labels is not None and len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels for {len(values)} classes")
    if ax is None:
        _, ax = plt.subplots()
    names = list(labels) if labels is not None else [str(i) for i in range(len(values))]
    bars = ax.bar(names, values.numpy(), color=color or PALETTE[0])
    for bar, v in zip(bars, values.tolist()):
        ax.annotate(f"{v:.3f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(1.0, float(values.max())) * 1.1)  # room for the value labels
    ax.set_xlabel("class")
    ax.set_ylabel("probability")
    if title:
        ax.set_title(title)
    return ax


def plot_distributions(named: Mapping[str, torch.Tensor | Sequence[float]], labels: Sequence[str] | None = None, suptitle: str | None = None):
    """Several probability vectors side by side, one panel each, sharing the y axis."""
    set_style()
    if not named:
        raise ValueError("plot_distributions needs at least one distribution")
    fig, axes = plt.subplots(1, len(named), figsize=(3.2 * len(named), 3.0), sharey=True, squeeze=False)
    for i, (ax, (name, probs)) in enumerate(zip(axes[0], named.items())):
        plot_distribution(probs, ax=ax, labels=labels, title=name, color=PALETTE[i % len(PALETTE)])
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_loss_curves(curves: Mapping[str, Sequence[float]], ax=None, ylabel: str = "loss", title: str | None = None, logy: bool = False):
    """One line per named curve against the epoch number."""
    set_style()
    if not curves:
        raise ValueError("plot_loss_curves needs at least one curve")
    if ax is None:
        _, ax = plt.subplots()
    for name, values in curves.items():
        values = list(values)
        ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax
