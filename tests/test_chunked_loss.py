"""utils.chunked_loss: same loss and gradients as h @ W.T + F.cross_entropy, without the [N, V] logits."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from utils.chunked_loss import chunked_linear_cross_entropy, default_chunk_size, naive_linear_cross_entropy


def make(n=37, h=16, v=50, dtype=torch.float32, seed=0, ignore_every=3, ignore_index=-100):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen)
    if ignore_every:
        targets[::ignore_every] = ignore_index
    return hidden, weight, targets


def loss_and_grads(fn, hidden, weight, targets, upstream=1.0, **kw):
    loss = fn(hidden, weight, targets, **kw)
    grads = torch.autograd.grad(loss * upstream, (hidden, weight))
    return loss.detach(), *grads


def assert_close(ours, ref, rtol, atol, what):
    for name, a, b in zip(("loss", "grad h", "grad W"), ours, ref):
        assert a.dtype == b.dtype, f"{what}: {name} dtype {a.dtype}, reference {b.dtype}"
        assert torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True), \
            f"{what}: {name} differs from the reference by {(a.double() - b.double()).abs().max().item():.3e}"


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.35, 1.0])
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_matches_builtin_float64(reduction, smoothing, chunk_size):
    hidden, weight, targets = make(dtype=torch.float64, seed=int(smoothing * 100) + (chunk_size or 0))
    kw = dict(smoothing=smoothing, reduction=reduction)
    ours = loss_and_grads(chunked_linear_cross_entropy, hidden, weight, targets, upstream=2.5, chunk_size=chunk_size, **kw)
    ref = loss_and_grads(naive_linear_cross_entropy, hidden, weight, targets, upstream=2.5, **kw)
    assert_close(ours, ref, rtol=1e-10, atol=1e-12, what=f"float64 {reduction} eps={smoothing} chunk={chunk_size}")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("ignore_every", [0, 2])
def test_matches_builtin_float32(reduction, ignore_every):
    hidden, weight, targets = make(n=300, h=32, v=1000, ignore_every=ignore_every, seed=1)
    kw = dict(smoothing=0.1, reduction=reduction)
    ours = loss_and_grads(chunked_linear_cross_entropy, hidden, weight, targets, chunk_size=64, **kw)
    ref = loss_and_grads(naive_linear_cross_entropy, hidden, weight, targets, **kw)
    assert_close(ours, ref, rtol=1e-4, atol=1e-5, what=f"float32 {reduction}")


def test_builtin_reference_is_what_it_says():
    hidden, weight, targets = make(dtype=torch.float64)
    ref = F.cross_entropy(hidden @ weight.T, targets, label_smoothing=0.2, ignore_index=-100)
    assert torch.equal(naive_linear_cross_entropy(hidden, weight, targets, 0.2), ref)


def test_mean_divides_by_kept_rows_and_ignored_rows_get_no_gradient():
    hidden, weight, targets = make(n=10, dtype=torch.float64, ignore_every=0)
    targets[[1, 4, 5]] = 7  # a custom ignore_index
    loss, g_h, _ = loss_and_grads(chunked_linear_cross_entropy, hidden, weight, targets, smoothing=0.1, ignore_index=7, chunk_size=3)
    keep = targets != 7
    per_row = F.cross_entropy((hidden @ weight.T)[keep], targets[keep], label_smoothing=0.1, reduction="none")
    assert torch.allclose(loss, per_row.sum() / keep.sum()), "the mean must divide by the number of kept rows"
    assert torch.all(g_h[~keep] == 0), "ignored rows must get a zero gradient"
    assert torch.all(g_h[keep].abs().sum(1) > 0)


def test_all_ignored_matches_torch():
    hidden, weight, targets = make(n=6, dtype=torch.float64)
    targets[:] = -100
    for reduction in ("mean", "sum"):
        ours = loss_and_grads(chunked_linear_cross_entropy, hidden, weight, targets, reduction=reduction, smoothing=0.1)
        ref = loss_and_grads(naive_linear_cross_entropy, hidden, weight, targets, reduction=reduction, smoothing=0.1)
        assert_close(ours, ref, rtol=0, atol=0, what=f"all ignored, {reduction}")
    mean_loss = chunked_linear_cross_entropy(hidden, weight, targets, 0.1, "mean")
    assert math.isnan(mean_loss.item()), "torch's mean over no kept row is nan (0/0)"


def test_bfloat16_in_float32_accumulate():
    hidden, weight, targets = make(n=256, h=64, v=2000, dtype=torch.bfloat16, seed=2)
    loss, g_h, g_w = loss_and_grads(chunked_linear_cross_entropy, hidden, weight, targets, smoothing=0.1, chunk_size=50)
    assert (loss.dtype, g_h.dtype, g_w.dtype) == (torch.bfloat16,) * 3, "outputs keep the input dtype"
    # Reference: the same bf16 numbers, everything in float64.
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = loss_and_grads(naive_linear_cross_entropy, h64, w64, targets, smoothing=0.1)
    for name, a, b in zip(("loss", "grad h", "grad W"), (loss, g_h, g_w), ref):
        err = ((a.double() - b).norm() / b.norm()).item()
        assert err < 2e-2, f"bf16 {name}: relative error {err:.2e} vs a float64 reference"
    # ...and no worse than the naive version in bf16 by more than a bf16 rounding.
    naive = loss_and_grads(naive_linear_cross_entropy, hidden, weight, targets, smoothing=0.1)
    err_naive = ((naive[2].double() - ref[2]).norm() / ref[2].norm()).item()
    err_ours = ((g_w.double() - ref[2]).norm() / ref[2].norm()).item()
    assert err_ours <= err_naive + 4e-3, f"bf16 grad W: chunked error {err_ours:.2e} vs naive bf16 {err_naive:.2e}"


def test_only_the_needed_gradients_and_no_grad():
    hidden, weight, targets = make(dtype=torch.float64)
    frozen = hidden.detach()
    loss = chunked_linear_cross_entropy(frozen, weight, targets, 0.1)
    loss.backward()
    ref_w = torch.autograd.grad(naive_linear_cross_entropy(frozen, weight, targets, 0.1), weight)[0]
    assert torch.allclose(weight.grad, ref_w)
    with torch.no_grad():
        value = chunked_linear_cross_entropy(hidden, weight, targets, 0.1)
    assert value.grad_fn is None and torch.allclose(value, naive_linear_cross_entropy(hidden, weight, targets, 0.1).detach())


def test_int32_targets_and_default_smoothing_is_plain_cross_entropy():
    hidden, weight, targets = make(dtype=torch.float64, ignore_every=0)
    ours = chunked_linear_cross_entropy(hidden, weight, targets.int())
    assert torch.allclose(ours, F.cross_entropy(hidden @ weight.T, targets))


class _LargestOutput(TorchDispatchMode):
    """Records the largest number of elements any single op produced."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_builds_the_full_logits():
    n, h, v, chunk = 96, 8, 500, 16
    hidden, weight, targets = make(n=n, h=h, v=v)
    with _LargestOutput() as chunked:
        loss = chunked_linear_cross_entropy(hidden, weight, targets, 0.1, chunk_size=chunk)
        loss.backward()
    with _LargestOutput() as naive:
        naive_linear_cross_entropy(hidden, weight, targets, 0.1).backward()
    assert naive.largest >= n * v, "the probe should see the naive version's [N, V] logits"
    assert chunked.largest <= max(chunk * v, v * h), f"an op produced {chunked.largest} elements, more than one [{chunk}, {v}] block"


def test_default_chunk_size():
    assert default_chunk_size(4096, 131072) == 512, "256 MiB of float32 logits at V = 131072"
    assert default_chunk_size(10, 1000) == 10, "never more rows than there are"
    assert default_chunk_size(4096, 10**9) == 1
    with pytest.raises(ValueError):
        default_chunk_size(10, 0)


@pytest.mark.parametrize("case, message", [
    (lambda h, w, y: (h[0], w, y), "hidden must be 2-D"),
    (lambda h, w, y: (h, w[:, :-1], y), "disagree on H"),
    (lambda h, w, y: (h, w.double(), y), "share one floating dtype"),
    (lambda h, w, y: (h.long(), w.long(), y), "floating dtype"),
    (lambda h, w, y: (h, w, y.float()), "integer tensor"),
    (lambda h, w, y: (h, w, y[:, None]), "1-D integer tensor"),
    (lambda h, w, y: (h, w, y[:-1]), "entries for"),
    (lambda h, w, y: (h, w, torch.full_like(y, 50)), "must lie in"),
    (lambda h, w, y: (h, w, torch.full_like(y, -3)), "must lie in"),
    (lambda h, w, y: (h.tolist(), w, y), "must be a torch.Tensor"),
])
def test_bad_inputs_raise_value_error(case, message):
    hidden, weight, targets = make()
    with pytest.raises(ValueError, match=message):
        chunked_linear_cross_entropy(*case(hidden.detach(), weight.detach(), targets))


@pytest.mark.parametrize("kw, message", [
    ({"smoothing": -0.05}, "smoothing"), ({"smoothing": 1.5}, "smoothing"), ({"smoothing": float("nan")}, "smoothing"),
    ({"reduction": "none"}, "reduction"), ({"reduction": "avg"}, "reduction"),
    ({"chunk_size": 0}, "chunk_size"), ({"chunk_size": 2.5}, "chunk_size"), ({"ignore_index": 1.0}, "ignore_index"),
])
def test_bad_options_raise_value_error(kw, message):
    hidden, weight, targets = make()
    with pytest.raises(ValueError, match=message):
        chunked_linear_cross_entropy(hidden, weight, targets, **kw)
