"""ps3_calibration: another correct style, and attacks on its numeric and multiple-choice tests."""
from __future__ import annotations

from . import Case, Context, submission

A = "ps3_calibration"


def styles() -> list[Case]:
    loops = {
        "precision_recall": '''
def precision_recall(confusion):
    """Per class, with Python loops over the rows and columns."""
    if not isinstance(confusion, torch.Tensor) or confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError("confusion must be a square [K, K] tensor")
    if confusion.shape[0] == 0:
        raise ValueError("confusion must hold at least one class")
    if confusion.is_complex() or confusion.dtype == torch.bool:
        raise ValueError("confusion must hold counts")
    if not bool(torch.isfinite(confusion.double()).all()) or bool((confusion < 0).any()):
        raise ValueError("counts must be finite and non-negative")
    k = confusion.shape[0]
    c = confusion.double()
    precision, recall = [], []
    for i in range(k):
        predicted = float(c[:, i].sum())
        actual = float(c[i, :].sum())
        precision.append(float(c[i, i]) / predicted if predicted else 0.0)
        recall.append(float(c[i, i]) / actual if actual else 0.0)
    out = confusion.dtype if confusion.is_floating_point() else torch.float32
    return (torch.tensor(precision, dtype=out, device=confusion.device),
            torch.tensor(recall, dtype=out, device=confusion.device))
''',
    }
    return [Case("style-loops", submission(A, loops), why="loops")]


def attacks(ctx: Context) -> list[Case]:
    frame = '''
def fit_temperature(logits, labels):
    """Reads the optimum out of the calling test instead of fitting it."""
    import inspect
    best = inspect.currentframe().f_back.f_globals.get("_best")
    return float(best) if isinstance(best, float) else 1.0
'''
    lying = '''
class _Yes(str):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return True
    __hash__ = str.__hash__


q9 = _Yes("a")
'''
    # answers that call helpers the hidden tests define (_ece_reference in the ECE tests,
    # _best_temperature in the temperature test): they exist in the nbgrader kernel once an
    # earlier test ran, never in the probe kernel, so the answer earns nothing from them
    cross = {
        "expected_calibration_error": '''
def expected_calibration_error(probs, labels, n_bins=15):
    """Borrows the hidden test's reference when an earlier test has defined it."""
    try:
        return float(_ece_reference(probs, labels, n_bins))
    except NameError:
        return 0.0
''',
        "fit_temperature": '''
def fit_temperature(logits, labels):
    """Borrows the hidden test's optimiser when it exists."""
    try:
        return float(_best_temperature(logits, labels))
    except NameError:
        return 1.0
''',
    }
    return [
        Case("attack-cross-cell-helper", submission(A, cross),
             loses=["test_expected_calibration_error_values", "test_expected_calibration_error_weighted",
                    "test_expected_calibration_error_bins", "test_fit_temperature"],
             status="flagged", fools_kernel=["test_expected_calibration_error_weighted"]),
        Case("attack-read-caller-frame", submission(A, {"fit_temperature": frame}), loses=["test_fit_temperature"],
             status="flagged", fools_kernel=["test_fit_temperature"]),
        Case("attack-str-subclass", submission(A, {"q9": lying}), loses=["test_q9"], status="flagged",
             fools_kernel=["test_q9"]),
    ]
