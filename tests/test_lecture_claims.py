"""Every lecture runs under papermill on two ATen CPU capabilities, and the numbers its text claims hold.

The lectures do not assert anything in front of the student; they record the numbers their text
relies on with ``utils.claims.record`` and the course runner writes them to
``<lecture>.claims.json``. Each lecture is executed once per capability (the scalar ``default``
kernels and this machine's own best, i.e. ``ATEN_CPU_CAPABILITY`` unset), and the tests below check
each claim with a tolerance that is either exact mathematics or the seed/hardware spread the
lecture itself reports. A number that depends on the CPU's kernels (lecture 01's rounding gap) is
checked against the range the text derives, never against one machine's value.
"""
from __future__ import annotations

import math
import os

import pytest

from conftest import REPO
from utils import claims as claims_io
from utils.runner import CAPABILITY_ENV_VAR, execute

LECTURES = {p.stem: p for p in sorted((REPO / "notebooks").glob("0[1-7]_*.ipynb"))}
CAPABILITIES = ["native", "default"]   # native: ATEN_CPU_CAPABILITY unset, the CPU's best kernels
_RUNS: dict[tuple[str, str], object] = {}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lectures")


def run(stem: str, capability: str, run_dir):
    """Execute lecture ``stem`` under ``capability`` once per test session; return its RunResult."""
    key = (stem, capability)
    if key not in _RUNS:
        env = {CAPABILITY_ENV_VAR: None if capability == "native" else capability}
        _RUNS[key] = execute(LECTURES[stem], run_dir / capability, {"device": "cpu", "seed": 0}, env=env)
    return _RUNS[key]


def claims(stem: str, capability: str, run_dir) -> dict:
    result = run(stem, capability, run_dir)
    assert result.error is None, f"{stem} failed under papermill (ATEN_CPU_CAPABILITY={capability}): {result.error} (executed copy: {result.output})"
    assert result.claims is not None, f"{stem} wrote no claims file"
    c = claims_io.load(result.claims)
    env = c["environment"]
    if capability == "default":
        assert env["cpu_capability"] == "DEFAULT", f"the kernel did not run with ATEN_CPU_CAPABILITY=default: {env}"
    return c


parametrize_cap = pytest.mark.parametrize("cap", CAPABILITIES)


@pytest.mark.slow
@parametrize_cap
@pytest.mark.parametrize("stem", list(LECTURES))
def test_lecture_executes(stem, cap, run_dir):
    result = run(stem, cap, run_dir)
    assert result.error is None, f"{stem} failed under papermill (capability {cap}): {result.error} (executed copy: {result.output})"
    assert result.device == "cpu", f"{stem} did not print its device line via utils.notebook.setup"


# --------------------------------------------------------------------------------------------- 01
@pytest.mark.slow
@parametrize_cap
def test_01_one_hot(cap, run_dir):
    c = claims("01_one_hot_labels", cap, run_dir)
    assert c["labels"] == {"dtype": "torch.int64", "ndim": 1, "min": 0, "max": 9, "K": 10}
    ident = c["identity_one_hot"]
    assert ident["dtype"] == "torch.float32" and ident["row_sums"] == [1.0] * 4 and ident["argmax_is_label"]
    assert c["F_one_hot_dtype"] == "torch.int64"
    assert "floating point" in c["int64_one_hot_error"]
    assert c["float_one_hot_minus_index_loss"] < 1e-5  # float32 rounding of a mean of ten log-probabilities
    assert c["one_hot_shapes"] == {"guessed": [3, 3], "explicit": [3, 10]}
    u = c["untrained_softmax"]
    assert abs(u["sum"] - 1) < 1e-5 and u["min"] > 0 and u["max"] < 0.3, "an untrained MLP is far from one-hot"
    s = c["short_run"]
    assert s["p_true_trained"] > s["p_true_untrained"] and s["val_acc"] > 0.85


@pytest.mark.slow
@parametrize_cap
def test_01_rounding_gap_is_within_the_derived_range(cap, run_dir):
    c = claims("01_one_hot_labels", cap, run_dir)
    assert all(v > 0 for v in c["float64_leftover"].values()), "in float64 the true class never reaches 1 for gaps up to 30"
    assert c["float32_p_true_at_gap_20"] == 1.0
    r = c["rounding_gap"]
    # exact mathematics: correctly rounded float32 gives 1.0 once (K-1) e^-g < 2^-25, g > log 9 + 25 log 2
    assert r["float32_correctly_rounded"] == math.floor(math.log(9) + 25 * math.log(2)) + 1 == 20
    assert r["bounds"] == {"correctly rounded": 20, "small terms summed first": 19, "small terms added one by one": 17}
    # any summation order lies between "one small term at a time" (17) and correct rounding (20)
    assert 17 <= r["float32_kernel"] <= 20, r
    # float64, same reasoning with 2^-53 / 2^-54: between floor(53 log 2) + 1 = 37 and floor(log 9 + 54 log 2) + 1 = 40
    assert math.floor(53 * math.log(2)) + 1 <= r["float64_kernel"] <= math.floor(math.log(9) + 54 * math.log(2)) + 1
    assert c["three_ce_forms_maxdiff"] < 1e-5
