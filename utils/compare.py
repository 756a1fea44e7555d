"""``cmp``: compare a hand-derived tensor with a reference (usually autograd), karpathy-style."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def max_abs_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest absolute element-wise difference, as a Python float (computed in float64 on the CPU)."""
    if ours.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(ours.shape)} vs {tuple(reference.shape)}")
    # .cpu() before .double(): MPS has no float64
    return (ours.detach().cpu().double() - reference.detach().cpu().double()).abs().max().item()


@dataclass(frozen=True)
class Comparison:
    """What :func:`cmp` found. True when the tensors match within ``atol``.

    A notebook cell that ends with ``cmp(...)`` shows only the printed line: the object has an
    ``_ipython_display_`` that displays nothing (a plain ``bool`` would add a stray ``True``).
    """

    name: str
    exact: bool
    approximate: bool
    maxdiff: float

    def __bool__(self) -> bool:
        return self.approximate

    def _ipython_display_(self) -> None:  # the line was printed already
        return None


def cmp(name: str, ours: torch.Tensor, reference: torch.Tensor, atol: float = 1e-6) -> Comparison:
    """Print whether ``ours`` matches ``reference`` exactly, approximately, or not, and the max diff."""
    diff = max_abs_diff(ours, reference)
    exact = bool(torch.equal(ours.detach().cpu(), reference.detach().cpu()))
    approx = diff <= atol
    print(f"{name:<24s} | exact: {str(exact):5s} | approximate: {str(approx):5s} | maxdiff: {diff:.3e}")
    return Comparison(name, exact, approx, diff)
