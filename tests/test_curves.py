"""Power-law learning curves: recovery of known parameters, intervals, labels needed and label ratios."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ich.curves import (PowerLawFit, common_targets, fit_power_law, fit_study_curves, inverse_power_law,
                        label_ratio, power_law)

BUDGETS = np.array([12, 24, 48, 96, 192, 384, 768], dtype=float)


def synthetic(a=0.95, b=0.6, c=0.5, seeds=5, noise=0.005, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    n = np.repeat(BUDGETS * scale, seeds)
    return n, power_law(n / scale, a, b, c) + rng.normal(0, noise, n.size)


def test_inverse_is_the_inverse():
    n = np.array([3.0, 50.0, 1e4])
    assert inverse_power_law(power_law(n, 0.9, 0.5, 0.4), 0.9, 0.5, 0.4) == pytest.approx(n)
    assert np.isinf(inverse_power_law(0.95, 0.9, 0.5, 0.4))          # above the asymptote: never


def test_fit_recovers_known_parameters():
    n, y = synthetic()
    fit = fit_power_law(n, y, n_boot=200)
    assert (fit.a, fit.b, fit.c) == pytest.approx((0.95, 0.6, 0.5), abs=0.03)
    assert fit.method == "bootstrap" and len(fit.replicates) > 150 and fit.rmse < 0.01
    lo, hi = fit.band(BUDGETS)
    truth = power_law(BUDGETS, 0.95, 0.6, 0.5)
    assert (lo <= truth + 0.01).all() and (truth - 0.01 <= hi).all() and (lo < hi).all()


def test_labels_needed_has_an_interval_around_the_truth():
    n, y = synthetic()
    need = fit_power_law(n, y, n_boot=200).labels_needed(0.9)
    truth = float(inverse_power_law(0.9, 0.95, 0.6, 0.5))            # 144 labels
    assert need["n"] == pytest.approx(truth, rel=0.15)
    assert need["low"] <= truth <= need["high"] and not need["extrapolated"]


def test_label_ratio_recovers_35():
    n, y = synthetic(seed=1)
    weak = fit_power_law(n, y, n_boot=200, seed=1)
    n2, y2 = synthetic(scale=35.0, seed=2)                            # the same curve needing 35x the labels
    strong = fit_power_law(n2, y2, n_boot=200, seed=2)
    r = label_ratio(strong, weak, 0.9)
    assert r["ratio"] == pytest.approx(35, rel=0.2)
    assert r["low"] < r["ratio"] < r["high"]


def test_one_seed_per_budget_uses_the_covariance():
    n, y = synthetic(seeds=1, noise=0.002)
    fit = fit_power_law(n, y, n_boot=100)
    assert fit.method == "covariance" and len(fit.replicates) == 100
    assert fit.a == pytest.approx(0.95, abs=0.03)


def test_too_few_budgets():
    with pytest.raises(ValueError, match=">= 3 distinct budgets"):
        fit_power_law([10, 10, 20], [0.6, 0.62, 0.7])


def test_budget_below_one_label():
    with pytest.raises(ValueError, match="budgets must be >= 1"):
        fit_power_law([0, 10, 20], [0.6, 0.62, 0.7])


def test_study_fits_per_arm_and_common_targets():
    n, y = synthetic(seeds=2)
    cells = pd.DataFrame({"arm": "weak", "budget": n, "exam_auc": y, "state": "done"})
    cells = pd.concat([cells, pd.DataFrame({"arm": "strong", "budget": [12.0, 24.0], "exam_auc": [0.6, 0.7],
                                            "state": "done"})])
    fits = fit_study_curves(cells, n_boot=50)
    assert isinstance(fits["weak"], PowerLawFit) and "distinct budgets" in fits["strong"]
    targets = common_targets({"weak": fits["weak"]})
    assert len(targets) == 3 and all(fits["weak"].predict(12) < t < fits["weak"].predict(768) for t in targets)
