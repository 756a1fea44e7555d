"""Choosing the torch device a notebook runs on.

Every notebook takes one ``device`` parameter. ``"auto"`` picks CUDA, then Apple's MPS, then the
CPU, so the same notebook runs on a GPU box, a Mac and a CPU-only laptop without edits.
"""
from __future__ import annotations

import torch

_KNOWN = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    """True when Apple's Metal backend is built into this torch and usable."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """Return the torch device to use.

    ``"auto"`` -> ``cuda`` if available, else ``mps`` if available, else ``cpu``. An explicit
    ``"cuda"``, ``"cuda:1"`` or ``"mps"`` must be available: asking for a GPU that is not there is
    an error rather than a silent fall-back, so a timing labelled "cuda" really ran on CUDA.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device must be a string such as 'auto', 'cpu', 'cuda' or 'mps', got {device!r}")
    name = device.strip().lower()
    kind = name.split(":", 1)[0]
    if kind not in _KNOWN:
        raise ValueError(f"unknown device {device!r}: expected one of {', '.join(_KNOWN)} (optionally 'cuda:N')")
    if kind == "auto":
        if name != "auto":
            raise ValueError(f"device 'auto' takes no index, got {device!r}")
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available; use 'auto' or 'cpu'")
    if kind == "mps" and not mps_available():
        raise ValueError(f"device {device!r} was requested but Apple MPS is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def supports_bfloat16(device: torch.device) -> bool:
    """Whether bf16 matmuls are worth benchmarking on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def supports_float64(device: str | torch.device) -> bool:
    """Whether ``device`` can hold float64 tensors: not Apple's MPS, which has no float64."""
    return torch.device(device).type != "mps"


def float_dtype(device: str | torch.device, want: torch.dtype = torch.float64) -> torch.dtype:
    """``want`` where ``device`` supports it, else float32 (float64 asked for on MPS).

    The lectures keep their float64 demonstrations on the CPU; code that must put a
    high-precision tensor on the notebook's ``device`` asks here which dtype it may use.
    """
    if want == torch.float64 and not supports_float64(device):
        return torch.float32
    return want
