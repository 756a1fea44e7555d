"""ps2_losses: other correct styles, and attacks on "written without the built-in loss"."""
from __future__ import annotations

import nbformat

from . import Case, Context, submission

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


# A by-hand label-smoothed loss, correct except where {mistake} says (written out in full so
# that the cases do not depend on the wording of the reference solution).
BY_HAND = '''
def label_smoothing_cross_entropy(logits, targets, smoothing=0.1, reduction="mean", ignore_index=-100):
    """(1 - eps) * nll + eps * mean_k(-log p_k), by hand."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError("unknown reduction")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError("smoothing must lie in [0, 1]")
    if logits.ndim != 2 or targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError("logits [N, K] and targets [N] expected")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError("targets must be integers")
    log_p = torch.log_softmax(logits, dim=1)
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros_like(targets)).long()
    nll = -log_p.gather(1, safe.unsqueeze(1)).squeeze(1)
    per_sample = ((1 - smoothing) * nll - smoothing * log_p.mean(dim=1)) * keep
    {wrap}
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    return total if reduction == "sum" else total / {denominator}
'''


def by_hand(wrap: str = "", denominator: str = "keep.sum()") -> str:
    return BY_HAND.replace("{wrap}", wrap or "pass").replace("{denominator}", denominator)


# hides the built-in behind a closure: the hidden test, which looks for the built-in among the
# function's globals, does not see it
WRAP = "_ce = (lambda f: (lambda *a, **k: f(*a, **k)))(_raw)\ndel _raw\n"


def attacks(ctx: Context) -> list[Case]:
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
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError("bad dtype")
    return _ce(logits, targets, label_smoothing=smoothing, reduction=reduction, ignore_index=ignore_index)
'''
    out.append(Case("attack-builtin-in-partial", submission(A, {"label_smoothing_cross_entropy": partial}),
                    loses=["test_label_smoothing_cross_entropy_no_builtin"], status="flagged",
                    fools_kernel=["test_label_smoothing_cross_entropy_no_builtin"]))
    obfuscated = partial.replace("import functools\n_ce = functools.partial(F.cross_entropy)",
                                 '_ce = (lambda f: (lambda *a, **k: f(*a, **k)))(getattr(F, "cross_" + "entropy"))')
    assert "getattr" in obfuscated
    out.append(Case("attack-builtin-via-getattr", submission(A, {"label_smoothing_cross_entropy": obfuscated}),
                    loses=["test_label_smoothing_cross_entropy_no_builtin"], status="flagged",
                    fools_kernel=["test_label_smoothing_cross_entropy_no_builtin"]))
    # the built-in hidden in torch's own namespace, where the function looks it up
    planted = '''
_saved_builtin_ce = F.cross_entropy


def _smooth_ce(logits, targets, smoothing, reduction, ignore_index):
    return _saved_builtin_ce(logits, targets, label_smoothing=smoothing, reduction=reduction, ignore_index=ignore_index)


torch.nn.functional.smooth_ce = _smooth_ce


def label_smoothing_cross_entropy(logits, targets, smoothing=0.1, reduction="mean", ignore_index=-100):
    """Looks like it uses a torch function of its own."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError("unknown reduction")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError("smoothing must lie in [0, 1]")
    if logits.ndim != 2 or targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError("bad shapes")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError("bad dtype")
    return F.smooth_ce(logits, targets, smoothing, reduction, ignore_index)
'''
    out.append(Case("attack-builtin-planted-in-torch", submission(A, {"label_smoothing_cross_entropy": planted}),
                    loses=["test_label_smoothing_cross_entropy_no_builtin"], status="flagged",
                    fools_kernel=["test_label_smoothing_cross_entropy_no_builtin"]))
    # the static evasions of issue 12: each reaches F.cross_entropy without spelling it where the
    # old rules looked; the policy refuses the dynamic access itself
    delegate = partial.replace("import functools\n_ce = functools.partial(F.cross_entropy)\n", "{setup}")
    evasions = {
        "reduce-getattr": "import functools\n_raw = functools.reduce(getattr, ['cross_' + 'entropy'], F)\n",
        "ipython-ev": "_raw = get_ipython().ev('F.' + 'cross_' + 'entropy')\n",
        "ipython-run-cell": "get_ipython().run_cell('_raw = F.' + 'cross_' + 'entropy')\n",
        "module-on-disk": ("with open('helper_ce.py', 'w') as _f:\n"
                           "    _f.write('import torch.nn.functional as F\\nce = F.' + 'cross_' + 'entropy\\n')\n"
                           "import helper_ce\n_raw = helper_ce.ce\n"),
        "overrides-table": ("_raw = next(f for f in torch.overrides.get_overridable_functions()[F] "
                            "if f.__name__.startswith('cross_'))\n"),
        "torch-ops": ("def _raw(z, y, label_smoothing=0.0, reduction='mean', ignore_index=-100):\n"
                      "    return torch.ops.aten.cross_entropy_loss(z, y, None, {'none': 0, 'mean': 1, 'sum': 2}[reduction], "
                      "ignore_index, label_smoothing)\n"),
    }
    for name, setup in evasions.items():
        out.append(Case(f"attack-builtin-via-{name}",
                        submission(A, {"label_smoothing_cross_entropy": delegate.replace("{setup}", setup + WRAP)}),
                        loses=["test_label_smoothing_cross_entropy_no_builtin"], status="flagged",
                        fools_kernel=["test_label_smoothing_cross_entropy_no_builtin"]))
    # the built-in hidden in a cell tagged like a probe (wrapped, so the hidden test's globals check misses it): the static checks read it all the same
    tagged = submission(A, {"label_smoothing_cross_entropy": delegate.replace("{setup}", "")})
    helper = nbformat.v4.new_code_cell("_raw = F.cross_entropy\n" + WRAP)
    helper.metadata["tags"] = ["autograder-probe"]
    helper.id = "autograder-probe-helper"
    answer_at = next(i for i, c in enumerate(tagged.cells)
                     if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "label_smoothing_cross_entropy")
    tagged.cells.insert(answer_at + 1, helper)
    out.append(Case("attack-builtin-in-probe-tagged-cell", tagged,
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

''' + by_hand(wrap="per_sample = per_sample.as_subclass(_Agreeable)", denominator="len(targets)")
    out.append(Case("attack-tensor-subclass-loss", submission(A, {"label_smoothing_cross_entropy": liar}),
                    loses=["test_label_smoothing_cross_entropy_values", "test_label_smoothing_cross_entropy_gradients",
                           "test_label_smoothing_cross_entropy_ignore_index",
                           "test_label_smoothing_cross_entropy_no_builtin"],
                    status="flagged", fools_kernel=["test_label_smoothing_cross_entropy_ignore_index"]))
    return out
