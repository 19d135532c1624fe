"""Tests for ich.metrics: exam AUC / DeLong (hand cases, sklearn, bootstrap, the published predictions),
operating points, sequence F1 rules, and pixel-level scores."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ich import metrics as M

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference-predictions"


# ---------------------------------------------------------------------------- helpers
def _psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def _delong_by_definition(y, scores):
    """AUCs and DeLong covariance from the structural-component definition (double loops)."""
    y = np.asarray(y, dtype=bool)
    pos = [np.asarray(s)[y] for s in scores]
    neg = [np.asarray(s)[~y] for s in scores]
    m, n = len(pos[0]), len(neg[0])
    v10 = np.array([[np.mean([_psi(xi, yj) for yj in ng]) for xi in ps] for ps, ng in zip(pos, neg)])
    v01 = np.array([[np.mean([_psi(xi, yj) for xi in ps]) for yj in ng] for ps, ng in zip(pos, neg)])
    aucs = v10.mean(axis=1)
    k = len(scores)
    cov = np.empty((k, k))
    for a in range(k):
        for b in range(k):
            s10 = np.sum((v10[a] - v10[a].mean()) * (v10[b] - v10[b].mean())) / (m - 1)
            s01 = np.sum((v01[a] - v01[a].mean()) * (v01[b] - v01[b].mean())) / (n - 1)
            cov[a, b] = s10 / m + s01 / n
    return aucs, cov


def _correlated_scores(n: int, seed: int, shift_a: float = 1.2, shift_b: float = 1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    common = rng.normal(size=n)
    a = common + shift_a * y + 0.6 * rng.normal(size=n)
    b = common + shift_b * y + 0.6 * rng.normal(size=n)
    return y, a, b


def _load_reference(name: str, root: Path = REFERENCE_DIR):
    folder = root / name
    files = ("global_target.npy", "sl_global_prediction.npy", "wl_global_prediction.npy")
    if not all((folder / f).is_file() for f in files):
        pytest.fail(
            f"reference predictions not found: looked for {', '.join(files)} in {folder} "
            f"(the shared folder must sit next to the repository: <parent>/shared/reference-predictions)"
        )
    return tuple(np.load(folder / f) for f in files)


# ------------------------------------------------------------------------------ AUC
@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 12, 300) / 7.0 + 0.3 * y  # many ties, within and across classes
    assert M.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_roc_auc_is_not_flipped_below_half():
    y = np.array([0, 0, 1, 1])
    assert M.roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0


def test_roc_points_match_sklearn():
    from sklearn.metrics import roc_curve

    y, a, _ = _correlated_scores(200, 3)
    for got, want in zip(M.roc_points(y, a), roc_curve(y, a)):
        np.testing.assert_allclose(got, want)


@pytest.mark.parametrize("y", [[1, 1, 1, 1], [0, 0, 0, 0], []])
def test_one_class_gives_nan_not_error(y):
    s = np.linspace(0, 1, len(y))
    assert math.isnan(M.roc_auc(y, s))
    assert math.isnan(M.average_precision(y, s))
    assert all(math.isnan(v) for v in M.delong_auc_variance(y, s))
    assert all(math.isnan(v) for v in M.auc_ci(y, s))
    assert all(math.isnan(v) for v in M.auc_ci(y, s, method="bootstrap"))
    assert all(math.isnan(v) for v in M.delong_test(y, s, s).values())
    assert all(math.isnan(v) for v in M.bootstrap_auc_diff(y, s, s).values())
    assert all(math.isnan(v) for v in M.operating_point(y, s).values())


def test_single_exam_of_a_class_gives_auc_but_nan_variance():
    y = [1, 0, 0, 0]
    auc, var = M.delong_auc_variance(y, [0.9, 0.1, 0.2, 0.3])
    assert auc == 1.0 and math.isnan(var)
    auc, lo, hi = M.auc_ci(y, [0.9, 0.1, 0.2, 0.3])
    assert auc == 1.0 and math.isnan(lo) and math.isnan(hi)


def test_labels_other_than_01_rejected():
    with pytest.raises(ValueError, match=r"y_true must hold only 0/1 labels, found \[2.0\]"):
        M.roc_auc([0, 1, 2], [0.1, 0.2, 0.3])


def test_length_mismatch_rejected():
    with pytest.raises(ValueError, match=r"y_score must have one score per label \(3\), got 2"):
        M.roc_auc([0, 1, 1], [0.1, 0.2])


def test_nan_scores_rejected():
    with pytest.raises(ValueError, match="score_b must be finite, found 1 NaN"):
        M.delong_test([0, 1, 1], [0.1, 0.2, 0.3], [0.1, np.nan, 0.3])


def test_unknown_alternative_suggests_fix():
    with pytest.raises(ValueError, match="alternative must be one of .* got 'greatr' \\(did you mean 'greater'\\?\\)"):
        M.delong_test([0, 1], [0.1, 0.2], [0.2, 0.1], alternative="greatr")


def test_unknown_ci_method_and_bad_level():
    with pytest.raises(ValueError, match="method must be one of \\['delong', 'bootstrap'\\]"):
        M.auc_ci([0, 1], [0.1, 0.2], method="bootstrapp")
    with pytest.raises(ValueError, match="level must be in \\(0, 1\\), got 95"):
        M.auc_ci([0, 1], [0.1, 0.2], level=95)


# --------------------------------------------------------------------------- DeLong
def test_delong_variance_hand_case():
    # positives 0.9, 0.6, 0.4; negatives 0.5, 0.4, 0.1 (one cross-class tie at 0.4).
    # V10 (per positive: fraction of negatives outranked, ties 1/2) = 1, 1, (0 + 0.5 + 1)/3 = 0.5
    # V01 (per negative: fraction of positives above it)          = 2/3, 2.5/3, 1
    # AUC = mean V10 = 5/6.  var(V10, ddof=1) = (1/36 + 1/36 + 4/36)/2 = 1/12;  /m = 1/36
    # var(V01, ddof=1) = (1/36 + 0 + 1/36)/2 = 1/36;  /n = 1/108.   Total = 1/36 + 1/108 = 1/27.
    y = [1, 1, 1, 0, 0, 0]
    s = [0.9, 0.6, 0.4, 0.5, 0.4, 0.1]
    auc, var = M.delong_auc_variance(y, s)
    assert auc == pytest.approx(5 / 6, abs=1e-12)
    assert var == pytest.approx(1 / 27, abs=1e-12)
    auc, lo, hi = M.auc_ci(y, s)
    assert lo == pytest.approx(5 / 6 - 1.959963984540054 * math.sqrt(1 / 27), abs=1e-9)
    assert hi == 1.0  # clipped at 1, as pROC


def test_delong_test_hand_case():
    # Same 3/3 exams, second model: positives 0.7, 0.3, 0.8; negatives 0.2, 0.6, 0.1.
    # AUC_b: V10 = (1, 2/3, 1) -> 8/9 (only 0.3 < 0.6 is misordered). The covariance is
    # computed from the structural-component definition with explicit loops.
    y = [1, 1, 1, 0, 0, 0]
    a = [0.9, 0.6, 0.4, 0.5, 0.4, 0.1]
    b = [0.7, 0.3, 0.8, 0.2, 0.6, 0.1]
    aucs, cov = _delong_by_definition(y, [a, b])
    assert aucs[1] == pytest.approx(8 / 9)
    var_diff = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (aucs[0] - aucs[1]) / math.sqrt(var_diff)
    r = M.delong_test(y, a, b, alternative="two-sided")
    assert r["auc_a"] == pytest.approx(5 / 6) and r["auc_b"] == pytest.approx(8 / 9)
    assert r["z"] == pytest.approx(z, abs=1e-12)
    assert r["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), abs=1e-12)
    g = M.delong_test(y, a, b, alternative="greater")
    assert g["p_value"] == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_delong_matches_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(12), np.zeros(15)].astype(int)
    a = rng.integers(0, 6, 27) + y
    b = rng.integers(0, 4, 27) + 0.5 * y
    aucs, cov = _delong_by_definition(y, [a, b])
    assert M.delong_auc_variance(y, a) == pytest.approx((aucs[0], cov[0, 0]), abs=1e-12)
    r = M.delong_test(y, a, b)
    z = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert r["z"] == pytest.approx(z, abs=1e-10)


def test_delong_alternatives_and_symmetry():
    y, a, b = _correlated_scores(150, 7)
    two = M.delong_test(y, a, b)
    g = M.delong_test(y, a, b, alternative="greater")
    le = M.delong_test(y, a, b, alternative="less")
    assert g["p_value"] + le["p_value"] == pytest.approx(1.0)
    assert two["p_value"] == pytest.approx(2 * min(g["p_value"], le["p_value"]))
    swapped = M.delong_test(y, b, a, alternative="less")
    assert swapped["z"] == pytest.approx(-g["z"]) and swapped["p_value"] == pytest.approx(g["p_value"])
    assert two["diff_ci_low"] < two["diff"] < two["diff_ci_high"]


def test_delong_identical_scores():
    y, a, _ = _correlated_scores(50, 1)
    r = M.delong_test(y, a, a)
    assert r["diff"] == 0.0 and r["z"] == 0.0 and r["p_value"] == 1.0


def test_delong_variance_agrees_with_bootstrap():
    y, a, b = _correlated_scores(300, 11)
    auc, lo, hi = M.auc_ci(y, a, method="delong")
    _, blo, bhi = M.auc_ci(y, a, method="bootstrap", n_boot=2000, seed=0)
    assert (bhi - blo) == pytest.approx(hi - lo, rel=0.15)
    d = M.delong_test(y, a, b)
    bd = M.bootstrap_auc_diff(y, a, b, n_boot=2000, seed=0)
    var_diff = ((d["diff_ci_high"] - d["diff_ci_low"]) / (2 * 1.959963984540054)) ** 2
    assert bd["se"] ** 2 == pytest.approx(var_diff, rel=0.2)


@pytest.mark.parametrize("shift_a", [1.0, 1.15, 1.35])
def test_delong_and_bootstrap_pvalues_agree(shift_a):
    y, a, b = _correlated_scores(300, 5, shift_a=shift_a)
    d = M.delong_test(y, a, b, alternative="greater")["p_value"]
    bd = M.bootstrap_auc_diff(y, a, b, alternative="greater", n_boot=2000, seed=1)
    assert bd["p_value"] == pytest.approx(d, abs=0.03)
    assert bd["p_empirical"] == pytest.approx(d, abs=0.04)


def test_bootstrap_is_seeded():
    y, a, b = _correlated_scores(100, 2)
    r1 = M.bootstrap_auc_diff(y, a, b, n_boot=200, seed=3)
    assert r1 == M.bootstrap_auc_diff(y, a, b, n_boot=200, seed=3)
    assert r1 != M.bootstrap_auc_diff(y, a, b, n_boot=200, seed=4)
    assert M.auc_ci(y, a, method="bootstrap", n_boot=200, seed=3) == M.auc_ci(
        y, a, method="bootstrap", n_boot=200, seed=3
    )


def test_bad_n_boot_rejected():
    with pytest.raises(ValueError, match="n_boot must be an integer >= 10, got 5"):
        M.bootstrap_auc_diff([0, 1, 0, 1], [1, 2, 3, 4], [1, 2, 3, 4], n_boot=5)


# --------------------------------------------------------- published predictions (real data)
# paper-protocol.md §9.2 (AUC, 95% DeLong CI, one-sided DeLong p for WL > SL, paired bootstrap
# P(dAUC <= 0)) and §9.3 (cutoff "d": t, sensitivity, specificity).
PUBLISHED = {
    "rsna": dict(n=(4348, 1776), sl=(0.9606, 0.955, 0.967), wl=(0.9597, 0.953, 0.966), p=0.636, p_boot=0.63,
                 op_sl=(0.508, 0.898, 0.914), op_wl=(0.404, 0.900, 0.911)),
    "cq500": dict(n=(436, 212), sl=(0.9009, 0.871, 0.931), wl=(0.9207, 0.894, 0.947), p=0.032, p_boot=0.028,
                  op_sl=(0.523, 0.844, 0.839), op_wl=(0.433, 0.835, 0.862)),
    "ctich": dict(n=(75, 36), sl=(0.9238, 0.864, 0.983), wl=(0.9544, 0.910, 0.999), p=0.147, p_boot=0.16,
                  op_sl=(0.569, 0.833, 0.897), op_wl=(0.646, 0.889, 0.949)),
}


def _close(x: float, published: float, decimals: int) -> bool:
    return abs(x - published) <= 0.5 * 10.0**-decimals + 1e-12


def test_missing_reference_folder_fails_loudly(tmp_path):
    with pytest.raises(pytest.fail.Exception, match=f"looked for .* in {tmp_path / 'rsna'}"):
        _load_reference("rsna", root=tmp_path)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_reproduces_published_exam_statistics(name):
    pub = PUBLISHED[name]
    y, sl, wl = _load_reference(name)
    assert (y.size, int(y.sum())) == pub["n"]
    for scores, key in ((sl, "sl"), (wl, "wl")):
        auc, lo, hi = M.auc_ci(y, scores)
        assert _close(auc, pub[key][0], 4), (name, key, auc)
        assert _close(lo, pub[key][1], 3) and _close(hi, pub[key][2], 3), (name, key, lo, hi)
        t = M.operating_point(y, scores, rule="closest")
        got = (t["threshold"], t["sensitivity"], t["specificity"])
        assert all(_close(g, p, 3) for g, p in zip(got, pub["op_" + key])), (name, key, got)
    r = M.delong_test(y, wl, sl, alternative="greater")  # H1: AUC_WL > AUC_SL, as delong.R
    assert _close(r["p_value"], pub["p"], 3), (name, r)
    assert r["diff"] == pytest.approx(pub["wl"][0] - pub["sl"][0], abs=1e-4)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_paired_bootstrap_on_published_predictions(name):
    # The published column is one unseeded bootstrap rounded to 2 decimals. Monte Carlo sd of
    # P at 2000 resamples is <= 0.008 (measured over 10 seeds: CT-ICH 0.148 +- 0.008, CQ500
    # 0.029 +- 0.004; an unstratified bootstrap gives 0.152 / 0.029), hence the 0.025 tolerance.
    y, sl, wl = _load_reference(name)
    b = M.bootstrap_auc_diff(y, wl, sl, alternative="greater", n_boot=2000, seed=0)
    assert b["p_empirical"] == pytest.approx(PUBLISHED[name]["p_boot"], abs=0.025)
    assert b["p_value"] == pytest.approx(PUBLISHED[name]["p"], abs=0.02)


# -------------------------------------------------------------------- operating points
def test_operating_point_closest_and_youden_hand_case():
    # scores 1..8; labels chosen so the two rules disagree.
    y = [0, 0, 0, 1, 0, 1, 1, 1]
    s = [1, 2, 3, 4, 5, 6, 7, 8]
    # t=6: sens 3/4, spec 4/4 -> dist 0.25, J 0.75;  t=4: sens 1, spec 3/4 -> dist 0.25, J 0.75
    # tie on both: the first point (higher threshold) wins, as np.argmin/argmax.
    assert M.operating_point(y, s, "closest") == {"threshold": 6.0, "sensitivity": 0.75, "specificity": 1.0}
    assert M.operating_point(y, s, "youden") == {"threshold": 6.0, "sensitivity": 0.75, "specificity": 1.0}
    y2 = [0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 1, 1]  # t=7 (sens 1, spec 6/7) vs t=9 (sens .8, spec 1)
    s2 = list(range(1, 13))
    c = M.operating_point(y2, s2, "closest")
    assert c["threshold"] == 7.0 and c["sensitivity"] == 1.0 and c["specificity"] == pytest.approx(6 / 7)
    yj = M.operating_point(y2, s2, "youden")
    assert yj["threshold"] == 7.0  # J = 1 - 1/7 = 0.857 > 0.8


def test_operating_point_unknown_rule():
    with pytest.raises(ValueError, match="rule must be one of \\['closest', 'youden'\\], got 'd'"):
        M.operating_point([0, 1], [0.1, 0.9], rule="d")


# ---------------------------------------------------------------------- sequence F1
def test_find_runs():
    assert M.find_runs([0, 1, 1, 0, 1, 0, 0, 1, 1, 1]) == [(1, 2), (4, 4), (7, 9)]
    assert M.find_runs([1, 1, 1]) == [(0, 2)]
    assert M.find_runs([0, 0]) == [] and M.find_runs([]) == []
    with pytest.raises(ValueError, match="mask_1d must be 1-D"):
        M.find_runs(np.zeros((2, 2)))


def test_flag_rules():
    assert M.strong_flags([0.2, 0.5, 0.7], 0.5).tolist() == [False, True, True]
    # n = 4 -> threshold 1/4; attention sums to 1
    assert M.weak_flags([0.25, 0.5, 0.25, 0.0]).tolist() == [True, True, True, False]
    # h-Shap values are normalised first: [2, 4, 1, 1] / 8 = [.25, .5, .125, .125]
    assert M.weak_flags([2, 4, 1, 1], normalize=True).tolist() == [True, True, False, False]
    assert M.weak_flags([0, 0, 0], normalize=True).tolist() == [False, False, False]


def _exam(n, true_runs, pred_runs, peaks=()):
    labels = np.zeros(n, int)
    for s, e in true_runs:
        labels[s : e + 1] = 1
    mask = np.zeros(n, bool)
    for s, e in pred_runs:
        mask[s : e + 1] = True
    scores = np.where(mask, 0.6, 0.1)
    for k in peaks:
        scores[k] = 0.9
    return labels, scores, mask


def test_sequence_f1_simple_hit():
    labels, scores, mask = _exam(20, [(5, 9)], [(4, 8)], peaks=[6])
    r = M.sequence_f1(labels, scores, mask, min_length=4)
    assert (r["tp"], r["pp"], r["gt"], r["f1"]) == (1, 1, 1, 1.0)
    assert r["top_slices"] == [6] and r["hit"] == [1]


def test_sequence_f1_min_length_drops_short_runs():
    labels, scores, mask = _exam(20, [(5, 9)], [(5, 7)], peaks=[6])  # run of 3
    r = M.sequence_f1(labels, scores, mask, min_length=4)
    assert (r["tp"], r["pp"], r["gt"], r["precision"], r["recall"], r["f1"]) == (0, 0, 1, 0.0, 0.0, 0.0)
    r = M.sequence_f1(labels, scores, mask, min_length=3)
    assert (r["tp"], r["pp"], r["f1"]) == (1, 1, 1.0)


def test_sequence_f1_top_slice_choice_decides_hit():
    # predicted run 2..8 overlaps the true run 7..8 but its peak is at 3: a miss
    labels, scores, mask = _exam(12, [(7, 8)], [(2, 8)], peaks=[3])
    r = M.sequence_f1(labels, scores, mask, min_length=2)
    assert r["top_slices"] == [3] and (r["tp"], r["pp"], r["gt"]) == (0, 1, 1) and r["f1"] == 0.0
    labels, scores, mask = _exam(12, [(7, 8)], [(2, 8)], peaks=[8])
    assert M.sequence_f1(labels, scores, mask, min_length=2)["tp"] == 1
    # ties: the first maximum in the run is the top slice
    labels, scores, mask = _exam(12, [(7, 8)], [(2, 8)])
    assert M.sequence_f1(labels, scores, mask, min_length=2)["top_slices"] == [2]


def test_sequence_f1_offset():
    labels, scores, mask = _exam(30, [(10, 12)], [(14, 17)], peaks=[14])
    r0 = M.sequence_f1(labels, scores, mask, min_length=4, offset=0)
    assert (r0["tp"], r0["pp"], r0["f1"]) == (0, 1, 0.0)
    r1 = M.sequence_f1(labels, scores, mask, min_length=4, offset=1)
    assert r1["tp"] == 0
    r2 = M.sequence_f1(labels, scores, mask, min_length=4, offset=2)  # 14 <= 12 + 2
    assert (r2["tp"], r2["pp"], r2["f1"]) == (1, 1, 1.0)
    # before the run, too
    labels, scores, mask = _exam(30, [(10, 12)], [(3, 7)], peaks=[7])
    assert M.sequence_f1(labels, scores, mask, min_length=4, offset=3)["tp"] == 1
    assert M.sequence_f1(labels, scores, mask, min_length=4, offset=2)["tp"] == 0


def test_sequence_f1_several_runs_and_false_positives():
    # true runs A=(2,4), B=(10,14), C=(20,21); predicted: two runs on B, one on nothing (25..28)
    labels, scores, mask = _exam(30, [(2, 4), (10, 14), (20, 21)], [(9, 11), (13, 15), (25, 28)],
                                 peaks=[10, 14, 26])
    r = M.sequence_f1(labels, scores, mask, min_length=2)
    # tp = 1 (B); pp = 1 + 1 unmatched (25..28) = 2 — the second run on B is neither TP nor FP
    assert (r["tp"], r["pp"], r["gt"]) == (1, 2, 3)
    assert r["hit"] == [0, 1, 0]
    assert r["precision"] == 0.5 and r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))


def test_sequence_f1_one_run_hits_two_true_runs_with_offset():
    labels, scores, mask = _exam(20, [(2, 4), (7, 9)], [(5, 6)], peaks=[5])
    r = M.sequence_f1(labels, scores, mask, min_length=2, offset=2)
    assert (r["tp"], r["pp"], r["gt"], r["f1"]) == (2, 2, 2, 1.0)


def test_sequence_f1_negative_exam():
    labels, scores, mask = _exam(10, [], [])
    assert math.isnan(M.sequence_f1(labels, scores, mask, min_length=2)["f1"])
    labels, scores, mask = _exam(10, [], [(2, 5)])
    r = M.sequence_f1(labels, scores, mask, min_length=2)
    assert (r["tp"], r["pp"], r["gt"], r["f1"]) == (0, 1, 0, 0.0)


def test_mean_sequence_f1_applies_exam_rule_and_skips_silent_negatives():
    pos_hit = _exam(20, [(5, 9)], [(4, 8)], peaks=[6])  # F1 1
    pos_miss = _exam(20, [(5, 9)], [(12, 15)], peaks=[13])  # F1 0 (FP run, missed)
    neg_silent = _exam(20, [], [])  # skipped
    neg_fp = _exam(20, [], [(1, 4)])  # F1 0
    exams = [
        (pos_hit[0], pos_hit[1], True, pos_hit[2]),
        (pos_miss[0], pos_miss[1], True, pos_miss[2]),
        (neg_silent[0], neg_silent[1], True, neg_silent[2]),
        (neg_fp[0], neg_fp[1], True, neg_fp[2]),
    ]
    r = M.mean_sequence_f1(exams, min_length=2)
    assert (r["n_scored"], r["n_skipped"]) == (3, 1) and r["f1"] == pytest.approx(1 / 3)
    # not called positive: the mask is ignored -> the FP negative becomes silent (skipped),
    # and the missed positive keeps F1 = 0 (gt 1, pp 0)
    exams[1] = (pos_miss[0], pos_miss[1], False, pos_miss[2])
    exams[3] = (neg_fp[0], neg_fp[1], False, neg_fp[2])
    r = M.mean_sequence_f1(exams, min_length=2)
    assert (r["n_scored"], r["n_skipped"]) == (2, 2) and r["f1"] == 0.5
    assert math.isnan(M.mean_sequence_f1([exams[2]], min_length=2)["f1"])


def test_sequence_f1_bad_parameters():
    labels, scores, mask = _exam(10, [(1, 3)], [(1, 3)])
    with pytest.raises(ValueError, match="min_length must be an integer >= 1, got 0"):
        M.sequence_f1(labels, scores, mask, min_length=0)
    with pytest.raises(ValueError, match="offset must be an integer >= 0, got -1"):
        M.sequence_f1(labels, scores, mask, min_length=2, offset=-1)
    with pytest.raises(ValueError, match=r"positive_mask must have shape \(10,\), got \(9,\)"):
        M.sequence_f1(labels, scores, mask[:9], min_length=2)
    with pytest.raises(ValueError, match=r"exams\[0\] must be \(true_slice_labels"):
        M.mean_sequence_f1([(labels, scores, mask)], min_length=2)


# ------------------------------------------------------------------------- pixel level
def _square(shape, r0, c0, size):
    m = np.zeros(shape, bool)
    m[r0 : r0 + size, c0 : c0 + size] = True
    return m


def test_otsu_recovers_a_bright_square_and_dice():
    rng = np.random.default_rng(0)
    true = _square((64, 64), 20, 30, 10)
    sal = 0.1 + 0.05 * rng.random((64, 64)) + 0.8 * true
    pred = M.otsu_binarize(sal)
    assert np.array_equal(pred, true)
    assert M.dice(pred, true) == 1.0
    shifted = _square((64, 64), 20, 35, 10)  # overlap 10 x 5 = 50 -> 2*50 / 200
    assert M.dice(pred, shifted) == 0.5
    assert not M.otsu_binarize(np.full((8, 8), 3.0)).any()


def test_otsu_keeps_pixels_strictly_above_threshold():
    # 4 bins over [0, 4] have centres 0.5, 1.5, 2.5, 3.5; Otsu picks the centre 1.5, a data value
    v = np.array([0.0] * 10 + [0.5] * 10 + [1.5] * 3 + [2.5] * 10 + [3.5] * 10 + [4.0] * 5).reshape(6, 8)
    pred = M.otsu_binarize(v, nbins=4)
    assert pred.sum() == 25 and not pred[v == 1.5].any()


def test_dice_empty_cases():
    empty = np.zeros((4, 4), bool)
    assert math.isnan(M.dice(empty, empty))
    assert M.dice(empty, empty, empty_score=0.0) == 0.0
    assert M.dice(empty, _square((4, 4), 0, 0, 2)) == 0.0
    with pytest.raises(ValueError, match="must have the same shape"):
        M.dice(empty, np.zeros((4, 5)))


def test_pointing_game():
    true = _square((32, 32), 10, 10, 5)
    sal = np.zeros((32, 32))
    sal[12, 12] = 1.0
    assert M.pointing_game(sal, true) is True
    sal[12, 12], sal[0, 0] = 0.5, 1.0
    assert M.pointing_game(sal, true) is False
    sal[12, 12] = 1.0  # tie between a pixel inside and one outside: not a hit
    assert M.pointing_game(sal, true) is False
    sal[0, 0] = 0.0
    sal[13, 13] = 1.0  # tie, both inside: a hit
    assert M.pointing_game(sal, true) is True
    with pytest.raises(ValueError, match="true_mask is empty"):
        M.pointing_game(sal, np.zeros((32, 32)))


def test_boxes_from_mask_reference_rule_is_one_pixel_short():
    m = np.zeros((16, 16), np.uint8)
    m[2:5, 5:9] = 3  # rows 2..4, cols 5..8: a 3 x 4 component (subtype code 3)
    m[10, 1:6] = 1  # a single row: zero height in the reference rule
    m[12, 12] = m[13, 13] = 1  # diagonal neighbours: one 8-connected component
    assert M.boxes_from_mask(m) == [(5, 2, 3, 2), (12, 12, 1, 1)]
    assert M.boxes_from_mask(m, plus_one=True) == [(5, 2, 4, 3), (1, 10, 5, 1), (12, 12, 2, 2)]
    rect = np.zeros((16, 16), bool)
    rect[2:5, 5:9] = True
    assert M.mask_from_boxes(rect.shape, M.boxes_from_mask(rect)).sum() == 6  # 2 x 3, not 3 x 4
    assert np.array_equal(M.mask_from_boxes(rect.shape, M.boxes_from_mask(rect, plus_one=True)), rect)


def test_mask_from_boxes_union_and_clipping():
    out = M.mask_from_boxes((8, 8), [(0, 0, 2, 2), (1, 1, 2, 2), (6, 6, 5, 5)])
    assert out.sum() == 4 + 4 - 1 + 4
    assert out[7, 7] and not out[5, 5]
    with pytest.raises(ValueError, match=r"boxes\[0\] must be \(x, y, w, h\)"):
        M.mask_from_boxes((8, 8), [(0, 0, 2)])


def test_summarize_by_subtype_counting_rule():
    rows = [
        {"subtypes": ["SDH"], "dice": 0.2},
        {"subtypes": ["SDH"], "dice": 0.4},
        {"subtypes": ["SDH"], "dice": 0.6},
        {"subtypes": ["IPH"], "dice": 0.9},
        {"subtypes": ["IPH", "SAH"], "dice": 0.0},  # several types: Any only
        {"subtypes": [], "dice": 0.5},  # no hemorrhage: left out
        {"subtypes": ["SAH"], "dice": float("nan")},  # unscored: left out
    ]
    df = M.summarize_by_subtype(rows)
    assert df["subtype"].tolist() == ["Any", "IPH", "SDH"]
    anyrow = df.iloc[0]
    assert anyrow["n"] == 5 and anyrow["median"] == 0.4
    assert anyrow["q1"] == 0.2 and anyrow["q3"] == 0.6 and anyrow["iqr"] == pytest.approx(0.4)
    iph = df.set_index("subtype").loc["IPH"]
    assert iph["n"] == 1 and iph["median"] == 0.9  # the IPH+SAH slice is not counted here
    sdh = df.set_index("subtype").loc["SDH"]
    assert sdh["n"] == 3 and sdh["median"] == 0.4 and sdh["iqr"] == pytest.approx(0.2)
    grouped = M.summarize_by_subtype([dict(r, model="WL") for r in rows[:4]], by=["model"])
    assert grouped.columns.tolist()[:2] == ["model", "subtype"] and len(grouped) == 3
    with pytest.raises(ValueError, match=r"rows\[0\] is missing \['dice'\]"):
        M.summarize_by_subtype([{"subtypes": ["SDH"]}])


# ------------------------------------------------------------------------ across seeds
def test_mean_ci():
    mean, lo, hi = M.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n), sd = 1
    assert mean == 2.0 and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    assert M.mean_ci([1.0, 2.0, 3.0, float("nan")]) == (mean, lo, hi)
    m1 = M.mean_ci([0.7])
    assert m1[0] == 0.7 and math.isnan(m1[1]) and math.isnan(m1[2])
    assert all(math.isnan(v) for v in M.mean_ci([]))
