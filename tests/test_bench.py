"""The benchmark code: its measuring helpers, the solution loader, and a --quick run's JSON structure.

Timings are not asserted (they depend on the machine and its load); the structure of the results,
the agreement of the candidates and the memory probe are.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO

if str(REPO) not in sys.path:  # bench/ is not an installed package; it runs from the repo root
    sys.path.insert(0, str(REPO))

from bench import common  # noqa: E402
from bench.losses import SOURCE_NOTEBOOK, load_solution  # noqa: E402

SOLUTION = '''def label_smoothing_cross_entropy(logits, targets, smoothing=0.1, reduction="mean", ignore_index=-100):
    """A memory-light label-smoothed cross-entropy."""
    ### BEGIN SOLUTION
    logp = log_softmax(logits, dim=1)
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    loss = ((1 - smoothing) * -logp.gather(1, safe[:, None])[:, 0] - smoothing * logp.mean(1)) * keep
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / keep.sum()
    ### END SOLUTION
'''


def write_notebook(path, solution=SOLUTION, grade_id="label_smoothing_cross_entropy"):
    """A minimal nbgrader-style notebook (plain JSON: nbformat's import alone costs seconds)."""
    def code(cell_id, source, nbgrader=None):
        meta = {"nbgrader": {"schema_version": 3, "task": False, "locked": False, **nbgrader}} if nbgrader else {}
        return {"cell_type": "code", "id": cell_id, "metadata": meta, "source": source, "outputs": [], "execution_count": None}

    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "id": "title", "metadata": {}, "source": "# ps2"},
        code("imports", "import torch\nfrom torch.nn.functional import log_softmax\nx = undefined_name  # not an import: never run"),
        code("answer", solution, {"grade": False, "grade_id": grade_id, "solution": True}),
        code("test", "assert True", {"grade": True, "grade_id": f"test_{grade_id}", "solution": False, "locked": True, "points": 1}),
    ]}
    path.write_text(json.dumps(nb, indent=1))
    return path


# ------------------------------------------------------------------------------ solution loader


def test_load_solution_runs_the_answer_cell(tmp_path):
    fn = load_solution(write_notebook(tmp_path / "ps2.ipynb"))
    logits, targets = torch.randn(20, 7), torch.randint(0, 7, (20,))
    targets[3] = -100
    for reduction in ("mean", "sum", "none"):
        ref = F.cross_entropy(logits, targets, label_smoothing=0.2, reduction=reduction)
        assert torch.allclose(fn(logits, targets, smoothing=0.2, reduction=reduction), ref, atol=1e-6)


def test_load_solution_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="label_smoothing_cross_entropy"):
        load_solution(tmp_path / "missing.ipynb")
    with pytest.raises(ValueError, match="no code cell with nbgrader grade_id 'label_smoothing_cross_entropy'"):
        load_solution(write_notebook(tmp_path / "other.ipynb", grade_id="soft_cross_entropy"))
    with pytest.raises(ValueError, match="does not define a function"):
        load_solution(write_notebook(tmp_path / "nodef.ipynb", solution="### BEGIN SOLUTION\nx = 1\n### END SOLUTION"))


@pytest.mark.skipif(not SOURCE_NOTEBOOK.exists(), reason="source/ps2_losses/ps2_losses.ipynb is not written yet")
def test_the_course_solution_loads_and_agrees_with_torch():
    fn = load_solution()
    logits = torch.randn(50, 11, requires_grad=True)
    targets = torch.randint(0, 11, (50,))
    targets[::7] = -100
    weights = torch.rand(50)
    for reduction in ("mean", "sum", "none"):
        ours = fn(logits, targets, smoothing=0.1, reduction=reduction)
        ref = F.cross_entropy(logits, targets, label_smoothing=0.1, reduction=reduction)
        assert torch.allclose(ours, ref, rtol=1e-5), f"the benchmarked solution must compute torch's loss ({reduction})"
        # the timed call is forward+backward, so the gradient has to be torch's too
        (g_ours,) = torch.autograd.grad((ours * weights).sum() if reduction == "none" else ours, logits)
        (g_ref,) = torch.autograd.grad((ref * weights).sum() if reduction == "none" else ref, logits)
        assert torch.allclose(g_ours, g_ref, rtol=1e-5, atol=1e-7), f"the benchmarked solution's gradient differs ({reduction})"


# ---------------------------------------------------------------------------------- measuring


def test_interleaved_timing_and_ratios():
    calls = []
    samples = common.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                      torch.device("cpu"), warmup=1, repeat=4, min_sample_s=0)
    assert set(samples) == {"a", "b"} and all(len(v) == 4 for v in samples.values())
    assert all(x >= 0 for v in samples.values() for x in v)
    assert calls[:2] == ["a", "b"] and calls[2:4] == ["a", "b"] and calls[4:6] == ["b", "a"], "rounds rotate their order"
    ratios = common.ratio_to({"ref": [1.0, 2.0, 4.0], "x": [2.0, 2.0, 12.0]}, "ref")
    assert ratios == {"ref": 1.0, "x": 2.0}, "ratio = median of the per-round ratios"
    with pytest.raises(ValueError):
        common.ratio_to({"a": [1.0]}, "b")
    with pytest.raises(ValueError):
        common.time_interleaved({}, torch.device("cpu"))


@pytest.mark.skipif(common.memory_method(torch.device("cpu")).startswith("unavailable"), reason="no VmHWM on this platform")
def test_cpu_peak_memory_sees_a_known_allocation():
    nbytes = 64 * common.MiB
    peak = common.peak_memory_bytes(lambda: torch.ones(nbytes // 4).sum(), torch.device("cpu"))
    assert 0.97 * nbytes <= peak <= 1.10 * nbytes, f"a {nbytes / common.MiB:.0f} MiB tensor measured as {peak / common.MiB:.1f} MiB"
    small = common.peak_memory_bytes(lambda: torch.ones(10).sum(), torch.device("cpu"))
    assert small < 4 * common.MiB, f"a 40-byte tensor measured as {small / common.MiB:.1f} MiB"


def test_rounds_fill_the_budget_between_the_bounds():
    from bench.losses import BUDGET_S, MAX_ROUNDS, MIN_ROUNDS, SAMPLE_S, rounds_for
    assert rounds_for(1e-5, 3) == min(MAX_ROUNDS, int(BUDGET_S // (3 * SAMPLE_S))), "short calls: samples of SAMPLE_S"
    assert rounds_for(0.02, 3) == int(BUDGET_S // 0.06)
    assert rounds_for(5.0, 3) == MIN_ROUNDS, "calls of seconds still get MIN_ROUNDS"
    assert rounds_for(1e-5, 3, quick=True) == 3


def test_format_table():
    text = common.format_table([{"a": 1.23456, "b": None, "c": "x"}, {"a": 12345.0, "b": True, "c": "yy"}], ["a", "b", "c"])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].split() == ["a", "b", "c"]
    assert "1.23" in lines[2] and "-" in lines[2] and "12345" in lines[3]


# ------------------------------------------------------------------------------ a --quick run


def test_quick_run_writes_json_and_plots(tmp_path):
    nb = write_notebook(tmp_path / "ps2.ipynb")
    out = tmp_path / "bench"
    # A fresh process, as `make bench` runs it (OpenMP's settings are read when torch starts).
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "losses,chunked", "--device", "cpu",
                           "--out", str(out), "--solution", str(nb)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "losses: ok" in proc.stdout and "chunked: ok" in proc.stdout

    losses = json.loads((out / "losses.json").read_text())
    assert losses["benchmark"] == "losses" and losses["quick"] is True
    assert {"device", "torch", "threads", "memory_method", "timing_method"} <= set(losses["environment"])
    dtypes = {r["dtype"] for r in losses["results"]}
    assert "float32" in dtypes
    expected = len(dtypes) * len(losses["config"]["classes"]) * 3
    assert len(losses["results"]) == expected, "one row per dtype x size x method"
    for r in losses["results"]:
        assert {"dtype", "batch", "classes", "method", "ms", "ratio_to_builtin", "peak_mib", "max_abs_grad_diff"} <= set(r)
        assert r["method"] in {"builtin", "solution", "dense"} and r["ms"] > 0
        tol = 1e-5 if r["dtype"] == "float32" else 5e-2
        assert r["max_abs_grad_diff"] <= tol, f"{r['method']} disagrees with the built-in: {r}"
        if r["method"] == "builtin":
            assert r["ratio_to_builtin"] == 1.0
    assert {"met", "worst", "solution_ratio_at_most"} <= set(losses["target"])
    fixed = losses["fixed_cost"]
    assert fixed["batch"] == 1 and fixed["builtin_ms"] > 0 and fixed["solution_ms"] > 0
    assert "fixed cost of one call" in proc.stdout

    chunked = json.loads((out / "chunked.json").read_text())
    assert chunked["benchmark"] == "chunked"
    cfg = chunked["config"]
    per_size = len(cfg["dtypes"]) * len(cfg["epsilons"])
    assert len(chunked["sweep"]) == 3 * per_size * len(cfg["sweep"]["vocab"]), "naive, torch and course per size, dtype and eps"
    assert len(chunked["full"]) == 3 * per_size * len(cfg["full"]["vocab"])
    for r in chunked["sweep"] + chunked["full"]:
        assert {"tokens", "hidden", "vocab", "dtype", "eps", "method", "ms", "time_x_naive", "peak_mib", "floor_mib",
                "peak_x_floor", "rounds"} <= set(r)
        assert r["floor_mib"] > 0 and r["ms"] > 0
        if r["method"] == "torch":
            assert r["torch_fell_back"] == (r["eps"] > 0), "torch's chunked path refuses label smoothing, and only that"
        if r["method"] != "naive":
            tol = 1e-3 if r["dtype"] == "float32" else 0.5
            assert max(r["max_abs_diff_loss_grad_h_grad_W_vs_naive"]) < tol, f"{r['method']} disagrees with naive: {r}"
    assert {"memory_x_floor", "time_x_naive", "eps0_memory_x_torch", "eps0_time_x_torch"} == set(chunked["targets"])
    assert "| N x H x V |" in proc.stdout, "the markdown table for README and lecture 08"
    for name in ("losses.png", "chunked.png"):
        assert (out / name).stat().st_size > 10_000, f"{name} missing or empty"


def test_missing_benchmark_is_skipped(monkeypatch, capsys, tmp_path):
    import bench.__main__ as entry

    monkeypatch.setattr(entry, "load", lambda name: None)
    assert entry.main(["--only", "grading", "--out", str(tmp_path)]) == 0
    assert "grading: skipped (bench/grading.py is missing)" in capsys.readouterr().out


def test_unknown_benchmark_is_an_error(tmp_path):
    import bench.__main__ as entry

    with pytest.raises(SystemExit):
        entry.main(["--only", "nonsense", "--out", str(tmp_path)])


def test_chunked_reruns_only_the_rows_asked_for(tmp_path):
    """``--vocab/--dtype/--eps/--no-sweep`` re-measure a few rows: only those are measured and written."""
    from bench import chunked

    data = chunked.run(tmp_path, quick=True, device="cpu", full=False, plot=False, vocab=[512], dtypes=["float32"],
                       epsilons=[0.1])
    assert {(r["dtype"], r["eps"], r["vocab"]) for r in data["sweep"]} == {("float32", 0.1, 512)}
    assert [r["method"] for r in data["sweep"]] == list(chunked.METHODS) and data["full"] == []
    assert data["config"]["dtypes"] == ["float32"] and data["config"]["epsilons"] == [0.1]
    assert (tmp_path / "chunked.json").exists()
    data = chunked.run(tmp_path, quick=True, device="cpu", do_sweep=False, plot=False, dtypes=["float32"], epsilons=[0.0])
    assert data["sweep"] == [] and {(r["dtype"], r["eps"]) for r in data["full"]} == {("float32", 0.0)}
