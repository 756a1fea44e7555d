"""The course's seeded training experiments: a grid of (seed, eps) runs trained together, then measured.

:func:`eps_grid_runs` trains one MLP per (seed, label smoothing ``eps``) pair with
:func:`utils.ensemble.train_ensemble` and measures every run the same way: accuracy, NLL (plain
cross-entropy), ECE and mean confidence on the test split, and the temperature fitted on the
validation split (:func:`utils.calibration.fit_temperature`) with the test NLL and ECE after
scaling. Seed ``s`` fixes the data split, the label noise, the initial weights and the batch
order; all ``eps`` of one seed share them, so differences between ``eps`` values are paired.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from utils.calibration import calibration_summary, fit_temperature
from utils.data import load_digits_split
from utils.ensemble import predict, smoothed_ce, train_ensemble
from utils.stats import Paired, paired

METRICS = ("accuracy", "nll", "ece", "confidence", "T", "nll_T", "ece_T", "val_accuracy", "val_nll")


@dataclass
class GridResult:
    """Per-run metrics ``metrics[(seed, eps)][name]`` and, for the first seed, the logits."""

    seeds: list[int]
    eps: list[float]
    metrics: dict = field(default_factory=dict)
    test_logits: dict = field(default_factory=dict)   # eps -> [n_test, K] of seeds[0]
    test_labels: dict = field(default_factory=dict)   # seed -> labels
    seconds: float = 0.0

    def values(self, eps: float, name: str) -> list[float]:
        """``name`` of every seed, in seed order, for one ``eps``."""
        return [self.metrics[(s, eps)][name] for s in self.seeds]

    def vs(self, eps: float, name: str, base: float = 0.0) -> Paired:
        """Paired differences (``eps`` minus ``base``) of ``name`` over the seeds."""
        return paired(self.values(base, name), self.values(eps, name))

    def as_dict(self) -> dict:
        return {str(e): {m: self.values(e, m) for m in METRICS} for e in self.eps}


def eps_grid_runs(eps_grid: Sequence[float], seeds: Sequence[int], *, noise_rate: float = 0.0, hidden: int = 64,
                  depth: int = 1, epochs: int = 30, lr: float = 1e-2, n_train: int | None = None,
                  n_bins: int = 15, device: str | torch.device = "cpu") -> GridResult:
    """Train and measure one run per (seed, eps); see the module docstring.

    ``n_train`` keeps only the first ``n_train`` (shuffled, stratified) training images of each split.
    """
    import time

    start = time.perf_counter()
    eps_grid, seeds = [float(e) for e in eps_grid], [int(s) for s in seeds]
    data = {s: load_digits_split(s, noise_rate=noise_rate) for s in seeds}
    if n_train is not None:
        if not 10 <= n_train <= len(data[seeds[0]].train):
            raise ValueError(f"n_train must be between 10 and the training set size, got {n_train}")
    members = [(s, e) for s in seeds for e in eps_grid]
    cut = slice(0, n_train)
    x = torch.stack([data[s].train.x[cut] for s, _ in members]).to(device)
    y = torch.stack([data[s].train.y[cut] for s, _ in members]).to(device)
    model, _ = train_ensemble(x, y, smoothed_ce([e for _, e in members]), [s for s, _ in members],
                              hidden=hidden, depth=depth, epochs=epochs, lr=lr)
    val_logits = predict(model, torch.stack([data[s].val.x for s, _ in members]).to(device)).cpu()
    test_logits = predict(model, torch.stack([data[s].test.x for s, _ in members]).to(device)).cpu()
    result = GridResult(seeds, eps_grid, test_labels={s: data[s].test.y for s in seeds})
    for i, (s, e) in enumerate(members):
        val_y, test_y = data[s].val.y, data[s].test.y
        t = fit_temperature(val_logits[i], val_y)
        raw = calibration_summary(test_logits[i], test_y, n_bins)
        scaled = calibration_summary(test_logits[i], test_y, n_bins, temperature=t)
        val = calibration_summary(val_logits[i], val_y, n_bins)
        result.metrics[(s, e)] = {"accuracy": raw.accuracy, "nll": raw.nll, "ece": raw.ece, "confidence": raw.confidence,
                                  "T": t, "nll_T": scaled.nll, "ece_T": scaled.ece,
                                  "val_accuracy": val.accuracy, "val_nll": val.nll}
        if s == seeds[0]:
            result.test_logits[e] = test_logits[i]
    result.seconds = time.perf_counter() - start
    return result
