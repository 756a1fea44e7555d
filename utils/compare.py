"""``cmp``: compare a hand-derived tensor with a reference (usually autograd), karpathy-style."""
from __future__ import annotations

import torch


def max_abs_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest absolute element-wise difference, as a Python float."""
    if ours.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(ours.shape)} vs {tuple(reference.shape)}")
    return (ours.detach().double() - reference.detach().double()).abs().max().item()


def cmp(name: str, ours: torch.Tensor, reference: torch.Tensor, atol: float = 1e-6) -> bool:
    """Print whether ``ours`` matches ``reference`` exactly, approximately, or not, and the max diff."""
    diff = max_abs_diff(ours, reference)
    exact = bool(torch.equal(ours.detach(), reference.detach()))
    approx = diff <= atol
    print(f"{name:<24s} | exact: {str(exact):5s} | approximate: {str(approx):5s} | maxdiff: {diff:.3e}")
    return approx
