"""Calibration: does a model's confidence match how often it is right?

A classifier is *calibrated* when, among the predictions it makes with confidence about 0.8, about
80 % are correct. The tools here measure that and fix it after training:

- :func:`reliability_bins` sorts the predictions by confidence (the largest softmax probability)
  into ``n_bins`` equal-width bins ``(lo, hi]`` and reports each bin's mean confidence, accuracy
  and count: the numbers behind a reliability diagram (Guo et al. 2017, "On calibration of modern
  neural networks").
- :func:`expected_calibration_error` (ECE) is the count-weighted mean gap between accuracy and
  confidence over the non-empty bins.
- :func:`fit_temperature` fits the one-parameter temperature scaling of Guo et al. on held-out
  logits: ``softmax(logits / T)``; ``T > 1`` softens an over-confident model, ``T < 1`` sharpens an
  under-confident one. Accuracy does not change (dividing by ``T > 0`` keeps the arg-max).
- :func:`train_eps_grid` trains the course's small MLP once per label-smoothing value, from the same
  initial weights and batch order, and keeps the validation and test logits, so notebooks that
  study the trained runs (calibration, later lectures) share one definition of "the runs".
- :func:`plot_reliability` and :func:`plot_confidence_histogram` draw the two standard pictures;
  :func:`markdown_table` formats a small results table for ``IPython.display.Markdown``.

Binning convention: bins are closed on the right, ``(lo, hi]``, as in Guo et al.; a confidence of
exactly 0 goes to the first bin. ``torchmetrics.classification.MulticlassCalibrationError`` uses
``[lo, hi)`` bins with a separate slot for a confidence of exactly 1.0, and casts confidences to
float32. The two ECEs therefore agree (to float32 rounding) unless a confidence lies exactly on a
bin edge; the tests show both the agreement and a hand-built case where the conventions differ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

DEFAULT_BINS = 15
_SUM_TOL = 1e-4


# --------------------------------------------------------------------------- input checks
def _check_n_bins(n_bins) -> int:
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    return n_bins


def _check_labels(labels, n: int, num_classes: int) -> torch.Tensor:
    y = torch.as_tensor(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D tensor of class indices, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class indices, got dtype {y.dtype}")
    if len(y) != n:
        raise ValueError(f"probs/logits have {n} rows but labels has {len(y)} entries")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values from {y.min().item()} to {y.max().item()}")
    return y.long()


def _check_scores(name: str, scores) -> torch.Tensor:
    t = torch.as_tensor(scores)
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] < 2:
        raise ValueError(f"{name} must have shape [N, K] with N >= 1 and K >= 2 classes, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return t.detach().cpu().to(torch.float64)  # to the CPU first: MPS has no float64


def _check_probs(probs, labels) -> tuple[torch.Tensor, torch.Tensor]:
    p = _check_scores("probs", probs)
    if (p < 0).any() or (p > 1).any():
        raise ValueError("probs must lie in [0, 1]; pass softmax(logits), not logits")
    worst = (p.sum(dim=1) - 1).abs().max().item()
    if worst > _SUM_TOL:
        raise ValueError(f"each row of probs must sum to 1 (worst row is off by {worst:.3g}); pass softmax(logits), not logits")
    y = _check_labels(labels, p.shape[0], p.shape[1]).cpu()
    return p, y


# --------------------------------------------------------------------------- binning and ECE
@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of top-1 predictions, bins ``(edges[m], edges[m+1]]``.

    ``confidence`` and ``accuracy`` are float64 tensors of shape ``[n_bins]`` holding the mean
    confidence and the fraction correct in each bin (NaN where the bin is empty); ``count`` is the
    number of predictions per bin (int64), ``edges`` the ``n_bins + 1`` bin edges from 0 to 1.
    """

    edges: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor

    @property
    def n_bins(self) -> int:
        return len(self.count)

    @property
    def weight(self) -> torch.Tensor:
        """Share of all predictions that falls in each bin (sums to 1)."""
        return self.count.double() / self.count.sum()

    @property
    def gap(self) -> torch.Tensor:
        """``confidence - accuracy`` per bin: positive means over-confident (NaN where empty)."""
        return self.confidence - self.accuracy

    def ece(self) -> float:
        """Expected calibration error: ``sum_m weight_m * |accuracy_m - confidence_m|`` over non-empty bins."""
        full = self.count > 0
        return (self.weight[full] * self.gap[full].abs()).sum().item()


def reliability_bins(probs, labels, n_bins: int = DEFAULT_BINS) -> ReliabilityBins:
    """Bin the top-1 confidences of ``probs`` ``[N, K]`` into ``n_bins`` bins ``(lo, hi]`` (Guo et al.).

    ``probs`` are predicted class probabilities (rows sum to 1), ``labels`` the true classes.
    Raises ``ValueError`` for logits in place of probabilities, mismatched lengths, labels out of
    range or a non-positive ``n_bins``.
    """
    n_bins = _check_n_bins(n_bins)
    p, y = _check_probs(probs, labels)
    conf, pred = p.max(dim=1)
    correct = (pred == y).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # bucketize(right=False) returns i with edges[i-1] < c <= edges[i]: bin (lo, hi] is i - 1.
    idx = (torch.bucketize(conf, edges, right=False) - 1).clamp(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    denom = count.double()
    empty = count == 0
    confidence = torch.where(empty, torch.nan, conf_sum / denom.clamp_min(1))
    accuracy = torch.where(empty, torch.nan, acc_sum / denom.clamp_min(1))
    return ReliabilityBins(edges, confidence, accuracy, count)


def expected_calibration_error(probs, labels, n_bins: int = DEFAULT_BINS) -> float:
    """ECE of top-1 predictions: ``sum_m |B_m|/N * |acc(B_m) - conf(B_m)|`` over non-empty bins ``(lo, hi]``.

    0 means that, bin by bin, the model is right exactly as often as it claims; the largest
    possible value is 1. With few samples per bin the estimate is noisy (and biased upwards).
    """
    return reliability_bins(probs, labels, n_bins).ece()


# --------------------------------------------------------------------------- summary metrics
@dataclass(frozen=True)
class CalibrationSummary:
    """Accuracy, mean NLL (plain cross-entropy), ECE and mean top-1 confidence of a set of logits."""

    accuracy: float
    nll: float
    ece: float
    confidence: float


def calibration_summary(logits, labels, n_bins: int = DEFAULT_BINS, temperature: float = 1.0) -> CalibrationSummary:
    """Evaluate ``softmax(logits / temperature)`` against ``labels`` (float64 on the CPU)."""
    z = _check_scores("logits", logits)
    y = _check_labels(labels, z.shape[0], z.shape[1]).cpu()
    t = _check_temperature(temperature)
    z = z / t
    probs = z.softmax(dim=1)
    return CalibrationSummary(
        accuracy=(z.argmax(dim=1) == y).double().mean().item(),
        nll=F.cross_entropy(z, y).item(),
        ece=expected_calibration_error(probs, y, n_bins),
        confidence=probs.max(dim=1).values.mean().item(),
    )


# --------------------------------------------------------------------------- temperature scaling
def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return float(temperature)


def nll_at_temperature(logits, labels, temperature: float) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` (float64)."""
    z = _check_scores("logits", logits)
    y = _check_labels(labels, z.shape[0], z.shape[1]).cpu()
    return F.cross_entropy(z / _check_temperature(temperature), y).item()


def fit_temperature(logits, labels, bounds: tuple[float, float] = (0.05, 20.0), max_iter: int = 100) -> float:
    """The temperature ``T`` that minimises the mean NLL of ``softmax(logits / T)`` on ``labels``.

    Fit on held-out data (the validation split), never on the test split. Optimises ``log T`` with
    L-BFGS (strong Wolfe line search) in float64, starting from ``T = 1``, and clamps the result to
    ``bounds``: the optimum is infinite when every prediction is already right and the logits keep
    growing sharper (``T -> 0``), or when the logits carry no information (``T -> inf``). The NLL
    is a convex function of ``1 / T``, so the search has a single minimum; as a guard, ``T = 1`` is
    returned if the fit would not lower the NLL, so temperature scaling never makes the fitting
    split's NLL worse.
    """
    z = _check_scores("logits", logits)
    y = _check_labels(labels, z.shape[0], z.shape[1]).cpu()
    lo, hi = bounds
    if not (0 < lo <= 1 <= hi and math.isfinite(hi)):
        raise ValueError(f"bounds must satisfy 0 < low <= 1 <= high < inf, got {bounds!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    log_lo, log_hi = math.log(lo), math.log(hi)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.clamp(log_lo, log_hi).exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    value = log_t.detach().item()
    temperature = math.exp(min(max(value, log_lo), log_hi)) if math.isfinite(value) else 1.0
    if F.cross_entropy(z / temperature, y).item() > F.cross_entropy(z, y).item():
        return 1.0
    return temperature


# --------------------------------------------------------------------------- trained runs
@dataclass
class EpsRun:
    """One trained model of :func:`train_eps_grid` and its logits on the validation and test splits.

    ``history`` is :class:`utils.training.History` (its ``val_loss`` is the *plain* cross-entropy);
    the logits are float32 tensors on the model's device, computed after training.
    """

    eps: float
    seed: int
    model: torch.nn.Module
    history: object
    val_logits: torch.Tensor
    test_logits: torch.Tensor


def train_eps_grid(
    data,
    eps_values: Iterable[float] = (0.0, 0.05, 0.1, 0.2),
    *,
    seed: int = 0,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 64,
    hidden: int = 64,
    depth: int = 1,
    weight_decay: float = 0.0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[float, EpsRun]:
    """Train :func:`utils.training.make_mlp` once per label-smoothing value on ``data.train``.

    ``data`` is a :class:`utils.data.Digits` (e.g. ``load_digits_split(seed, noise_rate=0.2)``).
    Every run starts from the same initial weights (``torch.manual_seed(seed)`` right before the
    model is built) and sees the same mini-batch order (``seed`` again), so runs differ only in
    ``eps``: the loss is ``nn.CrossEntropyLoss(label_smoothing=eps)``, PyTorch's convention
    ``(1 - eps) * one_hot + eps / K``. Returns ``{eps: EpsRun}`` in the order given.

    Raises ``ValueError`` for an ``eps`` outside ``[0, 1)`` (torch itself silently accepts a
    negative one), a repeated ``eps`` or an empty grid.
    """
    from utils.training import make_mlp, predict_logits, train_classifier

    eps_list = [float(e) for e in eps_values]
    if not eps_list:
        raise ValueError("eps_values is empty: give at least one label-smoothing value")
    for e in eps_list:
        if not (0.0 <= e < 1.0):
            raise ValueError(f"label smoothing eps must be in [0, 1), got {e!r}")
    if len(set(eps_list)) != len(eps_list):
        raise ValueError(f"eps_values has repeats: {eps_list}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    for name in ("train", "val", "test"):
        if not hasattr(data, name):
            raise ValueError(f"data must be a utils.data.Digits with train/val/test splits, got {type(data).__name__}")
    device = torch.device(device)
    data = data.to(device)
    runs: dict[float, EpsRun] = {}
    for eps in eps_list:
        torch.manual_seed(seed)
        model = make_mlp(in_features=data.train.x.shape[1], hidden=hidden, num_classes=int(data.num_classes), depth=depth).to(device)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=eps)
        history = train_classifier(model, data.train, loss_fn, val=data.val, epochs=epochs, lr=lr, batch_size=batch_size,
                                   weight_decay=weight_decay, seed=seed, progress=progress, desc=f"eps={eps:g}")
        runs[eps] = EpsRun(eps, seed, model, history, predict_logits(model, data.val.x), predict_logits(model, data.test.x))
    return runs


# --------------------------------------------------------------------------- plots and tables
def plot_reliability(probs, labels, n_bins: int = DEFAULT_BINS, ax=None, title: str | None = None, color: str | None = None,
                     show_counts: bool = True):
    """Reliability diagram: accuracy per confidence bin (bars) against the diagonal of perfect calibration.

    Each non-empty bin's bar is its accuracy; a black tick marks the bin's mean confidence, and a
    thin line joins the two, so the gap is drawn beside the bar's top instead of over the bar. The
    number above each bar is how many predictions the bin holds (``show_counts``): a one-sample bin
    is noise, a 300-sample bin is evidence. Bars below the diagonal are over-confident, above it
    under-confident. The ECE (the count-weighted mean gap) is written in the corner.
    """
    import matplotlib.pyplot as plt

    from utils.plotting import PALETTE, set_style

    set_style()
    bins = reliability_bins(probs, labels, n_bins)
    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 3.6))
    width = 1.0 / bins.n_bins
    centre = (bins.edges[:-1] + width / 2).numpy()
    full = (bins.count > 0).numpy()
    acc = torch.nan_to_num(bins.accuracy).numpy()
    conf = torch.nan_to_num(bins.confidence).numpy()
    ax.bar(centre[full], acc[full], width=width * 0.85, color=color or PALETTE[0], alpha=0.75, edgecolor="none", label="accuracy")
    ax.vlines(centre[full], acc[full], conf[full], color="0.15", linewidth=1.2)
    ax.scatter(centre[full], conf[full], marker="_", s=60, color="0.0", linewidths=2, zorder=3, label="mean confidence")
    ax.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=1)
    if show_counts:
        for x, a, c, n in zip(centre[full], acc[full], conf[full], bins.count[bins.count > 0].tolist()):
            ax.text(x, max(a, c) + 0.015, str(n), ha="center", va="bottom", fontsize=6.5, rotation=90)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.12)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.text(0.04, 0.97, f"ECE {bins.ece():.3f}  (N = {int(bins.count.sum())})", transform=ax.transAxes, fontsize=8, va="top")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_confidence_histogram(probs, labels, n_bins: int = DEFAULT_BINS, ax=None, title: str | None = None, color: str | None = None):
    """Share of predictions per confidence bin, with the mean confidence and the accuracy marked.

    When the accuracy line sits left of the mean-confidence line, the model is over-confident on
    average; right of it, under-confident.
    """
    import matplotlib.pyplot as plt

    from utils.plotting import PALETTE, set_style

    set_style()
    bins = reliability_bins(probs, labels, n_bins)
    p, y = _check_probs(probs, labels)
    conf, pred = p.max(dim=1)
    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 3.0))
    ax.bar(bins.edges[:-1].numpy(), bins.weight.numpy(), width=1.0 / bins.n_bins, align="edge",
           color=color or PALETTE[0], edgecolor="white")
    ax.axvline(conf.mean().item(), color=PALETTE[3], linestyle="--", linewidth=1.2, label="mean confidence")
    ax.axvline((pred == y).double().mean().item(), color="0.2", linestyle=":", linewidth=1.4, label="accuracy")
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("share of samples")
    if title:
        ax.set_title(title)
    return ax


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured Markdown table (floats formatted with ``floatfmt``), for ``IPython.display.Markdown``."""
    headers = [str(h) for h in headers]
    if not headers:
        raise ValueError("markdown_table needs at least one column header")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells for {len(headers)} columns")
        cells = [format(c, floatfmt) if isinstance(c, float) else str(c) for c in row]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)
