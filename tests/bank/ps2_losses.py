"""Wrong-answer bank for ps2_losses: plausible student answers and the test cells they fail.

WRONG: one entry per misconception. ``replace`` maps an answer cell's grade_id to the full source
a student might submit for it; every other answer cell keeps the reference solution. ``loses``
lists every test cell that must score 0 with that submission; all other test cells keep full
marks. ``hint`` (optional) is a phrase the visible check cells must print for it.

RIGHT: answers written differently from the reference solution but correct: they keep all 20
points (same format, ``loses`` is empty).
"""

_LSCE_HEAD = '''
def label_smoothing_cross_entropy(logits, targets, smoothing=0.1, reduction="mean", ignore_index=-100):
    """Label-smoothed cross-entropy from class indices."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"unknown reduction {reduction!r}")
    if not 0 <= smoothing <= 1:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, K] and targets [N], got {tuple(logits.shape)} and {tuple(targets.shape)}")
'''

WRONG = {
    "naive_log_softmax": {
        # log(softmax(z)): softmax underflows to 0 for large logits, log(0) = -inf, 0 * -inf = nan
        "replace": {"soft_cross_entropy": '''
def soft_cross_entropy(logits, target_probs, reduction="mean"):
    """Cross-entropy against probability targets."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"unknown reduction {reduction!r}")
    if logits.shape != target_probs.shape:
        raise ValueError(f"shapes differ: {tuple(logits.shape)} vs {tuple(target_probs.shape)}")
    probs = torch.softmax(logits, dim=1)
    losses = -(target_probs * torch.log(probs)).sum(dim=1)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses
'''},
        "loses": ["test_soft_cross_entropy_stability"],
        "hint": "underflows to log(0) = -inf",
    },
    "mean_over_all_entries": {
        # .mean() over the [N, K] products instead of over the N per-sample losses
        "replace": {"soft_cross_entropy": '''
def soft_cross_entropy(logits, target_probs, reduction="mean"):
    """Cross-entropy against probability targets."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"unknown reduction {reduction!r}")
    if logits.dim() != 2 or logits.shape != target_probs.shape:
        raise ValueError(f"shapes differ: {tuple(logits.shape)} vs {tuple(target_probs.shape)}")
    terms = -target_probs * F.log_softmax(logits, dim=1)
    if reduction == "mean":
        return terms.mean()
    if reduction == "sum":
        return terms.sum()
    return terms.sum(dim=1)
'''},
        "loses": ["test_soft_cross_entropy_values"],
        "hint": "averaged over all N*K entries",
    },
    "dividing_by_n": {
        # masks the ignored positions, then .mean(): divides by N instead of by the kept count
        "replace": {"label_smoothing_cross_entropy": _LSCE_HEAD + '''
    log_probs = F.log_softmax(logits, dim=1)
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    nll = -log_probs.gather(1, safe.unsqueeze(1)).squeeze(1)
    smooth = -log_probs.mean(dim=1)
    losses = ((1 - smoothing) * nll + smoothing * smooth) * keep
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()
'''},
        "loses": ["test_label_smoothing_cross_entropy_ignore_index"],
        "hint": "divided by N = 6",
    },
    "smoothing_term_not_masked": {
        # masks the NLL term at ignored positions but keeps eps * mean_k(-log p_k) there
        "replace": {"label_smoothing_cross_entropy": _LSCE_HEAD + '''
    log_probs = F.log_softmax(logits, dim=1)
    keep = targets != ignore_index
    safe = targets.clone()
    safe[~keep] = 0
    nll = -log_probs.gather(1, safe.unsqueeze(1)).squeeze(1) * keep
    smooth = -log_probs.mean(dim=1)
    losses = (1 - smoothing) * nll + smoothing * smooth
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / keep.sum()
'''},
        "loses": ["test_label_smoothing_cross_entropy_ignore_index"],
        "hint": "at the ignored position 3",
    },
    "calling_builtin": {
        # the exercise's loss, by the library
        "replace": {"label_smoothing_cross_entropy": _LSCE_HEAD + '''
    return F.cross_entropy(logits, targets, label_smoothing=smoothing, reduction=reduction, ignore_index=ignore_index)
'''},
        "loses": ["test_label_smoothing_cross_entropy_no_builtin"],
        "hint": "calls a built-in loss",
    },
    "calling_nll_loss_alias": {
        # the built-in NLL under another name: the runtime switch-off misses it, the code check does not
        "replace": {"label_smoothing_cross_entropy": "from torch.nn.functional import nll_loss as nll\n" + _LSCE_HEAD + '''
    log_probs = F.log_softmax(logits, dim=1)
    keep = targets != ignore_index
    nll_part = nll(log_probs, targets, ignore_index=ignore_index, reduction="none")
    smooth = -log_probs.mean(dim=1) * keep
    losses = (1 - smoothing) * nll_part + smoothing * smooth
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / keep.sum()
'''},
        "loses": ["test_label_smoothing_cross_entropy_no_builtin"],
    },
    "smoothing_term_detached": {
        # treats the uniform part as a constant: right value, wrong gradient
        "replace": {"label_smoothing_cross_entropy": _LSCE_HEAD + '''
    log_probs = F.log_softmax(logits, dim=1)
    keep = targets != ignore_index
    safe = targets.masked_fill(~keep, 0)
    nll = -log_probs.gather(1, safe.unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        smooth = -log_probs.mean(dim=1)  # the uniform target is a constant
    losses = ((1 - smoothing) * nll + smoothing * smooth).masked_fill(~keep, 0.0)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / keep.sum()
'''},
        "loses": ["test_label_smoothing_cross_entropy_gradients"],
        "hint": "the gradients differ",
    },
    "module_drops_ignore_index": {
        # stores ignore_index but forward does not pass it on (the function's default -100 is used)
        "replace": {"LabelSmoothingLoss": '''
class LabelSmoothingLoss(nn.Module):
    """Label-smoothed cross-entropy as a module."""

    def __init__(self, smoothing=0.1, reduction="mean", ignore_index=-100):
        super().__init__()
        self.smoothing = smoothing
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, logits, targets):
        return label_smoothing_cross_entropy(logits, targets, self.smoothing, self.reduction)
'''},
        "loses": ["test_LabelSmoothingLoss_module"],
        "hint": "does forward pass smoothing, reduction and ignore_index on",
    },
    "q5_sign_of_the_change": {
        # "smoothing always raises the loss": the right size, the wrong sign
        "replace": {"q5": "q5 = 0.3\n"},
        "loses": ["test_q5"],
    },
    "q6_weights_same_denominator": {
        # assumes `weight=` means the same with index and probability targets
        "replace": {"q6": 'q6 = "b"\n'},
        "loses": ["test_q6"],
    },
    "q7_floor_in_nats": {
        # the loss floor H(q) instead of the perplexity exp(H(q))
        "replace": {"q7": "import math\n\n_q = [0.9 + 0.1 / 50257] + [0.1 / 50257]\nq7 = -_q[0] * math.log(_q[0]) - 50256 * _q[1] * math.log(_q[1])\n"},
        "loses": ["test_q7"],
    },
    "q8_conventions_not_converted": {
        # combines the two smoothings but reads the pipeline's "others" 0.2 as PyTorch's 0.2
        "replace": {"q8": "q8 = 1 - (1 - 0.2) * (1 - 0.1)\n"},
        "loses": ["test_q8"],
    },
}

RIGHT = {
    "logsumexp_and_indexing": {
        # log p = z - logsumexp(z) by hand, advanced indexing instead of gather, a class with **kwargs
        "replace": {
            "soft_cross_entropy": '''
def soft_cross_entropy(logits, target_probs, reduction="mean"):
    """Cross-entropy against probability targets."""
    if reduction not in {"mean", "sum", "none"}:
        raise ValueError(f"reduction must be mean, sum or none, not {reduction!r}")
    if logits.dim() != 2 or target_probs.shape != logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target_probs {tuple(target_probs.shape)} must both be [N, K]")
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_row = torch.einsum("nk,nk->n", target_probs, -log_p)
    return {"none": per_row, "sum": per_row.sum(), "mean": per_row.mean()}[reduction]
''',
            "label_smoothing_cross_entropy": '''
def label_smoothing_cross_entropy(logits, targets, smoothing=0.1, reduction="mean", ignore_index=-100):
    """Label-smoothed cross-entropy from class indices."""
    if reduction not in {"mean", "sum", "none"}:
        raise ValueError(f"reduction must be mean, sum or none, not {reduction!r}")
    if not (0.0 <= smoothing <= 1.0):
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    if logits.dim() != 2 or targets.dim() != 1 or len(targets) != len(logits):
        raise ValueError("expected logits [N, K] and targets [N]")
    n, k = logits.shape
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    kept = targets != ignore_index
    rows = torch.arange(n, device=logits.device)
    picked = log_p[rows, torch.where(kept, targets, 0)]
    loss = -(1 - smoothing) * picked - smoothing * log_p.sum(dim=1) / k
    loss = torch.where(kept, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    total = loss.sum()
    return total if reduction == "sum" else total / kept.sum()
''',
            "LabelSmoothingLoss": '''
class LabelSmoothingLoss(nn.Module):
    """Label-smoothed cross-entropy as a module."""

    def __init__(self, smoothing=0.1, reduction="mean", ignore_index=-100):
        super().__init__()
        self.smoothing, self.reduction, self.ignore_index = smoothing, reduction, ignore_index

    def forward(self, logits, targets):
        options = dict(smoothing=self.smoothing, reduction=self.reduction, ignore_index=self.ignore_index)
        return label_smoothing_cross_entropy(logits, targets, **options)
''',
        },
        "loses": [],
    },
}
