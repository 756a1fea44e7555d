"""One statistical standard for every comparison in the lectures: paired seeds.

Two training set-ups (plain vs smoothed, say) are run with the same seeds; seed ``i`` gives both
the same split, initial weights and batch order, so ``b[i] - a[i]`` isolates the set-up. For any
metric (accuracy, NLL, ECE, a fitted temperature) :func:`paired` reports the mean and standard
deviation of those differences, how many are positive, negative and zero, and the exact two-sided
**sign test**: the probability, if the set-ups did not differ (each non-zero difference positive
with probability 1/2), of a split at least as lopsided as the one seen. With ``n`` seeds and no
ties the smallest possible p is ``2 / 2**n``: 0.0625 for 5 seeds, 0.0078 for 8. The lectures call a
difference *consistent* when every non-tied seed agrees in sign and p <= 0.0625, and otherwise
report it as not distinguishable from seed noise, for every metric alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch


def sign_test(n_pos: int, n_neg: int) -> float:
    """Exact two-sided sign test p-value for ``n_pos`` positive and ``n_neg`` negative differences (ties dropped)."""
    if n_pos < 0 or n_neg < 0:
        raise ValueError(f"counts must be non-negative, got {n_pos}, {n_neg}")
    n = n_pos + n_neg
    if n == 0:
        return 1.0
    k = min(n_pos, n_neg)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Paired:
    """Summary of paired differences ``b - a`` over seeds."""

    diffs: tuple[float, ...]
    mean: float
    sd: float
    n_pos: int
    n_neg: int
    n_tie: int
    p: float

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def consistent(self) -> bool:
        """Every non-tied seed has the same sign, and the sign test gives p <= 0.0625 (5 of 5 seeds, or better)."""
        return (self.n_pos == 0 or self.n_neg == 0) and self.p <= 0.0625 + 1e-12

    def direction(self) -> int:
        """+1 (b larger), -1 (b smaller) when :attr:`consistent`, else 0."""
        if not self.consistent:
            return 0
        return 1 if self.n_pos > 0 else -1

    def text(self, fmt: str = "+.3f", scale: float = 1.0) -> str:
        """``+0.012 ± 0.004 (5 of 5 seeds up, sign test p = 0.062)``."""
        return (f"{self.mean * scale:{fmt}} ± {self.sd * scale:.{fmt.lstrip('+').split('.')[-1]}} "
                f"({self.n_pos} up, {self.n_neg} down, {self.n_tie} tied of {self.n}; sign test p = {self.p:.3g})")

    def as_dict(self) -> dict:
        return {"diffs": list(self.diffs), "mean": self.mean, "sd": self.sd, "n_pos": self.n_pos, "n_neg": self.n_neg,
                "n_tie": self.n_tie, "p": self.p, "consistent": self.consistent, "direction": self.direction()}


def paired(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor, tie: float = 0.0) -> Paired:
    """Paired differences ``b - a`` (same seeds, same order); ``|d| <= tie`` counts as a tie."""
    a_t = torch.as_tensor(a, dtype=torch.float64).detach().cpu().flatten()
    b_t = torch.as_tensor(b, dtype=torch.float64).detach().cpu().flatten()
    if a_t.shape != b_t.shape or len(a_t) == 0:
        raise ValueError(f"paired comparisons need two equally long, non-empty lists, got {len(a_t)} and {len(b_t)}")
    d = b_t - a_t
    n_pos = int((d > tie).sum())
    n_neg = int((d < -tie).sum())
    sd = d.std(unbiased=True).item() if len(d) > 1 else 0.0
    return Paired(tuple(d.tolist()), d.mean().item(), sd, n_pos, n_neg, len(d) - n_pos - n_neg, sign_test(n_pos, n_neg))


def mean_sd(values: Sequence[float] | torch.Tensor, fmt: str = ".3f") -> str:
    """``0.968 ± 0.010`` (sample standard deviation over seeds)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    sd = v.std(unbiased=True).item() if len(v) > 1 else 0.0
    return f"{v.mean().item():{fmt}} ± {sd:{fmt}}"
