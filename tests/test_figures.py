"""Plotly figure builders: learning curves (labels, hours, money), ROC curves, the slice strip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ich.figures import learning_curve_figure, roc_figure, slice_strip_figure
from ich.planner import CostModel


def aggregate():
    rows = []
    for arm in ("weak", "strong"):
        for b, m in ((10, 0.6), (20, 0.7), (40, 0.75)):
            rows.append({"arm": arm, "supervision": arm, "slice_fraction": None, "budget": b, "exam_auc": m,
                         "exam_auc_ci_low": m - 0.05, "exam_auc_ci_high": m + 0.05, "n_seeds": 2})
    return pd.DataFrame(rows)


def test_learning_curves_against_labels_and_money():
    from ich.curves import fit_power_law

    agg = aggregate()
    fit = fit_power_law(agg["budget"][:3], agg["exam_auc"][:3], n_boot=20)
    fig = learning_curve_figure(agg, fits={"weak": fit})
    names = [t.name for t in fig.data]
    assert "weak" in names and "strong" in names and "weak fit" in names
    assert fig.layout.xaxis.type == "log"
    money = learning_curve_figure(agg, x="cost", cost=CostModel(hourly_rate=3600, seconds_per_exam_label=1))
    weak = next(t for t in money.data if t.name == "weak")
    assert list(weak.x) == [10.0, 20.0, 40.0]                      # 1 s per exam label at 3600/h = 1 per label


def test_hours_axis_needs_a_cost_model():
    with pytest.raises(ValueError, match="needs a cost model"):
        learning_curve_figure(aggregate(), x="hours")


def test_roc_and_strip():
    fig = roc_figure([{"name": "weak", "fpr": [0, 0.5, 1], "tpr": [0, 0.8, 1], "auc": 0.8}])
    assert "AUC 0.800" in fig.data[1].name
    slices = pd.DataFrame({"exam_id": "E1", "index": np.arange(5), "slice_score": np.linspace(0, 1, 5),
                           "attention": [0, 0, 0.5, 0.5, 0], "slice_label": [0, 0, 1, 1, 0]})
    strip = slice_strip_figure(slices, current=2)
    lesion, negative, unknown, scores, dots = strip.data
    assert [t.name for t in (lesion, negative, unknown)] == ["truth: lesion", "truth: no lesion", "truth: not known"]
    assert list(lesion.x) == [2, 3] and list(negative.x) == [0, 1, 4] and list(unknown.x) == [None]
    assert lesion.marker.color != negative.marker.color
    assert np.asarray(scores.z).shape == (2, 5)
    assert scores.colorscale[0][1] == "#f7fbff"          # zero is white, never an alarm colour
    assert list(dots.x) == list(range(5)) and dots.marker.color[2] != dots.marker.color[0]   # what a click selects
    none = slice_strip_figure(slices.assign(slice_label=np.nan))
    assert list(none.data[2].x) == list(range(5)) and list(none.data[0].x) == [None]
    with pytest.raises(ValueError, match="no slices"):
        slice_strip_figure(slices, "E9")


def test_hu_slice_figure_shows_hu_on_hover_and_marks_sides():
    from ich.figures import hu_slice_figure

    hu = np.arange(12, dtype=np.float32).reshape(3, 4) * 10
    fig = hu_slice_figure(hu, 40, 80)
    assert np.asarray(fig.data[0].z).shape == (3, 4) and "HU" in fig.data[0].hovertemplate
    assert (fig.data[0].zmin, fig.data[0].zmax) == (0, 80)
    assert [a.text for a in fig.layout.annotations] == ["<b>R</b>", "<b>L</b>"]


def test_noisy_arms_are_drawn_at_their_own_price_on_the_cost_axes():
    import pandas as pd

    from ich.figures import learning_curve_figure
    from ich.planner import CostModel

    agg = pd.DataFrame({"arm": ["weak", "weak-exam-sens90-spec90"], "supervision": "weak", "slice_fraction": float("nan"),
                        "label_noise": [float("nan"), "exam=0.9/0.9"], "budget": [60, 60], "n_seeds": 3,
                        "exam_auc": [0.9, 0.85], "exam_auc_ci_low": [0.8, 0.8], "exam_auc_ci_high": [0.95, 0.9]})
    fig = learning_curve_figure(agg, x="hours", cost=CostModel())
    xs = {t.name: list(t.x) for t in fig.data if t.name in ("weak", "weak-exam-sens90-spec90")}
    assert xs["weak"] == [pytest.approx(1.0)] and xs["weak-exam-sens90-spec90"] == [pytest.approx(60 / 3600)]


def test_attention_arms_are_drawn_at_the_price_of_their_confirmations_and_guide():
    import pandas as pd

    from ich.figures import learning_curve_figure
    from ich.planner import CostModel

    agg = pd.DataFrame({"arm": ["strong", "strong-attention"], "supervision": "strong", "slice_fraction": float("nan"),
                        "label_noise": "", "acquisition": ["random", "attention"], "guide_labels": [0.0, 24.0],
                        "budget": [48, 48], "n_seeds": 3, "exam_auc": [0.9, 0.85], "exam_auc_ci_low": [0.8, 0.8],
                        "exam_auc_ci_high": [0.95, 0.9]})
    fig = learning_curve_figure(agg, x="hours", cost=CostModel())
    xs = {t.name: list(t.x) for t in fig.data if t.name in ("strong", "strong-attention")}
    assert xs["strong"] == [pytest.approx(48 * 5 / 3600)]
    assert xs["strong-attention"] == [pytest.approx((48 * 2 + 24 * 60) / 3600)]    # 48 confirmations + 24 exam reads


def test_log_axes_read_as_plain_numbers():
    fig = learning_curve_figure(aggregate())
    assert list(fig.layout.xaxis.tickvals) == [10, 20, 40] and list(fig.layout.xaxis.ticktext) == ["10", "20", "40"]
    hours = learning_curve_figure(aggregate(), x="hours", cost=CostModel(seconds_per_exam_label=60))
    text = list(hours.layout.xaxis.ticktext)
    assert text and all(t.replace(".", "", 1).isdigit() for t in text), text      # 0.2, 0.5, 1: no "2 5 100"


def test_epoch_figure_draws_loss_and_validation_per_learning_rate():
    from ich.figures import epoch_figure

    rows = [{"epoch": e + 10 * i, "lr_factor": f, "lr_epoch": e, "train_loss": 1 / e, "val_exam_auc": 0.5 + e / 40}
            for i, f in enumerate((0.3, 1.0)) for e in range(1, 11)]
    fig = epoch_figure(pd.DataFrame(rows))
    assert [t.name for t in fig.data] == ["training loss learning rate ×0.3", "validation exam AUC learning rate ×0.3",
                                          "training loss learning rate ×1", "validation exam AUC learning rate ×1"]
    assert fig.data[1].yaxis == "y2"
    assert epoch_figure(pd.DataFrame()) is None
