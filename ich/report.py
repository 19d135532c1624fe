"""The study report: one self-contained HTML file (plotly.js inlined) with curves, tables, statistics and the spec.

``build_report(study)`` renders a study's answer (``ich.results.study_answer``, the one the Results
page and ``python -m ich plan`` show) as HTML; it computes no figure of its own. It opens
offline in any browser (no CDN, no external files). Sections: the answer in plain words
(labels needed and the strong/weak label ratio at equal AUC, the cheapest plan per target),
learning curves against labels, annotator hours and money (``ich.figures``), ROC curves and
the slice strip of one test exam at the largest budget, the power-law fits (``ich.curves``),
the plan table (``ich.planner``), every cell, and the study spec with the cost model; for a study
run with ``--robustness``, whether the cheapest plan survives the recipe variants (``ich.robustness``).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Sequence

import jinja2
import pandas as pd
from markupsafe import Markup

from ich import atomic
from ich.curves import PowerLawFit
from ich.planner import CostModel, plan_table
from ich.results import (COLUMN_WORDS, N_BOOT, StudyAnswer, largest_budget_runs, significant_count,
                         study_answer)
from ich.study import read_progress, read_study

REFERENCE_RATIO = 35  # paper-protocol.md §9.1: weak learners on all of RSNA needed ~35x fewer labels

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:2em}
.sub{color:#666;margin-top:4px}.key{background:#f4f8fb;border-left:4px solid #1f77b4;padding:10px 16px}
table{border-collapse:collapse;font-size:0.85em;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:10px;overflow-x:auto;font-size:0.8em}.note{color:#666;font-size:0.9em}
"""


def _fmt(v, digits: int = 3) -> str:
    """A number as the report prints it: "–" for missing, "never" for +inf, thousands separators for counts."""
    if v is None:
        return "–"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "–"
    if math.isinf(f):
        return "never" if f > 0 else "-inf"
    if abs(f) >= 100 or (f == int(f) and abs(f) >= 10) or digits == 0:
        return f"{f:,.0f}"
    return f"{f:.{digits}f}"


#: Columns holding counts (labels, budgets, seeds): printed without decimals.
COUNT_COLUMNS = {"budget", "n_seeds", "n_labels", "n_points", "n_min", "n_max", "n_replicates", "labels", "low", "high",
                 "budget_low", "budget_high", "exam_labels", "slice_labels", "cost", "seed"}


def _table(df: pd.DataFrame | None, columns: Sequence[str], headers: Sequence[str] | None = None) -> dict | None:
    """``{"headers", "rows"}`` of formatted cells for the template's table macro (None when there is nothing)."""
    if df is None or df.empty:
        return None
    return {"headers": list(headers or columns),
            "rows": [[_fmt(r.get(c), 0 if c in COUNT_COLUMNS else 3) for c in columns] for r in df.to_dict("records")]}


def _p(v) -> str:
    """A p-value as the report prints it: "< 0.001" rather than "0.000"."""
    return "–" if v is None or v != v else "< 0.001" if v < 0.001 else f"{v:.3f}"


def _ci(m, lo, hi) -> str:
    return f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]"


TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
                               autoescape=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)


def build_report(study: str | os.PathLike, *, cost: CostModel | None = None, targets: Sequence[float] | None = None,
                 metric: str = "exam_auc", criterion: str = "mean", n_boot: int = N_BOOT) -> str:
    """The HTML report of a study folder (finished or not): ``render_report(results.study_answer(...))``.

    Args:
        study: the study folder.
        cost: the cost model (default ``CostModel()``; its parameters are printed in the report).
        targets: AUC targets for "labels needed", ratios and plans (default: three AUCs every
            fitted arm reaches inside its budgets, else the best reached and 0.02 below it).
        metric: the figure the curves and fits use (default the exam AUC).
        criterion: when a plan reaches a target (``mean`` or ``ci_low``), as on the Results page.
        n_boot: bootstrap replicates of the fits.

    Raises:
        FileNotFoundError: ``study`` is not a study folder.
    """
    return render_report(study_answer(study, cost=cost, targets=targets, criterion=criterion, metric=metric,
                                      n_boot=n_boot))


def render_report(answer: StudyAnswer) -> str:
    """The HTML of a computed study answer (``templates/report.html.j2``): it renders, it computes no figure."""
    import plotly.io as pio

    from ich import runs
    from ich.figures import learning_curve_figure, roc_figure, slice_strip_figure

    spec, cells, aggregate, cost, metric = answer.spec, answer.cells, answer.aggregate, answer.cost, answer.metric
    good, study = answer.good_fits, answer.study
    unit = {"weak": "exam labels", "strong": "slice labels"}
    figs: list[str] = []

    def add(fig) -> Markup:
        figs.append(pio.to_html(fig, full_html=False, include_plotlyjs=not figs,
                                config={"displaylogo": False, "responsive": True}))
        return Markup(figs[-1])

    targets = []
    for at in answer.targets:
        line = []
        for arm, need in at.needed.items():
            if not math.isfinite(need["n"]):
                line.append(f"{arm}: fitted curve does not reach it (plateau a = {good[arm].a:.3f})")
                continue
            line.append(f"{arm} needs {_fmt(need['n'], 0)} {unit.get(answer.arms[arm][0], 'labels')} "
                        f"[{_fmt(need['low'], 0)}, {_fmt(need['high'], 0)}]"
                        + (" (extrapolated)" if need["extrapolated"] else ""))
        if at.ratio is not None and math.isfinite(at.ratio["ratio"]):
            line.append(f"strong/weak label ratio {_fmt(at.ratio['ratio'], 1)} [{_fmt(at.ratio['low'], 1)}, "
                        f"{_fmt(at.ratio['high'], 1)}]")
        line.append("cheapest observed plan: " + (at.plan.sentence().replace("**", "") if at.plan else "none reaches it"))
        targets.append({"label": f"{metric} {at.target:.3f}",
                        "lines": [t.rstrip(".") for t in line + at.outcomes + at.effects]})   # joined with "; "

    curves = []
    if len(cells[cells["state"] == "done"]):
        for x, words in (("labels", "labels bought"), ("hours", "annotator hours"), ("cost", "annotation cost")):
            curves.append(add(learning_curve_figure(aggregate, cells=cells, fits=good, metric=metric, x=x,
                                                    cost=None if x == "labels" else cost, title=f"{metric} vs {words}")))
        for other in ("sequence_f1", "slice_auc", "pixel_dice"):
            if other != metric and cells[other].notna().any():
                curves.append(add(learning_curve_figure(aggregate, cells=cells, metric=other, x="labels",
                                                        title=f"{other} vs labels bought")))
    roc = add(roc_figure(answer.roc)) if answer.roc else None
    strips = []
    for arm, run in largest_budget_runs(cells).items():
        try:
            exams, slices = runs.read_predictions(run)
        except (FileNotFoundError, ValueError, KeyError):
            continue
        pos = exams[pd.to_numeric(exams["exam_label"], errors="coerce") == 1]
        if len(pos):
            exam_id = pos.sort_values("exam_id")["exam_id"].iloc[0]
            strips.append(add(slice_strip_figure(slices, exam_id, title=f"{arm} @ {Path(run).name}: exam {exam_id}")))

    k, n = significant_count(answer.delong) if not answer.delong.empty else (0, 0)
    fits = pd.DataFrame([{"arm": arm, **fit.to_dict()} if isinstance(fit, PowerLawFit) else
                         {"arm": arm, "method": f"no fit: {fit}"} for arm, fit in answer.fits.items()])
    needed = pd.DataFrame([{"target": at.target, "arm": arm, "labels": need["n"], "low": need["low"],
                            "high": need["high"], "extrapolated": "yes" if need["extrapolated"] else "no"}
                           for at in answer.targets for arm, need in at.needed.items()])
    plans = pd.DataFrame([{"target": at.target, **p.to_dict()} for at in answer.targets for p in at.fitted])
    means = None
    if len(aggregate):
        means = plan_table(aggregate, cost)
        means["auc"] = [_ci(m, lo, hi) for m, lo, hi in zip(means[metric], means[f"{metric}_ci_low"],
                                                              means[f"{metric}_ci_high"])]
    cells_view = cells.assign(cell=cells["run"].map(lambda r: Path(r).name),
                              auc=[_ci(m, lo, hi) for m, lo, hi in zip(cells["exam_auc"], cells["exam_auc_ci_low"],
                                                                        cells["exam_auc_ci_high"])])
    record = {"study": read_study(study)[1], "cost_model": cost.to_dict(), "criterion": answer.criterion,
              "progress": read_progress(study)}
    return TEMPLATES.get_template("report.html.j2").render(
        title=spec.name or study.name, dataset=spec.dataset, status=answer.status["sentence"].replace("**", ""),
        written=time.strftime("%Y-%m-%d %H:%M"), css=Markup(CSS), validation=answer.validation, noise=answer.noise,
        targets=targets, metric=metric, reference_ratio=REFERENCE_RATIO, criterion=answer.criterion,
        robustness=[{"sentence": at.robustness.sentence,
                     "table": _table(pd.DataFrame(at.robustness.rows()),
                                     ["variant", "change", "cheapest plan", "cost", "flips?"])}
                    for at in answer.targets if at.robustness is not None],
        curves=curves, roc=roc, strips=strips,
        delong=_table(answer.delong.assign(p_value=[_p(v) for v in answer.delong["p_value"]])
                      if not answer.delong.empty else None, list(answer.delong.columns),
                      [COLUMN_WORDS.get(c, c) for c in answer.delong.columns]),
        delong_note=f"{k} of {n} comparisons differ at p < 0.05 (two-sided).",
        fits=_table(fits, ["arm", "a", "b", "c", "rmse", "n_points", "n_min", "n_max", "method", "n_replicates"]),
        needed=_table(needed, ["target", "arm", "labels", "low", "high", "extrapolated"]),
        plans=_table(plans, ["target", "arm", "budget", "budget_low", "budget_high", "hours", "cost"],
                     ["target", "arm", "labels", "low", "high", "hours", f"cost ({cost.currency})"]),
        means=_table(means, ["arm", "budget", "n_seeds", "auc", "slice_auc", "sequence_f1", "pixel_dice", "hours",
                             "cost", "seconds"],
                     ["arm", "budget", "seeds", f"{metric} [95% CI]", "slice AUC", "sequence F1", "pixel Dice", "hours",
                      f"cost ({cost.currency})", "seconds/cell"]),
        cells=_table(cells_view, ["cell", "state", "n_labels", "auc", "slice_auc", "sequence_f1", "pixel_dice",
                                  "seconds"],
                     ["cell", "state", "labels", "exam AUC [DeLong 95% CI]", "slice AUC", "sequence F1", "pixel Dice",
                      "seconds"]),
        record=json.dumps(record, indent=2, default=str))


def write_report(study: str | os.PathLike, out: str | os.PathLike | None = None, **kwargs) -> Path:
    """Write ``build_report(study, **kwargs)`` to ``out`` (default ``<study>/report.html``) atomically."""
    out = Path(out) if out else Path(study) / "report.html"
    text = build_report(study, **kwargs)
    return atomic.write_text(out, text)


