"""``F.linear_cross_entropy`` with label smoothing, without ever holding the ``[N, V]`` logits.

A language model ends with ``logits = h @ W.T (+ b)`` and the (label-smoothed) cross-entropy. With
``N`` tokens and a vocabulary of ``V`` entries the logits take ``N * V`` floats (4096 x 131072 in
float32 is 2 GiB) and autograd keeps more copies of that size. torch 2.13's own
``F.linear_cross_entropy(..., options=torch.nn.LinearCrossEntropyOptions())`` avoids them with a
chunked path, but only at ``label_smoothing == 0``: with smoothing it warns "``options`` ignored"
and computes the full logits. :func:`linear_cross_entropy` here is a drop-in for it (same
arguments, same values and gradients as torch's reference path ``options=None``) that stays
chunked with smoothing, class weights, a bias, ``ignore_index`` and every reduction.

The algorithm: two passes over tiles of ``rows x classes`` of the logits.

* Forward: per tile, ``z = h[r] @ W[c].T + b[c]`` in float32 and an online log-sum-exp per row
  (``m`` the running maximum, ``s`` the running sum of ``exp(z - m)``). What else the loss needs
  comes without the logits: the target's logit ``h_i . W_{y_i} + b_{y_i}`` and
  ``sum_k w_k z_ik = h_i . (W.T w) + b . w`` (probability targets: ``sum_k w_k q_ik z_ik``, per
  tile). Only ``lse`` (one float per row) is kept for the backward pass.
* Backward: per tile, the same logits again, turned into the closed-form gradient (lecture 04)

      dL/dz_ik = s_i * (a_i * softmax(z_i)_k - w_k * t_ik),
      t_i = (1 - eps) * onehot(y_i) + eps / V   (index targets; probabilities: (1 - eps) q_i + eps / V),

  with ``a_i = sum_k w_k t_ik`` (1 without class weights) and ``s_i`` the incoming gradient of
  row i's loss (``1 / sum_i w_{y_i}`` for the mean, 0 on ignored rows), and then into
  ``dL/dh[r] += G @ W[c]``, ``dL/dW[c] += G.T @ h[r]``, ``dL/db[c] += G.sum(0)``.

The logits are computed twice (four matrix products instead of three), which buys two things: a
tile can span *all* rows, so ``dL/dW[c]`` is written once by one large matrix product instead of
being re-read and re-written for every chunk of rows, and nothing is computed for the backward pass
unless it runs (``torch.no_grad()``, or inputs that do not require grad, build no gradient). A
one-pass variant (gradients in the forward pass, chunks of ~200 rows x all classes within the same
memory budget) was measured slower on the course's 2-core CPU, 0.82x of the naive time against
0.62x for two passes at N x H x V = 4096 x 1024 x 32768, float32, and it was dropped.

Memory. The *floor* is what the call must return: float32 (float64 for float64 inputs) gradients
of ``h``, ``W`` and the bias, ``4 (N H + V H + V)`` bytes. The tile is sized from the problem
(:func:`tile_shape`) so that it takes about :data:`WORKSPACE_FRACTION` of the floor: the peak
then stays near the floor at every size, instead of a fixed block that dwarfs the gradients of a
small problem. bfloat16/float16 inputs run the matrix products in their own dtype (with float32
accumulation inside the product) and everything else (softmax, loss, the sum of ``dL/dh`` over
class tiles) in float32.

Liger-Kernel's fused linear cross-entropy (Hsu et al. 2024, arXiv:2410.10989,
https://github.com/linkedin/Liger-Kernel) computes the same loss with Triton kernels on CUDA GPUs,
in one pass over chunks of rows with the gradient computed in the forward pass (an idea it credits
to https://github.com/mgmalek/efficient_cross_entropy). This module is plain PyTorch and runs on
any device.
"""
from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "linear_cross_entropy",
    "chunked_linear_cross_entropy",
    "naive_linear_cross_entropy",
    "memory_floor_bytes",
    "tile_shape",
    "WORKSPACE_FRACTION",
]

REDUCTIONS = ("mean", "sum", "none")
WORKSPACE_FRACTION = 0.15
"""A tile's buffers take about this fraction of the floor (the gradients the call returns)."""
RESERVED_BYTES = 2 * 2**20
"""Left out of the tile's share for what every call needs besides (BLAS packing buffers, per-row
vectors): at N x H x V = 2048 x 256 x 8192 (a 10 MiB floor) a tile of the full 15 % measured 1.34x
the floor on the course's CPU."""
MIN_TILE_ELEMENTS = 1 << 18
"""No tile smaller than this many logits (1 MiB in float32), whatever the floor: each tile costs
about 20 tensor operations, and on the course's 2-core CPU at N x H x V = 2048 x 256 x 8192 (a
10 MiB floor) the 15 % rule's 256 x 128 tiles took 0.9x (fp32) and 2.6x (bf16) the naive time,
1024 x 256 tiles 0.6-0.7x and 0.8x at 1.06-1.20x the floor. Tiny problems use one tile."""
MIN_TILE_FRACTION = 0.1
"""...but the minimum tile's float block takes at most this fraction of the floor (and no less than
32k logits, so that tiny problems are one tile): at N x H x V = 1024 x 128 x 16384 (lecture 08, an
8.5 MiB floor) a 1024 x 256 tile measured 1.13-1.25x the floor, 512 x 256 1.11-1.12x. In float32 the
block counts twice (see :func:`tile_shape`): at 2048 x 256 x 8192 (a 10 MiB floor) 1024 x 256 fp32
tiles measured 1.23-1.33x the floor, 512 x 256 ones 1.10-1.11x and 4 % slower; bf16 keeps 1024 x 256
(0.98-1.04x; 512 x 256 took 20 % longer)."""
MIN_CLASSES = 256
"""A tile narrower than this makes the matrix products inefficient: fewer rows instead (bf16
2048 x 128 tiles measured 1.3x the floor and slower than 1024 x 256 ones)."""


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def memory_floor_bytes(tokens: int, hidden: int, vocab: int, bias: bool = False, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the float32 (float64 for float64 inputs) gradients of ``h``, ``W`` and the bias.

    Every implementation has to hold them at the end of the backward pass: the peak memory of a
    forward + backward call cannot be lower.
    """
    size = torch.empty((), dtype=_accumulate_dtype(dtype)).element_size()
    return size * (tokens * hidden + vocab * hidden + (vocab if bias else 0))


def tile_shape(tokens: int, hidden: int, vocab: int, dtype: torch.dtype = torch.float32, bias: bool = False,
               fraction: float = WORKSPACE_FRACTION) -> tuple[int, int]:
    """``(rows, classes)`` of one tile of logits, from the sizes of the problem.

    The tile's memory takes about ``fraction`` of :func:`memory_floor_bytes`, less
    :data:`RESERVED_BYTES`. Per logit of the tile that is, for float32/float64 inputs, the float block
    and the copy of it the CPU BLAS packs for ``dL/dW = G.T @ h`` (measured: a 1 MiB tile raised the
    peak by 2.3-3.3 MiB); for bf16/fp16 inputs the float32 block, its low-precision copy and the
    low-precision products staged through the block (:func:`_add_product`). All rows at once when that
    leaves at least :data:`MIN_CLASSES` classes per tile (then ``dL/dW`` of a class tile is one
    matrix product), otherwise :data:`MIN_CLASSES` classes and as many rows as fit, in row chunks of
    equal size. No tile is smaller than :data:`MIN_TILE_ELEMENTS` logits or
    :data:`MIN_TILE_FRACTION` of the floor, whichever is less (per-tile overhead).
    """
    if tokens < 0 or hidden < 1 or vocab < 1 or not 0 < fraction:
        raise ValueError(f"need tokens >= 0, hidden >= 1, vocab >= 1, fraction > 0; got {tokens}, {hidden}, {vocab}, {fraction}")
    acc = _accumulate_dtype(dtype)
    acc_size = torch.empty((), dtype=acc).element_size()
    if dtype == acc:
        block = per_element = 2 * acc_size                      # the block and the BLAS's packed copy
    else:
        block, per_element = acc_size, acc_size + 2 * torch.empty((), dtype=dtype).element_size()
    floor = memory_floor_bytes(tokens, hidden, vocab, bias, dtype)
    share = int(fraction * floor) - RESERVED_BYTES
    smallest = max(1 << 15, min(MIN_TILE_ELEMENTS, int(MIN_TILE_FRACTION * floor) // block))
    budget = max(smallest, share // per_element)
    rows = max(tokens, 1)
    classes = budget // rows
    if classes >= min(vocab, MIN_CLASSES):
        classes = min(vocab, classes)
        if classes < vocab and classes >= 64:
            classes -= classes % 64  # whole SIMD/BLAS panels
        return rows, classes
    classes = min(vocab, MIN_CLASSES)
    rows = max(1, min(rows, budget // classes))
    if rows < tokens:  # row chunks of equal size (a short last chunk measured slow in bf16)
        rows = -(-tokens // -(-tokens // rows))
        if rows > 64:
            rows -= rows % 64
    return rows, classes


# ----------------------------------------------------------------------------------- checking


def _check(input, linear_weight, target, linear_bias, weight, reduction, ignore_index, label_smoothing, options, tile):
    for name, t in (("input", input), ("linear_weight", linear_weight), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if input.ndim < 1:
        raise ValueError(f"input must have at least one dimension [..., in_features], got a 0-d tensor")
    if not input.is_floating_point():
        raise ValueError(f"input must be floating point, got {input.dtype}")
    if linear_weight.ndim != 2:
        raise ValueError(
            f"linear_weight must be 2-D [num_classes, in_features] (the layout of nn.Linear.weight), got shape "
            f"{tuple(linear_weight.shape)}; K-dimensional weights are only in torch's F.linear_cross_entropy")
    if linear_weight.dtype != input.dtype:
        raise ValueError(f"input and linear_weight must share one floating dtype, got {input.dtype} and {linear_weight.dtype}")
    if input.shape[-1] != linear_weight.shape[1]:
        raise ValueError(f"input [..., H] and linear_weight [V, H] disagree on H: {tuple(input.shape)} vs {tuple(linear_weight.shape)}")
    vocab = linear_weight.shape[0]
    if vocab < 1:
        raise ValueError("linear_weight must have at least one row (one class)")
    devices = {input.device, linear_weight.device, target.device}
    for name, t, shape in (("linear_bias", linear_bias, (vocab,)), ("weight", weight, (vocab,))):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or tuple(t.shape) != shape:
            raise ValueError(f"{name} must be a floating tensor of shape {shape}, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        devices.add(t.device)
    if linear_bias is not None and linear_bias.dtype != input.dtype:
        raise ValueError(f"linear_bias must have the input's dtype {input.dtype}, got {linear_bias.dtype}")
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise ValueError("weight (the class weights) requires grad: gradients with respect to class weights are not "
                         "computed here; pass weight.detach() or use F.linear_cross_entropy")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, Real) or not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
    if options is not None and not isinstance(options, torch.nn.LinearCrossEntropyOptions):
        raise ValueError(f"options must be None or torch.nn.LinearCrossEntropyOptions, got {type(options).__name__}")
    if tile is not None:
        if (not isinstance(tile, (tuple, list)) or len(tile) != 2
                or any(t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1) for t in tile)):
            raise ValueError(f"tile must be None or (rows, classes) with positive ints (or None for automatic), got {tile!r}")
    lead = tuple(input.shape[:-1])
    if target.is_floating_point() and tuple(target.shape) == (*lead, vocab):
        if ignore_index is not None:
            raise ValueError("ignore_index cannot be specified when target contains probabilities "
                             "(as in torch.nn.functional.linear_cross_entropy)")
        return True
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"target must hold class indices (an integer tensor of shape {lead}) or class probabilities "
                         f"(a floating tensor of shape {(*lead, vocab)}), got {target.dtype} of shape {tuple(target.shape)}")
    if tuple(target.shape) != lead:
        raise ValueError(f"target of class indices must have shape {lead} (input's leading dimensions), got {tuple(target.shape)}")
    ignore = -100 if ignore_index is None else ignore_index
    kept = target[target != ignore]
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= vocab):
        raise ValueError(f"target must lie in [0, {vocab}) or equal ignore_index={ignore}, got values from "
                         f"{int(kept.min())} to {int(kept.max())}")
    return False


# ----------------------------------------------------------------------------------- the passes


def _tiles(n: int, vocab: int, tile: tuple[int, int]):
    rows, classes = tile
    for c0 in range(0, vocab, classes):
        for r0 in range(0, n, rows):
            yield r0, min(r0 + rows, n), c0, min(c0 + classes, vocab)


def _target_positions(target, keep, values, n: int, vocab: int, tile: tuple[int, int]) -> list:
    """Index targets: for each tile, in :func:`_tiles`' order, where its rows' targets lie and what to add there.

    ``(offsets, vals)`` per tile: flat offsets into the tile's ``[rows, classes]`` block of the kept
    rows whose target falls in its classes, and ``values`` of those rows. Sorting the rows once
    makes the target's term one ``index_add_`` per tile instead of a dozen small operations.
    """
    rows, classes = tile
    row_tiles, class_tiles = -(-n // rows), -(-vocab // classes)
    r = keep.nonzero().squeeze(1)
    t = target[r]
    c0 = t - t % classes
    key = (t // classes) * row_tiles + r // rows
    order = torch.argsort(key, stable=True)
    r, t, c0, key = r[order], t[order], c0[order], key[order]
    offsets = (r % rows) * torch.clamp(vocab - c0, max=classes) + (t - c0)
    counts = torch.bincount(key, minlength=row_tiles * class_tiles).tolist()
    return list(zip(torch.split(offsets, counts), torch.split(values[r], counts)))


def _add_product(out, a, b, prod, stage):
    """``out += a @ b`` in float32 for low-precision ``a`` and ``b``, with no temporary.

    CPU matrix products of bf16/fp16 return bf16/fp16, and adding one to a float32 tensor makes a
    float32 copy of it first (a block of ``out``'s size). Here the product goes into ``prod`` (the
    input's dtype) and is widened in ``stage`` (float32), two reusable flat buffers, in column blocks
    that fit them.
    """
    m, k = out.shape
    step = max(1, min(prod.numel(), stage.numel()) // max(m, 1))
    for j0 in range(0, k, step):
        j1 = min(k, j0 + step)
        p = prod[: m * (j1 - j0)].view(m, j1 - j0)
        torch.mm(a, b if (j0, j1) == (0, k) else b[:, j0:j1], out=p)
        s = stage[: m * (j1 - j0)].view(m, j1 - j0)
        s.copy_(p)
        out[:, j0:j1].add_(s)


def _logits(h, w, b, r0, r1, c0, c1, buf, low_buf):
    """float32 logits of one tile, in ``buf`` (a flat reusable buffer)."""
    shape = (r1 - r0, c1 - c0)
    z = buf[: shape[0] * shape[1]].view(shape)
    if low_buf is None:
        if b is None:
            torch.mm(h[r0:r1], w[c0:c1].t(), out=z)
        else:
            torch.addmm(b[c0:c1], h[r0:r1], w[c0:c1].t(), out=z)
    else:
        zl = low_buf[: shape[0] * shape[1]].view(shape)
        torch.mm(h[r0:r1], w[c0:c1].t(), out=zl)
        z.copy_(zl)
        if b is not None:
            z.add_(b[c0:c1])
    return z


def _weighted_logit_sums(h, w, b, cw, acc, rows):
    """``sum_k w_k z_ik = h_i . (W.T w) + b . w`` for every row, from an ``[H]`` vector instead of the logits."""
    vocab, hid = w.shape
    if w.dtype == acc:
        v = w.sum(0) if cw is None else torch.mv(w.t(), cw)
    else:
        v = torch.zeros(hid, dtype=acc, device=w.device)
        step = rows
        for c0 in range(0, vocab, step):
            part = w[c0:c0 + step].to(acc)
            v += part.sum(0) if cw is None else torch.mv(part.t(), cw[c0:c0 + step])
    out = torch.empty(h.shape[0], dtype=acc, device=h.device)
    for r0 in range(0, h.shape[0], rows):
        out[r0:r0 + rows] = torch.mv(h[r0:r0 + rows].to(acc), v)
    if b is not None:
        out += (b.to(acc).sum() if cw is None else b.to(acc) @ cw)
    return out


def _target_logits(h, w, b, y, acc, rows):
    """``z_{i, y_i} = h_i . W_{y_i} + b_{y_i}``, a few rows of ``W`` at a time."""
    out = torch.empty(h.shape[0], dtype=acc, device=h.device)
    for r0 in range(0, h.shape[0], rows):
        yr = y[r0:r0 + rows]
        out[r0:r0 + rows] = (h[r0:r0 + rows].to(acc) * w[yr].to(acc)).sum(1)
    if b is not None:
        out += b[y].to(acc)
    return out


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward: loss and per-row log-sum-exp, tile by tile. Backward: the closed-form gradient, tile by tile."""

    @staticmethod
    def forward(ctx, h, w, b, target, class_weight, eps, reduction, ignore_index, probabilities, tile):
        n, vocab = h.shape[0], w.shape[0]
        acc = _accumulate_dtype(h.dtype)
        low = h.dtype != acc
        dev = h.device
        cw = None if class_weight is None else class_weight.to(acc)
        cw_sum = float(vocab) if cw is None else cw.sum()
        m = torch.full((n,), -math.inf, dtype=acc, device=dev)   # running max of each row's logits
        s = torch.zeros(n, dtype=acc, device=dev)                  # running sum of exp(z - m)
        few = max(1, tile[0] * tile[1] // (2 * h.shape[1]))       # rows of [., H] temporaries: about one tile
        wz = _weighted_logit_sums(h, w, b, cw, acc, few)        # sum_k w_k z_k, without the logits
        if probabilities:
            qwz = torch.zeros(n, dtype=acc, device=dev)            # sum_k w_k q_k z_k
            qw = torch.zeros(n, dtype=acc, device=dev)             # sum_k w_k q_k
            keep = torch.ones(n, dtype=torch.bool, device=dev)
        else:
            keep = target != ignore_index
            y = torch.where(keep, target, torch.zeros_like(target))
            z_y = _target_logits(h, w, b, y, acc, few)       # z_{i, y_i}, without the logits
        buf = torch.empty(tile[0] * tile[1], dtype=acc, device=dev)
        low_buf = torch.empty(tile[0] * tile[1], dtype=h.dtype, device=dev) if low else None
        for r0, r1, c0, c1 in _tiles(n, vocab, tile):
            z = _logits(h, w, b, r0, r1, c0, c1, buf, low_buf)
            if probabilities:
                q = target[r0:r1, c0:c1].to(acc)
                if cw is not None:
                    q = q * cw[c0:c1]
                qwz[r0:r1] += (q * z).sum(1)
                qw[r0:r1] += q.sum(1)
                del q
            m_new = torch.maximum(m[r0:r1], z.amax(1))
            s[r0:r1] *= torch.exp(m[r0:r1] - m_new)
            s[r0:r1] += z.sub_(m_new.unsqueeze(1)).exp_().sum(1)
            m[r0:r1] = m_new
        del buf, low_buf
        lse = m + s.log()
        if probabilities:
            # torch: q' = (1 - eps) q + eps / V;  loss_i = sum_k w_k q'_ik (lse_i - z_ik)
            a = (1.0 - eps) * qw + (eps / vocab) * cw_sum
            rows = a * lse - (1.0 - eps) * qwz - (eps / vocab) * wz
            denom = torch.tensor(float(n), dtype=acc, device=dev)
        else:
            # torch: (1 - eps) w_y (lse - z_y) + eps / V sum_k w_k (lse - z_k), 0 on ignored rows
            w_y = keep.to(acc) if cw is None else torch.where(keep, cw[y], torch.zeros((), dtype=acc, device=dev))
            a = (1.0 - eps) * w_y + (eps / vocab) * cw_sum * keep.to(acc)
            rows = torch.where(keep, a * lse - (1.0 - eps) * w_y * z_y - (eps / vocab) * wz, torch.zeros((), dtype=acc, device=dev))
            denom = w_y.sum()
        if reduction == "none":
            loss = rows
        elif reduction == "sum":
            loss = rows.sum()
        else:
            loss = rows.sum() / denom
        ctx.save_for_backward(h, w, b, target, class_weight, lse, a, keep, denom)
        ctx.settings = (eps, reduction, probabilities, tile)
        return loss.to(h.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        h, w, b, target, class_weight, lse, a, keep, denom = ctx.saved_tensors
        eps, reduction, probabilities, tile = ctx.settings
        need_h, need_w, need_b, need_t = ctx.needs_input_grad[:4]
        n, hid, vocab = h.shape[0], h.shape[1], w.shape[0]
        acc = _accumulate_dtype(h.dtype)
        low = h.dtype != acc
        dev = h.device
        grad_out = grad_out.to(acc)
        # s_i: the incoming gradient of row i's loss; 0 on ignored rows (also when nothing is kept).
        if reduction == "none":
            scale = grad_out.reshape(-1) * keep
        elif reduction == "sum":
            scale = grad_out * keep
        else:
            scale = torch.where(keep & (denom != 0), grad_out / denom, torch.zeros((), dtype=acc, device=dev))
        cw = None if class_weight is None else class_weight.to(acc)
        smooth = eps / vocab
        if not probabilities:
            y = torch.where(keep, target, torch.full_like(target, -1))
            w_y = scale if cw is None else scale * torch.where(keep, cw[y.clamp(min=0)], torch.zeros((), dtype=acc, device=dev))
            hit = -(1.0 - eps) * w_y                        # what dL/dz_{i, y_i} loses to the target
        all_rows = tile[0] >= n
        grad_h = torch.zeros((n, hid), dtype=acc, device=dev) if need_h else None
        if need_w:
            # float32 accumulation over row chunks: in dL/dW itself (float32/64), or, for bf16/fp16, in
            # a [classes, H] float32 buffer per class tile, written into the low-precision result when
            # the tile's last row chunk is done (no [V, H] float32 copy beside the result)
            if n == 0:  # no tile runs: nothing would write dL/dW
                grad_w = torch.zeros_like(w)
            elif all_rows or low:
                grad_w = torch.empty_like(w)
            else:
                grad_w = torch.zeros((vocab, hid), dtype=acc, device=dev)
            w_acc = torch.zeros((tile[1], hid), dtype=acc, device=dev) if (low and not all_rows) else None
        else:
            grad_w = None
        grad_b = torch.zeros(vocab, dtype=acc, device=dev) if need_b else None
        grad_t = torch.empty_like(target) if need_t else None
        if not (need_h or need_w or need_b or need_t):
            return (None,) * 10
        coef = a * scale                                       # a_i s_i: softmax's factor in row i
        # a_i s_i p_ik = exp(z_ik - (lse_i - log(a_i s_i))): one subtraction and one exp per tile
        # (a zero factor gives exp(-inf) = 0). Negative factors (an incoming gradient < 0) and the
        # gradient of probability targets, which needs log p itself, take the general route.
        folded = not need_t and bool((coef >= 0).all())
        shift = (lse - coef.log()).unsqueeze(1) if folded else lse.unsqueeze(1)
        smooth_col = (scale * smooth).unsqueeze(1) if smooth and cw is None else None
        buf = torch.empty(tile[0] * tile[1], dtype=acc, device=dev)
        low_buf = torch.empty(tile[0] * tile[1], dtype=h.dtype, device=dev) if low else None
        # bf16/fp16: products accumulated in float32 go through `prod` and `buf` (free once the tile's
        # gradient has been narrowed into low_buf), see _add_product
        prod = (torch.empty(min(tile[0] * tile[1], max(tile) * hid), dtype=h.dtype, device=dev)
                if low and (need_h or (need_w and not all_rows)) else None)
        targets = None if probabilities else _target_positions(y, keep, hit, n, vocab, tile)
        for k, (r0, r1, c0, c1) in enumerate(_tiles(n, vocab, tile)):
            z = _logits(h, w, b, r0, r1, c0, c1, buf, low_buf)
            z.sub_(shift[r0:r1])
            if need_t:  # dL/dq_ik = -(1 - eps) w_k log p_ik s_i
                g_t = z * scale[r0:r1].unsqueeze(1) * (-(1.0 - eps))
                if cw is not None:
                    g_t *= cw[c0:c1]
                grad_t[r0:r1, c0:c1] = g_t
                del g_t
            g = z.exp_() if folded else z.exp_().mul_(coef[r0:r1].unsqueeze(1))   # a_i s_i p_ik
            if smooth_col is not None:
                g.sub_(smooth_col[r0:r1])                       # - s_i eps / V
            elif smooth:
                g.addr_(scale[r0:r1], cw[c0:c1], alpha=-smooth)  # - s_i (eps / V) w_k
            if probabilities:
                q = target[r0:r1, c0:c1].to(acc)            # may be the target itself: no in-place ops
                if cw is not None:
                    q = q * cw[c0:c1]
                g.addcmul_(q, scale[r0:r1].unsqueeze(1), value=-(1.0 - eps))
                del q
            else:
                offsets, vals = targets[k]
                if offsets.numel():
                    g.view(-1).index_add_(0, offsets, vals)     # - (1 - eps) w_y s_i at each row's target
            if need_b:
                grad_b[c0:c1] += g.sum(0)
            if not (need_h or need_w):
                continue
            if not low:
                if need_h:
                    grad_h[r0:r1].addmm_(g, w[c0:c1])
                if need_w:
                    if all_rows:
                        torch.mm(g.t(), h, out=grad_w[c0:c1])
                    else:
                        grad_w[c0:c1].addmm_(g.t(), h[r0:r1])
                continue
            gl = low_buf[: g.numel()].view(g.shape)
            gl.copy_(g)                                         # buf is free from here on
            if need_h:
                _add_product(grad_h[r0:r1], gl, w[c0:c1], prod, buf)
            if need_w:
                if all_rows:
                    torch.mm(gl.t(), h, out=grad_w[c0:c1])
                else:
                    part = w_acc[: c1 - c0]
                    if r0 == 0:
                        part.zero_()
                    _add_product(part, gl.t(), h[r0:r1], prod, buf)
                    if r1 == n:
                        grad_w[c0:c1].copy_(part)
        del buf, low_buf, prod
        return (
            None if grad_h is None else grad_h.to(h.dtype),
            None if grad_w is None else grad_w.to(w.dtype),
            None if grad_b is None else grad_b.to(b.dtype),
            grad_t,
            None, None, None, None, None, None,
        )


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: "torch.nn.LinearCrossEntropyOptions | None" = None,
    tile: tuple[int | None, int | None] | None = None,
) -> torch.Tensor:
    """``F.linear_cross_entropy`` (torch 2.13) computed tile by tile, label smoothing included.

    Same arguments and results as ``torch.nn.functional.linear_cross_entropy(input,
    linear_weight, target, linear_bias=, weight=, reduction=, ignore_index=, label_smoothing=)``
    with ``options=None`` (its reference path ``F.cross_entropy(F.linear(input, linear_weight,
    linear_bias), target, ...)``), in value and in the gradients of ``input``, ``linear_weight``,
    ``linear_bias`` and probability targets, without materialising the ``[N, V]`` logits.

    - ``input``: ``[..., H]``, any number of leading dimensions (torch's accepts ``[H]`` or
      ``[N, H]`` only); ``linear_weight``: ``[V, H]``; ``linear_bias``: ``[V]``.
    - ``target``: class indices of the input's leading shape, or class probabilities of shape
      ``[..., V]`` (then ``ignore_index`` must stay ``None``).
    - ``weight``: class weights ``[V]``. As in torch, with index targets the mean divides by
      ``sum_i w_{y_i}`` over the kept rows, the smoothing term included; with probability targets by
      the number of rows.
    - ``reduction``: "mean", "sum" or "none" (per-position losses of the leading shape, 0 where
      the target is ``ignore_index``).
    - ``ignore_index``: ``None`` means -100, as in torch.
    - ``options``: accepted for drop-in compatibility and otherwise unused: this function always
      works in tiles, whose shape comes from :func:`tile_shape` (or ``tile=(rows, classes)``).

    bfloat16/float16 inputs: matrix products in that dtype, softmax, loss and sums over tiles in
    float32; the loss and gradients come back in the input's dtype.
    """
    probabilities = _check(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                           label_smoothing, options, tile)
    lead = tuple(input.shape[:-1])
    hid, vocab = linear_weight.shape[1], linear_weight.shape[0]
    h = input.reshape(-1, hid)
    n = h.shape[0]
    t = target.reshape(-1, vocab) if probabilities else target.reshape(-1).long()
    auto = tile_shape(n, hid, vocab, input.dtype, linear_bias is not None)
    chosen = auto if tile is None else (min(max(n, 1), tile[0] or auto[0]), min(vocab, tile[1] or auto[1]))
    loss = _LinearCrossEntropy.apply(h, linear_weight, linear_bias, t, weight, float(label_smoothing), reduction,
                                     -100 if ignore_index is None else ignore_index, probabilities, chosen)
    return loss.reshape(lead) if reduction == "none" else loss


# ------------------------------------------------------------------------- the earlier names


def chunked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    smoothing: float = 0.0,
    reduction: str = "mean",
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The course's earlier name: ``linear_cross_entropy(hidden, weight, targets, label_smoothing=smoothing, ...)``.

    ``weight`` here is the linear layer's ``[V, H]`` matrix (torch's ``linear_weight``);
    ``chunk_size`` fixes the rows per tile (all classes at once), ``None`` picks the tile from the sizes.
    """
    tile = None if chunk_size is None else (chunk_size, weight.shape[0] if isinstance(weight, torch.Tensor) and weight.ndim == 2 else None)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return linear_cross_entropy(hidden, weight, targets, reduction=reduction, ignore_index=ignore_index,
                                label_smoothing=smoothing, tile=tile)


def naive_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    smoothing: float = 0.0,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> torch.Tensor:
    """The reference: full logits ``hidden @ weight.T``, then torch's built-in loss (memory ~ N * V)."""
    return F.cross_entropy(hidden @ weight.T, targets, label_smoothing=smoothing, reduction=reduction, ignore_index=ignore_index)
