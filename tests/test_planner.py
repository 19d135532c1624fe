"""The cost planner: hours and money per plan, and the cheapest plan on a hand-made table."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from ich.planner import CostModel, Plan, cheapest_plan, choice_effects, fitted_plans, plan_table


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


# ------------------------------------------------------------------------------ honest sentences
def test_a_mean_that_reaches_with_a_ci_below_the_target_is_said_so():
    plan = cheapest_plan(table(), CostModel(seconds_per_slice_label=10), 0.90)       # weak@96: CI 0.86-0.93
    text = plan.sentence()
    assert "mean AUC 0.900 reaches 0.90" in text and "95% CI 0.860–0.930 does not" in text
    assert "met on average, not with confidence" in text
    cautious = cheapest_plan(table(), CostModel(seconds_per_slice_label=10), 0.90, criterion="ci_low").sentence()
    assert "cautious rule" in cautious and "lower end of its 95% CI" in cautious


def test_nan_cis_are_not_estimable_never_raw_nan():
    df = table().assign(exam_auc_ci_low=float("nan"), exam_auc_ci_high=float("nan"))
    text = cheapest_plan(df, CostModel(), 0.85).sentence()
    assert "not estimable with these seeds" in text
    assert "nan" not in text.lower() and "inf" not in text.lower()


def test_free_validation_labels_are_counted_in_the_cost():
    df = table().assign(validation="free", val_labels=44.0)
    paid = table().assign(validation="paid", val_labels=12.0)
    free_t, paid_t = plan_table(df, CostModel()), plan_table(paid, CostModel())
    assert free_t["cost"].iloc[0] - paid_t["cost"].iloc[0] == pytest.approx(CostModel().cost("weak", 44))
    assert free_t["exam_labels"].iloc[0] == 48 + 44                        # paid labels are already in the budget
    plan = cheapest_plan(df, CostModel(seconds_per_slice_label=10), 0.90)
    assert "plus 44 exam labels of a fully labelled validation split" in plan.sentence()
    assert "chose the model (validation, paid from the budget)" in cheapest_plan(
        paid, CostModel(seconds_per_slice_label=10), 0.90).sentence()


def test_an_arm_whose_fit_never_reaches_the_target_is_named_with_its_best_observed_point():
    from ich.curves import fit_power_law, power_law
    from ich.planner import arm_outcomes

    n = [48.0, 96, 192]
    plateau = fit_power_law([500.0, 1000, 2000], power_law(n, 0.88, 0.6, 0.5), n_boot=0)   # never reaches 0.90
    lines = arm_outcomes(table(), {"weak": "too few budgets", "strong": plateau}, CostModel(), 0.90)
    assert len(lines) == 3                                                     # every arm, none dropped
    strong = next(line for line in lines if line.startswith("strong"))
    assert "fitted curve does not reach AUC 0.90" in strong and "best observed: AUC 0.910 at 1,000 slice labels" in strong
    assert "observed mean does reach 0.90 at 1,000 slice labels" in strong   # observed points reach it: said
    weak = next(line for line in lines if line.startswith("weak"))
    assert "no learning curve could be fitted (too few budgets)" in weak
    for line in lines:
        assert "nan" not in line.lower() and "inf" not in line.lower()


@pytest.mark.parametrize("auc", [float("nan"), 0.5])
def test_degenerate_studies_never_print_nan_or_inf(auc):
    from ich.planner import arm_outcomes

    df = pd.DataFrame([("weak", "weak", None, 12, auc, float("nan"), float("nan"))],
                      columns=["arm", "supervision", "slice_fraction", "budget", "exam_auc", "exam_auc_ci_low",
                               "exam_auc_ci_high"])
    for line in arm_outcomes(df, {}, CostModel(), 0.9):
        assert "nan" not in line.lower() and "inf" not in line.lower()
    plan = cheapest_plan(df, CostModel(), 0.4)
    if plan is not None:
        assert "nan" not in plan.sentence().lower()


def test_noisy_labels_are_priced_at_their_source_and_the_choice_is_checked_by_hand():
    """Clean weak reaches 0.90 at 96 exam labels (96 min = 320 USD); the noisy arm needs 192 report-mined labels.

    By hand: at 1 s per noisy label, noisy@192 = 192 s = 10.7 USD, the cheapest; at 60 s (a noisy label as dear
    as a clean one) it costs 640 USD and, with slice labels at 10 s (strong@1000 = 556 USD), clean weak@96
    (320 USD) wins.
    """
    noisy = pd.DataFrame([("weak-exam-sens90-spec90", "weak", None, "exam=0.9/0.9", 96, 0.86, 0.82, 0.90),
                          ("weak-exam-sens90-spec90", "weak", None, "exam=0.9/0.9", 192, 0.91, 0.88, 0.93)],
                         columns=["arm", "supervision", "slice_fraction", "label_noise", "budget", "exam_auc",
                                  "exam_auc_ci_low", "exam_auc_ci_high"])
    both = pd.concat([table().assign(label_noise=float("nan")), noisy], ignore_index=True)   # NaN: clean, as in CSV
    plan = cheapest_plan(both, CostModel(), 0.90)
    assert (plan.arm, plan.budget, plan.label_noise) == ("weak-exam-sens90-spec90", 192, "exam=0.9/0.9")
    assert plan.cost == pytest.approx(192 * 1 / 3600 * 200)
    assert "noisy exam labels (exam labels 90% sensitive, 90% specific)" in plan.sentence()
    dear = cheapest_plan(both, CostModel(seconds_per_noisy_label=60, seconds_per_slice_label=10), 0.90)
    assert (dear.arm, dear.budget) == ("weak", 96) and dear.label_noise == ""
    t = plan_table(both, CostModel())
    assert t.loc[t["arm"] == "weak", "cost"].tolist() == pytest.approx([48 / 60 * 200, 96 / 60 * 200, 192 / 60 * 200])
    assert CostModel().cost("mixed", 100, 0.5, "slice=0.9/0.9") == pytest.approx((50 * 60 + 50 * 1) / 3600 * 200)
    with pytest.raises(ValueError, match="seconds_per_noisy_label"):
        CostModel(seconds_per_noisy_label=-1)
    # reads are priced one by one: 3 simulated reads at the noisy price, recorded readers at the exam price
    assert CostModel().hours("weak", 100, None, "exam=0.8/0.8x3") == pytest.approx(100 * 3 * 1 / 3600)
    assert CostModel().hours("weak", 100, None, "exam=R1") == pytest.approx(100 * 60 / 3600)
    assert CostModel().hours("weak", 100, None, "exam=R1+R2+R3") == pytest.approx(100 * 3 * 60 / 3600)
    assert CostModel().hours("strong", 100, None, "slice=0.9/0.9x5") == pytest.approx(100 * 5 * 1 / 3600)
    rows = [("weak", "weak", "", 96, 0.90), ("weak-exam-sens80-spec80-x3", "weak", "exam=0.8/0.8x3", 96, 0.91),
            ("weak-exam-R1-R2-R3", "weak", "exam=R1+R2+R3", 48, 0.92)]
    agg = pd.DataFrame(rows, columns=["arm", "supervision", "label_noise", "budget", "exam_auc"])
    agg["slice_fraction"], agg["acquisition"] = float("nan"), "random"
    lines = {l.split(" ")[0]: l for l in choice_effects(agg, CostModel(), 0.90)}
    assert "3 reads at 1 s = 3 s per exam label" in lines["weak-exam-sens80-spec80-x3"]
    assert "saves 304 USD" in lines["weak-exam-sens80-spec80-x3"]           # 96 x 3 s = 288 s = 16 USD vs 320
    assert "3 reads at 60 s = 180 s per exam label" in lines["weak-exam-R1-R2-R3"]
    assert "costs 160 USD more" in lines["weak-exam-R1-R2-R3"]              # 48 x 180 s = 480 USD against 320 USD
    plan = cheapest_plan(agg.iloc[[2]], CostModel(), 0.90)
    assert "exam labels from recorded readers (exam labels: the majority of readers R1, R2, R3)" in plan.sentence()


def test_each_buying_choice_says_how_much_it_moved_the_cost_checked_by_hand():
    """weak (clean, random) reaches 0.90 at 96 exams = 320 USD; weak-uncertainty at 48 = 160 USD (saves 160);
    weak-exam-sens90-spec90 at 192 noisy labels = 192 s = 10.7 USD (saves 309); strong-coreset never reaches it,
    strong (random) does at 1000 slices = 278 USD."""
    rows = [("weak", "weak", "", "random", 96, 0.90), ("weak", "weak", "", "random", 48, 0.85),
            ("weak-uncertainty", "weak", "", "uncertainty", 48, 0.91),
            ("weak-exam-sens90-spec90", "weak", "exam=0.9/0.9", "random", 192, 0.91),
            ("strong", "strong", "", "random", 1000, 0.91), ("strong-coreset", "strong", "", "coreset", 1000, 0.88)]
    agg = pd.DataFrame(rows, columns=["arm", "supervision", "label_noise", "acquisition", "budget", "exam_auc"])
    agg["slice_fraction"] = float("nan")
    lines = {l.split(" ")[0]: l for l in choice_effects(agg, CostModel(), 0.90)}
    assert set(lines) == {"weak-uncertainty", "weak-exam-sens90-spec90", "strong-coreset"}
    assert "at 48 exam labels (160 USD) against 96 for weak (320 USD): the choice saves 160 USD" in lines["weak-uncertainty"]
    assert "saves 309 USD" in lines["weak-exam-sens90-spec90"] and "1 s each" in lines["weak-exam-sens90-spec90"]
    assert "does not reach AUC 0.90 (mean) within the study's budgets; strong does at 1,000" in lines["strong-coreset"]
    assert choice_effects(agg[agg["arm"].isin(["weak", "strong"])], CostModel(), 0.90) == []


def test_attention_guided_slices_are_priced_as_confirmations_plus_the_guides_exam_labels_checked_by_hand():
    """strong (random) reaches 0.90 at 1000 slices: 1000 x 5 s = 1.39 h = 278 USD. strong-attention reaches it at
    200 confirmed slices + a guide of 24 exam labels: 200 x 2 s + 24 x 60 s = 1840 s = 102 USD (saves 176).
    With confirmations as dear as free slices and exam labels at 300 s, attention costs 200 x 5 + 24 x 300 =
    8200 s = 456 USD, and strong (random) at 1000 x 5 s = 278 USD wins."""
    rows = [("strong", "strong", "random", 0.0, 1000, 0.91), ("strong", "strong", "random", 0.0, 500, 0.86),
            ("strong-attention", "strong", "attention", 24.0, 200, 0.90)]
    agg = pd.DataFrame(rows, columns=["arm", "supervision", "acquisition", "guide_labels", "budget", "exam_auc"])
    agg["slice_fraction"], agg["label_noise"] = float("nan"), ""
    plan = cheapest_plan(agg, CostModel(), 0.90)
    assert (plan.arm, plan.budget, plan.guide_labels) == ("strong-attention", 200, 24.0)
    assert plan.cost == pytest.approx((200 * 2 + 24 * 60) / 3600 * 200)
    assert "200 confirmed slice labels (pre-selected by a weak guide trained on 24 exam labels)" in plan.sentence()
    t = plan_table(agg, CostModel())
    assert t["exam_labels"].tolist() == [0, 0, 24] and t["slice_labels"].tolist() == [1000, 500, 200]
    [line] = choice_effects(agg, CostModel(), 0.90)
    assert "2 s each, plus 24 guide exam labels" in line and "the choice saves 176 USD" in line
    dear = cheapest_plan(agg, CostModel(seconds_per_confirmed_slice=5, seconds_per_exam_label=300), 0.90)
    assert (dear.arm, dear.budget) == ("strong", 1000)
    with pytest.raises(ValueError, match="seconds_per_confirmed_slice"):
        CostModel(seconds_per_confirmed_slice=-1)


@pytest.mark.parametrize("hours, words", [(0.0, "under 1 annotator-minute"), (1 / 60, "1 annotator-minute"),
                                          (0.4, "24 annotator-minutes"), (1.6, "1.6 annotator-hours"),
                                          (float("nan"), "annotator time not estimable")])
def test_annotator_time_reads_naturally(hours, words):
    from ich.planner import annotator_time

    assert annotator_time(hours) == words
