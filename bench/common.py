"""Timing and peak-memory measurement shared by the benchmarks, device-aware.

Timing
    Every comparison runs its candidates *interleaved* in the same process: after warm-up calls,
    each round times every candidate once (in a rotating order), so a burst of load from another
    process hits all candidates alike. A sample is the mean over ``number`` back-to-back calls,
    with ``number`` chosen so that a sample lasts at least ``min_sample_s`` (as :mod:`timeit`
    does). We report the median sample in milliseconds, and a candidate's ratio to the reference
    as the median of the per-round ratios. On CUDA the clock is a pair of CUDA events around the
    calls; elsewhere ``time.perf_counter`` (CPU kernels run synchronously).

Peak memory
    CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus what
    was allocated before the call, i.e. the extra memory the call needed at its worst moment.

    CPU: torch's CPU allocator is invisible to :mod:`tracemalloc`, so we ask the kernel. On Linux,
    writing ``5`` to ``/proc/self/clear_refs`` resets the process's resident-set high-water mark
    (``VmHWM`` in ``/proc/self/status``). We collect Python's garbage, tell glibc to give every
    block over 64 KiB its own mmap for the duration of the call (so a freed tensor leaves the
    resident set at once instead of lingering as a reusable hole) and to return what it holds
    (``malloc_trim``), reset the mark, read the current resident size, make one call, and report
    ``VmHWM`` minus that baseline. This counts every page the call touched, torch's buffers and
    the BLAS library's scratch space alike, at page granularity (4 KiB), like a caching
    allocator's peak would. ``tests/test_bench.py`` checks it against a tensor of known size.
    Timed calls run under glibc's usual settled thresholds instead (see
    :func:`allocator_steady_state`). Where the interface is missing (macOS, Windows, MPS) the
    peak is reported as ``None``.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from utils.device import pick_device, supports_bfloat16

MiB = 2**20

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


# --------------------------------------------------------------------------------------- device


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device to benchmark on (``"auto"``: CUDA, then MPS, then CPU)."""
    return pick_device(device)


def dtypes_for(device: torch.device) -> list[torch.dtype]:
    """float32 always; bfloat16 too where the device runs it (see ``utils.device.supports_bfloat16``)."""
    return [torch.float32] + ([torch.bfloat16] if supports_bfloat16(device) else [])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def environment(device: torch.device) -> dict:
    """What the numbers were measured on, stored beside them in every JSON file."""
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_name(),
        "timing_method": timing_method(device),
        "memory_method": memory_method(device),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------------------- timing


def timing_method(device: torch.device) -> str:
    clock = "CUDA events" if device.type == "cuda" else "time.perf_counter"
    return f"{clock}; candidates interleaved round by round after warm-up; median sample, ratio = median of per-round ratios"


def _time_calls(fn: Callable[[], object], number: int, device: torch.device) -> float:
    """Seconds per call, averaged over ``number`` consecutive calls."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3 / number
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    synchronize(device)
    return (time.perf_counter() - t0) / number


def time_interleaved(
    candidates: Mapping[str, Callable[[], object]],
    device: torch.device,
    warmup: int = 2,
    repeat: int | Callable[[float, int], int] = 7,
    min_sample_s: float = 0.02,
) -> dict[str, list[float]]:
    """Milliseconds per call of each candidate: ``repeat`` samples each, taken round-robin.

    ``warmup`` calls per candidate come first (lazy initialisation, allocator growth, caches);
    ``min_sample_s=0`` times single calls, for sizes already warmed up that take seconds.
    ``repeat`` may also be a rule ``repeat(call_s, n_candidates)``, given the first candidate's
    single-call time from the warm-up (``inf`` when there was none), to size the rounds to a budget.
    """
    if not candidates:
        raise ValueError("time_interleaved needs at least one candidate")
    if warmup < 0 or (not callable(repeat) and repeat < 1) or min_sample_s < 0:
        raise ValueError(f"need warmup >= 0, repeat >= 1 and min_sample_s >= 0, got {warmup}, {repeat}, {min_sample_s}")
    names = list(candidates)
    if device.type == "cpu":
        allocator_steady_state()
    number, single = {}, {}
    for name in names:
        single[name] = math.inf
        # min_sample_s=0 means one call per sample (big sizes): no call is needed to calibrate.
        for _ in range(warmup if min_sample_s == 0 else max(warmup, 1)):
            single[name] = min(single[name], _time_calls(candidates[name], 1, device))
        number[name] = max(1, math.ceil(min_sample_s / single[name])) if 0 < single[name] < math.inf else 1
    if callable(repeat):
        repeat = repeat(single[names[0]], len(names))
    if repeat < 1:
        raise ValueError(f"the repeat rule gave {repeat} rounds; it must give at least 1")
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_time_calls(candidates[name], number[name], device) * 1e3)
    return samples


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ratio_to(samples: Mapping[str, Sequence[float]], reference: str) -> dict[str, float]:
    """Per candidate, the median over rounds of (its time / the reference's time in that round)."""
    if reference not in samples:
        raise ValueError(f"reference {reference!r} is not among the candidates {sorted(samples)}")
    ref = samples[reference]
    return {name: median([a / b for a, b in zip(vals, ref)]) for name, vals in samples.items()}


# --------------------------------------------------------------------------------------- memory


def _linux_hwm_available() -> bool:
    if not (_CLEAR_REFS.exists() and _STATUS.exists()):
        return False
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def _status_kib(key: str) -> int | None:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


_LIBC = None
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MEASURE_MMAP_THRESHOLD = 64 * 1024
STEADY_MMAP_THRESHOLD = 32 * MiB


def _glibc():
    """glibc through ctypes, or None elsewhere (musl, macOS, Windows)."""
    global _LIBC
    if _LIBC is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            lib.malloc_trim, lib.mallopt  # noqa: B018 (glibc only)
            _LIBC = lib
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC or None


def allocator_steady_state() -> None:
    """Fix glibc's thresholds at the values its adaptive rule settles on for large tensors.

    glibc starts by serving blocks over 128 KiB with their own mmap and raises that threshold (up
    to 32 MiB) as such blocks are freed, so the first calls of a benchmark page-fault more than
    later ones. Setting the threshold to 32 MiB (and the trim threshold to twice that, as the
    adaptive rule does) makes every timed call run under the same rule, whatever ran before.
    """
    libc = _glibc()
    if libc:
        libc.mallopt(_M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * STEADY_MMAP_THRESHOLD)


def _allocator_for_measuring() -> None:
    """Serve every block over 64 KiB with its own mmap, so a freed block leaves the resident set at once.

    Otherwise glibc may keep a freed block of up to 32 MiB resident for reuse; a later block that
    does not fit in that hole is counted on top of it, and the peak comes out one block too high.
    """
    libc = _glibc()
    if libc:
        libc.mallopt(_M_MMAP_THRESHOLD, MEASURE_MMAP_THRESHOLD)
        libc.malloc_trim(0)


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated() - memory_allocated() before the call"
    if device.type == "cpu" and _linux_hwm_available():
        return ("resident-set high-water mark (VmHWM, reset via /proc/self/clear_refs) minus the resident size before the call, "
                "blocks over 64 KiB mmapped on their own while measuring")
    return "unavailable on this platform"


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Extra memory one call of ``fn`` needs at its peak, in bytes (``None`` where unmeasurable).

    Whatever ``fn`` returns is dropped before the function returns, but it counts while alive.
    """
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return int(peak)
    if device.type != "cpu" or not _linux_hwm_available():
        fn()
        return None
    _allocator_for_measuring()
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
        out = fn()
        peak = _status_kib("VmHWM")
        del out
    finally:
        allocator_steady_state()
    return max(0, peak - before) * 1024


def to_mib(nbytes: int | None) -> float | None:
    return None if nbytes is None else round(nbytes / MiB, 1)


# --------------------------------------------------------------------------------------- output


def write_json(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """A plain fixed-width text table (floats to 3 significant figures, None as '-')."""

    def cell(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "NO"
        if isinstance(v, float):
            if v == 0 or 0.01 <= abs(v) < 1e5:
                return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
            return f"{v:.2e}"
        return str(v)

    text = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) if text else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(t, widths)) for t in text]
    return "\n".join(lines)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------------------- output, CLI


def save_figure(fig, path: str | Path, legend_fontsize: int = 8) -> Path:
    """Add each axis's legend, lay the figure out, write it at 110 dpi and close it."""
    import matplotlib.pyplot as plt

    for ax in fig.axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=legend_fontsize)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """The options every ``python -m bench.<name>`` takes: --out, --quick, --device."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", default="build/bench", help="folder for the JSON file and the plot")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    return parser
