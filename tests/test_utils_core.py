"""Unit tests for the shared helpers: device choice, seeding, data, training loop, plots, cmp."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from utils import compare, data, device, plotting, seeding, training


# --- device -----------------------------------------------------------------------------------

def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.pick_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "mps_available", lambda: True)
    assert device.pick_device("auto").type == "mps"
    monkeypatch.setattr(device, "mps_available", lambda: False)
    assert device.pick_device("auto") == torch.device("cpu")


def test_explicit_cpu_and_device_objects():
    assert device.pick_device("cpu") == torch.device("cpu")
    assert device.pick_device(torch.device("cpu")) == torch.device("cpu")
    assert device.pick_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "tpu", "", "auto:0", 3])
def test_unknown_device_is_a_value_error(bad):
    with pytest.raises(ValueError, match="device"):
        device.pick_device(bad)


def test_unavailable_gpu_is_an_error_not_a_silent_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        device.pick_device("cuda")
    monkeypatch.setattr(device, "mps_available", lambda: False)
    with pytest.raises(ValueError, match="MPS is not available"):
        device.pick_device("mps")


# --- seeding ----------------------------------------------------------------------------------

def test_seed_everything_repeats_torch_and_numpy_draws():
    import numpy as np

    seeding.seed_everything(123)
    a = (torch.rand(5), np.random.rand(3))
    seeding.seed_everything(123)
    b = (torch.rand(5), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all()
    seeding.seed_everything(124)
    assert not torch.equal(a[0], torch.rand(5))


def test_seed_returns_a_seeded_generator():
    g1, g2 = seeding.seed_everything(7), seeding.seed_everything(7)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_bad_seed(bad):
    with pytest.raises(ValueError, match="seed"):
        seeding.seed_everything(bad)


# --- data -------------------------------------------------------------------------------------

def test_digits_split_sizes_types_and_disjointness():
    d = data.load_digits_split(seed=0)
    sizes = (len(d.train), len(d.val), len(d.test))
    assert sum(sizes) == 1797
    assert sizes[2] == pytest.approx(0.2 * 1797, abs=1) and sizes[1] == pytest.approx(0.2 * 1797, abs=1)
    for split in (d.train, d.val, d.test):
        assert split.x.dtype == torch.float32 and split.x.shape[1] == 64
        assert split.y.dtype == torch.int64
        assert 0.0 <= split.x.min() and split.x.max() <= 1.0
        assert set(split.y.tolist()) == set(range(10)), "stratified: every class in every split"
    rows = lambda s: {tuple(r) for r in s.x.tolist()}
    # the digits set has a handful of duplicate images, so compare counts of distinct rows loosely
    assert len(rows(d.train) & rows(d.test)) < 10


def test_digits_split_is_fixed_by_seed():
    a, b, c = data.load_digits_split(seed=0), data.load_digits_split(seed=0), data.load_digits_split(seed=1)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.test.x, c.test.x)


def test_noise_only_touches_training_labels_at_the_given_rate():
    clean, noisy = data.load_digits_split(seed=0), data.load_digits_split(seed=0, noise_rate=0.2)
    assert torch.equal(clean.val.y, noisy.val.y) and torch.equal(clean.test.y, noisy.test.y)
    assert torch.equal(clean.train.x, noisy.train.x)
    flipped = (clean.train.y != noisy.train.y).float().mean().item()
    assert flipped == pytest.approx(0.2, abs=1 / len(clean.train))
    assert noisy.noise_rate == 0.2


def test_symmetric_noise_moves_labels_to_other_classes_uniformly():
    labels = torch.zeros(20000, dtype=torch.int64)
    noisy = data.add_symmetric_label_noise(labels, 0.5, 5, torch.Generator().manual_seed(0))
    assert (noisy != 0).sum().item() == 10000, "exactly rate * n labels change, none stay by accident"
    counts = torch.bincount(noisy[noisy != 0], minlength=5)[1:].float()
    assert (counts / counts.sum() - 0.25).abs().max() < 0.02
    assert torch.equal(labels, torch.zeros(20000, dtype=torch.int64)), "input must not be modified"


@pytest.mark.parametrize("kwargs, match", [
    (dict(labels=torch.zeros(3, 2, dtype=torch.int64), rate=0.1, num_classes=3), "1-D"),
    (dict(labels=torch.zeros(3), rate=0.1, num_classes=3), "integer"),
    (dict(labels=torch.zeros(3, dtype=torch.int64), rate=1.5, num_classes=3), "rate"),
    (dict(labels=torch.zeros(3, dtype=torch.int64), rate=0.1, num_classes=1), "2 classes"),
    (dict(labels=torch.tensor([0, 5]), rate=0.1, num_classes=3), r"\[0, 3\)"),
])
def test_noise_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.add_symmetric_label_noise(**kwargs)


def test_split_bad_fractions():
    with pytest.raises(ValueError, match="val_fraction"):
        data.load_digits_split(val_fraction=0.0)
    with pytest.raises(ValueError, match="leave data"):
        data.load_digits_split(val_fraction=0.5, test_fraction=0.5)


# --- training ---------------------------------------------------------------------------------

def test_training_learns_digits_and_is_reproducible():
    d = data.load_digits_split(seed=0)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = training.make_mlp(hidden=32)
        hist = training.train_classifier(model, d.train, torch.nn.functional.cross_entropy, val=d.val, epochs=5, seed=0, progress=False)
        runs.append((hist, training.predict_logits(model, d.test.x)))
    (h1, l1), (h2, l2) = runs
    assert h1.train_loss == h2.train_loss and torch.equal(l1, l2), "same seed, same model"
    assert h1.train_loss[-1] < h1.train_loss[0]
    assert training.accuracy(l1, d.test.y) > 0.85
    assert len(h1.val_loss) == len(h1.val_acc) == 5


def test_make_mlp_shapes_and_errors():
    assert training.make_mlp(depth=0)(torch.zeros(2, 64)).shape == (2, 10)
    assert training.make_mlp(hidden=8, depth=3, num_classes=3)(torch.zeros(5, 64)).shape == (5, 3)
    with pytest.raises(ValueError):
        training.make_mlp(depth=-1)


def test_train_classifier_rejects_bad_settings():
    d = data.load_digits_split(seed=0)
    with pytest.raises(ValueError, match="epochs"):
        training.train_classifier(training.make_mlp(), d.train, torch.nn.functional.cross_entropy, epochs=0)


# --- plotting and cmp -------------------------------------------------------------------------

def test_plot_distribution_draws_one_bar_per_class():
    ax = plotting.plot_distribution(torch.tensor([0.9, 0.05, 0.05]), labels=["a", "b", "c"], title="t")
    assert len(ax.patches) == 3 and ax.get_title() == "t"
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([0.9, 0.05, 0.05])


def test_plot_distributions_and_curves():
    fig = plotting.plot_distributions({"one-hot": [1, 0, 0], "smoothed": [0.9333, 0.0333, 0.0333]})
    assert len(fig.axes) == 2
    ax = plotting.plot_loss_curves({"train": [3, 2, 1], "val": [3, 2.5, 2.4]})
    assert len(ax.get_lines()) == 2 and ax.get_xlabel() == "epoch"


def test_plotting_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        plotting.plot_distribution(torch.ones(2, 2))
    with pytest.raises(ValueError, match="labels"):
        plotting.plot_distribution([0.5, 0.5], labels=["a"])
    with pytest.raises(ValueError):
        plotting.plot_loss_curves({})


def test_cmp_reports_match_and_mismatch(capsys):
    a = torch.tensor([1.0, 2.0])
    assert compare.cmp("same", a, a.clone())
    assert not compare.cmp("off", a, a + 1e-3)
    out = capsys.readouterr().out
    assert "same" in out and "maxdiff: 0.000e+00" in out and "1.000e-03" in out
    with pytest.raises(ValueError, match="shapes differ"):
        compare.max_abs_diff(a, torch.zeros(3))
