"""utils.metrics: confusion matrix, precision/recall/F1, entropy and the smoothed-loss floor."""
from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from utils.metrics import (accuracy_from_confusion, confusion_matrix, cross_entropy_floor, entropy, plot_confusion_matrix,
                           precision_recall_f1, smoothed_target)

PAGE = torch.tensor([[45, 3, 2], [4, 43, 3], [1, 5, 44]])


def pairs(max_classes: int = 6, max_n: int = 60):
    """Strategy: (num_classes, labels, preds) with values in range (some classes may be absent)."""
    return st.integers(1, max_classes).flatmap(lambda k: st.tuples(
        st.just(k),
        st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=max_n),
    ))


# --------------------------------------------------------------------------- the page's matrix
def test_page_matrix_metrics():
    assert accuracy_from_confusion(PAGE) == pytest.approx(132 / 150, abs=1e-15)
    prf = precision_recall_f1(PAGE)
    torch.testing.assert_close(prf.precision, torch.tensor([45 / 50, 43 / 51, 44 / 49], dtype=torch.float64))
    torch.testing.assert_close(prf.recall, torch.tensor([0.90, 0.86, 0.88], dtype=torch.float64))
    expected_f1 = 2 * prf.precision * prf.recall / (prf.precision + prf.recall)
    torch.testing.assert_close(prf.f1, expected_f1)
    assert prf.support.tolist() == [50, 50, 50]


def test_confusion_matrix_rows_are_actual_columns_predicted():
    cm = confusion_matrix(torch.tensor([0, 0, 1, 2]), torch.tensor([1, 1, 1, 0]), num_classes=3)
    assert cm.tolist() == [[0, 2, 0], [0, 1, 0], [1, 0, 0]]
    assert cm.dtype == torch.int64


def test_confusion_matrix_accepts_lists_and_numpy():
    a = confusion_matrix([0, 1, 1], np.array([0, 1, 0]), num_classes=2)
    assert a.tolist() == [[1, 0], [1, 1]]


@pytest.mark.filterwarnings("ignore:A single label was found")   # sklearn's note for k=1
@settings(max_examples=60, deadline=None)
@given(pairs())
def test_confusion_matrix_matches_sklearn(case):
    k, pl = case
    labels = torch.tensor([p[0] for p in pl])
    preds = torch.tensor([p[1] for p in pl])
    cm = confusion_matrix(labels, preds, k)
    ref = skm.confusion_matrix(labels.numpy(), preds.numpy(), labels=list(range(k)))
    assert cm.tolist() == ref.tolist()
    assert cm.sum().item() == len(labels)
    assert cm.sum(dim=1).tolist() == torch.bincount(labels, minlength=k).tolist()
    assert cm.sum(dim=0).tolist() == torch.bincount(preds, minlength=k).tolist()


@settings(max_examples=60, deadline=None)
@given(pairs())
def test_precision_recall_f1_match_sklearn_with_zero_division_0(case):
    k, pl = case
    labels = np.array([p[0] for p in pl])
    preds = np.array([p[1] for p in pl])
    prf = precision_recall_f1(confusion_matrix(torch.as_tensor(labels), torch.as_tensor(preds), k))
    p, r, f, s = skm.precision_recall_fscore_support(labels, preds, labels=list(range(k)), zero_division=0)
    np.testing.assert_allclose(prf.precision.numpy(), p, atol=1e-12)
    np.testing.assert_allclose(prf.recall.numpy(), r, atol=1e-12)
    np.testing.assert_allclose(prf.f1.numpy(), f, atol=1e-12)
    assert prf.support.tolist() == s.tolist()
    assert accuracy_from_confusion(confusion_matrix(torch.as_tensor(labels), torch.as_tensor(preds), k)) == pytest.approx(skm.accuracy_score(labels, preds))


def test_zero_denominators_give_zero_not_nan():
    cm = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]])   # class 2 never present and never predicted
    prf = precision_recall_f1(cm)
    assert not torch.isnan(prf.precision).any() and not torch.isnan(prf.recall).any() and not torch.isnan(prf.f1).any()
    assert prf.precision[2] == 0 and prf.recall[2] == 0 and prf.f1[2] == 0
    # a class that is present but never predicted: recall 0, precision 0/0 -> 0
    prf = precision_recall_f1(torch.tensor([[5, 0], [3, 0]]))
    assert prf.recall.tolist() == [1.0, 0.0] and prf.precision.tolist() == [5 / 8, 0.0]
    assert accuracy_from_confusion(torch.zeros(2, 2)) == 0.0


def test_float_counts_are_accepted():
    prf = precision_recall_f1(PAGE.double() / 150)   # a normalised matrix gives the same ratios
    torch.testing.assert_close(prf.precision, precision_recall_f1(PAGE).precision)


@pytest.mark.parametrize("labels, preds, k, match", [
    (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), 2, "integer"),
    (torch.tensor([0, 1]), torch.tensor([True, False]), 2, "integer"),
    (torch.tensor([[0, 1]]), torch.tensor([0, 1]), 2, "1-D"),
    (torch.tensor([0, 1, 1]), torch.tensor([0, 1]), 2, "length"),
    (torch.tensor([0, 2]), torch.tensor([0, 1]), 2, r"\[0, 2\)"),
    (torch.tensor([0, 1]), torch.tensor([-1, 1]), 2, r"\[0, 2\)"),
    (torch.tensor([0, 1]), torch.tensor([0, 1]), 0, "num_classes"),
    (torch.tensor([0, 1]), torch.tensor([0, 1]), True, "num_classes"),
    (torch.tensor([0, 1]), torch.tensor([0, 1]), 2.0, "num_classes"),
])
def test_confusion_matrix_bad_inputs(labels, preds, k, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(labels, preds, k)


@pytest.mark.parametrize("cm, match", [
    (torch.ones(2, 3), "square"),
    (torch.ones(3), "square"),
    (torch.zeros(0, 0), "square"),
    (torch.tensor([[1, -1], [0, 2]]), "non-negative"),
    (torch.tensor([[1.0, float("nan")], [0.0, 2.0]]), "finite"),
    (torch.tensor([[True, False], [False, True]]), "counts"),
])
def test_confusion_checks(cm, match):
    with pytest.raises(ValueError, match=match):
        precision_recall_f1(cm)
    with pytest.raises(ValueError, match=match):
        accuracy_from_confusion(cm)


# --------------------------------------------------------------------------- entropy and the floor
def test_entropy_known_values():
    assert entropy(torch.full((4,), 0.25)).item() == pytest.approx(math.log(4))
    zero = entropy(torch.tensor([0.0, 1.0, 0.0])).item()
    assert zero == 0.0 and math.copysign(1.0, zero) == 1.0, "a one-hot has entropy +0.0, not -0.0"
    batch = entropy(torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
    torch.testing.assert_close(batch, torch.tensor([math.log(2), 0.0]))
    torch.testing.assert_close(entropy(torch.tensor([[0.5, 1.0], [0.5, 0.0]]), dim=0), torch.tensor([math.log(2), 0.0]))


@pytest.mark.parametrize("probs, match", [
    (torch.tensor([1, 0]), "floating"),
    (torch.tensor(1.0), "dimension"),
    (torch.tensor([0.5, 0.6]), "sum to 1"),
    (torch.tensor([1.5, -0.5]), "non-negative"),
    (torch.tensor([float("nan"), 1.0]), "finite"),
])
def test_entropy_bad_inputs(probs, match):
    with pytest.raises(ValueError, match=match):
        entropy(probs)


@pytest.mark.parametrize("k, eps", [(2, 0.1), (3, 0.1), (3, 0.2), (10, 0.05), (10, 0.1), (10, 0.3), (100, 0.1)])
def test_floor_equals_torch_loss_at_the_smoothed_target(k, eps):
    y = torch.tensor([k - 1])
    q = smoothed_target(y, k, eps)
    loss = F.cross_entropy(q.log(), y, label_smoothing=eps)
    assert loss.item() == pytest.approx(cross_entropy_floor(k, eps), abs=1e-12)
    # and any other prediction does worse
    other = F.cross_entropy(q.log() + 0.3 * torch.randn(1, k, dtype=torch.float64, generator=torch.Generator().manual_seed(k)), y, label_smoothing=eps)
    assert other.item() > loss.item()


def test_floor_values_and_shape():
    assert cross_entropy_floor(10, 0.0) == 0.0
    assert cross_entropy_floor(10, 0.1) == pytest.approx(0.5002880, abs=1e-6)
    assert cross_entropy_floor(3, 0.2) == pytest.approx(0.4851, abs=1e-4)
    assert cross_entropy_floor(10, 1.0) == pytest.approx(math.log(10)), "eps=1 is the uniform target"
    floors = [cross_entropy_floor(10, e) for e in (0.0, 0.05, 0.1, 0.2, 0.5)]
    assert floors == sorted(floors), "the floor grows with eps"


def test_smoothed_target_is_torch_convention():
    q = smoothed_target(torch.tensor([0, 2]), 3, 0.1)
    torch.testing.assert_close(q, torch.tensor([[1 - 0.1 + 0.1 / 3, 0.1 / 3, 0.1 / 3], [0.1 / 3, 0.1 / 3, 1 - 0.1 + 0.1 / 3]], dtype=torch.float64))
    torch.testing.assert_close(q.sum(dim=1), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("eps", [-0.05, 1.5])
def test_smoothed_target_rejects_eps_outside_unit_interval(eps):
    # torch itself silently accepts -0.05 (erratum 3); we do not
    with pytest.raises(ValueError, match="label_smoothing"):
        smoothed_target(torch.tensor([0]), 3, eps)
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy_floor(3, eps)


def test_smoothed_target_bad_labels():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        smoothed_target(torch.tensor([3]), 3, 0.1)
    with pytest.raises(ValueError, match="integer"):
        smoothed_target(torch.tensor([0.0]), 3, 0.1)
    with pytest.raises(ValueError, match="num_classes"):
        cross_entropy_floor(0, 0.1)


# --------------------------------------------------------------------------- plot
def test_plot_confusion_matrix_annotates_every_cell():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = plot_confusion_matrix(PAGE, ["A", "B", "C"], normalize="true")
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 9
    assert texts[0] == "0.90" and texts[4] == "0.86" and texts[8] == "0.88", "row-normalised diagonal = recall"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B", "C"]
    ax = plot_confusion_matrix(PAGE, normalize="pred")
    assert ax.texts[4].get_text() == f"{43 / 51:.2f}", "column-normalised diagonal = precision"
    ax = plot_confusion_matrix(PAGE)
    assert ax.texts[0].get_text() == "45"
    plt.close("all")


def test_plot_confusion_matrix_bad_inputs():
    with pytest.raises(ValueError, match="normalize"):
        plot_confusion_matrix(PAGE, normalize="all")
    with pytest.raises(ValueError, match="class names"):
        plot_confusion_matrix(PAGE, ["A", "B"])
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix(torch.ones(2, 3))
