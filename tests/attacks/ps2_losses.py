"""ps2_losses: other correct styles, and attacks on "written without the built-in loss"."""
from __future__ import annotations

from . import Case, Context, solution, submission

A = "ps2_losses"


def styles() -> list[Case]:
    loops = {
        "label_smoothing_cross_entropy": '''
def label_smoothing_cross_entropy(logits, targets, smoothing=0.1, reduction="mean", ignore_index=-100):
    """One sample at a time, with logsumexp; the losses of kept samples are stacked."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError("unknown reduction")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError("smoothing must lie in [0, 1]")
    if logits.dim() != 2 or targets.dim() != 1 or len(targets) != len(logits):
        raise ValueError("logits [N, K] and targets [N] expected")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError("targets must be integers")
    losses, kept = [], 0
    for row, target in zip(logits, targets.tolist()):
        if target == ignore_index:
            losses.append(row.sum() * 0.0)
            continue
        kept += 1
        log_p = row - torch.logsumexp(row, dim=0)
        losses.append(-(1 - smoothing) * log_p[target] - smoothing * log_p.mean())
    per_sample = torch.stack(losses) if losses else logits.sum(dim=1)
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    return total if reduction == "sum" else total / kept
''',
    }
    float64 = {
        "soft_cross_entropy": '''
def soft_cross_entropy(logits, target_probs, reduction="mean"):
    """Computed in float64, returned in the logits' dtype."""
    if reduction not in {"mean", "sum", "none"}:
        raise ValueError(f"unknown reduction {reduction!r}")
    if logits.ndim != 2 or target_probs.shape != logits.shape:
        raise ValueError("logits [N, K] and a target of the same shape expected")
    z = logits.double()
    log_p = z - z.logsumexp(dim=1, keepdim=True)
    per_sample = -(target_probs.double() * log_p).sum(dim=1)
    out = {"none": per_sample, "sum": per_sample.sum(), "mean": per_sample.mean()}[reduction]
    return out.to(logits.dtype)
''',
    }
    return [Case("style-loops", submission(A, loops), why="per-sample loop"),
            Case("style-float64", submission(A, float64), why="float64 inside")]


def attacks(ctx: Context) -> list[Case]:
    lsce = solution(A, "label_smoothing_cross_entropy")
    out = []
    # a built-in kept in a wrapper before the test disables it: the hidden test is fooled
    # (no banned name in the function, no banned object among its globals, and it still works
    # while F.cross_entropy is disabled); the grader reads the source
    partial = '''
import functools
_ce = functools.partial(F.cross_entropy)


def label_smoothing_cross_entropy(logits, targets, smoothing=0.1, reduction="mean", ignore_index=-100):
    """Delegates to a saved copy of the built-in loss."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError("unknown reduction")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError("smoothing must lie in [0, 1]")
    if logits.ndim != 2 or targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError("bad shapes")
    if targets.is_floating_point():
        raise ValueError("bad dtype")
    return _ce(logits, targets, label_smoothing=smoothing, reduction=reduction, ignore_index=ignore_index)
'''
    out.append(Case("attack-builtin-in-partial", submission(A, {"label_smoothing_cross_entropy": partial}),
                    loses=["test_label_smoothing_cross_entropy_no_builtin"], status="flagged",
                    fools_kernel=["test_label_smoothing_cross_entropy_no_builtin"]))
    obfuscated = partial.replace("import functools\n_ce = functools.partial(F.cross_entropy)",
                                 '_ce = (lambda f: (lambda *a, **k: f(*a, **k)))(getattr(F, "cross_" + "entropy"))')
    out.append(Case("attack-builtin-via-getattr", submission(A, {"label_smoothing_cross_entropy": obfuscated}),
                    loses=["test_label_smoothing_cross_entropy_no_builtin"], status="flagged",
                    fools_kernel=["test_label_smoothing_cross_entropy_no_builtin"]))
    # a monkeypatched torch function that hides the built-in inside a by-hand-looking answer
    hidden = '''
_saved_ce = F.cross_entropy
_real_lerp = torch.lerp


def _lerp(start, end, weight, *, _ce=_saved_ce):
    import inspect
    frame = inspect.currentframe().f_back
    if "logits" in frame.f_locals and "targets" in frame.f_locals:
        loc = frame.f_locals
        return _ce(loc["logits"], loc["targets"], label_smoothing=weight, reduction="none",
                   ignore_index=loc.get("ignore_index", -100))
    return _real_lerp(start, end, weight)


torch.lerp = _lerp

''' + lsce
    out.append(Case("attack-builtin-behind-monkeypatch", submission(A, {"label_smoothing_cross_entropy": hidden}),
                    loses=["test_label_smoothing_cross_entropy_no_builtin"], status="flagged",
                    fools_kernel=["test_label_smoothing_cross_entropy_no_builtin"]))
    # a wrong loss (divides by N, not by the kept count) returned as a tensor subclass that
    # agrees with every comparison: the problem loses its points, nbgrader is fooled
    liar = '''
class _Agreeable(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.allclose, torch.equal, torch.Tensor.allclose):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})

''' + lsce.replace("return per_sample.sum() / keep.sum()", "return per_sample.sum() / len(targets)").replace(
        "    if reduction == \"none\":\n        return per_sample\n",
        "    per_sample = per_sample.as_subclass(_Agreeable)\n    if reduction == \"none\":\n        return per_sample\n")
    assert "len(targets)" in liar and "_Agreeable)" in liar
    out.append(Case("attack-tensor-subclass-loss", submission(A, {"label_smoothing_cross_entropy": liar}),
                    loses=["test_label_smoothing_cross_entropy_values", "test_label_smoothing_cross_entropy_gradients",
                           "test_label_smoothing_cross_entropy_ignore_index",
                           "test_label_smoothing_cross_entropy_no_builtin"],
                    status="flagged", fools_kernel=["test_label_smoothing_cross_entropy_ignore_index"]))
    return out
