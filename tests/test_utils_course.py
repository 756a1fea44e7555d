"""utils.claims, utils.stats, utils.ensemble, utils.device's float64 guard, and the notebooks' device hygiene."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

import nbformat
import pytest
import torch

from conftest import REPO
from utils import claims, stats
from utils.compare import Comparison, cmp
from utils.device import float_dtype, supports_float64
from utils.ensemble import predict, smoothed_ce, train_ensemble
from utils.seeding import seed_everything


# --- claims ------------------------------------------------------------------------------------
def test_record_writes_json_where_the_env_var_points(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "x.claims.json"
    monkeypatch.setenv(claims.ENV_VAR, str(target))
    monkeypatch.setattr(claims, "CLAIMS", {})
    assert claims.record("a", torch.tensor([1.5, 2.0]), seeds=[0, 1]) is None, "a cell ending in record() displays nothing"
    claims.record("b", {0.1: float("nan"), "t": torch.tensor(3)})
    data = json.loads(target.read_text())
    assert data["a"] == {"value": [1.5, 2.0], "meta": {"seeds": [0, 1]}}
    assert claims.load(target) == {"a": [1.5, 2.0], "b": {"0.1": "nan", "t": 3}}


def test_record_without_env_var_only_keeps_a_dict(tmp_path, monkeypatch):
    monkeypatch.delenv(claims.ENV_VAR, raising=False)
    monkeypatch.setattr(claims, "CLAIMS", {})
    monkeypatch.chdir(tmp_path)
    claims.record("x", 1)
    assert claims.CLAIMS == {"x": {"value": 1}} and not list(tmp_path.iterdir())


def test_record_rejects_bad_names_and_values():
    with pytest.raises(ValueError, match="non-empty"):
        claims.record("", 1)
    with pytest.raises(ValueError, match="claims must be"):
        claims.record("x", object())


# --- stats -------------------------------------------------------------------------------------
def test_sign_test_exact_values():
    assert stats.sign_test(5, 0) == pytest.approx(2 / 32)
    assert stats.sign_test(0, 8) == pytest.approx(2 / 256)
    assert stats.sign_test(4, 1) == pytest.approx(2 * 6 / 32)
    assert stats.sign_test(3, 3) == 1.0 and stats.sign_test(0, 0) == 1.0
    with pytest.raises(ValueError):
        stats.sign_test(-1, 2)


def test_paired_counts_ties_and_consistency():
    p = stats.paired([0.9, 0.8, 0.7, 0.6, 0.5], [1.0, 0.9, 0.8, 0.7, 0.6])
    assert (p.n_pos, p.n_neg, p.n_tie) == (5, 0, 0) and p.consistent and p.direction() == 1
    assert p.mean == pytest.approx(0.1) and p.sd == pytest.approx(0.0, abs=1e-12)
    q = stats.paired([1, 1, 1, 1, 1], [2, 0, 1, 2, 2])
    assert (q.n_pos, q.n_neg, q.n_tie) == (3, 1, 1) and not q.consistent and q.direction() == 0
    assert stats.paired([1, 2], [1, 2]).n_tie == 2
    with pytest.raises(ValueError, match="equally long"):
        stats.paired([1, 2], [1])
    assert "sign test p" in p.text()


# --- ensemble ----------------------------------------------------------------------------------
def test_ensemble_members_equal_separate_runs():
    """Each member of a batched run is the model train_classifier gives with the same seed and eps."""
    from utils.data import load_digits_split
    from utils.training import make_mlp, predict_logits, train_classifier

    torch.set_num_threads(1)
    d = load_digits_split(0)
    ens, hist = train_ensemble(d.train.x, d.train.y, smoothed_ce([0.0, 0.1]), [3, 4], epochs=2)
    for m, (seed, eps) in enumerate([(3, 0.0), (4, 0.1)]):
        torch.manual_seed(seed)
        single = make_mlp()
        train_classifier(single, d.train, torch.nn.CrossEntropyLoss(label_smoothing=eps), epochs=2, seed=seed, progress=False)
        ours, ref = predict(ens, d.test.x)[m], predict_logits(single, d.test.x)
        assert (ours - ref).abs().max() < 1e-4, f"member {m} differs from a separate run"
        assert torch.allclose(predict_logits(ens.member(m), d.test.x), ours, atol=1e-5)
    assert hist.train_loss.shape == (2, 2)


def test_ensemble_rejects_bad_input():
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    with pytest.raises(ValueError, match="one init seed"):
        train_ensemble(x, y, smoothed_ce([0.0]), [0], order_seeds=[0, 1])
    with pytest.raises(ValueError, match="eps must be"):
        smoothed_ce([1.5])
    with pytest.raises(ValueError, match="x must be"):
        train_ensemble(torch.randn(3, 10, 4), y, smoothed_ce([0.0, 0.0]), [0, 1], num_classes=3)


# --- seeding, cmp, device ----------------------------------------------------------------------
def test_seed_everything_leaves_pythonhashseed_alone(monkeypatch):
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    seed_everything(3)
    assert "PYTHONHASHSEED" not in os.environ


def test_cmp_displays_nothing_in_ipython(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    result = cmp("same", torch.ones(2), torch.ones(2))
    assert isinstance(result, Comparison) and result and result.exact
    assert not cmp("off", torch.ones(2), torch.ones(2) + 1)
    shell = InteractiveShell.instance()
    formatted, _ = shell.display_formatter.format(result)
    assert formatted == {}, "a cell ending in cmp(...) must show only the printed line, no stray True"


def test_float_dtype_refuses_float64_on_mps_only():
    assert float_dtype("cpu") == torch.float64 and supports_float64("cuda")
    assert float_dtype("mps") == torch.float32 and not supports_float64(torch.device("mps"))
    assert float_dtype("mps", torch.float16) == torch.float16


# --- notebooks: nothing float64 on `device`, nothing CUDA-only --------------------------------------
LECTURES = sorted((REPO / "notebooks").glob("0[1-7]_*.ipynb"))
_FLOAT64 = re.compile(r"float64|\.double\(\)")
_ON_DEVICE = re.compile(r"device\s*=\s*device|\.to\(\s*device|\.to\(device")


def _statements(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            if isinstance(node, ast.stmt) and not isinstance(node, (ast.FunctionDef, ast.For, ast.If, ast.With, ast.Try, ast.While)):
                yield cell.id, ast.get_source_segment(cell.source, node) or ""


@pytest.mark.parametrize("path", LECTURES, ids=lambda p: p.stem)
def test_no_float64_tensor_is_put_on_the_notebook_device(path):
    """MPS has no float64: a statement may not both make a float64 tensor and put it on ``device``.

    Static, so it runs on every machine; the float64 demonstrations stay on the CPU. (A statement
    that moves float64 *off* the device, ``.cpu().double()``, is fine.)
    """
    bad = [(cid, s) for cid, s in _statements(path) if _FLOAT64.search(s) and _ON_DEVICE.search(s)]
    assert not bad, f"{path.name}: float64 on `device` (crashes on Apple MPS): {bad}"


@pytest.mark.parametrize("path", LECTURES, ids=lambda p: p.stem)
def test_no_cuda_only_calls(path):
    src = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    for pattern in (r"\.cuda\(", r"torch\.cuda\.(?!is_available)", r"pin_memory", r"set_default_dtype\(\s*torch\.float64"):
        assert not re.search(pattern, src), f"{path.name}: {pattern} assumes CUDA or float64 everywhere"


def test_utils_have_no_unguarded_cuda_calls():
    """Every torch.cuda.* call in utils/ is is_available() itself or sits under a CUDA check (same or previous 3 lines)."""
    guard = re.compile(r'type\s*==\s*"cuda"|kind\s*==\s*"cuda"|cuda\.is_available\(\)')
    for path in (REPO / "utils").glob("*.py"):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            for m in re.finditer(r"torch\.cuda\.(\w+)", line):
                if m.group(1) == "is_available":
                    continue
                context = "\n".join(lines[max(0, i - 3): i] + [line[: m.start()]])
                assert guard.search(context), f"{path.name}:{i + 1}: torch.cuda.{m.group(1)} without a CUDA check before it"
