"""Lecture 08 runs under papermill on two ATen CPU capabilities, and the numbers its text claims hold.

The lecture records its claims with ``utils.claims.record``; the runner writes them to
``08_label_smoothing_at_scale.claims.json``. Exact mathematics is checked exactly; the training
results are checked with the statistic the text uses (the sign of a paired difference in every one
of the three seeds it shows, or a ratio range), never against one machine's value.
"""
from __future__ import annotations

import math

import pytest

from conftest import REPO
from utils import claims as claims_io
from utils.runner import CAPABILITY_ENV_VAR, execute

LECTURE = REPO / "notebooks" / "08_label_smoothing_at_scale.ipynb"
CAPABILITIES = ["native", "default"]
_RUNS: dict[str, object] = {}


def entropy_of_smoothed_target(eps: float, vocab: int) -> float:
    top, rest = 1 - eps + eps / vocab, eps / vocab
    return -top * math.log(top) - (vocab - 1) * rest * math.log(rest)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lecture08")


def claims(cap: str, run_dir) -> dict:
    if cap not in _RUNS:
        env = {CAPABILITY_ENV_VAR: None if cap == "native" else cap}
        _RUNS[cap] = execute(LECTURE, run_dir / cap, {"device": "cpu", "seed": 0}, env=env)
    result = _RUNS[cap]
    assert result.error is None, f"lecture 08 failed under papermill ({cap}): {result.error} (executed copy: {result.output})"
    assert result.device == "cpu"
    c = claims_io.load(result.claims)
    if cap == "default":
        assert c["environment"]["cpu_capability"] == "DEFAULT"
    return c


parametrize_cap = pytest.mark.parametrize("cap", CAPABILITIES)


def test_floor_numbers_quoted_in_the_text():
    """The issue's and the lecture's numbers: 1.362 nats (V = 32,000), 1.503 nats (V = 131,072), inflation 3.9x and 4.5x."""
    assert round(entropy_of_smoothed_target(0.1, 32_000), 3) == 1.362
    assert round(entropy_of_smoothed_target(0.1, 131_072), 3) == 1.503
    assert round(math.exp(entropy_of_smoothed_target(0.1, 32_000)), 1) == 3.9
    assert round(math.exp(entropy_of_smoothed_target(0.1, 131_072)), 1) == 4.5
    assert round(entropy_of_smoothed_target(0.1, 97), 4) == 0.7745


@pytest.mark.slow
@parametrize_cap
def test_lecture08_claims(cap, run_dir):
    c = claims(cap, run_dir)
    for v, value in c["floor_eps0.1"].items():
        assert value == pytest.approx(entropy_of_smoothed_target(0.1, int(v)), rel=1e-12)
    assert c["layout"]["transpose_equals_flatten"] and "Expected target size" in c["layout"]["error"]
    pad = c["pad_gradient"]
    assert pad["grad"] == pytest.approx(pad["p_pad_minus_eps_over_V"], abs=1e-7) and pad["grad"] < 0
    assert math.isfinite(c["pad_masked_loss"]["0.0"]) and c["pad_masked_loss"]["0.1"] == "inf"

    s = c["lm_summary"]
    assert s["floor_V"] == pytest.approx(entropy_of_smoothed_target(0.1, 97)) and s["smoothed_above_floor"]
    assert all(1.2 < r < 1.8 for r in s["inflation"]), s["inflation"]                      # "about 1.4"
    assert all(d > 0.02 for d in s["nll_diff_smoothed_minus_plain"]), s                   # worse NLL in every seed
    assert all(d > 0.01 for d in s["ece_diff_smoothed_minus_plain"]), s                   # worse ECE in every seed
    assert all(0.7 < r < 1.5 for r in s["p_pad_over_eps_over_V"]["0.1"]), s              # "1.1 eps/V"
    assert all(r < 0.2 for r in s["p_pad_over_eps_over_V"]["0.0"]), s                     # "about 0.05 eps/V"
    results = c["lm_results"]
    acc_diff = [b["accuracy"] - a["accuracy"] for a, b in zip(results["0.0"], results["0.1"])]
    assert all(abs(d) < 0.01 for d in acc_diff), acc_diff                                # "the same top-1 accuracy"
    for rows in results.values():
        assert all(r["confidence"] < r["accuracy"] for r in rows), "both models are under-confident"

    assert c["lce_matches"] == {"reference": True, "chunked_eps0": True}
    refusal = c["lce_refuses"]
    assert refusal["warned"] and "options`` ignored" in refusal["warning"]
    frac = refusal["largest_fraction_of_logits"]
    assert frac["torch chunked, eps = 0.1"] >= 1.0, "torch's fallback builds the full logits"
    assert frac["torch chunked, eps = 0"] < 0.5 and frac["course, eps = 0.1"] < 0.5
    assert c["course_matches_torch"] is True

    memory = c["memory"]
    if memory["course, eps = 0.1"] is not None:
        assert memory["course, eps = 0.1"] <= 1.25, memory
        assert memory["naive, eps = 0.1"] >= 5 and memory["torch chunked, eps = 0.1"] >= 5, memory
