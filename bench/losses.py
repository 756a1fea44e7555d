"""Loss benchmark: the course's label-smoothed cross-entropy against torch's built-in and a naive one.

Three ways to compute the same loss, forward and backward, over a batch of 4096 rows and 10 to
32,000 classes, in float32 and (where the device runs it) bfloat16:

- ``builtin``: ``F.cross_entropy(logits, targets, label_smoothing=eps)``, the reference;
- ``solution``: the course's ``label_smoothing_cross_entropy``, the memory-light form
  ``(1 - eps) * nll + eps * mean_k(-log p_k)``, loaded from the answer cell of
  ``source/ps2_losses/ps2_losses.ipynb`` (grade_id ``label_smoothing_cross_entropy``);
- ``dense``: the textbook form, which builds the smoothed target ``q`` as a dense ``[N, K]``
  tensor and computes ``-(q * log_softmax(z)).sum(1).mean()``.

Reported per size: median milliseconds, the ratio to the built-in (median of per-round ratios,
see :mod:`bench.common`), and the peak extra memory of one forward+backward call.
``python -m bench.losses [--quick] [--solution PATH]``.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from bench import common

REPO = Path(__file__).resolve().parents[1]
SOURCE_NOTEBOOK = REPO / "source" / "ps2_losses" / "ps2_losses.ipynb"
GRADE_ID = "label_smoothing_cross_entropy"
SMOOTHING = 0.1
TARGET_RATIO = 1.1
"""The solution should cost at most this multiple of the built-in's time (reported, not asserted)."""

BATCH = 4096
CLASSES = (10, 100, 1000, 8000, 32000)
SAMPLE_S = 0.005
"""A timing sample lasts at least this long (several calls where one call is shorter)."""
BUDGET_S = 3.0
"""Rounds per size: as many as fit in about this many seconds, between MIN_ROUNDS and MAX_ROUNDS.

On a shared machine a burst of load slows whichever candidate is running; many short rounds
make the median of the per-round ratios robust to that (small sizes get ~200 rounds, sizes whose
single call takes seconds get MIN_ROUNDS).
"""
MIN_ROUNDS, MAX_ROUNDS = 5, 201
QUICK_BATCH = 64
QUICK_CLASSES = (10, 100)

_MARKER = re.compile(r"^\s*###\s*(BEGIN|END)\s+SOLUTION\s*$")
_IMPORT = re.compile(r"^(import\s+\S|from\s+\S+\s+import\s+\S)")


# ----------------------------------------------------------------------- the course's solution


def _cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def load_solution(path: str | Path = SOURCE_NOTEBOOK, grade_id: str = GRADE_ID) -> Callable:
    """The function defined by the nbgrader answer cell ``grade_id`` of the notebook at ``path``.

    The cell's ``### BEGIN SOLUTION`` / ``### END SOLUTION`` lines are dropped and the rest is run
    after the notebook's earlier import lines and earlier answer cells (a solution may use a
    helper another answer cell defined).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the loss benchmark times the course's solution, the answer cell "
                                f"'{grade_id}' of that notebook (pass --solution PATH to use another copy)")
    # Plain JSON: nbformat would cost seconds of imports (jsonschema) for three fields.
    nb = json.loads(path.read_text(encoding="utf-8"))
    preamble: list[tuple[str, str]] = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        meta = cell.get("metadata", {}).get("nbgrader", {})
        source = _cell_source(cell)
        if meta.get("grade_id") == grade_id:
            if not meta.get("solution", False):
                raise ValueError(f"{path}: cell '{grade_id}' is not an nbgrader answer (solution) cell")
            code = "\n".join(line for line in source.splitlines() if not _MARKER.match(line))
            namespace: dict = {"__name__": f"solution_{grade_id}"}
            for kind, text in preamble:
                try:
                    exec(compile(text, f"{path.name}:{kind}", "exec"), namespace)
                except Exception:
                    if kind == "imports":
                        raise
                    # an earlier answer cell that needs the notebook's state: not ours to time
            exec(compile(code, f"{path.name}:{grade_id}", "exec"), namespace)
            fn = namespace.get(grade_id)
            if not callable(fn):
                raise ValueError(f"{path}: cell '{grade_id}' does not define a function named {grade_id}")
            return fn
        if meta.get("solution", False) and not meta.get("grade", False):
            preamble.append(("answer cell " + str(meta.get("grade_id")), "\n".join(line for line in source.splitlines() if not _MARKER.match(line))))
        else:
            imports = [line for line in source.splitlines() if _IMPORT.match(line)]
            if imports:
                preamble.append(("imports", "\n".join(imports)))
    raise ValueError(f"{path}: no code cell with nbgrader grade_id '{grade_id}' (the answer cell the loss benchmark times)")


# ----------------------------------------------------------------------------- the candidates


def dense_label_smoothing_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = SMOOTHING) -> torch.Tensor:
    """The naive form: a dense ``[N, K]`` smoothed target, then soft cross-entropy (mean)."""
    k = logits.shape[1]
    q = torch.full_like(logits, smoothing / k)
    q.scatter_(1, targets.unsqueeze(1), 1.0 - smoothing + smoothing / k)
    return -(q * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def builtin_label_smoothing_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = SMOOTHING) -> torch.Tensor:
    return F.cross_entropy(logits, targets, label_smoothing=smoothing)


def candidates(solution: Callable) -> dict[str, Callable]:
    """name -> loss(logits, targets), the reference first."""
    return {
        "builtin": builtin_label_smoothing_cross_entropy,
        "solution": lambda z, y: solution(z, y, smoothing=SMOOTHING),
        "dense": dense_label_smoothing_cross_entropy,
    }


def _forward_backward(loss_fn: Callable, logits: torch.Tensor, targets: torch.Tensor) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        loss = loss_fn(logits, targets)
        (grad,) = torch.autograd.grad(loss, logits)
        return grad

    return step


def fixed_cost(solution: Callable, device: torch.device, quick: bool = False) -> dict:
    """Milliseconds per forward+backward call of one row of 10 classes: what a call costs besides its kernels.

    At 4096 x 10 the kernels take a few tenths of a millisecond, so this part (Python calls, the
    autograd engine) decides the ratio there: the built-in runs its dozen ops from C++, the solution
    from Python.
    """
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 10, generator=gen).to(device).requires_grad_()
    targets = torch.randint(0, 10, (1,), generator=gen).to(device)
    fns = {name: _forward_backward(fn, logits, targets) for name, fn in candidates(solution).items() if name != "dense"}
    samples = common.time_interleaved(fns, device, warmup=1, min_sample_s=SAMPLE_S,
                                      repeat=lambda call_s, n: rounds_for(call_s, n, quick))
    return {"batch": 1, "classes": 10, "dtype": "float32", **{f"{name}_ms": round(common.median(v), 4) for name, v in samples.items()}}


def rounds_for(call_s: float, n_candidates: int, quick: bool = False) -> int:
    """How many interleaved rounds fit in BUDGET_S when one call takes ``call_s`` seconds."""
    if quick:
        return 3
    round_s = n_candidates * max(call_s, SAMPLE_S)
    return int(min(MAX_ROUNDS, max(MIN_ROUNDS, BUDGET_S // round_s)))


# ------------------------------------------------------------------------------------ the run


def run(out_dir: str | Path = "build/bench", quick: bool = False, device: str | torch.device = "auto",
        solution_path: str | Path = SOURCE_NOTEBOOK, plot: bool = True) -> dict:
    """Run the benchmark, write ``losses.json`` (and ``losses.png``) in ``out_dir``, return the data."""
    dev = common.resolve_device(device)
    solution = load_solution(solution_path)
    batch, sizes = (QUICK_BATCH, QUICK_CLASSES) if quick else (BATCH, CLASSES)
    # The agreement check below already runs every candidate once; one more call calibrates the
    # number of calls per sample and, from the built-in's time, the number of rounds (see BUDGET_S).
    warmup = 1
    env = common.environment(dev)
    results = []
    for dtype in common.dtypes_for(dev):
        for k in sizes:
            gen = torch.Generator().manual_seed(k)
            logits = (3 * torch.randn(batch, k, generator=gen)).to(device=dev, dtype=dtype).requires_grad_()
            targets = torch.randint(0, k, (batch,), generator=gen).to(dev)
            fns = {name: _forward_backward(fn, logits, targets) for name, fn in candidates(solution).items()}
            # Same numbers first: a fast wrong loss is no result.
            ref = fns["builtin"]()
            errors = {name: float((fn() - ref).abs().max()) for name, fn in fns.items()}
            samples = common.time_interleaved(fns, dev, warmup=warmup, min_sample_s=SAMPLE_S,
                                              repeat=lambda call_s, n: rounds_for(call_s, n, quick))
            rounds = len(samples["builtin"])
            ratios = common.ratio_to(samples, "builtin")
            for name, fn in fns.items():
                results.append({
                    "dtype": common.dtype_name(dtype),
                    "batch": batch,
                    "classes": k,
                    "method": name,
                    "ms": round(common.median(samples[name]), 4),
                    "ms_samples": [round(s, 4) for s in samples[name]],
                    "rounds": rounds,
                    "ratio_to_builtin": round(ratios[name], 3),
                    "peak_mib": common.to_mib(common.peak_memory_bytes(fn, dev)),
                    "max_abs_grad_diff": errors[name],
                })
            del logits, targets, fns, ref
    fixed = fixed_cost(solution, dev, quick=quick)
    sol = [r for r in results if r["method"] == "solution"]
    worst = max(sol, key=lambda r: r["ratio_to_builtin"])
    data = {
        "benchmark": "losses",
        "quick": quick,
        "environment": env,
        "config": {"smoothing": SMOOTHING, "batch": batch, "classes": list(sizes), "warmup": warmup,
                   "min_sample_s": SAMPLE_S, "rounds": {"budget_s": BUDGET_S, "min": MIN_ROUNDS, "max": MAX_ROUNDS},
                   "what": "forward + backward (torch.autograd.grad of the mean loss wrt the logits)",
                   "solution_source": str(solution_path)},
        "target": {"solution_ratio_at_most": TARGET_RATIO, "met": worst["ratio_to_builtin"] <= TARGET_RATIO,
                   "worst": {k: worst[k] for k in ("dtype", "classes", "ratio_to_builtin")}},
        "results": results,
        "fixed_cost": fixed,
    }
    out_dir = Path(out_dir)
    common.write_json(out_dir / "losses.json", data)
    if plot:
        data["plot"] = str(plot_results(data, out_dir / "losses.png"))
    return data


def table(data: dict) -> str:
    rows = []
    for r in data["results"]:
        rows.append({"dtype": r["dtype"], "N x K": f"{r['batch']} x {r['classes']}", "method": r["method"], "ms": r["ms"],
                     "x builtin": r["ratio_to_builtin"], "peak MiB": r["peak_mib"]})
    t = data["target"]
    verdict = (f"solution within {t['solution_ratio_at_most']}x of the built-in at every size: {'yes' if t['met'] else 'NO'} "
               f"(worst {t['worst']['ratio_to_builtin']}x at {t['worst']['dtype']}, K={t['worst']['classes']})")
    fixed = data.get("fixed_cost")
    if fixed:
        verdict += (f"\nfixed cost of one call (1 x 10, forward+backward): builtin {fixed['builtin_ms']} ms, "
                    f"solution {fixed['solution_ms']} ms")
    return common.format_table(rows, ["dtype", "N x K", "method", "ms", "x builtin", "peak MiB"]) + "\n" + verdict


def plot_results(data: dict, path: str | Path) -> Path:
    """Time ratio to the built-in (left) and peak memory (right) against the number of classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.plotting import set_style

    set_style()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = {"float32": "-", "bfloat16": "--"}
    for dtype in dict.fromkeys(r["dtype"] for r in data["results"]):
        for i, method in enumerate(("builtin", "solution", "dense")):
            rs = [r for r in data["results"] if r["dtype"] == dtype and r["method"] == method]
            ks = [r["classes"] for r in rs]
            color = f"C{i}"
            ax_t.plot(ks, [r["ratio_to_builtin"] for r in rs], styles.get(dtype, ":"), marker="o", color=color, label=f"{method} ({dtype})")
            if all(r["peak_mib"] is not None for r in rs):
                ax_m.plot(ks, [max(r["peak_mib"], 0.1) for r in rs], styles.get(dtype, ":"), marker="o", color=color, label=f"{method} ({dtype})")
    ax_t.axhline(data["target"]["solution_ratio_at_most"], color="grey", lw=0.8, ls=":")
    n = data["config"]["batch"]
    ax_t.set(xscale="log", xlabel="classes K", ylabel="time / built-in time", title=f"forward + backward, N = {n}")
    ax_m.set(xscale="log", yscale="log", xlabel="classes K", ylabel="peak extra memory (MiB)", title=f"peak memory, N = {n} ({data['environment']['device']})")
    return common.save_figure(fig, path, legend_fontsize=7)


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--solution", default=str(SOURCE_NOTEBOOK), help="notebook holding the answer cell to time")
    args = parser.parse_args(argv)
    data = run(args.out, quick=args.quick, device=args.device, solution_path=args.solution)
    print(table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
