"""Plotly figure builders shared by the HTML report and the app (pure display: the numbers come from elsewhere).

- ``learning_curve_figure``: a figure (exam AUC by default) against labels, annotator hours or
  money, one colour per arm: seed points, the mean with its 95% CI band across seeds, and the
  power-law fit with its band (``ich.curves``); log-scale x.
- ``roc_figure``: ROC curves with their AUCs in the legend.
- ``slice_strip_figure``: one exam along its slices: truth, slice probability and attention (a
  heatmap strip, hover shows raw values).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

#: One colour per arm, in plotting order (weak first, strong second, then mixed arms).
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
X_AXES = {"labels": "labels bought", "hours": "annotator hours", "cost": "annotation cost"}
METRIC_NAMES = {"exam_auc": "exam AUC", "slice_auc": "slice AUC", "sequence_f1": "sequence F1",
                "pixel_dice": "pixel Dice (median)"}


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def arm_colors(arms: Sequence[str]) -> dict[str, str]:
    """A stable colour per arm name."""
    return {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(arms)}


def learning_curve_figure(aggregate: pd.DataFrame, *, cells: pd.DataFrame | None = None,
                          fits: Mapping[str, Any] | None = None, metric: str = "exam_auc", x: str = "labels",
                          cost=None, title: str | None = None):
    """Learning curves of a study.

    Args:
        aggregate: one row per arm and budget (``study.summarise_study``): ``arm, supervision,
            slice_fraction, budget, <metric>, <metric>_ci_low, <metric>_ci_high, n_seeds``.
        cells: the per-cell table, to show every seed as a faint point (optional).
        fits: ``{arm: curves.PowerLawFit}`` to draw (others skipped); only for ``metric`` fitted on.
        metric: the column to plot.
        x: ``"labels"`` (budget), ``"hours"`` or ``"cost"`` (need ``cost``, a ``planner.CostModel``).
        cost: the cost model for hours/cost axes.
        title: figure title.

    Returns:
        ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go

    if x not in X_AXES:
        raise ValueError(f"x must be one of {list(X_AXES)}, not {x!r}")
    if x != "labels" and cost is None:
        raise ValueError(f"x={x!r} needs a cost model (planner.CostModel)")

    def to_x(sup, budget, frac, noise_spec="", strategy="random", guide=0.0):
        budget = np.asarray(budget, dtype=np.float64)
        if x == "labels":
            return budget
        f = None if frac is None or (isinstance(frac, float) and math.isnan(frac)) else float(frac)
        fn = cost.hours if x == "hours" else cost.cost
        spec = noise_spec if isinstance(noise_spec, str) else ""          # NaN from a CSV: clean labels
        how = strategy if isinstance(strategy, str) and strategy else "random"
        g = float(guide) if isinstance(guide, (int, float)) and math.isfinite(guide) else 0.0   # attention's guide
        return np.array([fn(sup, float(b), f, spec, how, g) for b in budget.ravel()]).reshape(budget.shape)

    arms = list(dict.fromkeys(aggregate["arm"])) if len(aggregate) else []
    if cells is not None and len(cells):
        arms += [a for a in dict.fromkeys(cells["arm"]) if a not in arms]
    colors = arm_colors(arms)
    fig = go.Figure()
    for arm in arms:
        color = colors[arm]
        agg = aggregate[aggregate["arm"] == arm].sort_values("budget")
        first = agg.iloc[0] if len(agg) else cells[cells["arm"] == arm].iloc[0]
        sup, frac, spec = first["supervision"], first["slice_fraction"], first.get("label_noise", "")
        priced = (spec, first.get("acquisition", "random"), first.get("guide_labels", 0.0))   # how labels were bought
        if cells is not None and len(cells):
            pts = cells[(cells["arm"] == arm) & cells[metric].notna()]
            if len(pts):
                fig.add_trace(go.Scatter(
                    x=to_x(sup, pts["budget"], frac, *priced), y=pts[metric], mode="markers", name=f"{arm} seeds",
                    legendgroup=arm, showlegend=False, marker=dict(color=_rgba(color, 0.35), size=6),
                    customdata=np.stack([pts["budget"], pts["seed"]], axis=1),
                    hovertemplate=f"{arm}<br>budget %{{customdata[0]}}, seed %{{customdata[1]}}<br>"
                                  f"{METRIC_NAMES.get(metric, metric)} %{{y:.3f}}<extra></extra>"))
        if len(agg):
            xs = to_x(sup, agg["budget"], frac, *priced)
            lo, hi = agg[f"{metric}_ci_low"].to_numpy(float), agg[f"{metric}_ci_high"].to_numpy(float)
            band = np.isfinite(lo) & np.isfinite(hi)
            if band.any():
                fig.add_trace(go.Scatter(x=np.r_[xs[band], xs[band][::-1]], y=np.r_[hi[band], lo[band][::-1]],
                                         fill="toself", fillcolor=_rgba(color, 0.15), line=dict(width=0),
                                         hoverinfo="skip", legendgroup=arm, showlegend=False, name=f"{arm} 95% CI"))
            fig.add_trace(go.Scatter(
                x=xs, y=agg[metric], mode="lines+markers", name=arm, legendgroup=arm,
                line=dict(color=color, width=2), marker=dict(size=8),
                customdata=np.stack([agg["budget"], agg["n_seeds"], lo, hi], axis=1),
                hovertemplate=f"{arm}<br>budget %{{customdata[0]}} (%{{customdata[1]}} seeds)<br>"
                              f"mean %{{y:.3f}} [%{{customdata[2]:.3f}}, %{{customdata[3]:.3f}}]<extra></extra>"))
        fit = (fits or {}).get(arm)
        if fit is not None and hasattr(fit, "predict"):
            grid = np.geomspace(max(1.0, fit.n_min), fit.n_max * 4, 120)   # no extrapolation below the data
            gx = to_x(sup, grid, frac, *priced)
            flo, fhi = fit.band(grid)
            if np.isfinite(flo).all():
                fig.add_trace(go.Scatter(x=np.r_[gx, gx[::-1]], y=np.r_[fhi, flo[::-1]], fill="toself",
                                         fillcolor=_rgba(color, 0.08), line=dict(width=0), hoverinfo="skip",
                                         legendgroup=arm, showlegend=False, name=f"{arm} fit band"))
            fig.add_trace(go.Scatter(
                x=gx, y=fit.predict(grid), mode="lines", name=f"{arm} fit", legendgroup=arm,
                line=dict(color=color, width=1.5, dash="dash"),
                hovertemplate=(f"{arm} fit: a={fit.a:.3f} b={fit.b:.3f} c={fit.c:.3f}<br>"
                               "%{y:.3f}<extra></extra>")))
    xtitle = X_AXES[x] + (f" ({cost.currency})" if x == "cost" else "")
    ys = [v for t in fig.data if t.y is not None and not (t.name or "").endswith("fit band")
          for v in np.asarray(t.y, float).ravel() if np.isfinite(v)]
    if ys and metric in METRIC_NAMES:          # figures in [0, 1]: keep fit bands from stretching the axis
        fig.update_yaxes(range=[max(0.0, min(ys) - 0.08), min(1.0, max(ys) + 0.08) + 0.01])
    fig.update_layout(title=title, xaxis_title=xtitle, yaxis_title=METRIC_NAMES.get(metric, metric),
                      template="plotly_white", hovermode="closest", legend=dict(orientation="h", y=-0.2),
                      margin=dict(l=60, r=20, t=50 if title else 20, b=60))
    xs = [v for t in fig.data if t.x is not None and not (t.name or "").endswith(("fit", "fit band"))
          for v in np.asarray(t.x, float).ravel() if np.isfinite(v) and v > 0]
    ticks = sorted(set(xs)) if x == "labels" and len(set(xs)) <= 12 else _log_ticks(xs)
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[f"{v:g}" for v in ticks])   # plain numbers, not "2 5 100"
    return fig


def _log_ticks(values: Sequence[float]) -> list[float]:
    """1-2-5 tick values (…, 0.5, 1, 2, 5, 10, …) covering ``values`` on a log axis."""
    if not len(values):
        return []
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    ticks = [m * 10.0 ** k for k in range(lo, hi + 1) for m in (1, 2, 5)]
    inside = [t for t in ticks if min(values) / 1.5 <= t <= max(values) * 1.5]
    powers_of_ten = [t for t in inside if math.isclose(math.log10(t), round(math.log10(t)))]
    return inside if len(inside) <= 10 else powers_of_ten


def roc_figure(curves: Sequence[Mapping[str, Any]], *, title: str | None = None):
    """ROC curves.

    Args:
        curves: dicts with ``name``, ``fpr``, ``tpr`` (sequences) and optionally ``auc``
            (e.g. ``metrics.json``'s ``exam.roc`` plus ``exam.auc``).
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbbbbb", dash="dot"),
                             showlegend=False, hoverinfo="skip"))
    for i, c in enumerate(curves):
        auc = c.get("auc")
        label = c["name"] + (f" (AUC {auc:.3f})" if auc is not None and np.isfinite(auc) else "")
        fig.add_trace(go.Scatter(x=list(c["fpr"]), y=list(c["tpr"]), mode="lines", name=label,
                                 line=dict(color=PALETTE[i % len(PALETTE)], shape="hv")))
    fig.update_layout(title=title, xaxis_title="1 - specificity", yaxis_title="sensitivity", template="plotly_white",
                      xaxis=dict(range=[0, 1], constrain="domain"),
                      yaxis=dict(range=[0, 1.02], scaleanchor="x", constrain="domain"), height=480,
                      margin=dict(l=60, r=20, t=50 if title else 20, b=50))
    return fig


def epoch_figure(metrics: pd.DataFrame, *, title: str | None = None):
    """A single run's curves per epoch: training loss (left axis) and validation AUC (right axis).

    Args:
        metrics: ``runs.read_metrics`` (one row per epoch: ``epoch``, ``train_loss`` and, where the
            run validates, ``val_exam_auc`` / ``val_slice_auc``; ``lr_factor`` and ``lr_epoch``
            when it tries several learning rates, each drawn as its own line).

    Returns:
        ``plotly.graph_objects.Figure``, or None before the first epoch.
    """
    import plotly.graph_objects as go

    if metrics.empty or "train_loss" not in metrics:
        return None
    fig = go.Figure()
    several = "lr_factor" in metrics and metrics["lr_factor"].nunique() > 1
    for i, (factor, m) in enumerate(metrics.groupby("lr_factor", sort=True) if several else [(None, metrics)]):
        x = m["lr_epoch"] if several else m["epoch"]
        name = f"learning rate ×{factor:g}" if several else ""
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=x, y=m["train_loss"], mode="lines", line=dict(color=color),
                                 name=f"training loss {name}".strip()))
        for col, words, dash in (("val_exam_auc", "validation exam AUC", "dot"),
                                 ("val_slice_auc", "validation slice AUC", "dash")):
            if col in m and m[col].notna().any():
                fig.add_trace(go.Scatter(x=x, y=m[col], mode="lines+markers", yaxis="y2", marker=dict(size=4),
                                         line=dict(color=color, dash=dash), name=f"{words} {name}".strip()))
    fig.update_layout(title=title, template="plotly_white", height=320, xaxis_title="epoch",
                      yaxis=dict(title="training loss", rangemode="tozero"),
                      yaxis2=dict(title="validation AUC", overlaying="y", side="right", range=[0, 1.02],
                                  tickvals=[0, 0.25, 0.5, 0.75, 1.0], showgrid=False),
                      legend=dict(orientation="h", y=-0.25), margin=dict(l=60, r=60, t=40 if title else 10, b=60))
    return fig


#: Truth row colours: a lesion is the only strong colour; "no lesion" and "not known" are quiet.
TRUTH_COLOURS = {"lesion": "#b2182b", "no lesion": "#d9d9d9", "not known": "#ffffff"}
#: Continuous rows: white at 0 (nothing) to dark blue at the exam's maximum; never an alarm colour at 0.
STRIP_SCALE = [[0.0, "#f7fbff"], [0.5, "#6baed6"], [1.0, "#08306b"]]
SELECT_ROW = "click to show"


def slice_strip_figure(slices: pd.DataFrame, exam_id: str | None = None, *, title: str | None = None,
                       current: int | None = None):
    """One exam along its slices: the ground truth, the slice probability and the attention.

    Args:
        slices: prediction rows (``runs.read_predictions``' slices: ``exam_id, index, slice_score,
            attention, slice_label``).
        exam_id: the exam (default: the only or first exam in ``slices``).
        current: the slice shown below the strip (outlined).

    Rows: *truth* is categorical (lesion / no lesion / not known: traces 0-2, one per category, with
    a legend); *slice probability* in [0, 1] and *attention* scaled to the exam's largest weight share
    one white-to-blue heatmap (trace 3) where 0 is white; a row of dots (trace 4, ``SELECT_ROW``) is
    what a click selects (its points carry the slice index as ``x``). Hover shows raw values.
    """
    import plotly.graph_objects as go

    if exam_id is None:
        if slices.empty:
            raise ValueError("slices is empty: nothing to draw")
        exam_id = slices["exam_id"].iloc[0]
    df = slices[slices["exam_id"] == exam_id].sort_values("index")
    if df.empty:
        raise ValueError(f"exam {exam_id!r} has no slices in the predictions")
    idx = df["index"].to_numpy()
    truth = pd.to_numeric(df["slice_label"], errors="coerce").to_numpy(float)
    prob = pd.to_numeric(df["slice_score"], errors="coerce").to_numpy(float)
    att = pd.to_numeric(df["attention"], errors="coerce").to_numpy(float)
    amax = np.nanmax(att) if np.isfinite(att).any() else np.nan
    att_scaled = att / amax if np.isfinite(amax) and amax > 0 else att
    rows = ["truth", "slice probability", "attention", SELECT_ROW]
    truth_text = np.where(np.isnan(truth), "not known", np.where(truth > 0, "lesion", "no lesion"))
    fig = go.Figure()
    # one heatmap only (plotly.js fails on two heatmaps with different rows on one axis): the truth row is
    # drawn as squares, one trace per category, which also gives its legend
    for label, colour in TRUTH_COLOURS.items():
        sel = truth_text == label
        fig.add_trace(go.Scatter(
            x=idx[sel] if sel.any() else [None], y=[0] * max(int(sel.sum()), 1), mode="markers",
            name=f"truth: {label}", marker=dict(size=13, symbol="square", color=colour,
                                                line=dict(color="#888888", width=1)),
            hovertemplate=f"slice %{{x}}<br>truth: {label}<extra></extra>"))
    fig.add_trace(go.Heatmap(
        z=np.vstack([prob, att_scaled]), x=idx, y=[1, 2], customdata=np.vstack([prob, att]), zmin=0, zmax=1,
        colorscale=STRIP_SCALE, colorbar=dict(title=dict(text="probability,<br>attention<br>(÷ exam max)", side="top"),
                                              thickness=10, len=0.8, tickvals=[0, 0.5, 1]),
        text=[[rows[1]] * len(idx), [rows[2]] * len(idx)],
        hovertemplate="slice %{x}<br>%{text}: %{customdata:.3f}<extra></extra>", xgap=1, ygap=2, name="scores"))
    fig.add_trace(go.Scatter(
        x=idx, y=[3] * len(idx), mode="markers", name=SELECT_ROW, showlegend=False,
        marker=dict(size=9, color=["#08306b" if current is not None and i == current else "#bdbdbd" for i in idx],
                    symbol="circle"),
        hovertemplate="slice %{x}: click to show it<extra></extra>"))
    if current is not None:
        fig.add_vrect(x0=current - 0.5, x1=current + 0.5, line=dict(color="#08306b", width=2), fillcolor="rgba(0,0,0,0)")
    fig.update_layout(title=title or f"exam {exam_id}", xaxis_title="slice (0 = lowest)", template="plotly_white",
                      height=260, margin=dict(l=120, r=20, t=40, b=40), clickmode="event+select",
                      legend=dict(orientation="h", y=1.12, x=1, xanchor="right"),
                      plot_bgcolor="#ffffff", paper_bgcolor="rgba(0,0,0,0)")
    # numeric rows named by ticks: plotly.js fails to draw a heatmap on a category axis that other traces extend
    fig.update_yaxes(tickvals=[0, 1, 2, 3], ticktext=rows, range=[3.5, -0.5], fixedrange=True, showgrid=False,
                     zeroline=False)
    fig.update_xaxes(fixedrange=True)
    return fig


def hu_slice_figure(hu: np.ndarray, level: float, width: float, *, title: str | None = None, height: int = 420):
    """One HU slice (H, W) at native resolution in a grey window, with the HU value under the cursor and L/R marks.

    Args:
        hu: (H, W) float HU, DICOM axial orientation (column 0 = the patient's right).
        level, width: the window in HU (grey from level - width/2 to level + width/2).
    """
    import plotly.graph_objects as go

    hu = np.asarray(hu, dtype=np.float32)
    h, w = hu.shape
    fig = go.Figure(go.Heatmap(z=hu, colorscale="gray", zmin=level - width / 2, zmax=level + width / 2,
                               showscale=False, hovertemplate="x %{x}, y %{y}<br>%{z:.0f} HU<extra></extra>"))
    for text, x in (("R", 0.02), ("L", 0.98)):
        fig.add_annotation(x=x, y=0.5, xref="paper", yref="paper", text=f"<b>{text}</b>", showarrow=False,
                           font=dict(color="#ffd400", size=16))
    fig.update_layout(title=title, height=height, margin=dict(l=0, r=0, t=30 if title else 0, b=0),
                      plot_bgcolor="#000000", paper_bgcolor="rgba(0,0,0,0)")
    fig.update_xaxes(visible=False, range=[-0.5, w - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x", constrain="domain")
    return fig
