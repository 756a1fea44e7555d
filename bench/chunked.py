"""Chunked linear + label-smoothed cross-entropy against the naive ``h @ W.T`` + built-in loss.

- ``naive``: ``F.cross_entropy(h @ W.T, y, label_smoothing=eps)``, which holds the full
  ``[N, V]`` logits, the log-probabilities autograd saves and the logits' gradient;
- ``chunked``: :func:`utils.chunked_loss.chunked_linear_cross_entropy`, one ``[chunk, V]`` block
  at a time, gradients computed in the forward pass.

Both run forward + backward (``torch.autograd.grad`` of the mean loss wrt ``h`` and ``W``). Two
parts: the headline size (N = 4096 tokens, H = 1024, V = 131,072, float32), measured once
or twice because the naive version needs several GiB; and a sweep over V (8k to 128k) at
N = 2048, H = 256 for the plot. Time is the median over interleaved rounds, memory the peak extra memory
of one call (see :mod:`bench.common`). ``python -m bench.chunked [--quick] [--no-full]``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from bench import common
from utils.chunked_loss import chunked_linear_cross_entropy, default_chunk_size, naive_linear_cross_entropy

SMOOTHING = 0.1
FULL = {"tokens": 4096, "hidden": 1024, "vocab": 131072}
SWEEP = {"tokens": 2048, "hidden": 256, "vocab": (8192, 16384, 32768, 65536, 131072)}
QUICK_FULL = {"tokens": 128, "hidden": 64, "vocab": 4096}
QUICK_SWEEP = {"tokens": 64, "hidden": 32, "vocab": (512, 1024, 2048)}
TARGET_MEMORY_FRACTION = 0.25
TARGET_TIME_RATIO = 1.5
"""At the headline size the chunked version should need at most 1/4 of the naive peak memory at
no more than 1.5x its time (reported, not asserted)."""


def _inputs(tokens: int, hidden: int, vocab: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5).to(device=device, dtype=dtype).requires_grad_()
    y = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    y[::17] = -100  # a few ignored positions (padding), as in a real batch
    return h, w, y


def _steps(h, w, y):
    def naive():
        loss = naive_linear_cross_entropy(h, w, y, SMOOTHING)
        return (loss.detach(), *torch.autograd.grad(loss, (h, w)))

    def chunked():
        loss = chunked_linear_cross_entropy(h, w, y, SMOOTHING)
        return (loss.detach(), *torch.autograd.grad(loss, (h, w)))

    return {"naive": naive, "chunked": chunked}


def measure(tokens: int, hidden: int, vocab: int, device: torch.device, dtype: torch.dtype = torch.float32,
            repeat: int = 3) -> list[dict]:
    """One size: check both agree (which also warms them up), take each one's peak memory, then time them interleaved."""
    h, w, y = _inputs(tokens, hidden, vocab, device, dtype)
    steps = _steps(h, w, y)
    out_naive = steps["naive"]()
    out_chunk = steps["chunked"]()
    losses = {"naive": float(out_naive[0]), "chunked": float(out_chunk[0])}
    diffs = [float((a.float() - b.float()).abs().max()) for a, b in zip(out_naive, out_chunk)]
    del out_naive, out_chunk
    peaks = {name: common.peak_memory_bytes(fn, device) for name, fn in steps.items()}
    samples = common.time_interleaved(steps, device, warmup=0, repeat=repeat, min_sample_s=0.0)
    ratios = common.ratio_to(samples, "naive")
    logits_mib = tokens * vocab * torch.empty((), dtype=dtype).element_size() / common.MiB
    base = {"dtype": common.dtype_name(dtype), "tokens": tokens, "hidden": hidden, "vocab": vocab,
            "chunk_size": default_chunk_size(tokens, vocab), "logits_mib": round(logits_mib, 1)}
    rows = []
    for name in steps:
        rows.append({**base, "method": name,
                     "ms": round(common.median(samples[name]), 2),
                     "ms_samples": [round(s, 2) for s in samples[name]],
                     "time_ratio_to_naive": round(ratios[name], 3),
                     "peak_mib": common.to_mib(peaks[name]),
                     "loss": losses[name],
                     "max_abs_diff_loss_grad_h_grad_W": None if name == "naive" else diffs})
    naive_peak = rows[0]["peak_mib"]
    for r in rows:
        r["memory_ratio_to_naive"] = round(r["peak_mib"] / naive_peak, 3) if naive_peak else None
    return rows


def run(out_dir: str | Path = "build/bench", quick: bool = False, device: str | torch.device = "auto",
        full: bool = True, plot: bool = True) -> dict:
    """Run the sweep (and the headline size unless ``full=False``), write ``chunked.json`` and ``chunked.png``."""
    dev = common.resolve_device(device)
    env = common.environment(dev)
    sweep_cfg, full_cfg = (QUICK_SWEEP, QUICK_FULL) if quick else (SWEEP, FULL)
    repeat = 2 if quick else 3
    sweep = []
    for vocab in sweep_cfg["vocab"]:
        sweep += measure(sweep_cfg["tokens"], sweep_cfg["hidden"], vocab, dev, repeat=repeat)
    headline = measure(full_cfg["tokens"], full_cfg["hidden"], full_cfg["vocab"], dev, repeat=repeat) if full else []
    data = {
        "benchmark": "chunked",
        "quick": quick,
        "environment": env,
        "config": {"smoothing": SMOOTHING, "dtype": "float32", "sweep": {**sweep_cfg, "vocab": list(sweep_cfg["vocab"])},
                   "full": full_cfg if full else None, "repeat": repeat,
                   "what": "forward + backward (torch.autograd.grad of the mean loss wrt h and W), every 17th target ignored"},
        "sweep": sweep,
        "full": headline,
    }
    if headline:
        chunk = next(r for r in headline if r["method"] == "chunked")
        data["target"] = {
            "memory_fraction_at_most": TARGET_MEMORY_FRACTION, "time_ratio_at_most": TARGET_TIME_RATIO,
            "memory_fraction": chunk["memory_ratio_to_naive"], "time_ratio": chunk["time_ratio_to_naive"],
            "met": (chunk["memory_ratio_to_naive"] is not None and chunk["memory_ratio_to_naive"] <= TARGET_MEMORY_FRACTION
                    and chunk["time_ratio_to_naive"] <= TARGET_TIME_RATIO),
        }
    out_dir = Path(out_dir)
    common.write_json(out_dir / "chunked.json", data)
    if plot:
        data["plot"] = str(plot_results(data, out_dir / "chunked.png"))
    return data


def table(data: dict) -> str:
    columns = ["N x H x V", "chunk", "method", "ms", "x naive time", "peak MiB", "x naive memory"]

    def rows(results):
        return [{"N x H x V": f"{r['tokens']} x {r['hidden']} x {r['vocab']}", "chunk": r["chunk_size"], "method": r["method"],
                 "ms": r["ms"], "x naive time": r["time_ratio_to_naive"], "peak MiB": r["peak_mib"],
                 "x naive memory": r["memory_ratio_to_naive"]} for r in results]

    out = "sweep over the vocabulary (float32)\n" + common.format_table(rows(data["sweep"]), columns)
    if data["full"]:
        t = data["target"]
        out += ("\n\nheadline size (float32)\n" + common.format_table(rows(data["full"]), columns)
                + f"\nchunked: {t['memory_fraction']} of the naive peak memory (target <= {t['memory_fraction_at_most']}), "
                  f"{t['time_ratio']}x its time (target <= {t['time_ratio_at_most']}): {'met' if t['met'] else 'NOT met'}")
    return out


def plot_results(data: dict, path: str | Path) -> Path:
    """Peak memory (left) and time (right) of both versions against the vocabulary size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.plotting import set_style

    set_style()
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in ("naive", "chunked"):
        rs = [r for r in data["sweep"] if r["method"] == method]
        vs = [r["vocab"] for r in rs]
        if all(r["peak_mib"] is not None for r in rs):
            ax_m.plot(vs, [r["peak_mib"] for r in rs], marker="o", label=method)
        ax_t.plot(vs, [r["ms"] for r in rs], marker="o", label=method)
    rs = [r for r in data["sweep"] if r["method"] == "naive"]
    ax_m.plot([r["vocab"] for r in rs], [r["logits_mib"] for r in rs], ls=":", color="grey", label="one [N, V] logits tensor")
    cfg = data["config"]["sweep"]
    title = f"N = {cfg['tokens']}, H = {cfg['hidden']}"
    ax_m.set(xscale="log", yscale="log", xlabel="vocabulary V", ylabel="peak extra memory (MiB)", title=f"peak memory, {title}")
    ax_t.set(xscale="log", yscale="log", xlabel="vocabulary V", ylabel="forward + backward (ms)", title=f"time, {title}")
    return common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--no-full", dest="full", action="store_false", help="skip the headline size (several GiB)")
    args = parser.parse_args(argv)
    print(table(run(args.out, quick=args.quick, device=args.device, full=args.full)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
