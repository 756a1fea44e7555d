"""utils.chunked_loss.linear_cross_entropy: torch's F.linear_cross_entropy with label smoothing, in tiles.

The reference is torch's own reference path, ``F.linear_cross_entropy(..., options=None)`` (that is
``F.cross_entropy(F.linear(...), ...)``), on torch's own sample inputs
(``torch.testing._internal.common_methods_invocations``) and on label-smoothing cases of our own.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from utils.chunked_loss import (
    MIN_CLASSES,
    MIN_TILE_ELEMENTS,
    MIN_TILE_FRACTION,
    RESERVED_BYTES,
    WORKSPACE_FRACTION,
    chunked_linear_cross_entropy,
    linear_cross_entropy,
    memory_floor_bytes,
    naive_linear_cross_entropy,
    tile_shape,
)

cmi = pytest.importorskip("torch.testing._internal.common_methods_invocations")

TILES = [None, (1, 1), (2, 3), (1, None)]
"""automatic (one tile at these sizes); one logit per tile; a 2 x 3 tile; one row with all classes."""


def grads_of(loss, tensors, upstream):
    wanted = [t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad]
    return torch.autograd.grad(loss, wanted, upstream) if wanted else ()


def assert_same(ours, ref, g_ours, g_ref, what, rtol=1e-9, atol=1e-11):
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, f"{what}: {ours.shape}/{ours.dtype} vs {ref.shape}/{ref.dtype}"
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: loss\n{m}")
    assert len(g_ours) == len(g_ref)
    for i, (a, b) in enumerate(zip(g_ours, g_ref)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: gradient {i}\n{m}")


# ------------------------------------------------------------------------ torch's sample inputs


def linear_samples():
    torch.manual_seed(0)
    return list(cmi.sample_inputs_linear_cross_entropy(None, "cpu", torch.float64, True))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.7])
@pytest.mark.parametrize("tile", TILES)
def test_torch_linear_cross_entropy_samples(eps, tile):
    checked = refused = 0
    for sample in linear_samples():
        x, w, t = sample.input, *sample.args
        kw = dict(sample.kwargs)
        if w.ndim > 2:  # K-dimensional linear_weight: only torch's own function takes it
            with pytest.raises(ValueError, match="K-dimensional"):
                linear_cross_entropy(x, w, t, label_smoothing=eps, **kw)
            refused += 1
            continue
        ref = F.linear_cross_entropy(x, w, t, label_smoothing=eps, **kw)
        ours = linear_cross_entropy(x, w, t, label_smoothing=eps, tile=tile, **kw)
        upstream = torch.randn_like(ref)
        inputs = (x, w, kw.get("linear_bias"), t)
        assert_same(ours, ref, grads_of(ours, inputs, upstream), grads_of(ref, inputs, upstream),
                     f"{tuple(x.shape)} {tuple(w.shape)} {tuple(t.shape)} {t.dtype} {sorted(kw)} eps={eps} tile={tile}")
        checked += 1
    assert checked >= 50 and refused >= 1, (checked, refused)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_torch_cross_entropy_samples_as_linear_heads(eps):
    """``sample_inputs_cross_entropy``'s targets, weights and reductions, with its logits ``[N, C, d...]`` made by a linear head.

    Its logits become ``h @ W.T`` with ``h`` of shape ``[N, d..., H]`` (the class dimension last, as
    a language model has it); the reference moves the class dimension back to 1 for F.cross_entropy.
    """
    torch.manual_seed(1)
    n = 0
    for sample in cmi.sample_inputs_cross_entropy(None, "cpu", torch.float64, True):
        logits, target = sample.input, sample.args[0]
        kw = dict(sample.kwargs)
        classes, extra = logits.shape[1], logits.shape[2:]
        h = torch.randn(logits.shape[0], *extra, 5, dtype=torch.float64, requires_grad=True)
        w = torch.randn(classes, 5, dtype=torch.float64, requires_grad=True)
        probabilities = target.is_floating_point()
        ref = F.cross_entropy((h @ w.T).movedim(-1, 1), target, label_smoothing=eps, **kw)
        ours_target = target.movedim(1, -1) if probabilities else target
        ours = linear_cross_entropy(h, w, ours_target, label_smoothing=eps, **kw)
        upstream = torch.randn_like(ref)
        wrt = [h, w, target] if target.requires_grad else [h, w]   # ours_target is a view of target
        g_ref = torch.autograd.grad(ref, wrt, upstream)
        g_ours = torch.autograd.grad(ours, wrt, upstream)
        assert_same(ours, ref, g_ours, g_ref, f"cross_entropy sample {tuple(logits.shape)} {sorted(kw)} p={probabilities}")
        n += 1
    assert n >= 20


# --------------------------------------------------------------------------- label smoothing


@settings(max_examples=40, deadline=None)
@given(
    lead=st.sampled_from([(7,), (2, 5), (3, 1, 4)]),
    hidden=st.integers(1, 6),
    vocab=st.integers(1, 40),
    eps=st.sampled_from([0.0, 0.05, 0.1, 0.5, 1.0]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    class_weights=st.booleans(),
    bias=st.booleans(),
    ignore=st.sampled_from([None, -100, 0, 3]),
    tile=st.sampled_from(TILES + [(3, 8), (100, 2)]),
    seed=st.integers(0, 2**16),
)
def test_label_smoothing_cases_match_torch(lead, hidden, vocab, eps, reduction, class_weights, bias, ignore, tile, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, hidden, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(vocab, generator=gen, dtype=torch.float64, requires_grad=True) if bias else None
    cw = torch.rand(vocab, generator=gen, dtype=torch.float64) + 0.5 if class_weights else None
    t = torch.randint(0, vocab, lead, generator=gen)
    pad = -100 if ignore is None else ignore
    t.view(-1)[::3] = pad
    if reduction == "mean":
        t.view(-1)[1] = (pad + 1) % vocab if 0 <= pad < vocab else 0  # at least one kept position
    kw = dict(linear_bias=b, weight=cw, reduction=reduction, ignore_index=ignore, label_smoothing=eps)
    # torch's function takes [N, H] only: flatten the leading dimensions for the reference.
    ref = F.linear_cross_entropy(x.reshape(-1, hidden), w, t.reshape(-1), **kw)
    ref = ref.reshape(lead) if reduction == "none" else ref
    ours = linear_cross_entropy(x, w, t, tile=tile, **kw)
    upstream = torch.randn_like(ref)
    assert_same(ours, ref, grads_of(ours, (x, w, b), upstream), grads_of(ref, (x, w, b), upstream),
                f"lead={lead} V={vocab} eps={eps} {reduction} cw={class_weights} bias={bias} ignore={ignore} tile={tile}")


def test_class_weights_with_smoothing_divide_by_the_target_weights():
    """torch's semantics: with index targets the mean divides sum_i sum_k w_k q_ik (-log p_ik) by sum_i w_{y_i}."""
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(9, 4, generator=gen, dtype=torch.float64), torch.randn(6, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 6, (9,), generator=gen)
    y[2] = -100
    cw = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1
    eps = 0.3
    logp = torch.log_softmax(x @ w.T, 1)
    q = torch.full_like(logp, eps / 6)
    keep = y != -100
    q[keep, y[keep]] += 1 - eps
    by_hand = (-(q * cw * logp).sum(1) * keep).sum() / cw[y[keep]].sum()
    ours = linear_cross_entropy(x, w, y, weight=cw, label_smoothing=eps)
    assert torch.allclose(ours, by_hand, rtol=1e-12)
    # ... which is not the mean over rows that the same q as probability targets gives:
    probs = linear_cross_entropy(x[keep], w, q[keep], weight=cw)
    assert torch.allclose(probs, (-(q * cw * logp).sum(1))[keep].mean(), rtol=1e-12)
    assert not torch.allclose(ours, probs)


def test_leading_dimensions_and_reduction_none():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 8, generator=gen, requires_grad=True)          # [B, T, H]
    w = torch.randn(11, 8, generator=gen, requires_grad=True)
    y = torch.randint(0, 11, (2, 5), generator=gen)
    y[:, -2:] = -100                                                        # padding at the end
    per_token = linear_cross_entropy(x, w, y, reduction="none", label_smoothing=0.1)
    assert per_token.shape == (2, 5) and torch.all(per_token[:, -2:] == 0)
    ref = F.cross_entropy((x @ w.T).transpose(1, 2), y, reduction="none", label_smoothing=0.1)   # [B, V, T] layout
    assert torch.allclose(per_token, ref, atol=1e-6)


def test_degenerate_batches_match_torch():
    x, w = torch.randn(6, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    y = torch.full((6,), -100)
    for reduction in ("mean", "sum", "none"):
        ref = F.linear_cross_entropy(x, w, y, reduction=reduction, label_smoothing=0.1)
        ours = linear_cross_entropy(x, w, y, reduction=reduction, label_smoothing=0.1)
        torch.testing.assert_close(ours, ref, equal_nan=True)
    assert math.isnan(linear_cross_entropy(x, w, y).item()), "torch's mean over no kept row is nan (0/0)"
    xg = x.clone().requires_grad_()
    for tile in (None, (2, 2)):
        (g,) = torch.autograd.grad(linear_cross_entropy(xg, w, y, label_smoothing=0.1, tile=tile), xg)
        assert torch.all(g == 0), "no kept row: zero gradient, as torch"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tile", [None, (2, 2)])
def test_an_empty_batch_gives_zero_gradients(dtype, tile):
    """N = 0: no tile runs, and dL/dW (and dL/db) must still come back as zeros, not uninitialised memory."""
    x = torch.randn(0, 3, dtype=dtype, requires_grad=True)
    w = torch.randn(5, 3, dtype=dtype, requires_grad=True)
    b = torch.randn(5, dtype=dtype, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long)
    for reduction in ("sum", "none"):
        loss = linear_cross_entropy(x, w, y, linear_bias=b, label_smoothing=0.1, reduction=reduction, tile=tile)
        gx, gw, gb = torch.autograd.grad(loss.sum(), (x, w, b))
        assert gx.shape == (0, 3) and torch.all(gw == 0) and torch.all(gb == 0), (gw, gb)


# ------------------------------------------------------------------------------ low precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_low_precision_accumulates_in_float32(dtype, eps):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(300, 64, generator=gen).to(dtype).requires_grad_()
    w = (torch.randn(2000, 64, generator=gen) / 8).to(dtype).requires_grad_()
    y = torch.randint(0, 2000, (300,), generator=gen)
    y[::7] = -100

    def run(fn, a, b):
        loss = fn(a, b)
        return (loss.detach(), *torch.autograd.grad(loss, (a, b)))

    ours = run(lambda a, b: linear_cross_entropy(a, b, y, label_smoothing=eps, tile=(64, 256)), x, w)
    assert all(t.dtype == dtype for t in ours), "loss and gradients keep the input's dtype"
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    truth = run(lambda a, b: F.linear_cross_entropy(a, b, y, label_smoothing=eps), x64, w64)     # the same numbers in float64
    torch_ref = run(lambda a, b: F.linear_cross_entropy(a, b, y, label_smoothing=eps), x, w)    # torch's reference in dtype
    for name, o, r, tr in zip(("loss", "grad h", "grad W"), ours, torch_ref, truth):
        err = ((o.double() - tr).norm() / tr.norm()).item()
        err_ref = ((r.double() - tr).norm() / tr.norm()).item()
        assert err <= max(1.5 * err_ref, 4e-3), f"{dtype} {name}: relative error {err:.2e}, torch's reference path {err_ref:.2e}"


def test_low_precision_products_wider_than_a_tile():
    """bf16 products summed in float32 go through the tile's buffers in column blocks when H exceeds the tile's width."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(40, 96, generator=gen).bfloat16().requires_grad_()
    w = (torch.randn(70, 96, generator=gen) / 10).bfloat16().requires_grad_()
    y = torch.randint(0, 70, (40,), generator=gen)
    y[::5] = -100
    tile = (16, 32)                                   # 3 row chunks x 3 class tiles, H = 96 > 32 classes
    ours = torch.autograd.grad(linear_cross_entropy(x, w, y, label_smoothing=0.1, tile=tile), (x, w))
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    truth = torch.autograd.grad(F.linear_cross_entropy(x64, w64, y, label_smoothing=0.1), (x64, w64))
    for name, o, t in zip(("grad h", "grad W"), ours, truth):
        err = ((o.double() - t).norm() / t.norm()).item()
        assert err < 1e-2, f"{name}: relative error {err:.2e}"


# ---------------------------------------------------------------- memory, routes, no_grad


class _Ops(TorchDispatchMode):
    """Records every op's name and the shapes of the new tensors (not views, not out= buffers) ops produced."""

    def __init__(self):
        super().__init__()
        self.largest, self.names, self.shapes = 0, [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.names.append(func.__name__)
        seen = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:  # new memory, not a view
                self.largest = max(self.largest, t.numel())
                self.shapes.append(tuple(t.shape))
        return out


def _problem(n, h, v, seed):
    """float32 ``h [n, h]`` and ``W [v, h]`` that require grad, and class-index targets."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=gen, requires_grad=True)
    w = torch.randn(v, h, generator=gen, requires_grad=True)
    return x, w, torch.randint(0, v, (n,), generator=gen)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("tile", [(16, 500), (96, 64)])
def test_never_builds_the_full_logits(eps, tile):
    n, h, v = 96, 8, 500
    x, w, y = _problem(n, h, v, seed=6)
    with _Ops() as ours:
        linear_cross_entropy(x, w, y, label_smoothing=eps, tile=tile).backward()
    with _Ops() as naive:
        naive_linear_cross_entropy(x, w, y, eps).backward()
    assert naive.largest >= n * v, "the probe should see the naive version's [N, V] logits"
    assert ours.largest <= max(tile[0] * tile[1], v * h), f"an op produced {ours.largest} elements, more than one tile"


def with_grad_forward_products(tile, n, v):
    rows, classes = tile or tile_shape(n, 16, v)
    return math.ceil(n / rows) * math.ceil(v / classes)


@pytest.mark.parametrize("tile", [None, (8, 50)])
def test_no_gradient_work_without_grad(tile):
    """Under torch.no_grad(), or when nothing requires grad, no [V, H] gradient is built (issue: evaluation built grad_W)."""
    n, h, v = 64, 16, 200
    x, w, y = _problem(n, h, v, seed=7)
    with _Ops() as with_grad:
        loss = linear_cross_entropy(x, w, y, label_smoothing=0.1, tile=tile)
        loss.backward()
    assert (v, h) in with_grad.shapes, "the probe should see dL/dW being built"
    for label, call in (("no_grad", lambda: linear_cross_entropy(x, w, y, label_smoothing=0.1, tile=tile)),
                        ("detached", lambda: linear_cross_entropy(x.detach(), w.detach(), y, label_smoothing=0.1, tile=tile))):
        with _Ops() as probe:
            if label == "no_grad":
                with torch.no_grad():
                    value = call()
            else:
                value = call()
        assert value.grad_fn is None and torch.allclose(value, loss.detach())
        assert (v, h) not in probe.shapes, f"{label}: a [V, H] tensor (dL/dW) was built"
        assert sum(name.split(".")[0] in ("mm", "addmm") for name in probe.names) == with_grad_forward_products(tile, n, v), \
            f"{label}: more matrix products than the forward pass needs"


def test_only_the_gradients_asked_for():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(40, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 40, (30,), generator=gen)
    for tile in (None, (7, 9)):
        (g,) = torch.autograd.grad(linear_cross_entropy(x, w, y, label_smoothing=0.1, tile=tile), w)
        (ref,) = torch.autograd.grad(F.linear_cross_entropy(x, w, y, label_smoothing=0.1), w)
        assert torch.allclose(g, ref)


def test_second_backward():
    """The backward pass recomputes from what the forward pass saved: retain_graph works."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(12, 4, generator=gen, requires_grad=True)
    w = torch.randn(9, 4, generator=gen, requires_grad=True)
    y = torch.randint(0, 9, (12,), generator=gen)
    for tile in (None, (4, 4)):
        loss = linear_cross_entropy(x, w, y, label_smoothing=0.1, tile=tile)
        first = torch.autograd.grad(loss, (x, w), retain_graph=True)
        second = torch.autograd.grad(loss, (x, w))
        assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_tile_follows_the_sizes():
    # The headline size: all 4096 rows x a few thousand classes, within WORKSPACE_FRACTION of the floor.
    floor = memory_floor_bytes(4096, 1024, 131072)
    assert floor == 4 * (4096 + 131072) * 1024
    share = WORKSPACE_FRACTION * floor - RESERVED_BYTES
    rows, classes = tile_shape(4096, 1024, 131072)                   # float32: the block and the BLAS's packed copy
    assert rows == 4096 and classes % 64 == 0 and 0.95 * share <= rows * (classes + 64) * 8 and rows * classes * 8 <= share
    rows, classes = tile_shape(4096, 1024, 131072, torch.bfloat16)   # a float32 block, its bf16 copy, staged bf16 products
    assert rows == 4096 and 0.95 * share <= rows * (classes + 64) * 8 and rows * classes * 8 <= share
    small = memory_floor_bytes(2048, 256, 8192)                      # a 10 MiB floor: the minimum tile, fewer rows
    rows, classes = tile_shape(2048, 256, 8192, torch.bfloat16)
    assert classes == MIN_CLASSES and rows < 2048 and rows * classes == MIN_TILE_ELEMENTS
    rows, classes = tile_shape(2048, 256, 8192)                      # float32: MIN_TILE_FRACTION of the floor, counted twice
    assert classes == MIN_CLASSES and rows < 1024 and rows * classes * 8 <= MIN_TILE_FRACTION * small
    assert tile_shape(10, 4, 7) == (10, 7), "tiny problems: one tile"
    assert tile_shape(10**6, 64, 1000)[1] == MIN_CLASSES, "many rows: at least MIN_CLASSES classes, fewer rows"
    assert tile_shape(0, 4, 7)[0] >= 1 and MIN_TILE_ELEMENTS >= 1024
    assert memory_floor_bytes(2, 3, 5, bias=True, dtype=torch.float64) == 8 * (6 + 15 + 5)
    with pytest.raises(ValueError):
        tile_shape(10, 0, 7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_peak_memory_close_to_the_floor(dtype, eps):
    """The target of `make bench`, at a size that takes well under a second: peak extra memory <= 1.25 x the floor."""
    import sys

    from conftest import REPO
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench import common

    cpu = torch.device("cpu")
    if common.memory_method(cpu).startswith("unavailable"):
        pytest.skip("no resident-set high-water mark on this platform")
    n, h, v = 1024, 256, 16384
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(n, h, generator=gen).to(dtype).requires_grad_()
    w = (torch.randn(v, h, generator=gen) / 16).to(dtype).requires_grad_()
    y = torch.randint(0, v, (n,), generator=gen)
    step = lambda: torch.autograd.grad(linear_cross_entropy(x, w, y, label_smoothing=eps), (x, w))  # noqa: E731
    step()
    peak = min(common.peak_memory_bytes(step, cpu) for _ in range(2))
    floor = memory_floor_bytes(n, h, v)
    assert peak <= 1.25 * floor, f"peak {peak / 2**20:.1f} MiB = {peak / floor:.2f} x the floor {floor / 2**20:.1f} MiB"


# ------------------------------------------------------------------------- errors, old names


@pytest.mark.parametrize("case, message", [
    (lambda x, w, y: (x[0, 0], w, y), "at least one dimension"),
    (lambda x, w, y: (x, w[:, :-1], y), "disagree on H"),
    (lambda x, w, y: (x, w.double(), y), "share one floating dtype"),
    (lambda x, w, y: (x.long(), w, y), "floating point"),
    (lambda x, w, y: (x, w[None], y), "K-dimensional"),
    (lambda x, w, y: (x, w, y.float()), "class indices"),
    (lambda x, w, y: (x, w, y[:, None]), "must have shape"),
    (lambda x, w, y: (x, w, y[:-1]), "must have shape"),
    (lambda x, w, y: (x, w, torch.full_like(y, 50)), "must lie in"),
    (lambda x, w, y: (x, w, torch.full_like(y, -3)), "must lie in"),
    (lambda x, w, y: (x.tolist(), w, y), "must be a torch.Tensor"),
])
def test_bad_inputs_raise_value_error(case, message):
    x, w, y = torch.randn(37, 16), torch.randn(50, 16), torch.randint(0, 50, (37,))
    with pytest.raises(ValueError, match=message):
        linear_cross_entropy(*case(x, w, y))


@pytest.mark.parametrize("kw, message", [
    ({"label_smoothing": -0.05}, "label_smoothing"), ({"label_smoothing": 1.5}, "label_smoothing"),
    ({"label_smoothing": float("nan")}, "label_smoothing"), ({"reduction": "avg"}, "reduction"),
    ({"ignore_index": 1.0}, "ignore_index"), ({"tile": (0, 3)}, "tile"), ({"tile": 5}, "tile"),
    ({"linear_bias": torch.randn(49)}, "linear_bias"), ({"weight": torch.ones(50, 1)}, "weight must"),
    ({"weight": torch.ones(50, requires_grad=True)}, "class weights"), ({"options": "chunked"}, "options"),
])
def test_bad_options_raise_value_error(kw, message):
    x, w, y = torch.randn(37, 16), torch.randn(50, 16), torch.randint(0, 50, (37,))
    with pytest.raises(ValueError, match=message):
        linear_cross_entropy(x, w, y, **kw)


def test_probability_targets_refuse_ignore_index():
    x, w = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="ignore_index cannot be specified"):
        linear_cross_entropy(x, w, torch.softmax(torch.randn(4, 5), 1), ignore_index=-100)


def test_options_are_accepted_and_torch_would_fall_back():
    x, w, y = torch.randn(8, 3), torch.randn(5, 3), torch.randint(0, 5, (8,))
    opts = torch.nn.LinearCrossEntropyOptions()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref = F.linear_cross_entropy(x, w, y, label_smoothing=0.1, options=opts)
    assert any("options`` ignored" in str(c.message) for c in caught), "torch's chunked path refuses label smoothing"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.allclose(linear_cross_entropy(x, w, y, label_smoothing=0.1, options=opts), ref)


def test_earlier_names_still_work():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(20, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(30, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 30, (20,), generator=gen)
    y[::4] = -100
    for chunk in (None, 3):
        ours = chunked_linear_cross_entropy(x, w, y, 0.1, "sum", chunk_size=chunk)
        ref = naive_linear_cross_entropy(x, w, y, 0.1, "sum")
        assert torch.allclose(ours, ref)
        assert torch.allclose(torch.autograd.grad(ours, w)[0], torch.autograd.grad(ref, w)[0])
    assert torch.equal(naive_linear_cross_entropy(x, w, y, 0.2), F.cross_entropy(x @ w.T, y, label_smoothing=0.2))
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_linear_cross_entropy(x, w, y, chunk_size=0)
