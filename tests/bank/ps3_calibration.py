"""Wrong-answer bank for ps3_calibration: plausible student answers and the grade cells they fail.

WRONG: one entry per misconception. ``replace`` maps an answer cell's grade_id to the full source a
student might submit for it; every other answer cell keeps the reference solution. ``loses`` lists
every test cell that must score 0 with that submission; all other test cells keep full marks.
``hint`` (where present) is part of the message a visible check cell shows for that answer.

RIGHT: answers that differ from the reference solution but are correct, so they must keep all
20 points (same ``replace`` format, ``loses`` is empty). Autograd in label_smoothing_grad is one of
them: the task asks for the closed form, but using autograd is not a misconception the tests
penalise. A float32 golden-section search is another: it shows that the 1e-5 nats asked of
fit_temperature is within reach of float32 arithmetic, while the coarse grids of WRONG are not.
"""

WRONG = {
    # Part 1: the gradient -----------------------------------------------------------------
    "grad_missing_mean": {
        # forgets that reduction="mean" divides by N: the per-row gradient softmax(z) - q
        "replace": {"label_smoothing_grad": '''
def label_smoothing_grad(logits, targets, smoothing):
    """Gradient of the mean label-smoothed cross-entropy with respect to the logits."""
    k = logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    target = (1 - smoothing) * F.one_hot(targets, k).to(probs.dtype) + smoothing / k
    return probs - target
'''},
        "hint": "reduction='mean' divides the loss, and so its gradient, by N",
        "loses": ["test_label_smoothing_grad_values", "test_label_smoothing_grad_mean_scale"],
    },
    "grad_others_convention": {
        # the eps / (K - 1) target of the course's source pages instead of PyTorch's eps / K
        "replace": {"label_smoothing_grad": '''
def label_smoothing_grad(logits, targets, smoothing):
    """Gradient of the mean label-smoothed cross-entropy with respect to the logits."""
    n, k = logits.shape
    target = torch.full_like(logits, smoothing / (k - 1))
    target[torch.arange(n, device=logits.device), targets] = 1 - smoothing
    return (torch.softmax(logits, dim=1) - target) / n
'''},
        "hint": 'is the target (1 - eps) * one_hot + eps / K?',
        "loses": ["test_label_smoothing_grad_values"],
    },
    "grad_constant_over_n": {
        # "the gradient of a mean is 1/N per entry": right scale, no softmax - q at all
        "replace": {"label_smoothing_grad": '''
def label_smoothing_grad(logits, targets, smoothing):
    """Gradient of the mean label-smoothed cross-entropy with respect to the logits."""
    n = logits.shape[0]
    return torch.ones_like(logits) / n
'''},
        "loses": ["test_label_smoothing_grad_values", "test_label_smoothing_grad_mean_scale"],
    },
    # Part 2: ECE --------------------------------------------------------------------------
    "ece_unweighted": {
        # a plain mean of |acc - conf| over the non-empty bins, ignoring how full each bin is
        "replace": {"expected_calibration_error": '''
def expected_calibration_error(probs, labels, n_bins=15):
    """Expected calibration error of Guo et al. (2017), as a Python float."""
    confidences, predictions = probs.max(dim=1)
    correct = (predictions == labels).float()
    gaps = []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = (confidences > lo) & (confidences <= hi)
        if in_bin.any():
            gaps.append(abs(correct[in_bin].mean().item() - confidences[in_bin].mean().item()))
    return sum(gaps) / len(gaps)
'''},
        "hint": 'your ECE averages the two bins equally',
        "loses": ["test_expected_calibration_error_values", "test_expected_calibration_error_weighted"],
    },
    "ece_mean_over_all_bins": {
        # counts the empty bins: a plain mean over all n_bins, an empty bin adding a gap of 0
        "replace": {"expected_calibration_error": '''
def expected_calibration_error(probs, labels, n_bins=15):
    """Expected calibration error of Guo et al. (2017), as a Python float."""
    confidences, predictions = probs.max(dim=1)
    correct = (predictions == labels).float()
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = (confidences > lo) & (confidences <= hi)
        if in_bin.any():
            total += abs(correct[in_bin].mean().item() - confidences[in_bin].mean().item())
    return total / n_bins
'''},
        # (the bin-edge cases have empty bins too, so the bins cell catches it as well)
        "hint": 'a plain mean over all 4 bins, empty ones included',
        "loses": ["test_expected_calibration_error_values", "test_expected_calibration_error_weighted",
                  "test_expected_calibration_error_bins"],
    },
    "ece_nan_empty_bins": {
        # divides every bin's sums by its count, empty bins included: 0/0 = NaN poisons the sum
        "replace": {"expected_calibration_error": '''
def expected_calibration_error(probs, labels, n_bins=15):
    """Expected calibration error of Guo et al. (2017), as a Python float."""
    confidences, predictions = probs.max(dim=1)
    correct = (predictions == labels).to(confidences.dtype)
    bins = (torch.ceil(confidences * n_bins) - 1).long().clamp(0, n_bins - 1)  # (lo, hi]
    count = torch.bincount(bins, minlength=n_bins).to(confidences.dtype)
    accuracy = torch.bincount(bins, weights=correct, minlength=n_bins) / count
    confidence = torch.bincount(bins, weights=confidences, minlength=n_bins) / count
    return float((count / len(labels) * (accuracy - confidence).abs()).sum())
'''},
        "hint": 'your ECE is NaN',
        "loses": ["test_expected_calibration_error_values", "test_expected_calibration_error_weighted",
                  "test_expected_calibration_error_bins"],
    },
    "ece_left_closed_bins": {
        # floor(conf * n_bins) puts a confidence on an edge into the upper bin: [lo, hi)
        "replace": {"expected_calibration_error": '''
def expected_calibration_error(probs, labels, n_bins=15):
    """Expected calibration error of Guo et al. (2017), as a Python float."""
    confidences, predictions = probs.max(dim=1)
    correct = (predictions == labels).float()
    bins = torch.clamp((confidences * n_bins).floor().long(), max=n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            weight = in_bin.float().mean().item()
            ece += weight * abs(correct[in_bin].mean().item() - confidences[in_bin].mean().item())
    return ece
'''},
        "loses": ["test_expected_calibration_error_bins"],
    },
    "ece_returns_tensor": {
        # right value, but a 0-d tensor instead of a Python float
        "replace": {"expected_calibration_error": '''
def expected_calibration_error(probs, labels, n_bins=15):
    """Expected calibration error of Guo et al. (2017), as a Python float."""
    confidences, predictions = probs.max(dim=1)
    correct = (predictions == labels).to(confidences.dtype)
    ece = torch.zeros((), dtype=confidences.dtype, device=probs.device)
    for b in range(n_bins):
        in_bin = (confidences > b / n_bins) & (confidences <= (b + 1) / n_bins)
        if in_bin.any():
            ece += in_bin.to(confidences.dtype).mean() * (correct[in_bin].mean() - confidences[in_bin].mean()).abs()
    return ece
'''},
        "hint": 'return a Python float (use .item())',
        "loses": ["test_expected_calibration_error_bins"],
    },
    # Part 3: temperature ------------------------------------------------------------------
    "temperature_multiplies": {
        # scales the logits by T instead of dividing: returns about 1 / T
        "replace": {"fit_temperature": '''
def fit_temperature(logits, labels):
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) against labels."""
    best_t, best_loss = 1.0, float("inf")
    for t in torch.linspace(0.05, 5.0, 496).tolist():
        loss = F.cross_entropy(logits * t, labels).item()
        if loss < best_loss:
            best_t, best_loss = t, loss
    return best_t
'''},
        "hint": 'temperature scaling divides the logits by T',
        "loses": ["test_fit_temperature"],
    },
    "temperature_coarse_grid": {
        # 100 temperatures, evenly spaced in log T over [0.05, 20]: a fixed range, and 6 % per step
        # is far coarser than the minimum (the NLL at a grid point can be 2e-4 nats above it)
        "replace": {"fit_temperature": '''
def fit_temperature(logits, labels):
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) against labels."""
    grid = torch.logspace(math.log10(0.05), math.log10(20.0), 100).tolist()
    return min(grid, key=lambda t: F.cross_entropy(logits / t, labels).item())
'''},
        "loses": ["test_fit_temperature"],
    },
    "temperature_wide_coarse_grid": {
        # a range wide enough (1e-3 to 1e3), but only 61 points: 23 % per step misses the minimum
        "replace": {"fit_temperature": '''
def fit_temperature(logits, labels):
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) against labels."""
    grid = torch.logspace(-3, 3, 61, dtype=torch.float64).tolist()
    z = logits.double()
    return min(grid, key=lambda t: F.cross_entropy(z / t, labels).item())
'''},
        "loses": ["test_fit_temperature"],
    },
    "temperature_bounded_search": {
        # an exact golden-section search, but confined to T in [0.1, 10]: misses T = 0.05 and T = 40
        "replace": {"fit_temperature": '''
def fit_temperature(logits, labels):
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) against labels."""
    z = logits.double()
    lo, hi = math.log(0.1), math.log(10.0)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        left, right = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if F.cross_entropy(z / math.exp(left), labels) <= F.cross_entropy(z / math.exp(right), labels):
            hi = right
        else:
            lo = left
    return math.exp((lo + hi) / 2)
'''},
        "loses": ["test_fit_temperature"],
    },
    "temperature_rescales_logits_in_place": {
        # fits T exactly, then "applies" it to the caller's logits in place: the validation logits
        # the caller holds are changed (and a test computing the NLL afterwards would be fooled)
        "replace": {"fit_temperature": '''
def fit_temperature(logits, labels):
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) against labels."""
    z = logits.double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    t = log_t.exp().item()
    logits /= t  # calibrated logits for the caller
    return t
'''},
        "loses": ["test_fit_temperature"],
    },
    "temperature_zeroes_logits": {
        # the exploit of issue 12: zero the logits in place and claim T = 1 (the NLL of all-zero
        # logits does not depend on T, so a test measuring the gap afterwards saw no gap)
        "replace": {"fit_temperature": '''
def fit_temperature(logits, labels):
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) against labels."""
    logits.zero_()
    return 1.0
'''},
        "loses": ["test_fit_temperature"],
    },
    # Part 4: precision and recall ---------------------------------------------------------
    "precision_recall_swapped": {
        # divides by the row sum for precision and the column sum for recall
        "replace": {"precision_recall": '''
def precision_recall(confusion):
    """Per-class precision and recall from a confusion matrix."""
    counts = confusion.float()
    hits = counts.diagonal()
    rows, cols = counts.sum(dim=1), counts.sum(dim=0)
    precision = torch.where(rows > 0, hits / rows.clamp(min=1), torch.zeros_like(hits))
    recall = torch.where(cols > 0, hits / cols.clamp(min=1), torch.zeros_like(hits))
    return precision, recall
'''},
        "hint": 'your precision is the recall',
        # the zero-division cell checks the ordinary entries too, so it catches the swap as well
        "loses": ["test_precision_recall_values", "test_precision_recall_orientation",
                  "test_precision_recall_zero_division"],
    },
    "precision_recall_nan": {
        # right orientation, but 0/0 left as NaN for a class that is never predicted
        "replace": {"precision_recall": '''
def precision_recall(confusion):
    """Per-class precision and recall from a confusion matrix."""
    counts = confusion.float()
    hits = counts.diagonal()
    return hits / counts.sum(dim=0), hits / counts.sum(dim=1)
'''},
        "loses": ["test_precision_recall_zero_division"],
    },
    "precision_recall_integer_division": {
        # floor division of integer counts: every ratio below 1 becomes 0 (all zeros on the
        # zero-division matrix, where the old test only looked at the 0/0 entries)
        "replace": {"precision_recall": '''
def precision_recall(confusion):
    """Per-class precision and recall from a confusion matrix."""
    hits = confusion.diagonal()
    predicted, actual = confusion.sum(dim=0), confusion.sum(dim=1)
    precision = hits // predicted.clamp(min=1)
    recall = hits // actual.clamp(min=1)
    return precision.float(), recall.float()
'''},
        "loses": ["test_precision_recall_values", "test_precision_recall_orientation",
                  "test_precision_recall_zero_division"],
    },
    # Part 5: questions --------------------------------------------------------------------
    "q9_unweighted_bins": {
        # averages the four bins' gaps without their counts: they nearly cancel
        "replace": {"q9": 'q9 = "b"\n'},
        "loses": ["test_q9"],
    },
    "q10_inverse_temperature": {
        # the factor by which the logits must grow (1/T) instead of T
        "replace": {"q10": "import math\nq10 = math.log(9 * 0.97 / 0.03) / math.log(91)\n"},
        "loses": ["test_q10"],
    },
    "q11_nan_skipping_mean": {
        # drops the never-predicted class from the mean, as a NaN-skipping average would
        "replace": {"q11": "q11 = (50 / 70 + 30 / 45) / 2\n"},
        "loses": ["test_q11"],
    },
    "q12_same_goal": {
        # "two routes to the same goal": smoothing as a temperature applied during training
        "replace": {"q12": 'q12 = "b"\n'},
        "loses": ["test_q12"],
    },
}

RIGHT = {
    "grad_via_autograd": {
        # not the closed form the task asks for, but correct and not penalised
        "replace": {"label_smoothing_grad": '''
def label_smoothing_grad(logits, targets, smoothing):
    """Gradient of the mean label-smoothed cross-entropy with respect to the logits."""
    z = logits.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        F.cross_entropy(z, targets, label_smoothing=smoothing).backward()
    return z.grad
'''},
        "loses": [],
    },
    "ece_bincount": {
        # vectorised: sum over bins of |sum(correct) - sum(conf)| / N, bins (lo, hi] by ceil
        "replace": {"expected_calibration_error": '''
def expected_calibration_error(probs, labels, n_bins=15):
    """Expected calibration error of Guo et al. (2017), as a Python float."""
    confidences, predictions = probs.max(dim=1)
    correct = (predictions == labels).double()
    bins = (torch.ceil(confidences.double() * n_bins) - 1).long().clamp(0, n_bins - 1)
    gap = torch.bincount(bins, weights=correct, minlength=n_bins) - torch.bincount(
        bins, weights=confidences.double(), minlength=n_bins)
    return gap.abs().sum().item() / len(labels)
'''},
        "loses": [],
    },
    "temperature_lbfgs": {
        # torch.optim.LBFGS on log T (the first optimiser in a kernel costs a few seconds of imports)
        "replace": {"fit_temperature": '''
def fit_temperature(logits, labels):
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) against labels."""
    z = logits.detach().double()
    log_t = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return log_t.exp().item()
'''},
        "loses": [],
    },
    "temperature_golden_float32": {
        # golden-section search on log T in float32, after widening the bracket until the NLL
        # turns up on both sides: float32 arithmetic is enough for the 1e-5 nats the test asks for
        "replace": {"fit_temperature": '''
def fit_temperature(logits, labels):
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) against labels."""
    def nll(log_t):
        return F.cross_entropy(logits / math.exp(log_t), labels).item()

    lo, mid, hi = -1.0, 0.0, 1.0
    while nll(lo) < nll(mid):
        lo, mid, hi = lo - 2 * (mid - lo), lo, mid
    while nll(hi) < nll(mid):
        lo, mid, hi = mid, hi, hi + 2 * (hi - mid)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        left, right = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(left) <= nll(right):
            hi = right
        else:
            lo = left
    return math.exp((lo + hi) / 2)
'''},
        "loses": [],
    },
}
