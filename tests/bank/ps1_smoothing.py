"""Wrong-answer bank for ps1_smoothing: plausible student answers and the test cells they fail.

WRONG: one entry per misconception. ``replace`` maps an answer cell's grade_id to the full source
a student might submit for it; every other answer cell keeps the reference solution. ``loses``
lists every test cell that must score 0 with that submission; all other test cells keep full
marks. ``hint`` (optional) is a phrase the visible check cells must print for it: a student who
runs them reads what to fix before submitting.

RIGHT: answers written differently from the reference solution but correct: they keep all 20
points (same format, ``loses`` is empty).
"""

WRONG = {
    "others_instead_of_uniform": {
        # the tutorial form: 1 - eps on the true class, eps / (K - 1) on the others, for "uniform" too
        "replace": {"smooth_labels": '''
def smooth_labels(targets, num_classes, smoothing, mode="uniform"):
    """Label-smoothed target distributions, one row per target."""
    if mode not in ("uniform", "others"):
        raise ValueError(f"unknown mode {mode!r}")
    if not 0 <= smoothing <= 1:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    if mode == "others" and num_classes < 2:
        raise ValueError("mode='others' needs at least two classes")
    hard = one_hot(targets, num_classes)
    # the true class keeps 1 - eps, the other classes share eps
    return hard * (1 - smoothing) + (1 - hard) * smoothing / (num_classes - 1)
'''},
        "loses": ["test_smooth_labels_uniform"],
        "hint": "that is the 'others' convention",
    },
    "uniform_instead_of_others": {
        # the reverse: PyTorch's formula whatever the mode
        "replace": {"smooth_labels": '''
def smooth_labels(targets, num_classes, smoothing, mode="uniform"):
    """Label-smoothed target distributions, one row per target."""
    if mode not in ("uniform", "others"):
        raise ValueError(f"unknown mode {mode!r}")
    if not 0 <= smoothing <= 1:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    if mode == "others" and num_classes < 2:
        raise ValueError("mode='others' needs at least two classes")
    hard = one_hot(targets, num_classes)
    # spread eps evenly over the classes
    return hard * (1 - smoothing) + smoothing / num_classes
'''},
        "loses": ["test_smooth_labels_others"],
        "hint": "mode='others' gave the uniform (PyTorch) target",
    },
    "not_summing_to_one": {
        # true class 1 - eps, but the others get eps / K: the rows sum to 1 - eps / K
        "replace": {"smooth_labels": '''
def smooth_labels(targets, num_classes, smoothing, mode="uniform"):
    """Label-smoothed target distributions, one row per target."""
    if mode not in ("uniform", "others"):
        raise ValueError(f"unknown mode {mode!r}")
    if not 0 <= smoothing <= 1:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    hard = one_hot(targets, num_classes)
    if mode == "uniform":
        return hard * (1 - smoothing) + (1 - hard) * (smoothing / num_classes)
    if num_classes < 2:
        raise ValueError("mode='others' needs at least two classes")
    return hard * (1 - smoothing) + (1 - hard) * (smoothing / (num_classes - 1))
'''},
        "loses": ["test_smooth_labels_sums_to_one", "test_smooth_labels_uniform"],
        "hint": "must sum to 1",
    },
    "accepting_negative_smoothing": {
        # checks the upper bound only, like torch: -0.05 (and NaN) slip through
        "replace": {"smooth_labels": '''
def smooth_labels(targets, num_classes, smoothing, mode="uniform"):
    """Label-smoothed target distributions, one row per target."""
    if mode not in ("uniform", "others"):
        raise ValueError(f"unknown mode {mode!r}")
    if smoothing > 1:
        raise ValueError(f"smoothing must be at most 1, got {smoothing}")
    hard = one_hot(targets, num_classes)
    if mode == "uniform":
        return hard * (1 - smoothing) + smoothing / num_classes
    if num_classes < 2:
        raise ValueError("mode='others' needs at least two classes")
    return hard * (1 - smoothing) + (1 - hard) * (smoothing / (num_classes - 1))
'''},
        "loses": ["test_smooth_labels_negative"],
        "hint": "smoothing=-0.05) must raise ValueError",
    },
    "accepting_2d_target": {
        # validates dtype and range but not the shape: tensor([[2]]) gives a [1, 1, K] "one-hot"
        "replace": {"one_hot": '''
def one_hot(targets, num_classes):
    """One row per target with 1.0 at its class."""
    if targets.is_floating_point():
        raise ValueError("targets must be integer class indices")
    if num_classes < 1:
        raise ValueError("num_classes must be at least 1")
    if (targets < 0).any() or (targets >= num_classes).any():
        raise ValueError(f"class indices must be in [0, {num_classes})")
    return F.one_hot(targets.long(), num_classes).float()
'''},
        "loses": ["test_one_hot_2d_target"],
        "hint": "a 2-D index target is a mistake",
    },
    "one_hot_returns_int64": {
        # forgets that F.one_hot returns int64: not a float32 target distribution
        "replace": {"one_hot": '''
def one_hot(targets, num_classes):
    """One row per target with 1.0 at its class."""
    if targets.ndim != 1:
        raise ValueError(f"targets must be 1-D, got shape {tuple(targets.shape)}")
    if targets.is_floating_point():
        raise ValueError("targets must be integer class indices")
    if num_classes < 1:
        raise ValueError("num_classes must be at least 1")
    if (targets < 0).any() or (targets >= num_classes).any():
        raise ValueError(f"class indices must be in [0, {num_classes})")
    return F.one_hot(targets.long(), num_classes)
'''},
        "loses": ["test_one_hot_values"],
        "hint": "a target distribution is float32",
    },
    "relies_on_torch_errors": {
        # leaves the checks to F.one_hot: RuntimeError instead of ValueError, and .long() silently
        # truncates a float target
        "replace": {"one_hot": '''
def one_hot(targets, num_classes):
    """One row per target with 1.0 at its class."""
    if targets.ndim != 1:
        raise ValueError(f"targets must be 1-D, got shape {tuple(targets.shape)}")
    # F.one_hot already rejects negative and too-large indices
    return F.one_hot(targets.long(), num_classes).float()
'''},
        "loses": ["test_one_hot_errors"],
        "hint": "class indices are integers, not floats",
    },
    "mutates_targets": {
        # scatter_ wants an [N, 1] index; unsqueeze_ reshapes the caller's tensor in place
        # (targets.long() is the same tensor when targets is already int64)
        "replace": {"smooth_labels": '''
def smooth_labels(targets, num_classes, smoothing, mode="uniform"):
    """Label-smoothed target distributions, one row per target."""
    if mode not in ("uniform", "others"):
        raise ValueError(f"unknown mode {mode!r}")
    if not 0 <= smoothing <= 1:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    one_hot(targets, num_classes)  # raises ValueError for bad targets
    if mode == "uniform":
        off = smoothing / num_classes
        on = 1 - smoothing + off
    else:
        if num_classes < 2:
            raise ValueError("mode='others' needs at least two classes")
        off = smoothing / (num_classes - 1)
        on = 1 - smoothing
    index = targets.long()
    index.unsqueeze_(1)
    smoothed = torch.full((index.shape[0], num_classes), off, device=targets.device)
    return smoothed.scatter_(1, index, on)
'''},
        "loses": ["test_smooth_labels_no_mutation"],
        "hint": "changed its targets argument in place",
    },
    "smooth_labels_forgets_one_hot": {
        # mixes the uniform distribution with itself instead of with the one-hot rows: every row is
        # the same 1/K, a distribution that ignores the label (the old sums-to-one test passed it)
        "replace": {"smooth_labels": '''
def smooth_labels(targets, num_classes, smoothing, mode="uniform"):
    """Label-smoothed target distributions, one row per target."""
    if mode not in ("uniform", "others"):
        raise ValueError(f"unknown mode {mode!r}")
    if not 0 <= smoothing <= 1:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    if mode == "others" and num_classes < 2:
        raise ValueError("mode='others' needs at least two classes")
    hard = one_hot(targets, num_classes)
    uniform = torch.ones_like(hard) / num_classes
    return (1 - smoothing) * uniform + smoothing / num_classes
'''},
        "loses": ["test_smooth_labels_sums_to_one", "test_smooth_labels_uniform", "test_smooth_labels_others"],
    },
    "q1_at_most_instead_of_less": {
        # K = 100 gives a difference of exactly 0.001, not less
        "replace": {"q1": "q1 = 100\n"},
        "loses": ["test_q1"],
    },
    "q3_extrapolated_negative_smoothing": {
        # expects torch to apply the formula with eps < 0 (a sharpened target)
        "replace": {"q3": 'q3 = "b"\n'},
        "loses": ["test_q3"],
    },
    "q4_same_eps_in_both_conventions": {
        # keeps eps = 0.1: PyTorch then gives 0.95 / 0.05 for K = 2
        "replace": {"q4": "q4 = 0.1\n"},
        "loses": ["test_q4"],
    },
}

RIGHT = {
    "scatter_and_where": {
        # no F.one_hot and no one_hot call: zeros + scatter_, torch.where for the two values
        "replace": {
            "one_hot": '''
def one_hot(targets, num_classes):
    """One row per target with 1.0 at its class."""
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1:
        raise ValueError("targets must be a 1-D tensor")
    if torch.is_floating_point(targets) or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integers, got {targets.dtype}")
    if not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got {num_classes}")
    if len(targets) and not bool(((targets >= 0) & (targets < num_classes)).all()):
        raise ValueError(f"targets must lie in 0..{num_classes - 1}")
    rows = torch.zeros(len(targets), num_classes, device=targets.device)
    return rows.scatter_(1, targets.long().view(-1, 1), 1.0)
''',
            "smooth_labels": '''
import math


def smooth_labels(targets, num_classes, smoothing, mode="uniform"):
    """Label-smoothed target distributions, one row per target."""
    if mode not in {"uniform", "others"}:
        raise ValueError(f"mode must be 'uniform' or 'others', not {mode!r}")
    if math.isnan(smoothing) or smoothing < 0 or smoothing > 1:
        raise ValueError(f"smoothing must be between 0 and 1, got {smoothing}")
    if mode == "others" and num_classes == 1:
        raise ValueError("'others' needs a second class")
    hard = one_hot(targets, num_classes).bool()
    if mode == "uniform":
        on, off = 1 - smoothing + smoothing / num_classes, smoothing / num_classes
    else:
        on, off = 1 - smoothing, smoothing / (num_classes - 1)
    return torch.where(hard, torch.tensor(on), torch.tensor(off)).to(device=targets.device, dtype=torch.float32)
''',
        },
        "loses": [],
    },
}
