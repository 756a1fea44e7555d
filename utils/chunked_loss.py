"""A linear layer fused with label-smoothed cross-entropy, computed chunk by chunk over the rows.

A language model's last step is ``logits = h @ W.T`` followed by the loss. With ``N`` tokens and a
vocabulary of ``V`` entries the logits alone take ``N * V`` floats (4096 x 131072 in float32 is
2 GiB), and autograd keeps more copies of that size (the log-softmax it saves, the gradient of
the logits). :func:`chunked_linear_cross_entropy` never builds the full ``[N, V]`` matrix: it
takes ``chunk_size`` rows at a time, computes their logits, their loss and, right away, their
gradient in closed form,

    dL/dz = (softmax(z) - q) * scale,      q = (1 - eps) * one_hot(y) + eps / V,

(``scale`` is ``1 / kept`` for the mean, ``1`` for the sum, ``0`` on ignored rows), then turns it
into the gradients of ``h`` and ``W`` and throws the chunk away. Peak memory is the gradients
themselves plus one ``[chunk_size, V]`` block.

This is the design of Liger-Kernel's fused linear cross-entropy (Hsu et al. 2024, arXiv:2410.10989,
https://github.com/linkedin/Liger-Kernel; its README reports a more than 4x memory reduction at a
128k vocabulary), which took the gradient-in-forward and chunking idea from
https://github.com/mgmalek/efficient_cross_entropy. Liger's Triton kernels need a CUDA GPU; this
is plain PyTorch and runs on any device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

REDUCTIONS = ("mean", "sum")
DEFAULT_CHUNK_BYTES = 256 * 2**20
"""Default budget for one chunk of float32 logits (256 MiB): 512 rows at a 131,072 vocabulary."""


def default_chunk_size(num_rows: int, vocab_size: int, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that one float32 block of logits ``[rows, vocab_size]`` fits ``budget_bytes``.

    A larger block makes bigger, more efficient matrix products; a smaller one saves memory.
    """
    if vocab_size < 1 or budget_bytes < 1 or num_rows < 0:
        raise ValueError(f"need vocab_size >= 1, budget_bytes >= 1, num_rows >= 0; got {vocab_size}, {budget_bytes}, {num_rows}")
    return max(1, min(max(num_rows, 1), budget_bytes // (4 * vocab_size)))


def _check(hidden, weight, targets, smoothing, reduction, ignore_index, chunk_size) -> None:
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if hidden.ndim != 2:
        raise ValueError(f"hidden must be 2-D [N, H], got shape {tuple(hidden.shape)}")
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D [V, H] (the layout of nn.Linear.weight), got shape {tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden [N, H] and weight [V, H] disagree on H: {tuple(hidden.shape)} vs {tuple(weight.shape)}")
    if weight.shape[0] < 1:
        raise ValueError("weight must have at least one row (one class)")
    if not hidden.is_floating_point() or hidden.dtype != weight.dtype:
        raise ValueError(f"hidden and weight must share one floating dtype, got {hidden.dtype} and {weight.dtype}")
    if targets.ndim != 1 or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must be a 1-D integer tensor of class indices, got shape {tuple(targets.shape)} and dtype {targets.dtype}")
    if len(targets) != len(hidden):
        raise ValueError(f"targets has {len(targets)} entries for {len(hidden)} rows of hidden")
    if not (hidden.device == weight.device == targets.device):
        raise ValueError(f"hidden, weight and targets must be on one device, got {hidden.device}, {weight.device}, {targets.device}")
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0.0 <= float(smoothing) <= 1.0:
        raise ValueError(f"smoothing must be a number in [0, 1], got {smoothing!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS} (per-row losses would need the full gradient per row), got {reduction!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    kept = targets[targets != ignore_index]
    if len(kept) and (int(kept.min()) < 0 or int(kept.max()) >= weight.shape[0]):
        raise ValueError(f"targets must lie in [0, {weight.shape[0]}) or equal ignore_index={ignore_index}, got values from {int(kept.min())} to {int(kept.max())}")


class LinearLabelSmoothingCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(h @ W.T, y, label_smoothing=eps)`` with the gradients computed in the forward pass.

    The forward pass already holds each chunk's softmax, so it turns it into ``grad_h`` and
    ``grad_W`` on the spot (as Liger-Kernel does) instead of keeping the logits for a backward
    pass; ``backward`` only scales them by the incoming gradient. Use it through
    :func:`chunked_linear_cross_entropy`, which checks the arguments.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, smoothing, reduction, ignore_index, chunk_size):
        n, vocab = hidden.shape[0], weight.shape[0]
        # float32 (or float64) for softmax, loss and accumulated gradients; bf16/fp16 matmuls still
        # accumulate in float32 inside the GEMM, only their [chunk, V] result is rounded.
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        low_precision = hidden.dtype != acc
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        keep = targets != ignore_index
        kept = int(keep.sum())
        # torch: the mean over no kept row is 0/0 = nan, and its gradient is zero.
        scale = (1.0 / kept if kept else 0.0) if reduction == "mean" else 1.0
        safe = torch.where(keep, targets, torch.zeros_like(targets)).long()
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty((n, hidden.shape[1]), dtype=acc, device=hidden.device) if need_h else None
        grad_w = torch.zeros((vocab, weight.shape[1]), dtype=acc, device=weight.device) if need_w else None
        step = chunk_size or default_chunk_size(n, vocab)
        for start in range(0, n, step):
            h = hidden[start : start + step]
            y = safe[start : start + step].unsqueeze(1)
            k = keep[start : start + step]
            z = h @ weight.T                       # [c, V], the only block of this size
            if low_precision:
                z = z.to(acc)
            z -= z.amax(dim=1, keepdim=True)       # shift for a stable exp; the loss does not change
            z_sum = z.sum(dim=1)                   # sum_k z_k, for the smoothing term
            z_y = z.gather(1, y).squeeze(1)        # the target's shifted logit
            z.exp_()
            norm = z.sum(dim=1)
            log_norm = norm.log()
            # -sum_k q_k log p_k with log p_k = z_k - log_norm and sum_k q_k = 1:
            row = log_norm - (1.0 - smoothing) * z_y - (smoothing / vocab) * z_sum
            total += torch.where(k, row, torch.zeros_like(row)).sum()
            if need_h or need_w:
                z /= norm.unsqueeze(1)                              # softmax
                z.scatter_add_(1, y, torch.full_like(z_y, -(1.0 - smoothing)).unsqueeze(1))
                z -= smoothing / vocab                              # softmax - q
                z *= (k.to(acc) * scale).unsqueeze(1)               # 1/kept (mean), 0 on ignored rows
                g = z.to(hidden.dtype) if low_precision else z
                if need_h:
                    grad_h[start : start + step] = g @ weight
                if need_w:
                    grad_w.addmm_(z.T, h.to(acc) if low_precision else h)
                del g
            del z  # before the next chunk's block exists: one [chunk, V] block alive at a time
        loss = total / kept if reduction == "mean" else total
        if kept == 0 and reduction == "mean":
            loss = torch.full((), math.nan, dtype=acc, device=hidden.device)
        ctx.save_for_backward(
            grad_h.to(hidden.dtype) if need_h else None,
            grad_w.to(weight.dtype) if need_w else None,
        )
        return loss.to(hidden.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        if grad_out is not None and not bool((grad_out == 1).all()):
            grad_h = grad_h * grad_out if grad_h is not None else None
            grad_w = grad_w * grad_out if grad_w is not None else None
        return grad_h, grad_w, None, None, None, None, None


def chunked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    smoothing: float = 0.0,
    reduction: str = "mean",
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Label-smoothed cross-entropy of ``hidden @ weight.T`` without materialising the logits.

    Equals ``F.cross_entropy(hidden @ weight.T, targets, label_smoothing=smoothing,
    reduction=reduction, ignore_index=ignore_index)`` in value, and ``loss.backward()`` gives the
    same gradients for ``hidden`` ``[N, H]`` and ``weight`` ``[V, H]``, while memory grows with
    ``chunk_size * V`` instead of ``N * V``. ``reduction`` is "mean" (over the rows whose target
    is not ``ignore_index``) or "sum". ``chunk_size`` rows are processed at a time (default: a
    256 MiB float32 block, see :func:`default_chunk_size`). bfloat16/float16 inputs run their
    matrix products in that dtype and everything else (softmax, loss, gradient sums) in float32.
    """
    _check(hidden, weight, targets, smoothing, reduction, ignore_index, chunk_size)
    return LinearLabelSmoothingCrossEntropy.apply(hidden, weight, targets, float(smoothing), reduction, ignore_index, chunk_size)


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
