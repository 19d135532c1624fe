"""The cost planner: hours and money per plan, and the cheapest plan on a hand-made table."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from ich.planner import CostModel, Plan, cheapest_plan, fitted_plans, plan_table


def table() -> pd.DataFrame:
    """Hand-made aggregate: weak reaches 0.90 at 96 exams, strong at 1000 slices, mixed at 200 labels."""
    rows = [("weak", "weak", None, 48, 0.85, 0.80, 0.88), ("weak", "weak", None, 96, 0.90, 0.86, 0.93),
            ("weak", "weak", None, 192, 0.93, 0.91, 0.95),
            ("strong", "strong", None, 500, 0.86, 0.84, 0.88), ("strong", "strong", None, 1000, 0.91, 0.90, 0.92),
            ("mixed-f0.5", "mixed", 0.5, 200, 0.92, 0.88, 0.95)]
    return pd.DataFrame(rows, columns=["arm", "supervision", "slice_fraction", "budget", "exam_auc",
                                       "exam_auc_ci_low", "exam_auc_ci_high"])


def test_costs_per_label_kind():
    cost = CostModel(seconds_per_exam_label=60, seconds_per_slice_label=6, hourly_rate=100)
    assert cost.hours("weak", 60) == pytest.approx(1.0)
    assert cost.hours("strong", 600) == pytest.approx(1.0)
    assert cost.label_counts("mixed", 200, 0.25) == (150.0, 50.0)
    assert cost.cost("mixed", 200, 0.25) == pytest.approx((150 * 60 + 50 * 6) / 3600 * 100)


def test_cheapest_plan_on_a_hand_made_table():
    # exam label 60 s, slice label 5 s: weak@96 = 1.6 h, strong@1000 = 1.39 h, mixed@200 = 1.53 h
    plan = cheapest_plan(table(), CostModel(), 0.90)
    assert isinstance(plan, Plan) and (plan.arm, plan.budget) == ("strong", 1000)
    assert plan.hours == pytest.approx(1000 * 5 / 3600) and plan.cost == pytest.approx(plan.hours * 200)
    # slices get dearer: weak wins
    plan = cheapest_plan(table(), CostModel(seconds_per_slice_label=10), 0.90)
    assert (plan.arm, plan.budget) == ("weak", 96)


def test_cautious_criterion_needs_the_ci_to_clear_the_target():
    plan = cheapest_plan(table(), CostModel(seconds_per_slice_label=10), 0.90, criterion="ci_low")
    assert (plan.arm, plan.budget) == ("strong", 1000)        # weak@96's CI starts at 0.86; strong@1000 at 0.90


def test_unreachable_target():
    assert cheapest_plan(table(), CostModel(), 0.99) is None


def test_plan_table_columns():
    df = plan_table(table(), CostModel())
    assert {"exam_labels", "slice_labels", "hours", "cost"} <= set(df.columns)
    mixed = df[df["arm"] == "mixed-f0.5"].iloc[0]
    assert (mixed["exam_labels"], mixed["slice_labels"]) == (100, 100)


def test_bad_criterion():
    with pytest.raises(ValueError, match="did you mean 'ci_low'"):
        cheapest_plan(table(), CostModel(), 0.9, criterion="ci_lo")


def test_negative_cost():
    with pytest.raises(ValueError, match="seconds_per_slice_label must be >= 0"):
        CostModel(seconds_per_slice_label=-1)


def test_unknown_cost_key():
    with pytest.raises(ValueError, match="did you mean 'hourly_rate'"):
        CostModel.from_dict({"hourly_rat": 3})


def test_table_without_columns():
    with pytest.raises(ValueError, match="lacks columns"):
        plan_table(pd.DataFrame({"arm": ["weak"]}), CostModel())


def test_fitted_plans_cheapest_first():
    from ich.curves import fit_power_law, power_law

    n = [10.0, 20, 40, 80, 160, 320]
    weak = fit_power_law(n, power_law(n, 0.95, 0.6, 0.5), n_boot=0)
    strong = fit_power_law([35 * v for v in n], power_law(n, 0.95, 0.6, 0.5), n_boot=0)
    plans = fitted_plans({"weak": weak, "strong": strong, "mixed-f0.5": "no fit"},
                         {"weak": ("weak", None), "strong": ("strong", None)}, CostModel(), 0.9)
    assert [p.arm for p in plans] == ["weak", "strong"]       # 35 slices x 5 s > 1 exam x 60 s
    assert plans[1].budget / plans[0].budget == pytest.approx(35, rel=1e-3)
    assert all(p.source == "fit" and math.isnan(p.budget_low) for p in plans)
