"""Linear + label-smoothed cross-entropy: naive, torch's chunked ``F.linear_cross_entropy``, and the course's.

Three ways to compute ``loss = CE(h @ W.T, y, label_smoothing=eps)`` with its gradients for ``h``
and ``W``, in one process, on the same inputs:

- ``naive``: ``F.cross_entropy(h @ W.T, y, label_smoothing=eps)``, which holds the full
  ``[N, V]`` logits, the log-probabilities autograd saves and the logits' gradient;
- ``torch``: ``F.linear_cross_entropy(h, W, y, label_smoothing=eps,
  options=torch.nn.LinearCrossEntropyOptions())``, torch 2.13's chunked path. It needs
  ``label_smoothing == 0``: otherwise it warns "``options`` ignored" and computes the full logits,
  so its eps > 0 rows measure that fallback (``torch_fell_back`` in the JSON);
- ``course``: :func:`utils.chunked_loss.linear_cross_entropy`, tiles sized from the problem.

Every call is forward + backward (``torch.autograd.grad`` of the mean loss wrt ``h`` and ``W``),
with every 17th target ignored. Sizes: a sweep over the vocabulary at N = 2048, H = 256 and the
headline N = 4096, H = 1024, V = 131,072, in float32 and (where the device runs it) bfloat16, at
eps = 0 and eps = 0.1. Each row records the *floor*: the float32 gradients of ``h`` and ``W`` the
call must return (:func:`utils.chunked_loss.memory_floor_bytes`); memory targets are multiples of it.

Method, per size (see :mod:`bench.common`): each candidate's first call warms it up (one-time
set-up, such as oneDNN's bf16 kernels, would otherwise count as memory) and its loss and gradients
are checked against the naive version's; then its peak extra memory is measured, as the median of
:data:`PEAK_CALLS` calls (one call at slow sizes; ``peak_mib_samples`` keeps them all). Sizes whose
calls all take under ``SLOW_S`` seconds are then timed interleaved round by round (``rounds`` in
the JSON, median). At slower sizes (the headline: tens of seconds per call on 2 CPU cores) naive
and the candidates within :data:`NEAR_X` of it get :data:`SLOW_ROUNDS` interleaved rounds, slower
ones a single timed call. ``python -m bench.chunked
[--quick] [--no-full]``.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import common
from utils.chunked_loss import linear_cross_entropy, memory_floor_bytes, tile_shape

EPSILONS = (0.0, 0.1)
METHODS = ("naive", "torch", "course")
FULL = {"tokens": 4096, "hidden": 1024, "vocab": (131072,)}
SWEEP = {"tokens": 2048, "hidden": 256, "vocab": (8192, 32768, 131072)}
QUICK_FULL = {"tokens": 128, "hidden": 64, "vocab": (4096,)}
QUICK_SWEEP = {"tokens": 64, "hidden": 32, "vocab": (512, 2048)}
SLOW_S = 4.0
"""Sizes whose slowest call takes longer than this are *slow*: see :func:`measure`."""
ROUND_BUDGET_S = 12.0
MAX_ROUNDS = 5
PEAK_CALLS = 3
"""Fast sizes: each candidate's peak memory is the median of this many calls (``peak_mib_samples`` keeps all)."""
SLOW_ROUNDS = 3
"""Slow sizes: naive and every candidate within :data:`NEAR_X` of its time are timed in this many interleaved rounds."""
NEAR_X = 2.0
"""...candidates slower than this multiple of naive's first call get one timed call: their ratio is far from any target."""
TARGETS = {"memory_x_floor_at_most": 1.25, "time_x_naive_at_most": 1.0,
           "eps0_memory_x_torch_at_most": 1.0, "eps0_time_x_torch_at_most": 0.5}
"""The course's loss, at every size, dtype and eps (reported, not asserted: see the README)."""
HEADLINE_TORCH_FALLBACK = False
"""At the headline size torch's eps > 0 call *is* the naive computation (it falls back): not re-run there."""


def _inputs(tokens: int, hidden: int, vocab: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5).to(device=device, dtype=dtype).requires_grad_()
    y = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    y[::17] = -100  # a few ignored positions (padding), as in a real batch
    return h, w, y


def candidates(h, w, y, eps: float) -> dict:
    """name -> a forward + backward call returning (loss, dL/dh, dL/dW)."""
    options = torch.nn.LinearCrossEntropyOptions()

    def naive():
        loss = F.cross_entropy(h @ w.T, y, label_smoothing=eps)
        return (loss.detach(), *torch.autograd.grad(loss, (h, w)))

    def chunked_torch():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*options`` ignored")
            loss = F.linear_cross_entropy(h, w, y, label_smoothing=eps, options=options)
        return (loss.detach(), *torch.autograd.grad(loss, (h, w)))

    def course():
        loss = linear_cross_entropy(h, w, y, label_smoothing=eps)
        return (loss.detach(), *torch.autograd.grad(loss, (h, w)))

    return {"naive": naive, "torch": chunked_torch, "course": course}


def torch_falls_back(h, w, y, eps: float) -> bool:
    """Whether torch's chunked path refuses these arguments (it warns "``options`` ignored")."""
    small = (h[:2].detach(), w[:3].detach(), torch.zeros(2, dtype=torch.long, device=h.device))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        F.linear_cross_entropy(*small, label_smoothing=eps, options=torch.nn.LinearCrossEntropyOptions())
    return any("options`` ignored" in str(c.message) for c in caught)


def measure(tokens: int, hidden: int, vocab: int, device: torch.device, dtype: torch.dtype, eps: float,
            methods=METHODS, quick: bool = False) -> list[dict]:
    """One size, dtype and eps: agreement from each first call, peak memory from the next ones, then timing (module docstring)."""
    h, w, y = _inputs(tokens, hidden, vocab, device, dtype)
    steps = {k: v for k, v in candidates(h, w, y, eps).items() if k in methods}
    peaks, first_s, outputs = {}, {}, {}
    for name, fn in steps.items():
        t0 = time.perf_counter()
        out = fn()                         # warm-up (one-time set-up such as oneDNN's kernels) and agreement
        common.synchronize(device)
        first_s[name] = time.perf_counter() - t0
        outputs[name] = tuple(t.float() for t in out)
        del out
    ref = outputs.get("naive")
    diffs = {name: ([float((a - b).abs().max()) for a, b in zip(out, ref)] if ref is not None else None)
             for name, out in outputs.items()}
    del outputs, ref
    slow = max(first_s.values()) >= SLOW_S and not quick
    for name, fn in steps.items():
        peaks[name] = [common.peak_memory_bytes(fn, device) for _ in range(1 if slow else PEAK_CALLS)]
    if not slow:
        rounds = 2 if quick else int(max(1, min(MAX_ROUNDS, ROUND_BUDGET_S // max(sum(first_s.values()), 1e-3))))
        samples = common.time_interleaved(steps, device, warmup=0, repeat=rounds, min_sample_s=0.0)
    else:  # timed apart from the peak calls, under the allocator's steady state (see common.peak_memory_bytes)
        base = first_s.get("naive", min(first_s.values()))
        near = {k: f for k, f in steps.items() if first_s[k] <= NEAR_X * base}
        far = {k: f for k, f in steps.items() if k not in near}
        samples = common.time_interleaved(near, device, warmup=0, repeat=SLOW_ROUNDS, min_sample_s=0.0)
        if far:
            samples.update(common.time_interleaved(far, device, warmup=0, repeat=1, min_sample_s=0.0))
        samples = {k: samples[k] for k in steps}
    ms = {name: common.median(v) for name, v in samples.items()}
    ratios = {}
    if "naive" in samples:  # per round where rounds pair up, else of the medians (one timed call)
        ratios = {k: (r if len(samples[k]) == len(samples["naive"]) else ms[k] / ms["naive"])
                  for k, r in common.ratio_to(samples, "naive").items()}
    floor = memory_floor_bytes(tokens, hidden, vocab, dtype=dtype)
    fell_back = torch_falls_back(h, w, y, eps) if "torch" in steps else None
    rows = []
    for name in steps:
        peak = None if None in peaks[name] else common.median(peaks[name])
        rows.append({
            "dtype": common.dtype_name(dtype), "eps": eps, "tokens": tokens, "hidden": hidden, "vocab": vocab,
            "method": name, "ms": round(ms[name], 2), "ms_samples": [round(s, 2) for s in samples[name]],
            "rounds": len(samples[name]),
            "time_x_naive": round(ratios[name], 3) if name in ratios else None,
            "peak_mib": common.to_mib(peak), "peak_mib_samples": [common.to_mib(p) for p in peaks[name]],
            "floor_mib": common.to_mib(floor),
            "peak_x_floor": None if peak is None else round(peak / floor, 3),
            "peak_max_x_floor": None if peak is None else round(max(peaks[name]) / floor, 3),
            "logits_mib": round(tokens * vocab * torch.empty((), dtype=dtype).element_size() / common.MiB, 1),
            "tile": list(tile_shape(tokens, hidden, vocab, dtype)) if name == "course" else None,
            "torch_fell_back": fell_back if name == "torch" else None,
            "max_abs_diff_loss_grad_h_grad_W_vs_naive": None if name == "naive" else diffs[name],
        })
    by = {r["method"]: r for r in rows}
    if "course" in by and "torch" in by:
        c, t = by["course"], by["torch"]
        c["time_x_torch"] = round(c["ms"] / t["ms"], 3)
        c["peak_x_torch"] = round(c["peak_mib"] / t["peak_mib"], 3) if c["peak_mib"] is not None and t["peak_mib"] else None
    return rows


def check_targets(rows: list[dict]) -> dict:
    """Each target of :data:`TARGETS` over the course's rows: met, and the worst value with its row."""
    course = [r for r in rows if r["method"] == "course"]
    out = {}

    def worst(key, limit, subset):
        vals = [r for r in subset if r.get(key) is not None]
        if not vals:
            return {"at_most": limit, "worst": None, "met": None}
        bad = max(vals, key=lambda r: r[key])
        return {"at_most": limit, "worst": bad[key], "met": bad[key] <= limit,
                "where": f"{bad['dtype']} eps={bad['eps']} {bad['tokens']}x{bad['hidden']}x{bad['vocab']}"}

    out["memory_x_floor"] = worst("peak_x_floor", TARGETS["memory_x_floor_at_most"], course)
    out["time_x_naive"] = worst("time_x_naive", TARGETS["time_x_naive_at_most"], course)
    eps0 = [r for r in course if r["eps"] == 0.0]
    out["eps0_memory_x_torch"] = worst("peak_x_torch", TARGETS["eps0_memory_x_torch_at_most"], eps0)
    out["eps0_time_x_torch"] = worst("time_x_torch", TARGETS["eps0_time_x_torch_at_most"], eps0)
    return out


def run(out_dir: str | Path = "build/bench", quick: bool = False, device: str | torch.device = "auto",
        full: bool = True, plot: bool = True, do_sweep: bool = True, vocab=None, dtypes=None, epsilons=None) -> dict:
    """Run the sweep and (unless ``full=False``) the headline size; write ``chunked.json`` and ``chunked.png``.

    ``do_sweep=False`` skips the sweep; ``vocab``, ``dtypes`` (names such as "bfloat16") and ``epsilons``
    keep only those rows, to re-measure a few of them.
    """
    dev = common.resolve_device(device)
    env = common.environment(dev)
    sweep_cfg, full_cfg = (QUICK_SWEEP, QUICK_FULL) if quick else (SWEEP, FULL)
    if vocab is not None:
        sweep_cfg = {**sweep_cfg, "vocab": tuple(v for v in sweep_cfg["vocab"] if v in vocab)}
    if not do_sweep:
        sweep_cfg = {**sweep_cfg, "vocab": ()}
    dtype_list = [d for d in common.dtypes_for(dev) if dtypes is None or common.dtype_name(d) in dtypes]
    eps_list = [e for e in EPSILONS if epsilons is None or e in epsilons]
    start = time.perf_counter()
    out_dir = Path(out_dir)
    sweep, headline = [], []

    def progress():  # rows so far, so that an interrupted run keeps what it measured
        common.write_json(out_dir / "chunked.partial.json", {"environment": env, "sweep": sweep, "full": headline})

    for dtype in dtype_list:
        for eps in eps_list:
            for v in sweep_cfg["vocab"]:
                sweep += measure(sweep_cfg["tokens"], sweep_cfg["hidden"], v, dev, dtype, eps, quick=quick)
                progress()
    if full:
        for dtype in dtype_list:
            for eps in eps_list:
                methods = METHODS if (eps == 0.0 or HEADLINE_TORCH_FALLBACK or quick) else ("naive", "course")
                for v in full_cfg["vocab"]:
                    headline += measure(full_cfg["tokens"], full_cfg["hidden"], v, dev, dtype, eps, methods, quick=quick)
                    progress()
    data = {
        "benchmark": "chunked",
        "quick": quick,
        "environment": env,
        "config": {"epsilons": eps_list, "dtypes": [common.dtype_name(d) for d in dtype_list],
                   "sweep": {**sweep_cfg, "vocab": list(sweep_cfg["vocab"])},
                   "full": {**full_cfg, "vocab": list(full_cfg["vocab"])} if full else None,
                   "slow_s": SLOW_S, "round_budget_s": ROUND_BUDGET_S, "max_rounds": MAX_ROUNDS,
                   "peak_calls": PEAK_CALLS, "slow_rounds": SLOW_ROUNDS, "near_x": NEAR_X,
                   "what": "forward + backward (torch.autograd.grad of the mean loss wrt h and W), every 17th target ignored",
                   "floor": "float32 gradients of h and W: 4 (N H + V H) bytes",
                   "headline_torch_eps_gt_0": "not run: torch falls back to the naive computation (see the sweep)"},
        "sweep": sweep,
        "full": headline,
        "seconds": round(time.perf_counter() - start, 1),
    }
    data["targets"] = check_targets(sweep + headline)
    common.write_json(out_dir / "chunked.json", data)
    (out_dir / "chunked.partial.json").unlink(missing_ok=True)
    if plot:
        data["plot"] = str(plot_results(data, out_dir / "chunked.png"))
    return data


COLUMNS = ["dtype", "eps", "N x H x V", "method", "ms", "x naive", "peak MiB", "x floor", "rounds"]


def table_rows(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        method = r["method"] + (" (falls back)" if r.get("torch_fell_back") else "")
        out.append({"dtype": r["dtype"], "eps": r["eps"], "N x H x V": f"{r['tokens']} x {r['hidden']} x {r['vocab']}",
                    "method": method, "ms": r["ms"], "x naive": r["time_x_naive"], "peak MiB": r["peak_mib"],
                    "x floor": r["peak_x_floor"], "rounds": r["rounds"]})
    return out


def table(data: dict) -> str:
    out = "sweep over the vocabulary\n" + common.format_table(table_rows(data["sweep"]), COLUMNS)
    if data["full"]:
        out += "\n\nheadline size\n" + common.format_table(table_rows(data["full"]), COLUMNS)
    lines = []
    for name, t in data["targets"].items():
        verdict = "-" if t["met"] is None else ("met" if t["met"] else "NOT met")
        lines.append(f"course {name}: worst {t['worst']} (target <= {t['at_most']}) at {t.get('where', '-')}: {verdict}")
    return out + "\n" + "\n".join(lines) + f"\n{data['seconds']} s\n\n" + markdown(data)


def markdown(data: dict) -> str:
    """The README / lecture table: one line per size, dtype and eps; time relative to naive, peak as a multiple of the floor."""
    groups = {}
    for r in data["sweep"] + data["full"]:
        groups.setdefault((r["tokens"], r["hidden"], r["vocab"], r["dtype"], r["eps"]), {})[r["method"]] = r
    lines = ["| N x H x V | dtype | eps | floor MiB | naive | torch chunked | course |",
             "| --- | --- | ---: | ---: | --- | --- | --- |"]

    def cell(r):
        if r is None:
            return "not run (falls back to naive)"
        if r["method"] == "naive":
            t = f"{r['ms'] / 1e3:.2f} s" if r["ms"] >= 1000 else f"{r['ms']:.1f} ms"
        else:
            t = f"{r['time_x_naive']:.2f}x"
        note = " (falls back)" if r.get("torch_fell_back") else ""
        return f"{t}, {r['peak_mib']:.0f} MiB = {r['peak_x_floor']:.2f}x{note}"

    for (n, h, v, dt, eps), by in groups.items():
        lines.append(f"| {n} x {h} x {v} | {dt} | {eps} | {by['naive']['floor_mib']:.0f} | {cell(by.get('naive'))} | "
                     f"{cell(by.get('torch'))} | {cell(by.get('course'))} |")
    return "\n".join(lines)


def plot_results(data: dict, path: str | Path) -> Path:
    """Peak memory as a multiple of the floor (left) and time relative to naive (right) against V.

    Colour is the method, line and marker the dtype and eps; one legend for both panels, below them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from utils.plotting import set_style

    set_style()
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(11, 4.6))
    colors = {"naive": "C0", "torch": "C1", "course": "C2"}
    styles = {("float32", 0.0): ("-", "o"), ("float32", 0.1): ("--", "o"), ("bfloat16", 0.0): ("-", "s"), ("bfloat16", 0.1): ("--", "s")}
    shown = set()
    for (dt, eps), (ls, marker) in styles.items():
        for method in METHODS:
            rs = [r for r in data["sweep"] if r["method"] == method and r["dtype"] == dt and r["eps"] == eps]
            if not rs:
                continue
            shown.add((dt, eps))
            vs = [r["vocab"] for r in rs]
            if all(r["peak_x_floor"] is not None for r in rs):
                ax_m.plot(vs, [r["peak_x_floor"] for r in rs], ls=ls, marker=marker, color=colors[method])
            ax_t.plot(vs, [r["time_x_naive"] for r in rs], ls=ls, marker=marker, color=colors[method])
    ax_m.axhline(TARGETS["memory_x_floor_at_most"], color="grey", lw=0.8, ls=":")
    ax_t.axhline(1.0, color="grey", lw=0.8, ls=":")
    cfg = data["config"]["sweep"]
    title = f"N = {cfg['tokens']}, H = {cfg['hidden']}"
    ax_m.set(xscale="log", yscale="log", xlabel="vocabulary V", ylabel="peak extra memory / floor (target 1.25)",
             title=f"memory, {title}")
    ax_t.set(xscale="log", yscale="log", xlabel="vocabulary V", ylabel="time / naive time (target 1)", title=f"time, {title}")
    handles = [Line2D([], [], color=colors[m], lw=2, label={"torch": "torch chunked (falls back at eps > 0)"}.get(m, m))
               for m in METHODS]
    handles += [Line2D([], [], color="black", ls=ls, marker=marker, label=f"{dt}, eps = {eps}")
                for (dt, eps), (ls, marker) in styles.items() if (dt, eps) in shown]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--no-full", dest="full", action="store_false", help="skip the headline size (several GiB)")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the vocabulary sweep")
    parser.add_argument("--vocab", type=int, nargs="+", help="only these vocabulary sizes of the sweep")
    parser.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16", "float16"], help="only these dtypes")
    parser.add_argument("--eps", type=float, nargs="+", choices=list(EPSILONS), help="only these label smoothings")
    args = parser.parse_args(argv)
    data = run(args.out, quick=args.quick, device=args.device, full=args.full, do_sweep=args.sweep, vocab=args.vocab,
               dtypes=args.dtype, epsilons=args.eps)
    print(table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
