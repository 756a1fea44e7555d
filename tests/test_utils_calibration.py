"""utils.calibration: ECE against torchmetrics and by hand, temperature scaling, the trained-run grid."""
from __future__ import annotations

import math

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.classification import MulticlassCalibrationError

from utils.calibration import (
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    markdown_table,
    nll_at_temperature,
    plot_confidence_histogram,
    plot_reliability,
    reliability_bins,
    train_eps_grid,
)

matplotlib.use("Agg")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one CPU thread is faster than two contending ones; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torchmetrics_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    metric = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=n_bins, norm="l1")
    return metric(probs, labels).item()


def random_probs(n: int, k: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, k, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=gen)
    return logits.softmax(dim=1), labels


# --------------------------------------------------------------------------- ECE
@pytest.mark.parametrize("n, k, scale, n_bins, seed", [(500, 10, 3.0, 15, 0), (2000, 3, 1.0, 10, 1), (64, 100, 6.0, 15, 2), (1000, 2, 2.0, 1, 3)])
def test_ece_matches_torchmetrics(n, k, scale, n_bins, seed):
    probs, labels = random_probs(n, k, scale, seed)
    ours = expected_calibration_error(probs, labels, n_bins)
    assert ours == pytest.approx(torchmetrics_ece(probs, labels, n_bins), abs=1e-6)
    assert ours > 0.0


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 200), k=st.integers(2, 12), scale=st.floats(0.1, 8.0), n_bins=st.integers(1, 30), seed=st.integers(0, 10_000))
def test_ece_property_matches_torchmetrics_and_is_in_unit_interval(n, k, scale, n_bins, seed):
    probs, labels = random_probs(n, k, scale, seed)
    ours = expected_calibration_error(probs, labels, n_bins)
    assert 0.0 <= ours <= 1.0
    assert ours == pytest.approx(torchmetrics_ece(probs, labels, n_bins), abs=1e-6)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    assert expected_calibration_error(probs[perm], labels[perm], n_bins) == pytest.approx(ours, abs=1e-12)


def _top1_probs(confidences: list[float], correct: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes; class 0 is always predicted with the given confidence."""
    c = torch.tensor(confidences, dtype=torch.float64)
    probs = torch.stack([c, (1 - c) / 2, (1 - c) / 2], dim=1)
    labels = torch.where(torch.tensor(correct), 0, 1)
    return probs, labels


def test_ece_worked_example():
    probs, labels = _top1_probs([0.95, 0.90, 0.85, 0.58, 0.55], [True, True, False, True, False])
    # (0.8, 1]: conf 0.9, acc 2/3; (0.4, 0.6]: conf 0.565, acc 1/2
    expected = 3 / 5 * abs(0.9 - 2 / 3) + 2 / 5 * abs(0.565 - 0.5)
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(expected, abs=1e-12)


def test_ece_zero_when_each_bin_is_calibrated():
    probs, labels = _top1_probs([0.75] * 4 + [0.5] * 2, [True, True, True, False, True, False])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_confidently_wrong_predictions_is_the_confidence():
    probs, labels = _top1_probs([0.9, 0.9, 0.9], [False, False, False])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.9, abs=1e-12)


def test_bins_are_closed_on_the_right_unlike_torchmetrics():
    # With 4 bins, 0.5 belongs to (0.25, 0.5] (Guo et al.); torchmetrics puts it in [0.5, 0.75).
    probs, labels = _top1_probs([0.5, 0.6], [True, False])
    bins = reliability_bins(probs, labels, n_bins=4)
    assert bins.count.tolist() == [0, 1, 1, 0]
    ours = expected_calibration_error(probs, labels, n_bins=4)
    assert ours == pytest.approx(0.5 * 0.5 + 0.5 * 0.6, abs=1e-12)
    assert torchmetrics_ece(probs, labels, n_bins=4) == pytest.approx(abs(0.55 - 0.5), abs=1e-6)


def test_confidence_of_one_goes_to_the_last_bin():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    bins = reliability_bins(probs, torch.tensor([0, 0]), n_bins=5)
    assert bins.count.tolist() == [0, 0, 1, 0, 1]


def test_reliability_bins_statistics():
    probs, labels = random_probs(300, 5, 2.0, 7)
    bins = reliability_bins(probs, labels, n_bins=12)
    assert bins.n_bins == 12 and len(bins.edges) == 13
    assert bins.count.sum().item() == 300
    assert bins.weight.sum().item() == pytest.approx(1.0)
    empty = bins.count == 0
    assert torch.isnan(bins.confidence[empty]).all() and torch.isnan(bins.accuracy[empty]).all()
    full = ~empty
    lo, hi = bins.edges[:-1][full], bins.edges[1:][full]
    assert ((bins.confidence[full] > lo) & (bins.confidence[full] <= hi)).all(), "each bin's mean confidence lies inside the bin"
    assert bins.ece() == pytest.approx(expected_calibration_error(probs, labels, 12))
    correct = (probs.argmax(1) == labels).double().mean().item()
    assert (bins.accuracy[full] * bins.weight[full]).sum().item() == pytest.approx(correct)


def test_float32_input_and_tensor_like_labels():
    probs, labels = random_probs(100, 4, 1.5, 3)
    assert expected_calibration_error(probs.float(), labels.tolist()) == pytest.approx(expected_calibration_error(probs, labels), abs=1e-6)


@pytest.mark.parametrize("probs, labels, match", [
    (torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), "probs"),                     # logits, not probabilities
    (torch.full((4, 3), 0.5), torch.tensor([0, 1, 2, 0]), "sum to 1"),
    (torch.ones(4, 3) / 3, torch.tensor([0, 1, 2]), "labels"),                     # length mismatch
    (torch.ones(4, 3) / 3, torch.tensor([0, 1, 2, 3]), r"\[0, 3\)"),               # label out of range
    (torch.ones(4, 3) / 3, torch.tensor([0.0, 1.0, 2.0, 0.0]), "integer"),
    (torch.ones(4, 3) / 3, torch.tensor([[0], [1], [2], [0]]), "1-D"),
    (torch.ones(3) / 3, torch.tensor([0]), "shape"),
    (torch.ones(4, 1), torch.tensor([0, 0, 0, 0]), "K >= 2"),
    (torch.ones(0, 3), torch.tensor([], dtype=torch.long), "N >= 1"),
    (torch.tensor([[float("nan"), 0.5, 0.5]]), torch.tensor([0]), "finite"),
    (torch.ones(2, 2, dtype=torch.long), torch.tensor([0, 1]), "floating-point"),
])
def test_ece_rejects_bad_input(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(probs, labels)


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True, "15"])
def test_ece_rejects_bad_n_bins(n_bins):
    probs, labels = random_probs(10, 3, 1.0, 0)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(probs, labels, n_bins)


# --------------------------------------------------------------------------- temperature scaling
def _sampled(n: int, k: int, seed: int, sharpen: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(true logits); the model reports the true logits times ``sharpen``."""
    gen = torch.Generator().manual_seed(seed)
    true_logits = 2.0 * torch.randn(n, k, generator=gen, dtype=torch.float64)
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=gen).squeeze(1)
    return true_logits * sharpen, labels


@pytest.mark.parametrize("sharpen", [3.0, 0.5])
def test_fit_temperature_recovers_the_scale(sharpen):
    logits, labels = _sampled(20_000, 5, 0, sharpen)
    T = fit_temperature(logits, labels)
    assert T == pytest.approx(sharpen, rel=0.05), "dividing by T should undo the sharpening of calibrated logits"
    assert nll_at_temperature(logits, labels, T) < nll_at_temperature(logits, labels, 1.0)
    scaled = calibration_summary(logits, labels, temperature=T)
    assert scaled.ece < calibration_summary(logits, labels).ece
    assert scaled.accuracy == calibration_summary(logits, labels).accuracy


def test_fit_temperature_agrees_with_a_grid_search():
    logits, labels = _sampled(1_000, 10, 1, 1.7)
    grid = torch.linspace(1.0, 3.0, 2001, dtype=torch.float64)  # steps of 1e-3
    scaled = (logits.unsqueeze(0) / grid.view(-1, 1, 1)).transpose(1, 2)
    nll = F.cross_entropy(scaled, labels.expand(len(grid), -1), reduction="none").mean(dim=1)
    assert 1.0 < grid[nll.argmin()].item() < 3.0, "the grid brackets the optimum"
    assert fit_temperature(logits, labels) == pytest.approx(grid[nll.argmin()].item(), abs=1e-3)


def test_fit_temperature_is_bounded_when_the_optimum_is_at_zero():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    labels = torch.tensor([0, 1, 0])  # all right: sharper is always better, T -> 0
    T = fit_temperature(logits, labels, bounds=(0.05, 20.0))
    assert 0.05 <= T < 0.2, "heads for the lower bound (L-BFGS may stop early once the NLL is flat)"
    assert nll_at_temperature(logits, labels, T) < 1e-6
    assert nll_at_temperature(logits, labels, T) < nll_at_temperature(logits, labels, 1.0)


def test_fit_temperature_never_raises_the_nll():
    for seed in range(5):
        logits, labels = _sampled(50, 4, seed, 1.0)
        T = fit_temperature(logits, labels)
        assert nll_at_temperature(logits, labels, T) <= nll_at_temperature(logits, labels, 1.0) + 1e-12


@pytest.mark.parametrize("kwargs, match", [
    ({"bounds": (0.0, 10.0)}, "bounds"),
    ({"bounds": (2.0, 10.0)}, "bounds"),
    ({"bounds": (0.1, float("inf"))}, "bounds"),
    ({"max_iter": 0}, "max_iter"),
])
def test_fit_temperature_rejects_bad_options(kwargs, match):
    logits, labels = _sampled(20, 3, 0, 1.0)
    with pytest.raises(ValueError, match=match):
        fit_temperature(logits, labels, **kwargs)


def test_fit_temperature_rejects_bad_input():
    with pytest.raises(ValueError, match="floating-point"):
        fit_temperature(torch.ones(3, 2, dtype=torch.long), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(torch.zeros(3, 2), torch.tensor([0, 1]))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf"), True, "2"])
def test_bad_temperature(temperature):
    logits, labels = _sampled(10, 3, 0, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        calibration_summary(logits, labels, temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        nll_at_temperature(logits, labels, temperature)


def test_calibration_summary_values():
    logits = torch.tensor([[3.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 0.5]])
    labels = torch.tensor([0, 1, 1, 0])
    s = calibration_summary(logits, labels)
    probs = logits.double().softmax(1)
    assert s.accuracy == 0.5
    assert s.nll == pytest.approx(F.cross_entropy(logits.double(), labels).item())
    assert s.confidence == pytest.approx(probs.max(1).values.mean().item())
    assert s.ece == pytest.approx(expected_calibration_error(probs, labels))


# --------------------------------------------------------------------------- trained runs
@pytest.fixture(scope="module")
def digits():
    from utils.data import load_digits_split

    return load_digits_split(seed=0)


def test_train_eps_grid_is_reproducible_and_matches_the_training_loop(digits):
    from utils.training import make_mlp, predict_logits, train_classifier

    runs = train_eps_grid(digits, [0.0, 0.1], seed=3, epochs=2)
    assert list(runs) == [0.0, 0.1]
    assert runs[0.1].eps == 0.1 and runs[0.1].seed == 3
    assert runs[0.0].val_logits.shape == (len(digits.val), 10) and runs[0.0].test_logits.shape == (len(digits.test), 10)
    again = train_eps_grid(digits, [0.1], seed=3, epochs=2)
    assert torch.equal(again[0.1].test_logits, runs[0.1].test_logits), "same seed, same model"
    assert not torch.equal(runs[0.0].test_logits, runs[0.1].test_logits), "eps changes the model"

    torch.manual_seed(3)
    model = make_mlp()
    train_classifier(model, digits.train, torch.nn.CrossEntropyLoss(label_smoothing=0.1), val=digits.val, epochs=2, seed=3, progress=False)
    assert torch.equal(predict_logits(model, digits.test.x), runs[0.1].test_logits), "documented recipe: manual_seed(seed), make_mlp, train_classifier(seed=seed)"
    assert len(runs[0.1].history.val_loss) == 2


@pytest.mark.parametrize("eps_values, match", [([], "empty"), ([-0.05], r"\[0, 1\)"), ([1.0], r"\[0, 1\)"), ([0.1, 0.1], "repeats")])
def test_train_eps_grid_rejects_bad_eps(digits, eps_values, match):
    with pytest.raises(ValueError, match=match):
        train_eps_grid(digits, eps_values, epochs=1)


def test_train_eps_grid_rejects_bad_data_and_seed(digits):
    with pytest.raises(ValueError, match="Digits"):
        train_eps_grid((digits.train.x, digits.train.y), [0.0], epochs=1)
    with pytest.raises(ValueError, match="seed"):
        train_eps_grid(digits, [0.0], seed=-1, epochs=1)


# --------------------------------------------------------------------------- plots and tables
def test_plot_reliability_draws_one_bar_and_its_count_per_nonempty_bin():
    import matplotlib.pyplot as plt

    probs, labels = random_probs(200, 4, 2.0, 5)
    bins = reliability_bins(probs, labels, 10)
    full = int((bins.count > 0).sum())
    ax = plot_reliability(probs, labels, n_bins=10, title="t")
    assert len(ax.patches) == full, "one accuracy bar per non-empty bin; the gap is a line beside it, not a second bar"
    counts = sorted(int(t.get_text()) for t in ax.texts if t.get_text().isdigit())
    assert counts == sorted(bins.count[bins.count > 0].tolist()), "every bar is labelled with its bin count"
    assert ax.get_title() == "t"
    assert any(f"{expected_calibration_error(probs, labels, 10):.3f}" in t.get_text() for t in ax.texts)
    ax = plot_confidence_histogram(probs, labels, n_bins=10)
    assert len(ax.patches) == 10
    assert sum(p.get_height() for p in ax.patches) == pytest.approx(1.0)
    plt.close("all")
    with pytest.raises(ValueError):
        plot_reliability(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))


def test_markdown_table():
    text = markdown_table(["name", "value"], [["a|b", 0.12345], ["c", 2]])
    assert text.splitlines() == ["| name | value |", "| --- | --- |", "| a\\|b | 0.123 |", "| c | 2 |"]
    assert markdown_table(["x"], [[1.0]], floatfmt=".1f").splitlines()[-1] == "| 1.0 |"
    with pytest.raises(ValueError, match="row 0"):
        markdown_table(["a", "b"], [[1]])
    with pytest.raises(ValueError, match="header"):
        markdown_table([], [])
