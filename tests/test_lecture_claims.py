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


# --------------------------------------------------------------------------------------------- 02
@pytest.mark.slow
@parametrize_cap
def test_02_cross_entropy(cap, run_dir):
    c = claims("02_cross_entropy", cap, run_dir)
    for name in ("by_hand_vs_builtin", "lse_by_hand_vs_builtin", "log_softmax_by_hand_vs_builtin", "grad_by_hand_vs_autograd",
                 "index_vs_one_hot", "soft_module_vs_by_hand"):
        assert c[name] < 1e-6, f"{name}: {c[name]}"
    assert abs(c["uniform_loss"] - math.log(10)) < 1e-6, "a uniform prediction costs log K"
    perfect = {float(k): v for k, v in c["perfect_losses"].items()}
    gaps = sorted(perfect)
    assert all(perfect[a] > perfect[b] for a, b in zip(gaps, gaps[1:])) and perfect[50.0] == 0.0, perfect
    assert abs(c["init_loss"] - math.log(10)) < 0.1, "an untrained MLP starts near log K"
    assert c["naive"] == {"exp_1000_is_inf": True, "softmax_0_is_nan": True}
    los = c["log_of_softmax"]
    assert los["log_softmax_then_log"][1:] == ["-inf", "-inf"] and los["log_softmax"] == [0.0, -1000.0, -2000.0]
    nvs = c["naive_vs_stable"]
    assert nvs["naive_loss"] == "inf" and nvs["naive_grad_has_nan"]
    assert nvs["stable_loss"] == 2000.0 and nvs["stable_grad"] == [1.0, 0.0, -1.0], "the stable gradient is p - y exactly"
    errors = c["target_dtype_errors"]
    assert all(errors.values()) and "floating point" in errors["int64, shape [N, K]"] and "Long" in errors["int32, shape [N]"]
    assert abs(c["unnormalised_ratio"] - 2) < 1e-6, "rows are not renormalised"
    assert "multi-target not supported" in c["two_d_target"]["error"] and c["two_d_target"]["fixed_minus_index"] < 1e-7
    assert "batch_size" in c["squeeze_error"]


# --------------------------------------------------------------------------------------------- 03
@pytest.mark.slow
@parametrize_cap
def test_03_label_smoothing(cap, run_dir):
    c = claims("03_label_smoothing", cap, run_dir)
    assert c["q_uniform_K3"] == pytest.approx([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3], abs=1e-15)
    assert c["manual_vs_builtin"] < 1e-6 and c["others_same_eps_minus_builtin"] > 1e-3
    assert c["q_others_K3"] == pytest.approx([0.9, 0.05, 0.05], abs=1e-15)
    assert abs(c["conversion"]["eps_u"] - 0.15) < 1e-12 and c["conversion"]["maxdiff"] < 1e-12
    pt = c["practice_task"]
    assert round(pt["manual"], 4) == round(pt["eps_0.15"], 4) == 0.5198 and round(pt["eps_0.10"], 4) == 0.4673
    assert c["k5_quiz"]["maxdiff_0125"] < 1e-12 and c["k5_quiz"]["target_010"] == pytest.approx([0.02, 0.92, 0.02, 0.02, 0.02], abs=1e-15)
    tw = c["twice"]
    assert abs(tw["eps_eff"] - 0.19) < 1e-12 and tw["vs_manual"] < 1e-6 and tw["vs_eps_eff"] < 1e-6
    re = c["range_ends"]
    assert re["eps0_minus_plain"] == 0 and re["eps1_spread"] < 1e-6 and "between 0.0 and 1.0" in re["eps1.5_error"]
    neg = c["negative"]
    assert neg["equal_to_plain"] and neg["extrapolated_minus_plain"] > 1e-4 and neg["extrapolated_has_negative"]
    assert all(c["negative_ignored"].values()), c["negative_ignored"]
    v = c["validation"]
    assert v["0.1"].startswith("ok") and v["1.0"].startswith("ok") and all(v[k].startswith("ValueError") for k in ("-0.05", "1.5", "nan"))
    assert c["kl_identity"] < 1e-6
    floors = {int(k): f for k, f in c["floors"].items()}
    assert round(floors[3], 4) == 0.2911 and round(floors[10], 4) == 0.5003
    assert all(floors[a] < floors[b] for a, b in zip(sorted(floors), sorted(floors)[1:])), "the floor grows with K"
    fr = c["floor_run"]
    assert fr["smooth_min"] >= floors[10] - 1e-9 and abs(fr["smooth_last"] - floors[10]) < 1e-6
    assert abs(fr["optimal_gap"] - math.log(91)) < 1e-12 and abs(fr["gap_last"] - fr["optimal_gap"]) < 1e-3 and fr["p_minus_q"] < 1e-4
    assert fr["plain_last"] < 0.02 and fr["plain_last"] < fr["plain_mid"] and fr["plain_gap_last"] > fr["plain_gap_mid"] > fr["optimal_gap"]
    assert c["memory_light"] < 1e-5
    q = c["quiz"]
    assert round(q["smoothed"], 4) == 0.5539 and round(q["plain"], 4) == 0.3406 and abs(q["by_hand"] - q["smoothed"]) < 1e-6
    assert c["quiz_reversed"]["smoothed"] < c["quiz_reversed"]["plain"]


@pytest.mark.slow
@parametrize_cap
def test_03_weight_and_ignore_index_semantics(cap, run_dir):
    import torch
    import torch.nn.functional as F

    c = claims("03_label_smoothing", cap, run_dir)
    w = c["weights"]
    assert abs(w["index"] - w["index_by_hand"]) < 1e-6 and abs(w["probs"] - w["probs_by_hand"]) < 1e-6
    assert abs(w["ratio"] - w["N_over_sum_w"]) < 1e-5 and abs(w["N_over_sum_w"] - 1) > 0.05, "the two divisors differ"
    ig = c["ignore_index"]
    assert ig["with_padding_minus_real_rows"] < 1e-6 and ig["masked_by_hand_minus_builtin"] < 1e-6
    assert "ignore_index is not supported" in ig["probs_error"]
    # the same facts, straight from torch on other inputs (the lecture's numbers are not special)
    gen = torch.Generator().manual_seed(123)
    z, y, wt, eps = torch.randn(9, 4, generator=gen, dtype=torch.float64), torch.randint(0, 4, (9,), generator=gen), torch.rand(4, generator=gen, dtype=torch.float64) + 0.1, 0.2
    q = (1 - eps) * F.one_hot(y, 4).double() + eps / 4
    num = (wt * q * -F.log_softmax(z, dim=1)).sum()
    assert torch.allclose(F.cross_entropy(z, y, weight=wt, label_smoothing=eps), num / wt[y].sum())
    assert torch.allclose(F.cross_entropy(z, q, weight=wt), num / len(y))


# --------------------------------------------------------------------------------------------- 04
@pytest.mark.slow
@parametrize_cap
def test_04_gradients(cap, run_dir):
    c = claims("04_gradients", cap, run_dir)
    assert c["grad_one_maxdiff"] < 1e-6 and all(d < 1e-6 for d in c["grad_batch_maxdiff"].values()) and c["row_sum_max"] < 1e-6
    assert c["closed_form_diff"] < 1e-12
    push = c["push"]
    assert push["plain_always_negative"]
    for e in ("0.1", "0.2"):
        p = push[e]
        assert p["sign_change_at_g_star"] and p["weaker_before"] and p["stronger_after"], (e, p)
        assert abs(p["grad_at_12"] - p["limit"]) < 1e-3
    for e, row in c["gap_table"].items():
        assert abs(row["others"] - row["pytorch_at_eps_prime"]) < 1e-12
    gd = c["gd"]
    for conv in ("pytorch", "others"):
        for e, r in gd[conv].items():
            if r["formula"] is not None:
                assert abs(r["gap_100"] - r["formula"]) < 1e-3 and abs(r["gap_last"] - r["formula"]) < 1e-6, (conv, e, r)
    assert gd["others_spread"] < 1e-12 and gd["mean_logit_max"] < 1e-12
    pg = c["plain_growth"]
    assert pg["monotone"] and pg["passes_g_star_0.05"]
    assert abs(pg["growth"] - math.log(10)) < 0.15, "a tenfold longer run adds about log 10 to the gap"
    assert abs(pg["last"] - pg["log_K_lr_t"]) < 0.05, "the plain gap follows log(K lr t)"


# --------------------------------------------------------------------------------------------- 05
def _per_seed(regime, eps, metric):
    return regime["per_eps"][eps][metric]


def _mean(values):
    return sum(values) / len(values)


@pytest.mark.slow
@parametrize_cap
def test_05_ece_tools(cap, run_dir):
    c = claims("05_calibration", cap, run_dir)
    assert abs(c["toy_ece"]["by_hand"] - c["toy_ece"]["utils"]) < 1e-12
    assert c["torchmetrics_max_diff"] < 1e-6, "our ECE matches torchmetrics (float32 rounding)"
    assert c["calibrated_bins"]["top_bin_share"] > 0.5, "the bin near confidence 1 holds most of the test set"


@pytest.mark.slow
@parametrize_cap
def test_05_calibrated_regime(cap, run_dir):
    """Section 2's conclusions, with the paired sign test over the 5 seeds the lecture shows."""
    r = claims("05_calibration", cap, run_dir)["calibrated"]
    assert all(e < 0.05 for e in _per_seed(r, "0.0", "ece")), "the plain model is close to calibrated in every seed"
    under = []
    for eps, p in r["paired"].items():
        assert p["ece"]["direction"] == 1, f"eps={eps}: smoothing raised the ECE in every seed: {p['ece']}"
        assert all(cf < acc for cf, acc in zip(_per_seed(r, eps, "confidence"), _per_seed(r, eps, "accuracy"))), f"eps={eps}: under-confident"
        assert all(t < 1 for t in _per_seed(r, eps, "T")), f"eps={eps}: temperature scaling sharpens a smoothed model"
        assert p["nll_T"]["direction"] == -1, f"eps={eps}: after T, lower test NLL than plain in every seed: {p['nll_T']}"
        assert _mean(_per_seed(r, eps, "ece_T")) < _mean(_per_seed(r, "0.0", "ece")) + 0.01, "after T, about the plain model's ECE"
        assert p["accuracy"]["mean"] > 0, "smoothing did not cost accuracy on average"
        under.append(_mean(_per_seed(r, eps, "accuracy")) - _mean(_per_seed(r, eps, "confidence")))
    assert under == sorted(under), "the larger eps, the more under-confident"


@pytest.mark.slow
@parametrize_cap
def test_05_overconfident_regime(cap, run_dir):
    r = claims("05_calibration", cap, run_dir)["overconfident"]
    plain = {m: _per_seed(r, "0.0", m) for m in ("confidence", "accuracy", "T", "nll", "nll_T")}
    assert all(cf > acc for cf, acc in zip(plain["confidence"], plain["accuracy"])), "plain: over-confident in every seed"
    assert all(t > 1 for t in plain["T"]), "plain: fitted T > 1 in every seed"
    assert all(a < b for a, b in zip(plain["nll_T"], plain["nll"])), "temperature scaling lowers the plain model's test NLL"
    for eps, p in r["paired"].items():
        assert all(t < 1 for t in _per_seed(r, eps, "T")), f"eps={eps}: smoothed model under-confident (T < 1)"
        assert p["ece"]["direction"] == 1, f"eps={eps}: higher ECE than plain in every seed: {p['ece']}"
        assert p["nll_T"]["direction"] == -1, f"eps={eps}: lowest NLL after T in every seed: {p['nll_T']}"
        assert p["accuracy"]["mean"] > 0, f"eps={eps}: accuracy higher on average"


@pytest.mark.slow
@parametrize_cap
def test_05_noisy_labels_regime_and_eps_choice(cap, run_dir):
    c = claims("05_calibration", cap, run_dir)
    r = c["noisy"]
    assert all(cf < acc for cf, acc in zip(_per_seed(r, "0.0", "confidence"), _per_seed(r, "0.0", "accuracy"))), \
        "the plain model that memorised noise is under-confident on clean test images"
    for eps, p in r["paired"].items():
        assert p["ece"]["direction"] == 1, f"eps={eps}: ECE rises in every seed"
        assert p["nll_T"]["direction"] == -1, f"eps={eps}: after T, lower NLL than plain in every seed"
        if float(eps) >= 0.2:
            assert p["accuracy"]["direction"] == 1 and p["accuracy"]["mean"] > 0.02, f"eps={eps}: several points more accurate in every seed: {p['accuracy']}"
    assert _mean(_per_seed(r, "0.5", "confidence")) < 0.4 < 0.8 < _mean(_per_seed(r, "0.5", "accuracy"))
    gains = c["noisy_choice"]["gain"]
    assert len(gains) == 5 and min(gains) > 0.02, f"the eps chosen on validation beats eps=0 by several points in every seed: {gains}"


# --------------------------------------------------------------------------------------------- 06
@pytest.mark.slow
@parametrize_cap
def test_06_metrics(cap, run_dir):
    c = claims("06_metrics_and_evaluation", cap, run_dir)
    pm = c["page_matrix"]
    assert pm["total"] == 150 and abs(pm["accuracy"] - 0.88) < 1e-12
    assert pm["precision"] == pytest.approx([45 / 50, 43 / 51, 44 / 49], abs=1e-12) and pm["recall"] == pytest.approx([0.90, 0.86, 0.88], abs=1e-12)
    assert c["vs_sklearn"]["matrix_equal"] and c["vs_sklearn"]["maxdiff"] < 1e-12
    assert c["never_predicted"] == {"precision": 0.0, "f1": 0.0}
    assert abs(c["floor_10"] - 0.5003) < 1e-4 and c["torch_at_floor_minus_floor"] < 1e-6
    q = c["quiz"]
    assert round(q["plain"], 4) == 0.3406 and round(q["smoothed"], 4) == 0.5539 and round(q["floor"], 4) == 0.4851
    assert round(q["smoothed"] - q["floor"], 4) == 0.0689 and q["smoothed"] - q["floor"] < q["plain"]
    lr = c["loss_runs"]
    assert lr["smooth_train_min"] >= c["floor_10"], "the smoothed training loss never goes below its floor"
    assert lr["smooth_train_last"] > 5 * lr["plain_train_last"], "many times higher training loss ..."
    assert abs(lr["val_acc"][0] - lr["val_acc"][1]) <= 0.02, "... about equally accurate ..."
    assert lr["val_loss"][1] > lr["val_loss"][0], "... the smoothed model has the higher validation NLL"
    f = c["fraud"]
    assert f["the page's model"][:2] == pytest.approx([0.98, 0.12]) and f["never flags"][0] == pytest.approx(0.98)
    assert f["catches 85 %"][:2] == pytest.approx([0.977, 0.85]) and f["catches 85 %"][0] < f["never flags"][0]


@pytest.mark.slow
@parametrize_cap
def test_06_imbalance_curves_and_precision_recall(cap, run_dir):
    c = claims("06_metrics_and_evaluation", cap, run_dir)
    imb = c["imbalance"]
    counts = imb["counts"]
    assert [counts[k] for k in (3, 8, 9)] == [5, 5, 5]
    for name in imb["minority"]:
        assert imb["majority"][name] - imb["minority"][name] > 0.25, f"{name}: the rare digits' recall lags far behind"
    assert imb["paired"]["class weights"]["direction"] == 1, f"class weights raise the rare classes' recall in every seed: {imb['paired']['class weights']}"
    assert imb["paired"]["smoothing 0.1"]["direction"] == 0, "smoothing's change of the rare classes' recall is not one the sign test calls"
    curves = c["curves"]
    h = curves["healthy"]
    assert h["val_loss"][-1] < 1.15 * min(h["val_loss"]) and h["val_acc"][-1] > 0.95
    o = curves["overfitting (30 % noisy labels)"]
    best = min(range(len(o["val_loss"])), key=o["val_loss"].__getitem__)
    assert best < len(o["val_loss"]) - 10 and o["train_loss"][-1] < 0.9 * o["train_loss"][best]
    assert o["val_loss"][-1] > 1.3 * min(o["val_loss"]) and o["val_acc"][-1] < max(o["val_acc"]) - 0.1 and o["train_acc"][-1] > 0.7
    hl = curves["learning rate 0.3"]
    assert max(hl["val_acc"]) < 0.6 and hl["train_loss"][-1] > 1.0 and hl["train_loss"][0] > 2 * math.log(10)
    pr = c["pr_paired"]
    for m in ("precision", "recall"):
        assert pr[m]["direction"] != -1, f"macro {m} did not go down consistently: {pr[m]}"
        assert abs(pr[m]["mean"]) < 5 / 360, f"macro {m}: a few test images' worth at most"


# --------------------------------------------------------------------------------------------- 07
@pytest.mark.slow
@parametrize_cap
def test_07_representation_and_distillation(cap, run_dir):
    c = claims("07_limits", cap, run_dir)
    assert max(c["spread_ratio_shrink"]) < 0.9, "smoothing tightens the clusters in every seed and triplet"
    ts = c["top_share"]
    assert ts["0.0"] > 2 * ts["0.1"] and ts["0.1"] < 2 / 9
    assert c["logit_range"]["0.1"] < 0.5 * c["logit_range"]["0.0"]
    kd = c["kd"]
    t4, t05, best = kd["T=4 for both"], kd["T=0.5 for both"], kd["each teacher's best T (validation)"]
    assert t4["mean"] > 0 and t4["n_pos"] > t4["n_neg"], f"at T=4 the plain teacher's student is ahead: {t4}"
    assert t05["mean"] < t4["mean"], "at small T the order can flip"
    assert best["direction"] == 0, f"at each teacher's best T the gap is not consistent over the seeds: {best}"
    assert abs(best["mean"]) < c["kd_alone_range"], "... and smaller than the spread of a student trained alone"


@pytest.mark.slow
@parametrize_cap
def test_07_kl_identity_and_alternatives(cap, run_dir):
    c = claims("07_limits", cap, run_dir)
    assert c["kl_identities"]["smoothing"] < 1e-12 and c["kl_identities"]["confidence_penalty"] < 1e-12
    a = c["alternatives"]
    plain, ls = a["plain"], a["smoothing 0.1"]
    assert abs(_mean(plain["confidence"]) - _mean(plain["accuracy"])) < 0.03, "the plain model is barely over-confident"
    assert all(s > p for s, p in zip(ls["ece"], plain["ece"])) and all(s > p for s, p in zip(ls["nll"], plain["nll"])), \
        "smoothing: higher ECE and NLL than plain in every seed"
    assert _mean(ls["accuracy"]) >= _mean(plain["accuracy"]), "... while its accuracy is not lower on average"
    focal, cp = a["focal loss γ=2"], a["confidence penalty β=0.1"]
    assert _mean(plain["ece"]) < _mean(focal["ece"]) < _mean(ls["ece"]) and _mean(focal["confidence"]) < _mean(focal["accuracy"])
    assert abs(_mean(cp["ece"]) - _mean(plain["ece"])) < 0.02, "the mild confidence penalty changes little"
    assert all(t < 1 for t in c["alt_temperatures"]["smoothing 0.1"]), "the smoothed model's fitted T is below 1 in every seed"
    assert _mean(a["smoothing 0.1 + temperature scaling"]["ece"]) < _mean(ls["ece"])
